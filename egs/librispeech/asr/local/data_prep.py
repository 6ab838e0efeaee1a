#!/usr/bin/env python3
"""LibriSpeech -> Kaldi data dirs (wav.scp, text, utt2spk, spk2utt, utt2num_samples).

Reads ``<corpus-root>/LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<NNNN>.flac`` and
the chapter transcripts ``<spk>-<chapter>.trans.txt`` (lines ``<utt-id> UPPERCASE TEXT``).
Writes ``<out>/<subset with _ for ->`` (e.g. ``data/train_clean_100``). Utterance ids are the
corpus ids; they start with the speaker id, so utt2spk and spk2utt sort consistently.
A partial corpus fails here, naming what is missing: a subset given with ``--subsets`` (by
default ``train-clean-100``, ``dev-clean`` and ``test-clean``, the sets the recipe trains,
validates and reports on; the default ``dev-other`` and ``test-other`` are prepared when
present), audio without a transcript line or a transcript line without audio
(``--drop-incomplete`` drops those instead, logged).

Usage:
    python local/data_prep.py --corpus-root /corpora --out data [--train-960]
    python local/data_prep.py --corpus-root /corpora/LibriSpeech --subsets dev-clean test-clean
    python local/data_prep.py --corpus-root /corpora --out data --librilight-10h   # + data/train_10h
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from elp.data.kaldi_dir import combine_data_dirs, read_data_dir, read_mapping
from elp.data.prep import (CorpusLayoutError, audio_path, check_complete, data_prep_parser, find_corpus_dir,
                           require_parts, run_data_prep, write_prepared_dir)

logger = logging.getLogger("librispeech.data_prep")

DEFAULT_SUBSETS = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")
#: the default subsets a run cannot do without: the recipe's training, validation and first test set
REQUIRED_SUBSETS = ("train-clean-100", "dev-clean", "test-clean")
#: the 960 h training set: every training subset, combined into ``train_960``
TRAIN_960 = ("train-clean-100", "train-clean-360", "train-other-500")


def read_subset(subset_dir: Path, drop_incomplete: bool = True) -> Dict[str, Dict[str, str]]:
    """wav_scp / text / utt2spk of one subset folder (utterances with audio AND transcript).

    ``drop_incomplete`` False: audio without a transcript line, or a line without audio, is an
    error (:func:`elp.data.prep.check_complete`); True: they are dropped and logged.
    """
    wav_scp: Dict[str, str] = {}
    for flac in sorted(subset_dir.glob("*/*/*.flac")):
        wav_scp[flac.stem] = audio_path(flac)
    text: Dict[str, str] = {}
    for trans in sorted(subset_dir.glob("*/*/*.trans.txt")):
        text.update(read_mapping(trans))
    fix = f"extract {subset_dir.name} again from its archive (openslr.org/12)"
    check_complete(f"{subset_dir}: audio without a transcript line", sorted(set(wav_scp) - set(text)), fix,
                   drop_incomplete)
    check_complete(f"{subset_dir}: transcript lines without audio", sorted(set(text) - set(wav_scp)), fix,
                   drop_incomplete)
    utts = sorted(set(wav_scp) & set(text))
    if not utts:
        raise CorpusLayoutError(
            f"{subset_dir}: no utterance with both <spk>/<chapter>/<utt>.flac and a *.trans.txt line"
        )
    return {
        "wav_scp": {utt: wav_scp[utt] for utt in utts},
        "text": {utt: text[utt] for utt in utts},
        "utt2spk": {utt: utt.split("-")[0] for utt in utts},
    }


def prepare_librispeech(corpus_root: Path, out_dir: Path, subsets: Optional[Sequence[str]] = None,
                        validate: bool = True, train_960: bool = False,
                        drop_incomplete: bool = False) -> List[Path]:
    """Write one data dir per subset; returns their paths.

    Parameters
    ----------
    corpus_root
        ``LibriSpeech/`` or its parent.
    out_dir
        Parent of the data dirs (``data``).
    subsets
        Subset names as in the corpus (``dev-clean``), each required; None: the
        :data:`DEFAULT_SUBSETS`, of which only :data:`REQUIRED_SUBSETS` are required (the
        others are skipped when absent, logged).
    validate
        Validate each dir (reads every audio header, writes utt2num_samples).
    train_960
        Also prepare the three training subsets and combine them into ``train_960``
        (all must be present).
    drop_incomplete
        Drop (logged) utterances without transcript or audio instead of failing.
    """
    librispeech = find_corpus_dir(corpus_root, "LibriSpeech")
    required = list(REQUIRED_SUBSETS if subsets is None else subsets)
    subsets = list(DEFAULT_SUBSETS if subsets is None else subsets)
    require_parts(librispeech, required, "download and extract them (openslr.org/12), or name the subsets you "
                  "have with --subsets (run.sh: --prep_opts '--subsets dev-clean test-clean')")
    if train_960:
        missing = [s for s in TRAIN_960 if not (librispeech / s).is_dir()]
        if missing:
            raise CorpusLayoutError(f"--train-960 needs {', '.join(missing)} under {librispeech}")
        subsets = list(dict.fromkeys([*subsets, *TRAIN_960]))
    written = []
    for subset in subsets:
        subset_dir = librispeech / subset
        if not subset_dir.is_dir():
            logger.info("subset %s not found in %s: skipped", subset, librispeech)
            continue
        mappings = read_subset(subset_dir, drop_incomplete)
        written.append(write_prepared_dir(Path(out_dir) / subset.replace("-", "_"), validate=validate, **mappings))
    if not written:
        raise CorpusLayoutError(f"none of the subsets {list(subsets)} found in {librispeech}")
    if train_960:
        parts = [read_data_dir(Path(out_dir) / s.replace("-", "_")) for s in TRAIN_960]
        combined = combine_data_dirs(parts)
        written.append(write_prepared_dir(Path(out_dir) / "train_960", validate=validate, **combined.mappings()))
    return written


#: Libri-Light's limited-resource training data (``librispeech_finetuning.tgz``) and the
#: folders of its 10 h set: the six 10-minute folds of ``1h/`` plus ``9h/``, clean and other
LIBRILIGHT_DIR = "librispeech_finetuning"
LIBRILIGHT_10H_PARTS = tuple(f"1h/{fold}/{kind}" for fold in range(6) for kind in ("clean", "other")) + (
    "9h/clean", "9h/other")


def librilight_10h_parts(librilight_root: Path) -> List[Path]:
    """The 14 folders of Libri-Light's 10 h set under ``librispeech_finetuning/`` (or its parent).

    Raises
    ------
    CorpusLayoutError
        Naming the folders that are missing (a partial download or extraction).
    """
    try:
        finetuning = find_corpus_dir(librilight_root, LIBRILIGHT_DIR)
    except CorpusLayoutError:
        raise CorpusLayoutError(f"--librilight-10h: {LIBRILIGHT_DIR}/ not found in {librilight_root} (unpack "
                                f"librispeech_finetuning.tgz there, or pass its parent as --librilight-root)") from None
    missing = [part for part in LIBRILIGHT_10H_PARTS if not (finetuning / part).is_dir()]
    if missing:
        raise CorpusLayoutError(f"--librilight-10h: {finetuning} lacks {', '.join(missing)} "
                                "(unpack all of librispeech_finetuning.tgz)")
    return [finetuning / part for part in LIBRILIGHT_10H_PARTS]


def prepare_librilight_10h(librilight_root: Path, out_dir: Path, validate: bool = True,
                           drop_incomplete: bool = False) -> Path:
    """Write ``<out>/train_10h``: every utterance of the 14 folders of the 10 h set; returns it.

    Each folder is read like a LibriSpeech subset (:func:`read_subset`: its own
    ``<spk>/<chapter>/`` files and ``.trans.txt``; a chapter may be split between a ``1h/``
    fold and ``9h/``; ``drop_incomplete`` as there). Utterance ids are LibriSpeech's. A folder
    without audio is logged and skipped; an utterance id found in two folders is an error.
    """
    merged: Dict[str, Dict[str, str]] = {}
    found_in: Dict[str, Path] = {}
    for part in librilight_10h_parts(librilight_root):
        if not any(part.glob("*/*/*.flac")):
            logger.warning("%s holds no utterance: skipped", part)
            continue
        mappings = read_subset(part, drop_incomplete)
        for utt in mappings["wav_scp"]:
            if utt in found_in:
                raise CorpusLayoutError(f"utterance {utt} is in both {found_in[utt]} and {part}")
            found_in[utt] = part
        for name, mapping in mappings.items():
            merged.setdefault(name, {}).update(mapping)
    if not found_in:
        raise CorpusLayoutError(f"--librilight-10h: no utterance in the folders of {LIBRILIGHT_DIR}/")
    return write_prepared_dir(Path(out_dir) / "train_10h", validate=validate, **merged)


def prepare_with_librilight(args) -> List[Path]:
    """The LibriSpeech subsets, then (``--librilight-10h``) ``train_10h``; Libri-Light's layout is checked first."""
    librilight_root = args.librilight_root or args.corpus_root
    if args.librilight_10h:
        librilight_10h_parts(librilight_root)  # a partial Libri-Light fails before the long part
    written = prepare_librispeech(args.corpus_root, args.out, args.subsets, validate=not args.skip_validation,
                                  train_960=args.train_960, drop_incomplete=args.drop_incomplete)
    if args.librilight_10h:
        written.append(prepare_librilight_10h(librilight_root, args.out, validate=not args.skip_validation,
                                              drop_incomplete=args.drop_incomplete))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = data_prep_parser(__doc__, drop_incomplete=True)
    parser.add_argument("--subsets", nargs="+", default=None,
                        help=f"subsets to prepare, each required (default: {' '.join(DEFAULT_SUBSETS)}, of which "
                             f"{' '.join(REQUIRED_SUBSETS)} are required)")
    parser.add_argument("--train-960", action="store_true",
                        help="also prepare train-clean-360 and train-other-500 and combine the three "
                             "training subsets into data/train_960 (then: -- --train_split train_960; "
                             "run_all.sh --librispeech_train 960 does both)")
    parser.add_argument("--librilight-10h", action="store_true",
                        help="also prepare Libri-Light's 10 h training set (librispeech_finetuning/: 1h/ and 9h/) "
                             "into data/train_10h (then: -- --overrides_file conf/librilight_10h.yaml)")
    parser.add_argument("--librilight-root", type=Path, default=None,
                        help="folder holding librispeech_finetuning/ (default: --corpus-root)")
    return run_data_prep(parser, prepare_with_librilight, argv)


if __name__ == "__main__":
    raise SystemExit(main())
