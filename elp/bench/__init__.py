"""Benchmarks: one harness timing training steps of elp methods and of peer toolkits."""
