"""Kaldi data-dir utilities: subset, combine, copy, filter, perturb-speed.

Usage::

    elp data subset data/train data/train_1k --first 1000        # or --last N, --random N --seed S
    elp data subset data/train data/train_spk --spk-list spk.list  # or --utt-list utt.list
    elp data combine data/train_all data/train_clean data/train_other
    elp data copy data/train data/train_rev --utt-prefix rev1- --spk-prefix rev1-
    elp data filter data/train data/train_short --max-seconds 20 --min-seconds 1
    elp data perturb-speed data/train data/train_sp --factors 0.9 1.0 1.1

Each writes a new data dir (sorted, ``spk2utt`` derived) that passes
``recipes/validate_data.py`` and Kaldi's ``utils/validate_data_dir.sh``; the functions are
in :mod:`elp.data.dirs`. Errors are one line naming the file or id and the fix.
"""

from __future__ import annotations

import argparse
import sys

SUBCOMMANDS = ("subset", "combine", "copy", "filter", "perturb-speed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sub-subcommands of ``elp data`` and their options to ``parser``."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")

    subset = actions.add_parser("subset", help="keep some utterances (utils/subset_data_dir.sh)")
    subset.add_argument("source")
    subset.add_argument("dest")
    choice = subset.add_mutually_exclusive_group(required=True)
    choice.add_argument("--first", type=int, metavar="N", help="the first N utterances (sorted order)")
    choice.add_argument("--last", type=int, metavar="N", help="the last N utterances")
    choice.add_argument("--random", type=int, metavar="N", help="N random utterances (see --seed)")
    choice.add_argument("--spk-list", metavar="FILE", help="the utterances of the speakers listed (one a line)")
    choice.add_argument("--utt-list", metavar="FILE", help="the utterances listed (one a line)")
    subset.add_argument("--seed", type=int, default=0, help="seed of --random (default: %(default)s)")

    combine = actions.add_parser("combine", help="the union of data dirs (utils/combine_data.sh)")
    combine.add_argument("dest")
    combine.add_argument("sources", nargs="+")

    copy = actions.add_parser("copy", help="copy with id prefixes (utils/copy_data_dir.sh)")
    copy.add_argument("source")
    copy.add_argument("dest")
    copy.add_argument("--utt-prefix", default="")
    copy.add_argument("--spk-prefix", default="")
    copy.add_argument("--reco-prefix", default=None, help="prefix of recording ids (with segments)")

    filt = actions.add_parser("filter", help="keep utterances between two durations")
    filt.add_argument("source")
    filt.add_argument("dest")
    filt.add_argument("--min-seconds", type=float, default=0.0)
    filt.add_argument("--max-seconds", type=float, default=None)
    filt.add_argument("--allow-shell-pipes", action="store_true",
                      help="run wav.scp commands elp does not read natively to measure them")

    perturb = actions.add_parser("perturb-speed", help="speed-perturbed copies, ids prefixed sp<F>- "
                                                       "(utils/data/perturb_data_dir_speed.sh)")
    perturb.add_argument("source")
    perturb.add_argument("dest")
    perturb.add_argument("--factors", type=float, nargs="+", default=[0.9, 1.0, 1.1],
                         help="speed factors; 1.0 keeps the original utterances (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Run one ``elp data`` action.

    Returns
    -------
    int
        0 on success, 1 on a data error (its one-line message printed to stderr).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from elp.cli import main
    >>> from elp.data.kaldi_dir import write_data_dir
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = write_data_dir(root / "a", wav_scp={f"s{i}-u": f"/c/{i}.wav" for i in range(4)})
    >>> main(["data", "subset", str(root / "a"), str(root / "b"), "--last", "2"])
    0
    >>> (root / "b" / "utt2spk").read_text()
    's2-u s2-u\\ns3-u s3-u\\n'
    """
    from elp.data import dirs
    from elp.data.errors import DataError
    from elp.runtime import configure_logging

    configure_logging("elp data")
    try:
        if args.action == "subset":
            spk_list = dirs.read_id_list(args.spk_list) if args.spk_list else None
            utt_list = dirs.read_id_list(args.utt_list) if args.utt_list else None
            dirs.subset_dir(args.source, args.dest, first=args.first, last=args.last, random=args.random,
                            seed=args.seed, spk_list=spk_list, utt_list=utt_list)
        elif args.action == "combine":
            dirs.combine_dirs(args.sources, args.dest)
        elif args.action == "copy":
            dirs.copy_dir(args.source, args.dest, utt_prefix=args.utt_prefix, spk_prefix=args.spk_prefix,
                          reco_prefix=args.reco_prefix)
        elif args.action == "filter":
            dirs.filter_dir(args.source, args.dest, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                            allow_shell_pipes=args.allow_shell_pipes)
        else:
            dirs.perturb_speed(args.source, args.dest, args.factors)
    except (DataError, FileNotFoundError, NotADirectoryError) as error:
        print(f"elp data {args.action}: error: {error}", file=sys.stderr)
        return 1
    return 0
