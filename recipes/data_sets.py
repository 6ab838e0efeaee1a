#!/usr/bin/env python3
"""Print the data dirs a recipe's hparams name, one ``<role> <dir>`` per line (train, valid, test).

Usage::

    python recipes/data_sets.py conf/train.yaml [--key value ...] [-- more overrides]
"""

import sys

from elp.runtime import run_main
from elp.train.recipe import peek_experiment, present_test_sets


def main(argv) -> int:
    argv = [a for a in argv if a != "--"]
    hparams = peek_experiment(argv)
    print("train", hparams["train_set"])
    print("valid", hparams["valid_set"])
    for data_dir in present_test_sets(hparams):
        print("test", data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
