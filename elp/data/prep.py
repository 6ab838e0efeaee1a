"""Plumbing shared by the corpus data-preparation scripts (``egs/*/*/local/data_prep.py``).

A script holds only what is specific to its corpus (how to find and parse the files) and
leaves the rest here: the command line (``--corpus-root``, ``--out``, ``--skip-validation``),
logging, locating a corpus folder, writing + validating a data dir with a summary line, and
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

from elp.data.errors import DataError
from elp.data.kaldi_dir import validate_data_dir, write_data_dir

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


class CorpusLayoutError(ValueError):
    """The corpus on disk does not have the expected layout (the message says what is missing)."""


def data_prep_parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every data-prep script shares.

    Parameters
    ----------
    description : str
        The script's docstring (shown by ``--help``).

    Returns
    -------
    argparse.ArgumentParser
        With ``--corpus-root`` (required), ``--out`` (default ``data``), ``--skip-validation``
        and ``--log-level``; a script adds its own options.
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
    return parser


def run_data_prep(parser: argparse.ArgumentParser, prepare: Callable[[argparse.Namespace], object],
                  argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, set up logging and run ``prepare(args)``; user errors exit with status 1.

    Corpus-layout and data-dir errors print one clear message instead of a traceback.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The recipe's parser (e.g. from :func:`prep_parser`).
    prepare : Callable[[argparse.Namespace], object]
        The recipe's preparation function.
    argv : Sequence[str] | None, optional
        Command-line arguments (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success (raises SystemExit(1) on a reported error).
    """
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    try:
        prepare(args)
    except (CorpusLayoutError, DataError, FileNotFoundError) as error:
        logger.error("%s", error)
        raise SystemExit(1) from None
    return 0


def find_corpus_dir(corpus_root: os.PathLike, name: str) -> Path:
    """The corpus folder ``name`` given its parent or itself (``--corpus-root`` may be either).

    Parameters
    ----------
    corpus_root : os.PathLike
        The corpus folder or its parent.
    name : str
        The corpus folder's name.

    Returns
    -------
    Path
        The corpus folder.

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
    """Absolute path for ``wav.scp`` (symlinks kept as they are); no whitespace allowed.

    Parameters
    ----------
    path : os.PathLike
        An audio file.

    Returns
    -------
    str
        ``os.path.abspath(path)``.

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


def log_counts(message: str, counts: Mapping[str, int], level: int = logging.WARNING) -> int:
    """Log ``message`` with a total and a per-key breakdown; returns the total (0: nothing logged).

    Parameters
    ----------
    message : str
        What was counted.
    counts : Mapping[str, int]
        Key -> count.
    level : int, optional
        Logging level.

    Returns
    -------
    int
        The total.

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
    """Log ``message`` with a count and the first few ``items``; returns the count.

    Parameters
    ----------
    message : str
        What was skipped.
    items : Sequence[str]
        The skipped items.
    level : int, optional
        Logging level.
    examples : int, optional
        How many items the message names.

    Returns
    -------
    int
        ``len(items)``.

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
    """Write a data dir (:func:`write_data_dir`), validate it, log a summary.

    Parameters
    ----------
    out_dir : str | Path
        The data dir to write.
    validate : bool, optional
        Run :func:`validate_data_dir` (opens every audio file, writes ``utt2num_samples``).
    **mappings
        Keyword arguments of :func:`write_data_dir` (``wav_scp``, ``utt2spk``, ...).

    Returns
    -------
    Path
        ``out_dir``.
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
    """Deterministically pick ``floor(len * fraction)`` items spread evenly over ``sorted(items)``.

    Item ``i`` (0-based, in sorted order) is picked when ``floor((i + 1) * fraction)`` exceeds
    ``floor(i * fraction)``: with fraction 0.1 these are items 9, 19, 29, ...

    Parameters
    ----------
    items : Iterable[Item]
        Sortable items (e.g. utterance or speaker ids).
    fraction : float
        In [0, 1].

    Returns
    -------
    list[Item]
        The picked items, sorted.

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

