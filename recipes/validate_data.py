#!/usr/bin/env python3
"""Stage 1: validate (and with --fix, repair) Kaldi data dirs; writes utt2num_samples.

Usage::

    python recipes/validate_data.py [--fix] [--fix-test] [--max-drop 0.05] [--min-samples 400] \\
        data/train data/dev --test data/test_a data/test_b
    python recipes/validate_data.py [--fix ...] --recipe conf/train.yaml [--key value ...]   # --recipe last

With ``--recipe`` the sets are the ones the recipe's hparams name (``train_set``, ``valid_set``
and the prepared ``test_sets``), read like every other stage reads them; the arguments after
the options are the recipe's hparam overrides.

Positional dirs are training/development sets; dirs after ``--test`` are test sets. ``--fix``
repairs only the former (sorting, identical duplicates, utterances missing from some file);
a test set is repaired only with ``--fix-test``, since dropping test utterances changes the
reported numbers. Removing more than ``--max-drop`` (default 5%) of the utterances or trials
of any set is an error naming how many and why; everything removed is logged (utterance,
file, and a count per file).

Each error is a summary line, then one line per problem (the first ten, then a count) naming
the file / line / utterance and the fix; the exit status is 1 on any error (no traceback).

``wav.scp`` entries may be standard decoder pipes (``flac -c -d -s PATH |``, ``sox PATH -t wav
- |``, ``sph2pipe -f wav PATH |``, ``ffmpeg -i PATH -f wav - |``, ``cat PATH |``): their files are
read natively. Other commands ending in ``|`` run with ``sh -c`` only with
``--allow-shell-pipes`` (with ``--recipe``, the run option ``allow_shell_pipes: true`` sets it).
"""

import argparse
import sys

from elp.data.errors import DataError
from elp.data.kaldi_dir import DEFAULT_MAX_DROP, MIN_SAMPLES, validate_data_dir
from elp.runtime import configure_logging, run_main
from elp.train.recipe import peek_experiment, present_test_sets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dirs", nargs="*", help="training / development data dirs")
    parser.add_argument("--test", nargs="+", default=[], metavar="DIR", help="test data dirs")
    parser.add_argument("--fix", action="store_true",
                        help="repair the training/development dirs: sort, drop identical duplicates and "
                             "utterances missing from some file")
    parser.add_argument("--fix-test", action="store_true", help="also repair the --test dirs (changes what is scored)")
    parser.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP,
                        help="largest share of a set's utterances or trials a fix may remove (default: %(default)s)")
    parser.add_argument("--min-samples", type=int, default=MIN_SAMPLES)
    parser.add_argument("--recheck-audio", action="store_true",
                        help="re-read every recording even if an earlier validation checked it")
    parser.add_argument("--scan-all-samples", action="store_true",
                        help="decode every sample of every format (default: float formats only)")
    parser.add_argument("--jobs", type=int, default=4, help="threads opening recordings (default: %(default)s)")
    parser.add_argument("--allow-shell-pipes", action="store_true",
                        help="run wav.scp commands elp does not read natively with sh -c, as Kaldi does")
    parser.add_argument("--recipe", metavar="YAML",
                        help="last option: validate the sets this recipe's hparams name; the arguments after "
                             "YAML are the recipe's hparam overrides")
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_args = []
    if "--recipe" in argv:  # everything after its YAML belongs to the recipe, not to this parser
        at = argv.index("--recipe")
        argv, recipe_args = argv[:at + 2], [a for a in argv[at + 2:] if a != "--"]
    args = parser.parse_args(argv)
    if args.recipe:
        if args.data_dirs or args.test:
            parser.error("give data dirs or --recipe, not both")
        hparams = peek_experiment([args.recipe] + recipe_args)
        args.data_dirs = [str(hparams["train_set"]), str(hparams["valid_set"])]
        args.test = [str(t) for t in present_test_sets(hparams)]
        args.allow_shell_pipes = args.allow_shell_pipes or bool(hparams.get("allow_shell_pipes"))
    if not args.data_dirs and not args.test:
        parser.error("give at least one data dir")
    if not 0.0 <= args.max_drop <= 1.0:
        parser.error(f"--max-drop must be between 0 and 1, got {args.max_drop}")
    configure_logging("validate_data.py")
    failed = 0
    sets = [(d, args.fix) for d in args.data_dirs] + [(d, args.fix_test) for d in args.test]
    for data_dir, fix in sets:
        try:
            validate_data_dir(data_dir, fix=fix, min_samples=args.min_samples, max_drop=args.max_drop,
                              recheck_audio=args.recheck_audio,
                              scan_samples=True if args.scan_all_samples else None, jobs=args.jobs,
                              allow_shell_pipes=args.allow_shell_pipes)
        except DataError as error:
            hint = ""
            if fix is False and data_dir in args.test and args.fix:
                hint = " (--fix does not touch test sets: repair the files, or pass --fix-test)"
            summary, *details = str(error).split("\n")
            print("\n".join([f"validate_data.py: error: {summary}{hint}", *details]), file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
