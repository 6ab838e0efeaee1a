#!/usr/bin/env python3
"""Synthetic mini IEMOCAP in the real layout (espeak-ng, 16 kHz mono wav).

Layout written (exactly the real one)::

    <out>/IEMOCAP_full_release/Session{1..5}/sentences/wav/<dialog>/<utt>.wav
    <out>/IEMOCAP_full_release/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt

Dialogs are named like the real ones (``Ses01F_impro01``, ``Ses01M_script01_1``); utterances
``<dialog>_F000`` / ``<dialog>_M001`` are numbered per speaker in time order. An EmoEvaluation
file has the real header line, blank lines between turns, one line per turn
``[<start> - <end>]<TAB><utt><TAB><emo><TAB>[v, a, d]`` (4 decimals) followed by evaluator
lines (``C-E2:<TAB>Neutral;<TAB>()``, ``A-E3:<TAB>val 3; act 2; dom  2;<TAB>()``) that a
data preparation has to skip, as in the real files.

- Each session has two voices (one F, one M; 10 distinct voices in all).
- Emotions neu, ang, sad, hap, plus exc (merged into hap by the usual 4-class recipe) and a
  few fru and xxx (dropped by it). The emotion is rendered by PROSODY only (the sentence is
  drawn independently of the label): see :data:`EMOTION_PROSODY` (angry = loud, fast, high;
  sad = quiet, slow, low, flat; happy = high, fast, wide pitch range).
- ``--size small``: per session 14 neu, 14 ang, 14 sad, 10 hap, 4 exc, 2 fru, 2 xxx
  = 60 utterances (300 in all), about 1-1.5 s each; ``--size tiny``: one of neu, ang, sad,
  hap, exc, xxx per session (30 in all).

Usage::

    python tools/mini_corpus/iemocap.py --out corpus [--seed 0] [--size small]
"""
from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``tools.mini_corpus`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.mini_corpus.espeak import (  # noqa: E402
    SPEAKER_PALETTE,
    SynthesisJob,
    Voice,
    build_params,
    finish_build,
    make_arg_parser,
    prepare_out,
    run_cli,
    run_synthesis_jobs,
)

logger = logging.getLogger("mini_corpus")

CORPUS = "iemocap"
SESSIONS = (1, 2, 3, 4, 5)
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"

# emotion -> (pitch shift, speed scale, amplitude, pitch range %)
EMOTION_PROSODY: dict[str, tuple[int, float, int, int]] = {
    "neu": (0, 1.00, 100, 100),
    "ang": (12, 1.25, 185, 150),
    "sad": (-15, 0.78, 40, 50),
    "hap": (25, 1.15, 130, 190),
    "exc": (28, 1.20, 150, 200),
    "fru": (6, 1.10, 140, 120),
    "xxx": (4, 1.05, 110, 110),
}
"""How each label is spoken, relative to the speaker's own voice."""

# emotion -> mean (valence, activation, dominance) on IEMOCAP's 1..5 scale
EMOTION_VAD: dict[str, tuple[float, float, float]] = {
    "neu": (2.5, 2.5, 2.5), "ang": (1.5, 4.0, 4.0), "sad": (1.5, 1.5, 2.0),
    "hap": (4.0, 3.5, 3.0), "exc": (4.0, 4.0, 3.5), "fru": (2.0, 3.5, 3.0),
    "xxx": (2.5, 3.0, 3.0),
}
EVALUATOR_WORD = {"neu": "Neutral", "ang": "Anger", "sad": "Sadness", "hap": "Happiness",
                  "exc": "Excited", "fru": "Frustration"}

# size -> emotion counts per session
COUNTS: dict[str, dict[str, int]] = {
    "tiny": {"neu": 1, "ang": 1, "sad": 1, "hap": 1, "exc": 1, "xxx": 1},
    "small": {"neu": 14, "ang": 14, "sad": 14, "hap": 10, "exc": 4, "fru": 2, "xxx": 2},
}
DIALOGS: dict[str, tuple[str, ...]] = {
    "tiny": ("F_impro01", "M_impro01"),
    "small": ("F_impro01", "F_script01_1", "M_impro01", "M_script01_1"),
}

SENTENCES = (
    "I told you this already", "where were you last night", "that is not what I said",
    "we can talk about it later", "look at this place", "I do not know what to do",
    "you never listen to me", "it is over now", "can you believe it", "I got the job",
    "they called me this morning", "let us go home", "what are you doing here",
    "this is the last time", "I will be fine", "give me a minute",
)


def emotion_voice(speaker: Voice, emotion: str) -> Voice:
    """The speaker's voice with the prosody of ``emotion`` (see :data:`EMOTION_PROSODY`).

    Parameters
    ----------
    emotion
        An IEMOCAP label (neu, ang, sad, hap, exc, fru, xxx).

    Examples
    --------
    >>> emotion_voice(Voice("m3", pitch=50, speed=160), "sad").speed
    125
    """
    if emotion not in EMOTION_PROSODY:
        raise ValueError(f"no prosody for emotion {emotion!r}; known: {sorted(EMOTION_PROSODY)}")
    pitch_shift, speed_scale, amplitude, pitch_range = EMOTION_PROSODY[emotion]
    return speaker.with_prosody(pitch_shift, speed_scale, amplitude, pitch_range)


def session_voices(session: int) -> dict[str, Voice]:
    """The two speakers of a session: ``{"F": voice, "M": voice}`` (distinct per session)."""
    males = [v for g, v in SPEAKER_PALETTE if g == "M"]
    females = [v for g, v in SPEAKER_PALETTE if g == "F"]
    return {"F": females[session - 1], "M": males[session - 1]}


def plan_session(session: int, size: str, rng: random.Random) -> list[dict]:
    """Decides the turns of one session (no audio yet), grouped by dialog in time order.

    Returns
    -------
    list[dict]
        Keys ``dialog``, ``utt``, ``gender``, ``emotion``, ``text``, ``gap`` (seconds of
        silence before the turn) and ``vad``.
    """
    labels = [emo for emo, n in COUNTS[size].items() for _ in range(n)]
    rng.shuffle(labels)
    dialogs = [f"Ses{session:02d}{d}" for d in DIALOGS[size]]
    per_dialog: dict[str, list[str]] = {d: [] for d in dialogs}
    for i, emo in enumerate(labels):
        per_dialog[dialogs[i % len(dialogs)]].append(emo)
    turns = []
    for dialog, emotions in per_dialog.items():
        numbers = {"F": 0, "M": 0}
        for i, emo in enumerate(emotions):
            gender = "FM"[i % 2] if rng.random() < 0.8 else "MF"[i % 2]
            vad = tuple(min(5.0, max(1.0, m + rng.choice((-0.5, 0.0, 0.0, 0.5))))
                        for m in EMOTION_VAD[emo])
            turns.append({
                "dialog": dialog, "utt": f"{dialog}_{gender}{numbers[gender]:03d}",
                "gender": gender, "emotion": emo, "text": rng.choice(SENTENCES),
                "gap": round(rng.uniform(0.3, 1.5), 4), "vad": vad,
            })
            numbers[gender] += 1
    return turns


def evaluation_block(turn: dict, start: float, end: float, rng: random.Random) -> str:
    """One turn of an EmoEvaluation file: the label line and evaluator lines."""
    v, a, d = turn["vad"]
    emo = turn["emotion"]
    lines = [f"[{start:.4f} - {end:.4f}]\t{turn['utt']}\t{emo}\t[{v:.4f}, {a:.4f}, {d:.4f}]"]
    for evaluator in ("C-E2", "C-E3", "C-E4"):
        word = EVALUATOR_WORD.get(emo) or rng.choice(("Neutral", "Frustration", "Anger"))
        lines.append(f"{evaluator}:\t{word};\t()")
    for evaluator in ("A-E3", "A-E4"):
        lines.append(f"{evaluator}:\tval {round(v)}; act {round(a)}; dom  {round(d)};\t()")
    return "\n".join(lines) + "\n"


def build(out: str | Path, seed: int = 0, size: str = "small", num_workers: int = 2,
          force: bool = False) -> dict:
    """Build ``<out>/IEMOCAP_full_release`` (see the module docstring).

    Parameters
    ----------
    size
        ``tiny`` or ``small``.
    num_workers
        Parallel espeak-ng processes (at most 2).
    force
        Rebuild even if a finished build is there.

    Returns
    -------
    dict
        Summary: ``root``, ``utterances``, ``emotions`` (count per label), ``skipped``.

    Examples
    --------
    >>> build("corpus", size="tiny")["utterances"]   # doctest: +SKIP
    30
    """
    out = Path(out)
    root = out / "IEMOCAP_full_release"
    params = build_params(CORPUS, seed, size)
    rng = random.Random(seed)
    plan = {s: plan_session(s, size, rng) for s in SESSIONS}
    emotions: dict[str, int] = {}
    for turns in plan.values():
        for t in turns:
            emotions[t["emotion"]] = emotions.get(t["emotion"], 0) + 1
    summary = {"root": str(root), "utterances": sum(emotions.values()), "emotions": emotions}
    if prepare_out(out, params, force, root):
        return {**summary, "skipped": True}

    jobs, flat = [], []
    for session, turns in plan.items():
        voices = session_voices(session)
        for t in turns:
            path = (root / f"Session{session}" / "sentences" / "wav" / t["dialog"]
                    / f"{t['utt']}.wav")
            jobs.append(SynthesisJob(t["text"], emotion_voice(voices[t["gender"]], t["emotion"]),
                                     path))
            flat.append((session, t))
    logger.info("IEMOCAP: synthesizing %d utterances into %s", len(jobs), root)
    durations = run_synthesis_jobs(jobs, num_workers)

    eval_rng = random.Random(seed + 1)
    files: dict[Path, list[str]] = {}
    clock: dict[str, float] = {}
    for (session, t), duration in zip(flat, durations):
        start = clock.get(t["dialog"], 0.0) + t["gap"]
        end = start + duration
        clock[t["dialog"]] = end
        path = (root / f"Session{session}" / "dialog" / "EmoEvaluation" / f"{t['dialog']}.txt")
        files.setdefault(path, []).append(evaluation_block(t, start, end, eval_rng))
    for path, blocks in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + "\n\n" + "\n".join(blocks) + "\n")
    finish_build(out, params)
    return {**summary, "seconds": round(sum(durations), 1),
            "max_seconds": round(max(durations), 2), "skipped": False}


def main(argv: list[str] | None = None) -> int:
    parser = make_arg_parser(__doc__.split("\n\n")[0])
    return run_cli(build, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
