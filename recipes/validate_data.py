#!/usr/bin/env python3
"""Stage 1: validate (and with --fix, repair) Kaldi data dirs; writes utt2num_samples.

Usage::

    python recipes/validate_data.py [--fix] [--min-samples 400] data/train data/test ...

Errors name the file or utterance and say how to fix it; the exit status is 1 on any error.
"""

import argparse
import logging
import sys

from elp.data.kaldi_dir import MIN_SAMPLES, DataDirError, validate_data_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dirs", nargs="+")
    parser.add_argument("--fix", action="store_true", help="sort, drop identical duplicates and incomplete utterances")
    parser.add_argument("--min-samples", type=int, default=MIN_SAMPLES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (validate_data.py) %(message)s")
    failed = 0
    for data_dir in args.data_dirs:
        try:
            validate_data_dir(data_dir, fix=args.fix, min_samples=args.min_samples)
        except DataDirError as err:
            logging.error("%s", err)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
