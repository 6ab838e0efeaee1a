#!/usr/bin/env python3
"""IEMOCAP -> Kaldi data dirs for 4-class emotion recognition, per session and per fold.

Reads ``<corpus-root>/IEMOCAP_full_release/Session{1..5}/sentences/wav/<dialog>/<utt>.wav``
and the labels ``Session{n}/dialog/EmoEvaluation/<dialog>.txt`` (only lines starting with
``[``: ``[<start> - <end>]<TAB><utt><TAB><emo><TAB>[v, a, d]``).

* Classes: neu, ang, sad, hap, with exc merged into hap (the usual 4-class setup). Every
  other label (fru, sur, fea, dis, oth, xxx) is dropped with a logged count per label.
* Speaker: session + the gender letter of the last name group, e.g.
  ``Ses01F_impro01_M000`` -> ``Ses01M`` (each session has one female and one male actor).
  Utterance ids are the corpus names (so they do not start with the speaker id).
* ``<out>/session{n}``: wav.scp, utt2spk, spk2utt, utt2label (+ utt2num_samples).
* ``<out>/fold{k}/{train,dev,test}``: leave-one-session-out; test = session k, train = the
  other sessions minus dev; dev = a deterministic 10% of them, stratified by label: within
  each label, the sorted utterance ids at positions 9, 19, 29, ... (``--dev-fraction``).
* A partial corpus fails here, naming what is missing: a session of ``--sessions`` (default
  all five), a session's ``sentences/wav`` or ``dialog/EmoEvaluation``, a wav without a label
  line or a label line without its wav (``--drop-incomplete`` drops those instead, logged).

Usage:
    python local/data_prep.py --corpus-root /corpora --out data
    python local/data_prep.py --corpus-root /corpora/IEMOCAP_full_release --folds 1
"""
from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from elp.data.kaldi_dir import (combine_data_dirs, read_data_dir, subset_data_dir,
                                validate_data_dir, write_data_dir)
from elp.data.prep import (CorpusLayoutError, audio_path, check_complete, data_prep_parser,
                           evenly_spaced_holdout, find_corpus_dir, log_counts, require_parts,
                           run_data_prep, write_prepared_dir)

logger = logging.getLogger("iemocap.data_prep")

EMOTION_CLASSES = {"neu": "neu", "ang": "ang", "sad": "sad", "hap": "hap", "exc": "hap"}
"""Corpus label -> class; labels not listed are dropped (logged)."""

SESSIONS = (1, 2, 3, 4, 5)
_LABEL_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(?P<utt>\S+)\s+(?P<emo>\S+)")
_UTT_NAME = re.compile(r"^(?P<session>Ses\d\d)[FM]_.+_(?P<gender>[FM])\d+$")


def parse_emo_evaluation(path: Path) -> Dict[str, str]:
    """utt -> corpus emotion label from one ``EmoEvaluation/<dialog>.txt``.

    Only lines starting with ``[`` carry the consensus label; the evaluator lines
    (``C-E2: ...``, ``A-E3: ...``) and the header are ignored.
    """
    labels = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.startswith("["):
                continue
            match = _LABEL_LINE.match(line)
            if match is None:
                raise CorpusLayoutError(f"{path}:{number}: expected "
                                        f"'[<start> - <end>]\\t<utt>\\t<emo>\\t[v, a, d]', got {line.strip()!r}")
            labels[match.group("utt")] = match.group("emo")
    return labels


def speaker_of(utt: str) -> str:
    """``Ses01F_impro01_M000`` -> ``Ses01M``: session + gender letter of the last name group."""
    match = _UTT_NAME.match(utt)
    if match is None:
        raise CorpusLayoutError(
            f"unexpected IEMOCAP utterance name {utt!r} (expected Ses<NN><F|M>_<dialog>_<F|M><NNN>)")
    return match.group("session") + match.group("gender")


def read_session(session_dir: Path, drop_incomplete: bool = False) -> Dict[str, Dict[str, str]]:
    """wav_scp / utt2spk / utt2label of one ``Session{n}`` folder (4 classes only).

    ``drop_incomplete`` False: a wav without a label line (or the reverse) is an error;
    True: they are dropped and logged.
    """
    require_parts(session_dir, ["sentences/wav", "dialog/EmoEvaluation"],
                  "extract the session again from IEMOCAP_full_release")
    wavs = {p.stem: p for p in sorted(session_dir.glob("sentences/wav/*/*.wav")) if not p.name.startswith("._")}
    labels: Dict[str, str] = {}
    for path in sorted(session_dir.glob("dialog/EmoEvaluation/*.txt")):
        if not path.name.startswith("._"):  # macOS resource forks shipped in some copies
            labels.update(parse_emo_evaluation(path))
    if not wavs or not labels:
        raise CorpusLayoutError(f"{session_dir}: expected sentences/wav/<dialog>/<utt>.wav "
                                "and dialog/EmoEvaluation/<dialog>.txt")
    fix = f"extract {session_dir.name} again from IEMOCAP_full_release"
    check_complete(f"{session_dir}: audio without a label line", sorted(set(wavs) - set(labels)), fix,
                   drop_incomplete)
    check_complete(f"{session_dir}: label lines without audio", sorted(set(labels) - set(wavs)), fix,
                   drop_incomplete)
    dropped = Counter(labels[u] for u in labels if u in wavs and labels[u] not in EMOTION_CLASSES)
    log_counts(f"{session_dir.name}: dropped utterances outside {sorted(set(EMOTION_CLASSES.values()))}",
               dropped, level=logging.INFO)
    utts = sorted(u for u in wavs if labels.get(u) in EMOTION_CLASSES)
    return {
        "wav_scp": {u: audio_path(wavs[u]) for u in utts},
        "utt2spk": {u: speaker_of(u) for u in utts},
        "utt2label": {u: EMOTION_CLASSES[labels[u]] for u in utts},
    }


