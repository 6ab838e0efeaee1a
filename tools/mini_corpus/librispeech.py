#!/usr/bin/env python3
"""Synthetic mini LibriSpeech in the real layout (espeak-ng, 16 kHz mono flac).

Layout written (exactly the real one)::

    <out>/LibriSpeech/{train-clean-100,dev-clean,test-clean}/<spk>/<chapter>/
        <spk>-<chapter>-<NNNN>.flac
        <spk>-<chapter>.trans.txt        # lines "<utt-id> UPPERCASE TEXT"

Content, chosen so that a tiny CTC model learns it in a couple of CPU minutes:

- sentences of 2-4 words from a 17-word vocabulary (ONE..NINE, YES NO UP DOWN LEFT RIGHT
  STOP GO); each sentence appears in one split only (dev/test sentences are unseen in train);
- the same voices in every split (as in real LibriSpeech, speaker ids differ across subsets:
  train speaker ``1001`` and dev speaker ``2001`` are the same synthetic voice, so dev/test
  measure generalisation to new sentences, not to new voices);
- ``--size small``: 8 voices, 240 train (2 chapters x 15), 40 dev and 40 test utterances,
  each about 0.8-2 s; ``--size tiny``: 2 voices, 4 utterances per split.

Usage::

    python tools/mini_corpus/librispeech.py --out corpus [--seed 0] [--size small]

A finished build leaves ``<out>/.mini_librispeech.done``; a rerun with the same options
returns at once.
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
    build_params,
    finish_build,
    make_arg_parser,
    prepare_out,
    run_cli,
    run_synthesis_jobs,
)

logger = logging.getLogger("mini_corpus")

CORPUS = "librispeech"

VOCABULARY: tuple[str, ...] = (
    "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE",
    "YES", "NO", "UP", "DOWN", "LEFT", "RIGHT", "STOP", "GO",
)
"""The words of every transcript (17 words; letters A-Z only)."""

SUBSETS: tuple[str, ...] = ("train-clean-100", "dev-clean", "test-clean")

# size -> (number of voices, {subset: (chapters per speaker, utterances per chapter)})
LAYOUT: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {
    "tiny": (2, {"train-clean-100": (1, 2), "dev-clean": (1, 2), "test-clean": (1, 2)}),
    "small": (8, {"train-clean-100": (2, 15), "dev-clean": (1, 5), "test-clean": (1, 5)}),
}

# subset -> first speaker id / first chapter id (ids are disjoint across subsets, as in the
# real corpus; speaker k of every subset uses SPEAKER_PALETTE[k])
ID_BASE: dict[str, tuple[int, int]] = {
    "train-clean-100": (1001, 10001),
    "dev-clean": (2001, 20001),
    "test-clean": (3001, 30001),
}


def make_sentence(rng: random.Random) -> str:
    """A sentence of 2-4 vocabulary words, e.g. ``"LEFT SEVEN GO"``.
    """
    return " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(2, 4)))


def plan_utterances(seed: int, size: str, sentences: list[str] | None = None) -> list[tuple[str, str, int, int, str]]:
    """Decides every utterance of the corpus (no audio yet).

    Parameters
    ----------
    size
        ``tiny`` or ``small``.
    sentences
        Transcripts to use (in a seeded random order) instead of vocabulary sentences; a
        sentence list shorter than the layout falls back to vocabulary sentences for the rest.

    Returns
    -------
    list[tuple]
        ``(subset, utt_id, speaker_index, chapter_id, text)``; ``speaker_index`` indexes
        :data:`SPEAKER_PALETTE`.
    """
    rng = random.Random(seed)
    pool = list(sentences or [])
    rng.shuffle(pool)
    num_voices, per_subset = LAYOUT[size]
    used: set[str] = set()
    plan = []
    for subset in SUBSETS:  # fixed order -> deterministic draws
        chapters, utts = per_subset[subset]
        spk_base, chapter_base = ID_BASE[subset]
        for k in range(num_voices):
            spk = spk_base + k
            for c in range(chapters):
                chapter = chapter_base + 100 * k + c
                for n in range(utts):
                    text = pool.pop() if pool else make_sentence(rng)
                    while text in used:  # a sentence lives in one split only
                        text = pool.pop() if pool else make_sentence(rng)
                    used.add(text)
                    plan.append((subset, f"{spk}-{chapter}-{n:04d}", k, chapter, text))
    return plan


def read_sentences(path: str | Path | None) -> list[str] | None:
    """One transcript per line, upper-cased, keeping letters, apostrophes and single spaces."""
    if path is None:
        return None
    sentences = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = " ".join("".join(ch for ch in line.upper() if ch.isalpha() and ch.isascii() or ch in " '").split())
        if text:
            sentences.append(text)
    return sentences


def build(out: str | Path, seed: int = 0, size: str = "small", num_workers: int = 2,
          force: bool = False, sentences: str | Path | None = None) -> dict:
    """Build ``<out>/LibriSpeech`` (see the module docstring).

    Parameters
    ----------
    size
        ``tiny`` or ``small``.
    num_workers
        Parallel espeak-ng processes (at most 2).
    force
        Rebuild even if a finished build is there.
    sentences
        A text file with one transcript per line to read instead of vocabulary sentences
        (e.g. a pre-training corpus for ``tools/pretrain_backbone.py``).

    Returns
    -------
    dict
        Summary: ``root``, ``utterances`` per subset, ``seconds`` of audio, ``skipped``.

    Examples
    --------
    >>> build("corpus", size="tiny")["utterances"]   # doctest: +SKIP
    {'train-clean-100': 4, 'dev-clean': 4, 'test-clean': 4}
    """
    out = Path(out)
    root = out / "LibriSpeech"
    texts = read_sentences(sentences)
    params = build_params(CORPUS, seed, size, **({"sentences": str(sentences)} if sentences else {}))
    plan = plan_utterances(seed, size, texts)
    counts = {s: sum(1 for p in plan if p[0] == s) for s in SUBSETS}
    if prepare_out(out, params, force, root):
        return {"root": str(root), "utterances": counts, "skipped": True}

    jobs, transcripts = [], {}
    for subset, utt_id, k, chapter, text in plan:
        spk = utt_id.split("-")[0]
        chapter_dir = root / subset / spk / str(chapter)
        jobs.append(SynthesisJob(text.lower(), SPEAKER_PALETTE[k][1],
                                 chapter_dir / f"{utt_id}.flac"))
        transcripts.setdefault(chapter_dir / f"{spk}-{chapter}.trans.txt", []).append(
            f"{utt_id} {text}")
    logger.info("LibriSpeech: synthesizing %d utterances into %s", len(jobs), root)
    durations = run_synthesis_jobs(jobs, num_workers)
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    finish_build(out, params)
    return {"root": str(root), "utterances": counts, "seconds": round(sum(durations), 1),
            "max_seconds": round(max(durations), 2), "skipped": False}


def main(argv: list[str] | None = None) -> int:
    parser = make_arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=Path, default=None,
                        help="file with one transcript per line, used instead of vocabulary sentences")
    return run_cli(build, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
