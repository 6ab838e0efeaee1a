"""List and prune on-disk feature caches (CNN features, hidden states) by backbone fingerprint.

Usage::

    elp cache list exp/cnn_cache
    elp cache prune exp/cnn_cache --keep-latest 1 --dry-run     # what would go
    elp cache prune exp/cnn_cache --keep-latest 1               # keep the most recently used one
    elp cache prune exp/cnn_cache --older-than 30               # not used for 30 days

A cache directory (``cnn_cache_dir``, default ``exp/cnn_cache``; ``exp/<tag>/hidden_state_cache``)
holds one ``<fingerprint>-<dtype>`` directory per backbone and storage dtype
(:mod:`elp.train.feature_cache`). ``list`` prints each with its kind, backbone, entries, size,
creation date and the last time a run used it; ``prune`` removes those every given rule selects
(both rules: not among the N latest *and* older than D days). Only directories whose
``info.json`` names a cache kind are touched. A run using a removed fingerprint goes on: what
its cache no longer holds is computed (and, in a later run, stored again).
"""

from __future__ import annotations

import argparse
import sys
import time

SUBCOMMANDS = ("list", "prune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sub-subcommands of ``elp cache`` and their options to ``parser``."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    listing = actions.add_parser("list", help="fingerprints of a cache directory with sizes and dates")
    listing.add_argument("directory", help="the cache directory (e.g. exp/cnn_cache)")
    prune = actions.add_parser("prune", help="remove old or unused fingerprints")
    prune.add_argument("directory", help="the cache directory (e.g. exp/cnn_cache)")
    prune.add_argument("--keep-latest", type=int, metavar="N", help="keep the N most recently used fingerprints")
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="remove those not used for DAYS days")
    prune.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")


def human_size(size_bytes: int) -> str:
    """Bytes in decimal units (as ``cnn_cache_max_gb`` counts them).

    Examples
    --------
    >>> human_size(999), human_size(1_234_567), human_size(180_000_000_000)
    ('999 B', '1.2 MB', '180.0 GB')
    """
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} B"


def _date(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def run(args: argparse.Namespace) -> int:
    """Run one ``elp cache`` action.

    Returns
    -------
    int
        0 on success, 1 on an error (its one-line message printed to stderr).

    Examples
    --------
    >>> import tempfile
    >>> import torch
    >>> from elp.cli import main
    >>> from elp.train.feature_cache import CNNFeatureCache, audio_key
    >>> root = tempfile.mkdtemp()
    >>> _ = CNNFeatureCache(root, "a" * 16).put(audio_key(torch.ones(800)), torch.ones(50, 512))
    >>> _ = CNNFeatureCache(root, "b" * 16)
    >>> main(["cache", "list", root])  # doctest: +ELLIPSIS
    | cache | kind | backbone | entries | size | created | last used |
    |---|---|---|---|---|---|---|
    | bbbbbbbbbbbbbbbb-float16 | CNNFeatureCache |  | 0 | 90 B | ... | ... |
    | aaaaaaaaaaaaaaaa-float16 | CNNFeatureCache |  | 1 | 51.4 kB | ... | ... |
    2 fingerprints, 51.5 kB
    0
    >>> main(["cache", "prune", root, "--keep-latest", "1", "--dry-run"])  # doctest: +ELLIPSIS
    would remove .../aaaaaaaaaaaaaaaa-float16 (51.4 kB, last used ...)
    would free 51.4 kB; kept 1 fingerprint
    0
    >>> main(["cache", "prune", root])  # one line on stderr: give --keep-latest N and/or --older-than DAYS
    1
    """
    from elp.train.feature_cache import (
        INFO_FILE,
        LAST_USED_FILE,
        list_caches,
        prune_caches,
    )

    try:
        if args.action == "list":
            caches = list_caches(args.directory)
            print("| cache | kind | backbone | entries | size | created | last used |")
            print("|---|---|---|---|---|---|---|")
            for cache in caches:
                entries = cache.files - sum((cache.path / name).exists() for name in (INFO_FILE, LAST_USED_FILE))
                print(f"| {cache.path.name} | {cache.info.get('kind', '')} | {cache.info.get('backbone', '')} | "
                      f"{entries} | {human_size(cache.size_bytes)} | {_date(cache.created)} | "
                      f"{_date(cache.last_used)} |")
            total = sum(cache.size_bytes for cache in caches)
            print(f"{len(caches)} fingerprint{'' if len(caches) == 1 else 's'}, {human_size(total)}")
            return 0
        if args.keep_latest is None and args.older_than is None:
            raise ValueError("give --keep-latest N and/or --older-than DAYS")
        kept = len(list_caches(args.directory))
        chosen = prune_caches(args.directory, keep_latest=args.keep_latest, older_than_days=args.older_than,
                              dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        for cache in chosen:
            print(f"{verb} {cache.path} ({human_size(cache.size_bytes)}, last used {_date(cache.last_used)})")
        kept -= len(chosen)
        print(f"{'would free' if args.dry_run else 'freed'} {human_size(sum(c.size_bytes for c in chosen))}; "
              f"kept {kept} fingerprint{'' if kept == 1 else 's'}")
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"elp cache {args.action}: error: {error}", file=sys.stderr)
        return 1
    return 0
