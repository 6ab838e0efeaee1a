#!/usr/bin/env python3
"""VoxCeleb1 -> Kaldi data dirs for speaker verification (data/train, data/test + trials).

Reads ``<corpus-root>/wav/<idNNNNN>/<youtube-id>/<NNNNN>.wav`` (dev and test parts merged
under one ``wav/``) and the trial list ``veri_test2.txt`` (cleaned VoxCeleb1-O; lines
``<1|0> <enroll path> <test path>``, paths relative to ``wav/``).

* Utterance id: ``<spk>-<youtube-id>-<NNNNN>`` (starts with the speaker id).
* ``data/train``: every utterance of the speakers that do NOT appear in the trial list (the
  dev part).
* ``data/test``: the utterances the trial list names, with ``trials`` lines
  ``<enroll-utt> <test-utt> target|nontarget``. Other utterances of test speakers are not
  used (logged with a count).

Usage:
    python local/data_prep.py --corpus-root /corpora/voxceleb1 --out data
    python local/data_prep.py --corpus-root /corpora/voxceleb1 --trial-list meta/veri_test2.txt
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from elp.data.kaldi_dir import Trial
from elp.data.prep import (CorpusLayoutError, audio_path, data_prep_parser, evenly_spaced_holdout,
                           log_skipped, run_data_prep, write_prepared_dir)

logger = logging.getLogger("voxceleb.data_prep")

TRIAL_LIST_NAME = "veri_test2.txt"
TRIAL_LIST_URL = "https://mm.kaist.ac.kr/datasets/voxceleb/meta/veri_test2.txt"


def utt_id(relative_path: str) -> str:
    """``id10270/5r0dWxy17C8/00001.wav`` -> ``id10270-5r0dWxy17C8-00001``."""
    parts = Path(relative_path).with_suffix("").parts
    if len(parts) != 3:
        raise CorpusLayoutError(f"expected <spk>/<youtube-id>/<NNNNN>.wav, got {relative_path!r}")
    return "-".join(parts)


def find_wavs(wav_dir: Path) -> Dict[str, Path]:
    """utt id -> wav path of every ``<spk>/<youtube-id>/<NNNNN>.wav`` under ``wav_dir``."""
    return {utt_id(str(p.relative_to(wav_dir))): p for p in sorted(wav_dir.glob("*/*/*.wav"))}


def read_trial_list(path: Path) -> List[Tuple[bool, str, str]]:
    """Lines ``<1|0> <enroll path> <test path>`` -> ``(target, enroll path, test path)``."""
    trials = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1"):
                raise CorpusLayoutError(
                    f"{path}:{number}: expected '<1|0> <enroll path> <test path>', got {line.strip()!r}")
            trials.append((parts[0] == "1", parts[1], parts[2]))
    if not trials:
        raise CorpusLayoutError(f"{path}: the trial list is empty")
    return trials


def prepare_voxceleb(corpus_root: Path, out_dir: Path, trial_list: Optional[Path] = None,
                     validate: bool = True, holdout: float = 0.1) -> List[Path]:
    """Write ``<out>/train``, ``<out>/valid`` (held-out utterances of the training speakers)
    and ``<out>/test`` (with ``trials``); returns the three paths.

    Parameters
    ----------
    corpus_root
        Folder holding ``wav/`` (and, by default, ``veri_test2.txt``).
    out_dir
        Parent of the data dirs.
    trial_list
        The trial list; default ``<corpus_root>/veri_test2.txt``.
    validate
        Validate each dir (reads every audio header, writes utt2num_samples).
    """
    corpus_root = Path(corpus_root)
    wav_dir = corpus_root / "wav"
    trial_list = Path(trial_list) if trial_list else corpus_root / TRIAL_LIST_NAME
    if not wav_dir.is_dir():
        raise CorpusLayoutError(f"{wav_dir} not found: --corpus-root must hold wav/<idNNNNN>/<youtube-id>/<NNNNN>.wav")
    if not trial_list.is_file():
        raise CorpusLayoutError(
            f"trial list {trial_list} not found: download {TRIAL_LIST_NAME} (cleaned VoxCeleb1-O, "
            f"e.g. {TRIAL_LIST_URL}) into {corpus_root} or pass --trial-list"
        )
    wavs = find_wavs(wav_dir)
    if not wavs:
        raise CorpusLayoutError(f"no <spk>/<youtube-id>/<NNNNN>.wav under {wav_dir}")
    trials = [Trial(utt_id(enroll), utt_id(test), target) for target, enroll, test in read_trial_list(trial_list)]
    test_utts = sorted({u for t in trials for u in (t.enroll, t.test)})
    missing = [u for u in test_utts if u not in wavs]
    if missing:
        raise CorpusLayoutError(
            f"{trial_list} names {len(missing)} utterance(s) without audio under {wav_dir}, e.g. "
            f"{missing[:3]}: complete the download of the test part (vox1_test_wav)"
        )
    test_speakers = {u.split("-")[0] for u in test_utts}
    train_utts = [u for u in wavs if u.split("-")[0] not in test_speakers]
    log_skipped("utterances of trial-list speakers not named in any trial (unused)",
                sorted(u for u in wavs if u.split("-")[0] in test_speakers and u not in set(test_utts)),
                level=logging.INFO)
    if not train_utts:
        raise CorpusLayoutError(f"every speaker under {wav_dir} appears in {trial_list}: no training speakers")

    def mappings(utts):
        return {"wav_scp": {u: audio_path(wavs[u]) for u in utts}, "utt2spk": {u: u.split("-")[0] for u in utts}}

    # every training speaker's held-out utterances are the validation set (speaker
    # identification accuracy selects the best checkpoint); the rest trains
    by_speaker: dict = {}
    for utt in sorted(train_utts):
        by_speaker.setdefault(utt.split("-")[0], []).append(utt)
    valid_utts = sorted(u for utts in by_speaker.values() for u in evenly_spaced_holdout(utts, holdout))
    if not valid_utts:
        raise CorpusLayoutError(f"--holdout {holdout} leaves no validation utterance; raise it")
    train_utts = sorted(set(train_utts) - set(valid_utts))
    out_dir = Path(out_dir)
    return [
        write_prepared_dir(out_dir / "train", validate=validate, **mappings(train_utts)),
        write_prepared_dir(out_dir / "valid", validate=validate, **mappings(valid_utts)),
        write_prepared_dir(out_dir / "test", validate=validate, trials=trials, **mappings(test_utts)),
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = data_prep_parser(__doc__)
    parser.add_argument("--trial-list", type=Path, default=None,
                        help=f"trial list (default: <corpus-root>/{TRIAL_LIST_NAME})")
    parser.add_argument("--holdout", type=float, default=0.1,
                        help="fraction of every training speaker's utterances held out for validation")
    return run_data_prep(parser, lambda args: prepare_voxceleb(
        args.corpus_root, args.out, args.trial_list, validate=not args.skip_validation,
        holdout=args.holdout), argv)


if __name__ == "__main__":
    raise SystemExit(main())
