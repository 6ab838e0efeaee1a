"""Training: Brains, checkpoints, the experiment guard, schedulers, recipe plumbing, feature caches."""
