#!/usr/bin/env python3
"""SLURP -> Kaldi data dirs for intent classification (data/{train,devel,test}).

Reads ``<corpus-root>/dataset/slurp/{train,devel,test}.jsonl`` (one JSON object per line:
slurp_id, sentence, intent, recordings: [{file: ...}], ...) and the audio under
``slurp_real/`` (``slurp_synth/`` for ``train_synthetic.jsonl``), found either directly in
the corpus root or in its ``audio/`` folder (where the SLURP download script puts them).

* One utterance per recording: utt id ``<slurp_id>-<file stem>``, e.g.
  ``13804-audio-1434542201-headset``. A file listed twice in a split is used once (logged).
* ``text``: the ``sentence``; ``utt2label``: the ``intent`` (scenario_action).
* ``utt2spk``: the jsonl files carry no speaker. If ``dataset/slurp/metadata.json`` exists,
  its per-recording ``usrid`` is the speaker; otherwise each utterance is its own speaker
  (``<utt> <utt>``, the Kaldi convention for unknown speakers).
* Recordings whose audio file is absent are counted and logged; a split where ALL are absent
  is an error (the audio was not downloaded or --audio-root is wrong).
* ``--add-synthetic`` appends ``train_synthetic.jsonl`` (audio in ``slurp_synth/``) to train.

Usage:
    python local/data_prep.py --corpus-root /corpora/slurp --out data
    python local/data_prep.py --corpus-root /corpora/slurp --splits devel test
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from elp.data.prep import (CorpusLayoutError, audio_path, data_prep_parser, log_skipped,
                           run_data_prep, write_prepared_dir)

logger = logging.getLogger("slurp.data_prep")

SPLITS = ("train", "devel", "test")
SYNTHETIC_SPLIT = "train_synthetic"


def read_jsonl(path: Path) -> List[dict]:
    """The JSON objects of a ``.jsonl`` file (errors name the line)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                for key in ("slurp_id", "sentence", "intent", "recordings"):
                    record[key]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise CorpusLayoutError(f"{path}:{number}: not a SLURP record ({error!r})") from None
            records.append(record)
    return records


def read_speakers(metadata_path: Path) -> Dict[str, str]:
    """Recording file name -> ``usrid`` from ``metadata.json`` (empty if the file is absent)."""
    if not metadata_path.is_file():
        logger.info("%s not found: each utterance is its own speaker", metadata_path)
        return {}
    with open(metadata_path, encoding="utf-8") as handle:
        metadata = json.load(handle)
    speakers = {}
    for record in metadata.values():
        for file_name, info in record.get("recordings", {}).items():
            if info.get("usrid"):
                speakers[file_name] = "".join(str(info["usrid"]).split())
    return speakers


def find_audio_dir(corpus_root: Path, name: str, audio_root: Optional[Path] = None) -> Path:
    """``slurp_real``/``slurp_synth`` under ``audio_root``, the corpus root or ``<root>/audio``."""
    candidates = [audio_root / name] if audio_root else [corpus_root / name, corpus_root / "audio" / name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise CorpusLayoutError(f"audio folder {name}/ not found (looked in {', '.join(map(str, candidates))}); "
                            "run SLURP's scripts/download_audio.sh or pass --audio-root")


def read_split(records: List[dict], audio_dir: Path, speakers: Dict[str, str], split: str) -> Dict[str, Dict[str, str]]:
    """wav_scp / text / utt2label / utt2spk of one split's records."""
    wav_scp, text, utt2label, utt2spk = {}, {}, {}, {}
    absent, repeated, seen = [], [], set()
    for record in records:
        for recording in record["recordings"]:
            file_name = recording["file"]
            if file_name in seen:
                repeated.append(file_name)
                continue
            seen.add(file_name)
            path = audio_dir / file_name
            if not path.is_file():
                absent.append(file_name)
                continue
            utt = f"{record['slurp_id']}-{Path(file_name).stem}"
            wav_scp[utt] = audio_path(path)
            text[utt] = " ".join(record["sentence"].split())
            utt2label[utt] = record["intent"]
            utt2spk[utt] = speakers.get(file_name, utt)
    log_skipped(f"{split}: recordings listed more than once, used once", repeated)
    log_skipped(f"{split}: recordings whose audio is absent from {audio_dir}, skipped", absent)
    if not wav_scp:
        raise CorpusLayoutError(f"{split}: none of the {len(absent)} listed recordings exists in {audio_dir}")
    return {"wav_scp": wav_scp, "text": text, "utt2label": utt2label, "utt2spk": utt2spk}


def prepare_slurp(corpus_root: Path, out_dir: Path, splits: Sequence[str] = SPLITS, add_synthetic: bool = False,
                  audio_root: Optional[Path] = None, validate: bool = True) -> List[Path]:
    """Write ``<out>/<split>`` for every present split; returns their paths.

    Parameters
    ----------
    corpus_root
        The SLURP checkout (holding ``dataset/slurp/``).
    out_dir
        Parent of the data dirs.
    splits
        jsonl names to prepare; absent ones are skipped (logged).
    add_synthetic
        Append ``train_synthetic.jsonl`` (``slurp_synth/`` audio) to ``train``.
    audio_root
        Folder holding ``slurp_real/`` and ``slurp_synth/`` if not the corpus root or its ``audio/``.
    """
    corpus_root = Path(corpus_root)
    annotations = corpus_root / "dataset" / "slurp"
    if not annotations.is_dir():
        raise CorpusLayoutError(f"{annotations} not found: --corpus-root must be the SLURP checkout")
    speakers = read_speakers(annotations / "metadata.json")
    written = []
    for split in splits:
        jsonl = annotations / f"{split}.jsonl"
        if not jsonl.is_file():
            logger.info("split %s: %s not found, skipped", split, jsonl)
            continue
        mappings = read_split(read_jsonl(jsonl), find_audio_dir(corpus_root, "slurp_real", audio_root), speakers, split)
        if split == "train" and add_synthetic:
            synthetic = read_split(read_jsonl(annotations / f"{SYNTHETIC_SPLIT}.jsonl"),
                                   find_audio_dir(corpus_root, "slurp_synth", audio_root), speakers, SYNTHETIC_SPLIT)
            for name, mapping in synthetic.items():
                mappings[name].update(mapping)
        written.append(write_prepared_dir(Path(out_dir) / split, validate=validate, **mappings))
    if not written:
        raise CorpusLayoutError(f"none of {[f'{s}.jsonl' for s in splits]} found in {annotations}")
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = data_prep_parser(__doc__)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="jsonl splits (default: train devel test)")
    parser.add_argument("--add-synthetic", action="store_true", help="append train_synthetic.jsonl to train")
    parser.add_argument("--audio-root", type=Path, default=None, help="folder holding slurp_real/ and slurp_synth/")
    return run_data_prep(parser, lambda args: prepare_slurp(
        args.corpus_root, args.out, args.splits, args.add_synthetic, args.audio_root,
        validate=not args.skip_validation), argv)


if __name__ == "__main__":
    raise SystemExit(main())
