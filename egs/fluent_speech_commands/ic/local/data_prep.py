#!/usr/bin/env python3
"""Fluent Speech Commands -> Kaldi data dirs for intent classification (data/{train,valid,test}).

Reads the corpus as downloaded (``fluent_speech_commands_dataset``):
``data/{train,valid,test}_data.csv`` with the header ``,path,speakerId,transcription,action,
object,location`` (an unnamed row index first) and the audio ``wavs/speakers/<speakerId>/
<name>.wav`` (16 kHz mono), each CSV ``path`` relative to the dataset folder.
``--corpus-root`` is that folder, or its parent when it holds ``fluent_speech_commands_dataset``.

* Intent (``utt2label``): the three slots joined by ``|``, spaces inside a slot value replaced
  by ``_``: ``activate|lights|kitchen``, ``change_language|Chinese|none`` (31 intents in the
  real corpus). ``text``: the transcription; ``utt2spk``: the ``speakerId``.
* Utterance ids: ``<speakerId>-<file stem>``, so utterances sort with their speaker.
* The three CSV files and ``wavs/`` must all be there: a partial corpus is an error naming what
  is missing, as is a row whose audio file is absent (``--skip-absent-audio`` drops such rows
  instead, with a logged count). A file listed twice in one CSV is used once (logged).

Usage:
    python local/data_prep.py --corpus-root /corpora/fluent_speech_commands_dataset --out data
"""
from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from elp.data.prep import (CorpusLayoutError, audio_path, data_prep_parser, log_skipped,
                           run_data_prep, write_prepared_dir)

logger = logging.getLogger("fluent_speech_commands.data_prep")

CORPUS_NAME = "fluent_speech_commands_dataset"
SPLITS = ("train", "valid", "test")
COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")
"""The named CSV columns read (the unnamed index column is not)."""
SLOTS = ("action", "object", "location")


def find_root(corpus_root: Path) -> Path:
    """The dataset folder: ``corpus_root`` when it holds ``data/``, else its ``fluent_speech_commands_dataset``."""
    corpus_root = Path(corpus_root)
    if not (corpus_root / "data").is_dir() and (corpus_root / CORPUS_NAME).is_dir():
        return corpus_root / CORPUS_NAME
    return corpus_root


def check_layout(root: Path) -> None:
    """Raise naming everything of the corpus that is missing (CSV files, ``wavs/speakers/``)."""
    missing = [f"data/{split}_data.csv" for split in SPLITS if not (root / "data" / f"{split}_data.csv").is_file()]
    if not (root / "wavs" / "speakers").is_dir():
        missing.append("wavs/speakers/")
    if missing:
        raise CorpusLayoutError(f"{root} is not a complete Fluent Speech Commands folder: {', '.join(missing)} "
                                f"missing (--corpus-root must be the unpacked {CORPUS_NAME})")


def intent_label(action: str, obj: str, location: str) -> str:
    """The intent of a row: its three slots joined by ``|`` (spaces in a value become ``_``).

    Examples
    --------
    >>> intent_label("change language", "Chinese", "none")
    'change_language|Chinese|none'
    """
    return "|".join("_".join(value.split()) for value in (action, obj, location))


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of one split's CSV file (errors name the file and the line)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        absent = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if absent:
            raise CorpusLayoutError(f"{path}: columns {', '.join(absent)} missing from the header "
                                    f"(expected ,{','.join(COLUMNS)})")
        rows = []
        for row in reader:
            empty = [column for column in COLUMNS if not (row.get(column) or "").strip()]
            if empty:
                raise CorpusLayoutError(f"{path}:{reader.line_num}: empty {', '.join(empty)}")
            rows.append(row)
    if not rows:
        raise CorpusLayoutError(f"{path}: no rows")
    return rows


def read_split(root: Path, split: str, skip_absent_audio: bool = False) -> dict[str, dict[str, str]]:
    """wav_scp / text / utt2label / utt2spk of one split."""
    csv_path = root / "data" / f"{split}_data.csv"
    wav_scp, text, utt2label, utt2spk = {}, {}, {}, {}
    absent, repeated = [], []
    for row in read_csv(csv_path):
        relative = row["path"].strip()
        wav = root / relative
        speaker = row["speakerId"].strip()
        utt = f"{speaker}-{Path(relative).stem}"
        if utt in wav_scp:
            repeated.append(relative)
            continue
        if not wav.is_file():
            absent.append(relative)
            continue
        wav_scp[utt] = audio_path(wav)
        text[utt] = " ".join(row["transcription"].split())
        utt2label[utt] = intent_label(*(row[slot] for slot in SLOTS))
        utt2spk[utt] = speaker
    log_skipped(f"{split}: files listed more than once in {csv_path.name}, used once", repeated)
    if absent and not skip_absent_audio:
        raise CorpusLayoutError(f"{split}: {len(absent)} audio files listed in {csv_path} are missing under {root} "
                                f"(e.g. {absent[0]}); unpack the corpus again, or pass --skip-absent-audio")
    log_skipped(f"{split}: rows whose audio is absent from {root}, skipped", absent)
    if not wav_scp:
        raise CorpusLayoutError(f"{split}: none of the {len(absent)} files listed in {csv_path} exists")
    return {"wav_scp": wav_scp, "text": text, "utt2label": utt2label, "utt2spk": utt2spk}


def prepare_fluent_speech_commands(corpus_root: Path, out_dir: Path, skip_absent_audio: bool = False,
                                   validate: bool = True) -> list[Path]:
    """Write ``<out>/{train,valid,test}``; returns their paths.

    Parameters
    ----------
    corpus_root
        ``fluent_speech_commands_dataset`` or its parent.
    out_dir
        Parent of the data dirs.
    skip_absent_audio
        Drop (and count in the log) rows whose audio file is absent instead of stopping.
    validate
        Validate each dir (reads every audio header, writes utt2num_samples).
    """
    root = find_root(corpus_root)
    check_layout(root)
    splits = {split: read_split(root, split, skip_absent_audio) for split in SPLITS}
    return [write_prepared_dir(Path(out_dir) / split, validate=validate, **mappings)
            for split, mappings in splits.items()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = data_prep_parser(__doc__)
    parser.add_argument("--skip-absent-audio", action="store_true",
                        help="drop rows whose audio file is absent (logged) instead of stopping")
    return run_data_prep(parser, lambda args: prepare_fluent_speech_commands(
        args.corpus_root, args.out, args.skip_absent_audio, validate=not args.skip_validation), argv)


if __name__ == "__main__":
    raise SystemExit(main())
