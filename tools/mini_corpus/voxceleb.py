#!/usr/bin/env python3
"""Synthetic mini VoxCeleb1 in the real layout (espeak-ng, 16 kHz mono wav).

Layout written (exactly the real one)::

    <out>/voxceleb1/wav/<idNNNNN>/<youtube-id>/<NNNNN>.wav
    <out>/voxceleb1/veri_test2.txt     # lines "<1|0> <id/ytid/00001.wav> <id/ytid/00002.wav>"

- Speakers are numbered as in the real corpus: the dev part uses ``id10001...`` and the test
  part (Vox1-O) ``id10270...``; every speaker is a different espeak-ng voice
  (:data:`~tools.mini_corpus.espeak.SPEAKER_PALETTE`). ``--size small``: 8 dev + 4 test
  speakers, 3 "videos" each (11-character deterministic YouTube-like ids), 4 utterances per
  video (``00001.wav``...), 144 files of about 1-2 s with varied sentences; each video shifts
  the speaker's pitch and speed slightly (session variability).
- ``veri_test2.txt`` covers the test speakers only: balanced targets / non-targets
  (100 + 100 for small), distinct pairs, never a file against itself, paths relative to
  ``wav/``.
- ``--size tiny``: 2 dev + 2 test speakers, 1 video x 3 utterances, 6 + 6 trials.

Usage::

    python tools/mini_corpus/voxceleb.py --out corpus [--seed 0] [--size small]
"""
from __future__ import annotations

