#!/usr/bin/env python3
"""Check run.sh's short names before any stage runs (one line per mistake, exit 1).

Usage::

    python recipes/check_options.py --backbone wavlm_plus --method elp [--backbone_arch tiny]
"""

import argparse
import sys

from elp.core.backbones import BACKBONES
from elp.core.methods import METHODS
from elp.core.presets import ARCH_PRESETS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--backbone_arch", default=None)
    args = parser.parse_args(argv)
    problems = []
    if args.backbone not in BACKBONES:
        problems.append(f"--backbone {args.backbone}: unknown; choose one of {' '.join(BACKBONES)}")
    if args.method not in METHODS:
        problems.append(f"--method {args.method}: unknown; choose one of {' '.join(METHODS)}")
    if args.backbone_arch and args.backbone_arch not in ARCH_PRESETS:
        problems.append(f"--backbone_arch {args.backbone_arch}: unknown; choose one of {' '.join(ARCH_PRESETS)}")
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
