#!/usr/bin/env python3
"""Stage 2: the token or label inventory of a recipe's training set, saved to ``lang_dir``.

Usage::

    python recipes/inventory.py conf/train.yaml [--overrides_file conf/mini.yaml] [--key value ...]

The recipe's ``task`` object decides what the inventory is (characters or a BPE model for ASR,
labels for classification, training speakers for SV); nothing is loaded but the data.
"""

import logging
import sys

from elp.train.hparams import build_node
from elp.train.recipe import peek_experiment, present_test_sets
from elp.runtime import configure_logging, run_main

logger = logging.getLogger("inventory")


def main(argv) -> int:
    configure_logging()
    hparams = peek_experiment(argv)
    task = build_node(hparams["task"])
    task.build_inventory(hparams["train_set"], hparams["lang_dir"])
    for data_dir in [hparams["valid_set"], *present_test_sets(hparams)]:
        task.check_coverage(hparams["lang_dir"], data_dir)
    logger.info("%s: %s inventory of %s", hparams["lang_dir"], task.kind, hparams["train_set"])
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
