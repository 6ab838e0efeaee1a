"""Sources of benchmark rows: each names its :class:`elp.bench.harness.Candidate` rows and builds
their models (``build(key, settings, work_dir) -> BuiltModel``) for the shared harness."""