def split_dev(utt2label: Dict[str, str], fraction: float) -> List[str]:
    """Deterministic label-stratified dev set: per label, evenly spaced sorted utterances."""
    by_label: Dict[str, List[str]] = defaultdict(list)
    for utt, label in utt2label.items():
        by_label[label].append(utt)
    return sorted(u for label in sorted(by_label) for u in evenly_spaced_holdout(by_label[label], fraction))


def build_fold(data_root: Path, k: int, sessions: Sequence[int], dev_fraction: float = 0.1,
               validate: bool = True) -> Path:
    """Write ``<data_root>/fold{k}/{train,dev,test}`` from the ``session{n}`` dirs.

    Parameters
    ----------
    data_root
        Folder holding ``session{n}`` data dirs (validated ones carry utt2num_samples).
    k
        Held-out session (test).
    sessions
        Sessions available; train + dev come from all of them but k.
    dev_fraction
        Share of the training sessions held out as dev (stratified by label).
    validate
        Validate the fold dirs (from the session dirs' utt2num_samples, no audio re-read).
    """
    if k not in sessions or len(sessions) < 2:
        raise CorpusLayoutError(f"fold {k} needs session {k} and at least one other session, have {list(sessions)}")
    data_root = Path(data_root)
    test = read_data_dir(data_root / f"session{k}")
    pool = combine_data_dirs([read_data_dir(data_root / f"session{n}") for n in sessions if n != k])
    dev_utts = split_dev(pool.utt2label, dev_fraction)
    train_utts = sorted(set(pool.utt2label) - set(dev_utts))
    if not dev_utts:
        logger.warning("fold %d: the dev set is empty (%d training utterances, dev fraction %g): "
                       "raise --dev-fraction for a corpus this small", k, len(train_utts), dev_fraction)
    fold_dir = data_root / f"fold{k}"
    for name, data in (("train", subset_data_dir(pool, train_utts)),
                       ("dev", subset_data_dir(pool, dev_utts)), ("test", test)):
        write_data_dir(fold_dir / name, **data.mappings())
        if validate:
            validate_data_dir(fold_dir / name, check_audio=False)
    logger.info("wrote %s: train %d, dev %d, test %d utterances",
                fold_dir, len(train_utts), len(dev_utts), len(test.utt2spk))
    return fold_dir


def prepare_iemocap(corpus_root: Path, out_dir: Path, folds: Optional[Sequence[int]] = None,
                    dev_fraction: float = 0.1, validate: bool = True, sessions: Sequence[int] = SESSIONS,
                    drop_incomplete: bool = False) -> List[Path]:
    """Write ``session{n}`` for every session of ``sessions``, then the folds; returns all dirs.

    Parameters
    ----------
    corpus_root
        ``IEMOCAP_full_release/`` or its parent.
    out_dir
        Parent of the data dirs.
    folds
        Folds to build (default: one per session; none if only one session).
    dev_fraction
        See :func:`build_fold`.
    sessions
        The sessions to prepare, each required (default: all five).
    drop_incomplete
        Drop (logged) utterances without label or audio instead of failing.
    """
    release = find_corpus_dir(corpus_root, "IEMOCAP_full_release")
    unknown = sorted(set(sessions) - set(SESSIONS))
    if unknown or not sessions:
        raise CorpusLayoutError(f"--sessions {' '.join(map(str, sessions))}: IEMOCAP has sessions 1-5")
    chosen = sorted(set(sessions))
    require_parts(release, [f"Session{n}" for n in chosen],
                  "extract the whole IEMOCAP_full_release, or name the sessions you have with --sessions "
                  "(run.sh: --prep_opts '--sessions 1 2 3' --folds '1 2 3')")
    out_dir = Path(out_dir)
    written = [write_prepared_dir(out_dir / f"session{n}", validate=validate,
                                  **read_session(release / f"Session{n}", drop_incomplete))
               for n in chosen]
    if folds is None:
        folds = chosen if len(chosen) > 1 else []
    written += [build_fold(out_dir, k, chosen, dev_fraction, validate=validate) for k in folds]
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = data_prep_parser(__doc__, drop_incomplete=True)
    parser.add_argument("--sessions", type=int, nargs="+", default=list(SESSIONS),
                        help="sessions to prepare, each required (default: 1 2 3 4 5)")
    parser.add_argument("--folds", type=int, nargs="*", default=None,
                        help="folds (held-out sessions) to build; default: every session")
    parser.add_argument("--dev-fraction", type=float, default=0.1,
                        help="share of the training sessions held out as dev (default 0.1)")
    return run_data_prep(parser, lambda args: prepare_iemocap(
        args.corpus_root, args.out, args.folds, args.dev_fraction, validate=not args.skip_validation,
        sessions=args.sessions, drop_incomplete=args.drop_incomplete), argv)


if __name__ == "__main__":
    raise SystemExit(main())
