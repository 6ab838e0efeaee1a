#!/usr/bin/env python3
"""Print the data dirs a recipe's hparams name (train, valid, then test sets), one per line.

Usage::

    python recipes/data_sets.py conf/train.yaml [--key value ...] [-- more overrides]
"""

import sys

from elp.runtime import run_main
from elp.recipe import peek_experiment


def main(argv) -> int:
    argv = [a for a in argv if a != "--"]
    hparams = peek_experiment(argv)
    for data_dir in [hparams["train_set"], hparams["valid_set"], *hparams["test_sets"]]:
        print(data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
