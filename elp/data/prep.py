"""Plumbing shared by the corpus data-preparation scripts (``egs/*/*/local/data_prep.py``).

A script holds only what is specific to its corpus (how to find and parse the files) and
leaves the rest here: the command line (``--corpus-root``, ``--out``, ``--skip-validation``,
``--drop-incomplete``), logging, locating a corpus folder, refusing a partial corpus
(:func:`require_parts`, :func:`check_complete`: what a recipe needs is named at stage 0,
not found missing one stage later), writing + validating a data dir with a summary line, and
logging what was dropped (the toolkit never drops anything silently).

Examples
--------
>>> parser = data_prep_parser("Prepare my corpus.")
>>> args = parser.parse_args(["--corpus-root", "/corpora/mine"])
>>> str(args.out), args.skip_validation
('data', False)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

from elp.data.errors import DataError
from elp.data.kaldi_dir import validate_data_dir, write_data_dir
from elp.runtime import configure_logging

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


class CorpusLayoutError(ValueError):
    """The corpus on disk does not have the expected layout (the message says what is missing)."""


def data_prep_parser(description: str, drop_incomplete: bool = False) -> argparse.ArgumentParser:
    """Argument parser with the options every data-prep script shares; a script adds its own.

    ``--corpus-root`` (required), ``--out`` (default ``data``), ``--skip-validation`` and
    ``--log-level``; with ``drop_incomplete``, also ``--drop-incomplete`` (see
    :func:`check_complete`); ``description`` (the script's docstring) is shown by ``--help``.
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-root", type=Path, required=True,
                        help="folder holding the corpus as downloaded")
    parser.add_argument("--out", type=Path, default=Path("data"),
                        help="where the Kaldi data dirs are written (default: data)")
    parser.add_argument("--skip-validation", action="store_true",
                        help="do not open every audio file (no utt2num_samples is written)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    if drop_incomplete:
        parser.add_argument("--drop-incomplete", action="store_true",
                            help="drop (and log) utterances whose audio or annotation is missing instead of "
                                 "failing on an incomplete corpus")
    return parser


def run_data_prep(parser: argparse.ArgumentParser, prepare: Callable[[argparse.Namespace], object],
                  argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (None: ``sys.argv[1:]``), set up logging and run ``prepare(args)``; return 0.

    Corpus-layout and data-dir errors print one clear message instead of a traceback and exit
    with status 1 (``SystemExit(1)``). ``parser`` comes e.g. from :func:`data_prep_parser`.
    When a recipe's ``run.sh`` runs the script, ``$ELP_CORPUS_ROOT_OPTION`` holds its own option
    for the corpus (``--data_root``), which the message names instead of ``--corpus-root``.
    """
    args = parser.parse_args(argv)
    configure_logging(Path(sys.argv[0]).name, level=args.log_level)
    try:
        prepare(args)
    except (CorpusLayoutError, DataError, FileNotFoundError) as error:
        option = os.environ.get("ELP_CORPUS_ROOT_OPTION") or "--corpus-root"
        logger.error("%s", str(error).replace("--corpus-root", option))
        raise SystemExit(1) from None
    return 0


def find_corpus_dir(corpus_root: os.PathLike, name: str) -> Path:
    """The corpus folder ``name`` given its parent or itself (``--corpus-root`` may be either).

    Raises
    ------
    CorpusLayoutError
        If neither ``corpus_root / name`` nor ``corpus_root`` itself is that folder.

    Examples
    --------
    ``find_corpus_dir("/corpora", "LibriSpeech")`` and
    ``find_corpus_dir("/corpora/LibriSpeech", "LibriSpeech")`` both give ``/corpora/LibriSpeech``:

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "LibriSpeech").mkdir()
    >>> find_corpus_dir(root, "LibriSpeech") == find_corpus_dir(root / "LibriSpeech", "LibriSpeech") == root / "LibriSpeech"
    True
    """
    root = Path(corpus_root)
    if (root / name).is_dir():
        return root / name
    if root.name == name and root.is_dir():
        return root
    raise CorpusLayoutError(f"{name}/ not found in {root} (pass its parent folder as --corpus-root)")


def audio_path(path: os.PathLike) -> str:
    """``os.path.abspath(path)`` for ``wav.scp`` (symlinks kept as they are); no whitespace allowed.

    Raises
    ------
    CorpusLayoutError
        If the path holds whitespace.

    Examples
    --------
    >>> audio_path("/corpus/a.flac")
    '/corpus/a.flac'
    """
    text = os.path.abspath(path)
    if any(ch.isspace() for ch in text):
        raise CorpusLayoutError(f"audio path contains whitespace, which wav.scp cannot hold: {text!r}")
    return text


def require_parts(root: os.PathLike, parts: Sequence[str], fix: str) -> None:
    """Fail, naming all of them, when any of ``parts`` (paths relative to ``root``) does not exist.

    Stage 0 checks the layout a recipe needs up front, so a partial download fails here
    and not one stage later with "run stage 0 first".

    Raises
    ------
    CorpusLayoutError
        One line: ``root``, the missing parts and ``fix``.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "dev-clean").mkdir()
    >>> require_parts(root, ["dev-clean"], "download it")
    >>> require_parts(root, ["dev-clean", "test-clean", "test-other"], "download them")
    Traceback (most recent call last):
    ...
    elp.data.prep.CorpusLayoutError: ...: test-clean, test-other missing (2 of 3 required parts); download them
    """
    missing = [part for part in parts if not (Path(root) / part).exists()]
    if missing:
        raise CorpusLayoutError(f"{root}: {', '.join(missing)} missing ({len(missing)} of {len(parts)} required "
                                f"parts); {fix}")


def check_complete(problem: str, items: Sequence[str], fix: str, drop_incomplete: bool = False,
                   total: int = 0, tolerated_share: float = 0.0) -> int:
    """Fail on a partial corpus: ``items`` (e.g. audio files without a transcript) are missing a part.

    With ``drop_incomplete`` (the scripts' ``--drop-incomplete``), or when they are at most
    ``tolerated_share`` of ``total`` (a corpus known to ship a few such items), they are
    logged and dropped instead; returns how many.

    Raises
    ------
    CorpusLayoutError
        One line: ``problem``, how many, the first few, ``fix`` and the opt-in to drop them.

    Examples
    --------
    >>> check_complete("dev-clean: audio without a transcript line", [], "re-extract it")
    0
    >>> check_complete("dev-clean: audio without a transcript line", ["84-121123-0002"], "re-extract it")
    Traceback (most recent call last):
    ...
    elp.data.prep.CorpusLayoutError: dev-clean: audio without a transcript line: 1 (e.g. 84-121123-0002); the corpus is incomplete: re-extract it, or pass --drop-incomplete (run.sh: --prep_opts --drop-incomplete) to drop them
    >>> check_complete("dev-clean: audio without a transcript line", ["a", "b"], "", drop_incomplete=True)
    2
    """
    if not items:
        return 0
    if drop_incomplete or len(items) <= tolerated_share * total:
        return log_skipped(f"{problem}, dropped", items)
    shown = ", ".join(str(item) for item in list(items)[:3]) + (", ..." if len(items) > 3 else "")
    raise CorpusLayoutError(f"{problem}: {len(items)} (e.g. {shown}); the corpus is incomplete: {fix}, or pass "
                            "--drop-incomplete (run.sh: --prep_opts --drop-incomplete) to drop them")


def log_counts(message: str, counts: Mapping[str, int], level: int = logging.WARNING) -> int:
    """Log ``message`` with the total and a per-key breakdown of ``counts``; return the total (0: nothing logged).

    Examples
    --------
    ``log_counts("IEMOCAP: dropped utterances of unused emotions", Counter(fru=2, xxx=1))``
    logs ``IEMOCAP: dropped utterances of unused emotions: 3 (fru=2, xxx=1)`` and returns 3:

    >>> log_counts("dropped", {"fru": 2, "xxx": 1}, level=logging.DEBUG)
    3
    """
    total = sum(counts.values())
    if total:
        breakdown = ", ".join(f"{key}={counts[key]}" for key in sorted(counts))
        logger.log(level, "%s: %d (%s)", message, total, breakdown)
    return total


def log_skipped(message: str, items: Sequence[str], level: int = logging.WARNING, examples: int = 3) -> int:
    """Log ``message`` with the number of ``items`` and the first ``examples`` of them; return the number.

    Examples
    --------
    >>> log_skipped("unreadable", ["a.wav", "b.wav"], level=logging.DEBUG)
    2
    """
    if items:
        shown = ", ".join(str(item) for item in list(items)[:examples])
        logger.log(level, "%s: %d (e.g. %s)", message, len(items), shown)
    return len(items)


def write_prepared_dir(out_dir: os.PathLike, validate: bool = True, **mappings) -> Path:
    """Write a data dir (:func:`write_data_dir` with ``mappings``), validate it, log a summary; return it.

    ``validate`` runs :func:`validate_data_dir` (opens every audio file, writes ``utt2num_samples``).
    """
    out_dir = write_data_dir(out_dir, **mappings)
    if validate:
        validate_data_dir(out_dir, jobs=4)  # headers read by 4 threads (I/O bound)
    utterances = mappings.get("segments") or mappings["wav_scp"]  # with segments, wav.scp lists recordings
    speakers = len(set(mappings["utt2spk"].values())) if mappings.get("utt2spk") else len(utterances)
    extra = f", {len(mappings['trials'])} trials" if mappings.get("trials") is not None else ""
    logger.info("wrote %s: %d utterances, %d speakers%s", out_dir, len(utterances), speakers, extra)
    return out_dir


def evenly_spaced_holdout(items: Iterable[Item], fraction: float) -> list[Item]:
    """Deterministically pick ``floor(len * fraction)`` sortable items spread evenly over ``sorted(items)``.

    Item ``i`` (0-based, in sorted order) is picked when ``floor((i + 1) * fraction)`` exceeds
    ``floor(i * fraction)``: with fraction 0.1 these are items 9, 19, 29, ... The picked items
    are returned sorted.

    Raises
    ------
    ValueError
        If ``fraction`` is outside [0, 1].

    Examples
    --------
    >>> evenly_spaced_holdout(range(25), 0.1)
    [9, 19]
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    ratio = Fraction(fraction).limit_denominator(10**6)  # exact arithmetic: 0.1 -> 1/10
    ordered = sorted(items)
    return [item for i, item in enumerate(ordered)
            if (i + 1) * ratio.numerator // ratio.denominator > i * ratio.numerator // ratio.denominator]

