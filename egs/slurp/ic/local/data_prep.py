#!/usr/bin/env python3
"""SLURP -> Kaldi data dirs for intent classification (data/{train,devel,test}).

Reads ``<corpus-root>/dataset/slurp/{train,devel,test}.jsonl`` (one JSON object per line:
slurp_id, sentence, intent, recordings: [{file: ...}], ...) and the audio under
``slurp_real/`` (``slurp_synth/`` for ``train_synthetic.jsonl``), found either directly in
the corpus root or in its ``audio/`` folder (where the SLURP download script puts them).

* One utterance per recording: utt id ``<slurp_id>-<file stem>``, e.g.
  ``13804-audio-1434542201-headset``. A file listed twice in a split is used once (logged).
* ``text``: the ``sentence``; ``utt2label``: the ``intent`` (scenario_action);
  ``utt2scenario``: the ``scenario``, a second classification task on the same audio
  (``label_file: utt2scenario``); not written for a split where a record lacks the field (logged).
* ``utt2spk``: the jsonl files carry no speaker. If ``dataset/slurp/metadata.json`` exists,
  its per-recording ``usrid`` is the speaker; otherwise each utterance is its own speaker
  (``<utt> <utt>``, the Kaldi convention for unknown speakers).
* A partial corpus fails here, naming what is missing: a split of ``--splits`` (default all
  three, the recipe's train/valid/test sets), ``slurp_real/``, or more than
  :data:`TOLERATED_ABSENT` of a split's listed recordings (SLURP's own lists name a few files
  its audio download lacks: those are logged and skipped). ``--drop-incomplete`` skips any
  number of absent recordings (logged); a split where ALL are absent is always an error (the
  audio was not downloaded or --audio-root is wrong).
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

from elp.data.prep import (CorpusLayoutError, audio_path, check_complete, data_prep_parser, log_skipped,
                           require_parts, run_data_prep, write_prepared_dir)

logger = logging.getLogger("slurp.data_prep")

SPLITS = ("train", "devel", "test")
SYNTHETIC_SPLIT = "train_synthetic"
TOLERATED_ABSENT = 0.001
"""Share of a split's listed recordings that may lack audio without failing (logged instead)."""


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


def read_split(records: List[dict], audio_dir: Path, speakers: Dict[str, str], split: str,
               drop_incomplete: bool = False) -> Dict[str, Dict[str, str]]:
    """wav_scp / text / utt2label / utt2spk / label_files (utt2scenario) of one split's records.

    More than :data:`TOLERATED_ABSENT` of the listed recordings without audio is an error
    unless ``drop_incomplete`` (then they are skipped and logged, as the tolerated few are).
    """
    wav_scp, text, utt2label, utt2scenario, utt2spk = {}, {}, {}, {}, {}
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
            utt2scenario[utt] = record.get("scenario")
            utt2spk[utt] = speakers.get(file_name, utt)
    log_skipped(f"{split}: recordings listed more than once, used once", repeated)
    if not wav_scp:
        raise CorpusLayoutError(f"{split}: none of the {len(absent)} listed recordings exists in {audio_dir}")
    check_complete(f"{split}: recordings whose audio is absent from {audio_dir}", absent,
                   "download the audio again (SLURP's scripts/download_audio.sh)", drop_incomplete,
                   total=len(seen), tolerated_share=TOLERATED_ABSENT)
    label_files = {}
    if all(utt2scenario.values()):
        label_files["utt2scenario"] = utt2scenario
    else:
        logger.warning("%s: %d of %d records have no scenario: utt2scenario is not written", split,
                       sum(1 for record in records if not record.get("scenario")), len(records))
    return {"wav_scp": wav_scp, "text": text, "utt2label": utt2label, "utt2spk": utt2spk, "label_files": label_files}


def prepare_slurp(corpus_root: Path, out_dir: Path, splits: Sequence[str] = SPLITS, add_synthetic: bool = False,
                  audio_root: Optional[Path] = None, validate: bool = True,
                  drop_incomplete: bool = False) -> List[Path]:
    """Write ``<out>/<split>`` for every split; returns their paths.

    Parameters
    ----------
    corpus_root
        The SLURP checkout (holding ``dataset/slurp/``).
    out_dir
        Parent of the data dirs.
    splits
        jsonl names to prepare, each required.
    add_synthetic
        Append ``train_synthetic.jsonl`` (``slurp_synth/`` audio) to ``train``.
    audio_root
        Folder holding ``slurp_real/`` and ``slurp_synth/`` if not the corpus root or its ``audio/``.
    drop_incomplete
        Skip (logged) any number of listed recordings without audio instead of failing.
    """
    corpus_root = Path(corpus_root)
    annotations = corpus_root / "dataset" / "slurp"
    if not annotations.is_dir():
        raise CorpusLayoutError(f"{annotations} not found: --corpus-root must be the SLURP checkout")
    require_parts(annotations, [f"{split}.jsonl" for split in splits]
                  + ([f"{SYNTHETIC_SPLIT}.jsonl"] if add_synthetic and "train" in splits else []),
                  "check out the whole SLURP repository, or name the splits you have with --splits "
                  "(run.sh: --prep_opts '--splits devel test')")
    real_audio = find_audio_dir(corpus_root, "slurp_real", audio_root)
    speakers = read_speakers(annotations / "metadata.json")
    written = []
    for split in splits:
        jsonl = annotations / f"{split}.jsonl"
        mappings = read_split(read_jsonl(jsonl), real_audio, speakers, split, drop_incomplete)
        if split == "train" and add_synthetic:
            synthetic = read_split(read_jsonl(annotations / f"{SYNTHETIC_SPLIT}.jsonl"),
                                   find_audio_dir(corpus_root, "slurp_synth", audio_root), speakers, SYNTHETIC_SPLIT,
                                   drop_incomplete)
            synthetic_labels = synthetic.pop("label_files")
            mappings["label_files"] = {name: {**mapping, **synthetic_labels[name]}
                                       for name, mapping in mappings["label_files"].items()
                                       if name in synthetic_labels}
            for name, mapping in synthetic.items():
                mappings[name].update(mapping)
        written.append(write_prepared_dir(Path(out_dir) / split, validate=validate, **mappings))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = data_prep_parser(__doc__, drop_incomplete=True)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS),
                        help="jsonl splits, each required (default: train devel test)")
    parser.add_argument("--add-synthetic", action="store_true", help="append train_synthetic.jsonl to train")
    parser.add_argument("--audio-root", type=Path, default=None, help="folder holding slurp_real/ and slurp_synth/")
    return run_data_prep(parser, lambda args: prepare_slurp(
        args.corpus_root, args.out, args.splits, args.add_synthetic, args.audio_root,
        validate=not args.skip_validation, drop_incomplete=args.drop_incomplete), argv)


if __name__ == "__main__":
    raise SystemExit(main())