import itertools
import logging
import random
import string
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``tools.mini_corpus`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.mini_corpus.espeak import (  # noqa: E402
    SPEAKER_PALETTE,
    SynthesisJob,
    build_params,
    finish_build,
    make_arg_parser,
    prepare_out,
    run_cli,
    run_synthesis_jobs,
)

logger = logging.getLogger("mini_corpus")

CORPUS = "voxceleb1"

# size -> (dev speakers, test speakers, videos per speaker, utterances per video, trials/class)
LAYOUT: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (2, 2, 1, 3, 6),
    "small": (8, 4, 3, 4, 100),
}
DEV_ID_BASE = 10001
TEST_ID_BASE = 10270  # the real Vox1-O test speakers are id10270..id10309

YOUTUBE_ID_CHARS = string.ascii_letters + string.digits + "-_"

SUBJECTS = ("the weather", "my brother", "this movie", "the music", "our team", "the city",
            "that song", "the garden", "my teacher", "the river", "this book", "the game")
VERBS = ("looks", "sounds", "feels", "seems", "was", "is")
COMPLEMENTS = ("really good", "quite strange", "very quiet", "so bright", "late", "better",
               "cold", "exciting", "simple", "too loud", "great", "fine")
OPENERS = ("", "", "", "well ", "so ", "oh ")


def make_sentence(rng: random.Random) -> str:
    """A short conversational sentence (about 1-2 s), e.g. ``"well the river was so bright"``."""
    return (f"{rng.choice(OPENERS)}{rng.choice(SUBJECTS)} {rng.choice(VERBS)} "
            f"{rng.choice(COMPLEMENTS)}")


def youtube_id(rng: random.Random) -> str:
    """An 11-character YouTube-like video id, e.g. ``"x6uYqmx31kE"``."""
    return "".join(rng.choice(YOUTUBE_ID_CHARS) for _ in range(11))


def plan_files(seed: int, size: str) -> list[tuple[str, str, int, int, int, str]]:
    """Decides every file of the corpus (no audio yet).

    Returns
    -------
    list[tuple]
        ``(part, relative_path, speaker_index, pitch_shift, speed_shift, text)``: ``part`` is
        ``dev`` or ``test``; ``relative_path`` is relative to ``wav/``
        (``id10270/abcdefghijk/00001.wav``); ``speaker_index`` indexes ``SPEAKER_PALETTE``.
    """
    rng = random.Random(seed)
    n_dev, n_test, n_videos, n_utts, _ = LAYOUT[size]
    speakers = [("dev", f"id{DEV_ID_BASE + i}") for i in range(n_dev)]
    speakers += [("test", f"id{TEST_ID_BASE + i}") for i in range(n_test)]
    plan = []
    for k, (part, spk) in enumerate(speakers):
        for _ in range(n_videos):
            video = youtube_id(rng)
            pitch_shift, speed_shift = rng.randint(-4, 4), rng.randint(-10, 10)
            for n in range(1, n_utts + 1):
                plan.append((part, f"{spk}/{video}/{n:05d}.wav", k, pitch_shift, speed_shift,
                             make_sentence(rng)))
    return plan


def make_trials(test_files: list[str], num_per_class: int,
                rng: random.Random) -> list[tuple[int, str, str]]:
    """Balanced verification trials over ``test_files`` (paths ``<id>/<video>/<n>.wav``).

    Parameters
    ----------
    num_per_class
        Targets and non-targets wanted each; capped by the distinct pairs available, and both
        classes get the same count.

    Returns
    -------
    list[tuple]
        ``(label, enroll, test)``: label 1 = same speaker; distinct unordered pairs, never a
        file with itself; shuffled.
    """
    pairs = list(itertools.combinations(sorted(test_files), 2))
    targets = [p for p in pairs if p[0].split("/")[0] == p[1].split("/")[0]]
    nontargets = [p for p in pairs if p[0].split("/")[0] != p[1].split("/")[0]]
    n = min(num_per_class, len(targets), len(nontargets))
    if n == 0:
        raise ValueError("cannot make trials: need >= 2 test speakers with >= 2 files each")
    trials = [(1, *p) for p in rng.sample(targets, n)]
    trials += [(0, *p) for p in rng.sample(nontargets, n)]
    rng.shuffle(trials)
    # enroll/test order varies as in the real list
    return [(lab, a, b) if rng.random() < 0.5 else (lab, b, a) for lab, a, b in trials]


def build(out: str | Path, seed: int = 0, size: str = "small", num_workers: int = 2,
          force: bool = False) -> dict:
    """Build ``<out>/voxceleb1`` (see the module docstring).

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
        Summary: ``root``, ``files`` per part, ``speakers`` per part, ``trials`` per label.

    Examples
    --------
    >>> build("corpus", size="tiny")["trials"]   # doctest: +SKIP
    {'target': 6, 'nontarget': 6}
    """
    out = Path(out)
    root = out / "voxceleb1"
    params = build_params(CORPUS, seed, size)
    plan = plan_files(seed, size)
    n_dev, n_test = LAYOUT[size][:2]
    summary = {
        "root": str(root),
        "files": {part: sum(1 for p in plan if p[0] == part) for part in ("dev", "test")},
        "speakers": {"dev": n_dev, "test": n_test},
    }
    if prepare_out(out, params, force, root):
        return {**summary, "skipped": True}

    jobs = [
        SynthesisJob(text, SPEAKER_PALETTE[k][1].with_prosody(pitch_shift, 1 + speed_shift / 160),
                     root / "wav" / rel)
        for _, rel, k, pitch_shift, speed_shift, text in plan
    ]
    logger.info("VoxCeleb1: synthesizing %d utterances into %s", len(jobs), root)
    durations = run_synthesis_jobs(jobs, num_workers)

    trial_rng = random.Random(seed + 1)
    trials = make_trials([p[1] for p in plan if p[0] == "test"], LAYOUT[size][4], trial_rng)
    (root / "veri_test2.txt").write_text("".join(f"{lab} {a} {b}\n" for lab, a, b in trials))
    finish_build(out, params)
    return {**summary, "seconds": round(sum(durations), 1),
            "max_seconds": round(max(durations), 2),
            "trials": {"target": sum(t[0] for t in trials),
                       "nontarget": sum(1 - t[0] for t in trials)},
            "skipped": False}


def main(argv: list[str] | None = None) -> int:
    parser = make_arg_parser(__doc__.split("\n\n")[0])
    return run_cli(build, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
