#!/usr/bin/env python3
"""Collect every ``results.json`` under some roots into one table, JSON and plot.

Usage::

    python recipes/summarize.py --exp-root egs [more roots...] --out exp/summary

The schema and the writers live in :mod:`elp.eval.results`.
"""

import sys

from elp.eval.results import main

if __name__ == "__main__":
    sys.exit(main())
