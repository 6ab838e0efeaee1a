#!/usr/bin/env python3
"""LibriSpeech -> Kaldi data dirs (wav.scp, text, utt2spk, spk2utt, utt2num_samples).

Reads ``<corpus-root>/LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<NNNN>.flac`` and
the chapter transcripts ``<spk>-<chapter>.trans.txt`` (lines ``<utt-id> UPPERCASE TEXT``).
Writes ``<out>/<subset with _ for ->`` (e.g. ``data/train_clean_100``). Utterance ids are the
corpus ids; they start with the speaker id, so utt2spk and spk2utt sort consistently.
Absent subsets are skipped with a log line; audio without transcript (and the reverse) is
dropped with a logged count.

Usage:
    python local/data_prep.py --corpus-root /corpora --out data
    python local/data_prep.py --corpus-root /corpora/LibriSpeech --subsets dev-clean test-clean
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from elp.data.kaldi_dir import read_mapping
from elp.data.prep import (CorpusLayoutError, audio_path, data_prep_parser, find_corpus_dir,
                           log_skipped, run_data_prep, write_prepared_dir)

logger = logging.getLogger("librispeech.data_prep")

DEFAULT_SUBSETS = ("train-clean-100", "dev-clean", "test-clean", "test-other")


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
                        validate: bool = True) -> List[Path]:
    """Write one data dir per present subset; returns their paths.

    Arguments
    ---------
    corpus_root : Path
        ``LibriSpeech/`` or its parent.
    out_dir : Path
        Parent of the data dirs (``data``).
    subsets : sequence of str
        Subset names as in the corpus (``dev-clean``); absent ones are skipped (logged).
    validate : bool
        Validate each dir (reads every audio header, writes utt2num_samples).
    """
    librispeech = find_corpus_dir(corpus_root, "LibriSpeech")
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
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = data_prep_parser(__doc__)
    parser.add_argument("--subsets", nargs="+", default=list(DEFAULT_SUBSETS),
                        help=f"subsets to prepare (default: {' '.join(DEFAULT_SUBSETS)})")
    return run_data_prep(parser, lambda args: prepare_librispeech(
        args.corpus_root, args.out, args.subsets, validate=not args.skip_validation), argv)


if __name__ == "__main__":
    raise SystemExit(main())
