#!/usr/bin/env python3
"""LibriSpeech -> Kaldi data dirs (wav.scp, text, utt2spk, spk2utt, utt2num_samples).

Reads ``<corpus-root>/LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<NNNN>.flac`` and
the chapter transcripts ``<spk>-<chapter>.trans.txt`` (lines ``<utt-id> UPPERCASE TEXT``).
Writes ``<out>/<subset with _ for ->`` (e.g. ``data/train_clean_100``). Utterance ids are the
corpus ids; they start with the speaker id, so utt2spk and spk2utt sort consistently.
Absent subsets are skipped with a log line; audio without transcript (and the reverse) is
dropped with a logged count.

Usage:
    python local/data_prep.py --corpus-root /corpora --out data [--train-960]
    python local/data_prep.py --corpus-root /corpora/LibriSpeech --subsets dev-clean test-clean
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from elp.data.kaldi_dir import combine_data_dirs, read_data_dir, read_mapping
from elp.data.prep import (CorpusLayoutError, audio_path, data_prep_parser, find_corpus_dir,
                           log_skipped, run_data_prep, write_prepared_dir)

logger = logging.getLogger("librispeech.data_prep")

DEFAULT_SUBSETS = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")
#: the 960 h training set: every training subset, combined into ``train_960``
TRAIN_960 = ("train-clean-100", "train-clean-360", "train-other-500")


def read_subset(subset_dir: Path) -> Dict[str, Dict[str, str]]:
    """wav_scp / text / utt2spk of one subset folder (utterances with audio AND transcript)."""
    wav_scp: Dict[str, str] = {}
    for flac in sorted(subset_dir.glob("*/*/*.flac")):
        wav_scp[flac.stem] = audio_path(flac)
    text: Dict[str, str] = {}
    for trans in sorted(subset_dir.glob("*/*/*.trans.txt")):
        text.update(read_mapping(trans))
    log_skipped(f"{subset_dir.name}: audio without a transcript line, dropped", sorted(set(wav_scp) - set(text)))
    log_skipped(f"{subset_dir.name}: transcript lines without audio, dropped", sorted(set(text) - set(wav_scp)))
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


def prepare_librispeech(corpus_root: Path, out_dir: Path, subsets: Sequence[str] = DEFAULT_SUBSETS,
                        validate: bool = True, train_960: bool = False) -> List[Path]:
    """Write one data dir per present subset; returns their paths.

    Parameters
    ----------
    corpus_root
        ``LibriSpeech/`` or its parent.
    out_dir
        Parent of the data dirs (``data``).
    subsets
        Subset names as in the corpus (``dev-clean``); absent ones are skipped (logged).
    validate
        Validate each dir (reads every audio header, writes utt2num_samples).
    train_960
        Also prepare the three training subsets and combine them into ``train_960``
        (all must be present).
    """
    librispeech = find_corpus_dir(corpus_root, "LibriSpeech")
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
        mappings = read_subset(subset_dir)
        written.append(write_prepared_dir(Path(out_dir) / subset.replace("-", "_"), validate=validate, **mappings))
    if not written:
        raise CorpusLayoutError(f"none of the subsets {list(subsets)} found in {librispeech}")
    if train_960:
        parts = [read_data_dir(Path(out_dir) / s.replace("-", "_")) for s in TRAIN_960]
        combined = combine_data_dirs(parts)
        written.append(write_prepared_dir(Path(out_dir) / "train_960", validate=validate, **combined.mappings()))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = data_prep_parser(__doc__)
    parser.add_argument("--subsets", nargs="+", default=list(DEFAULT_SUBSETS),
                        help=f"subsets to prepare (default: {' '.join(DEFAULT_SUBSETS)})")
    parser.add_argument("--train-960", action="store_true",
                        help="also prepare train-clean-360 and train-other-500 and combine the three "
                             "training subsets into data/train_960 (then: -- --train_set data/train_960)")
    return run_data_prep(parser, lambda args: prepare_librispeech(
        args.corpus_root, args.out, args.subsets, validate=not args.skip_validation,
        train_960=args.train_960), argv)


if __name__ == "__main__":
    raise SystemExit(main())
