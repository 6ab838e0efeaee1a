"""Subcommands of the ``elp`` command line (one module each)."""
