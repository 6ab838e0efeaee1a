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

    python tools/mini_corpus/librispeech.py --out corpus [--seed 0] [--size small] [--librilight] [--train-960]

``--train-960`` also writes ``LibriSpeech/{train-clean-360,train-other-500}`` (small: 24
utterances each, new sentences), so that ``local/data_prep.py --train-960`` finds the three
training subsets of the 960 h set (:func:`build_train_960`).

``--librilight`` also writes Libri-Light's 10 h set in its own layout,
``<out>/librispeech_finetuning/{1h/{0..5},9h}/{clean,other}/``, from copies of train-clean-100
files, and a ``LibriSpeech/dev-other`` of new sentences (:func:`build_librilight`; small: 128
and 40 utterances).

A finished build leaves ``<out>/.mini_librispeech.done``; a rerun with the same options
returns at once.
"""
from __future__ import annotations

import logging
import random
import shutil
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


LIBRILIGHT_CORPUS = "librilight"
"""Name of the done marker of the Libri-Light part (``<out>/.mini_librilight.done``)."""

LIBRILIGHT_ROOT = "librispeech_finetuning"

LIBRILIGHT_PARTS: tuple[str, ...] = tuple(
    f"1h/{fold}/{kind}" for fold in range(6) for kind in ("clean", "other")) + ("9h/clean", "9h/other")
"""The folders of Libri-Light's 10 h set: six 10-minute folds of 1h/ and the rest, 9h/."""

# size -> utterances of each train-clean-100 chapter put in a 1h/ fold, then in 9h/ (the rest
# of the chapter is not in the 10 h set)
LIBRILIGHT_LAYOUT: dict[str, tuple[int, int]] = {"tiny": (1, 1), "small": (2, 6)}


def plan_librilight(seed: int, size: str, sentences: list[str] | None = None) -> list[tuple[str, str, int, str]]:
    """The utterances of the mini Libri-Light 10 h set: a part of the mini train-clean-100.

    As in the real set (a selection of LibriSpeech training utterances, under their own ids),
    each chapter gives its first utterances to a 10-minute fold of ``1h/`` and the next ones
    to ``9h/``, so a chapter can sit in both (each folder has its own ``.trans.txt``). Even
    voices go to ``clean``, odd ones to ``other``; chapter c of voice k goes to fold
    ``(k + 3 c) % 6``, which puts both kinds in every fold of the ``small`` size (``tiny``
    leaves most folds empty).

    Returns
    -------
    list[tuple]
        ``(part, utt_id, chapter_id, text)``, ``part`` one of :data:`LIBRILIGHT_PARTS`.

    Examples
    --------
    >>> plan = plan_librilight(0, "small")
    >>> len(plan), sorted({p[0] for p in plan}) == sorted(LIBRILIGHT_PARTS)
    (128, True)
    """
    in_1h, in_9h = LIBRILIGHT_LAYOUT[size]
    plan = []
    for subset, utt_id, k, chapter, text in plan_utterances(seed, size, sentences):
        if subset != "train-clean-100":
            continue
        n, c = int(utt_id.rsplit("-", 1)[1]), (chapter - ID_BASE[subset][1]) % 100
        kind = "clean" if k % 2 == 0 else "other"
        if n < in_1h:
            plan.append((f"1h/{(k + 3 * c) % 6}/{kind}", utt_id, chapter, text))
        elif n < in_1h + in_9h:
            plan.append((f"9h/{kind}", utt_id, chapter, text))
    return plan


DEV_OTHER = "dev-other"
DEV_OTHER_IDS = (4001, 40001)
"""First speaker / chapter id of the mini dev-other (disjoint from the other subsets' ids)."""


def plan_dev_other(seed: int, size: str, sentences: list[str] | None = None) -> list[tuple[str, str, int, int, str]]:
    """The mini dev-other: laid out like dev-clean, with sentences found in no other subset.

    The 10 h recipe validates on it (its test set is dev-clean). Same voices as the other
    subsets; sentences are drawn by their own generator (seeded with ``seed``), so the subsets
    of :func:`plan_utterances` are unchanged.

    Returns
    -------
    list[tuple]
        ``(subset, utt_id, speaker_index, chapter_id, text)`` as :func:`plan_utterances`.

    Examples
    --------
    >>> plan = plan_dev_other(0, "small")
    >>> len(plan), not {p[-1] for p in plan} & {p[-1] for p in plan_utterances(0, "small")}
    (40, True)
    """
    used = {p[-1] for p in plan_utterances(seed, size, sentences)}
    rng = random.Random(f"dev-other-{seed}")
    num_voices, per_subset = LAYOUT[size]
    chapters, utts = per_subset["dev-clean"]
    plan = []
    for k in range(num_voices):
        spk = DEV_OTHER_IDS[0] + k
        for c in range(chapters):
            chapter = DEV_OTHER_IDS[1] + 100 * k + c
            for n in range(utts):
                text = make_sentence(rng)
                while text in used:
                    text = make_sentence(rng)
                used.add(text)
                plan.append((DEV_OTHER, f"{spk}-{chapter}-{n:04d}", k, chapter, text))
    return plan


def build_librilight(out: str | Path, seed: int = 0, size: str = "small", num_workers: int = 2,
                     force: bool = False, sentences: str | Path | None = None) -> dict:
    """Build ``<out>/LibriSpeech`` (:func:`build`), its ``dev-other`` and ``<out>/librispeech_finetuning``.

    The last is Libri-Light's limited-resource layout (``librispeech_finetuning.tgz``)::

        <out>/librispeech_finetuning/{1h/{0..5},9h}/{clean,other}/<spk>/<chapter>/
            <spk>-<chapter>-<NNNN>.flac
            <spk>-<chapter>.trans.txt

    holding copies of the train-clean-100 files that :func:`plan_librilight` picks.
    ``LibriSpeech/dev-other`` (:func:`plan_dev_other`, synthesized) is the validation set of
    the 10 h recipe. Both have their own done marker (``.mini_librilight.done``), so a
    LibriSpeech build made without them is kept and only they are written.

    Returns
    -------
    dict
        :func:`build`'s summary plus ``librilight`` (utterances per part folder) and
        ``dev_other`` (utterances); ``skipped`` is true when all was already built.
    """
    out = Path(out)
    summary = build(out, seed, size, num_workers, force, sentences)
    librispeech, root = Path(summary["root"]), out / LIBRILIGHT_ROOT
    params = build_params(LIBRILIGHT_CORPUS, seed, size, **({"sentences": str(sentences)} if sentences else {}))
    texts = read_sentences(sentences)
    plan, dev_other = plan_librilight(seed, size, texts), plan_dev_other(seed, size, texts)
    counts = {part: sum(1 for p in plan if p[0] == part) for part in LIBRILIGHT_PARTS}
    summary = {**summary, "librilight": counts, "dev_other": len(dev_other)}
    rebuilt = force or not summary["skipped"] or not (librispeech / DEV_OTHER).is_dir()  # dev-other goes with LibriSpeech/
    if prepare_out(out, params, rebuilt, root):
        return summary
    if (librispeech / DEV_OTHER).exists():  # ours: LibriSpeech/ was made by build()
        shutil.rmtree(librispeech / DEV_OTHER)
    transcripts: dict[Path, list[str]] = {}
    jobs = []
    for _, utt_id, k, chapter, text in dev_other:
        chapter_dir = librispeech / DEV_OTHER / utt_id.split("-")[0] / str(chapter)
        jobs.append(SynthesisJob(text.lower(), SPEAKER_PALETTE[k][1], chapter_dir / f"{utt_id}.flac"))
        transcripts.setdefault(chapter_dir / f"{utt_id.rsplit('-', 1)[0]}.trans.txt", []).append(f"{utt_id} {text}")
    logger.info("LibriSpeech dev-other: synthesizing %d utterances", len(jobs))
    run_synthesis_jobs(jobs, num_workers)
    for part, utt_id, chapter, text in plan:
        spk = utt_id.split("-")[0]
        chapter_dir = root / part / spk / str(chapter)
        chapter_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(librispeech / "train-clean-100" / spk / str(chapter) / f"{utt_id}.flac",
                        chapter_dir / f"{utt_id}.flac")
        transcripts.setdefault(chapter_dir / f"{spk}-{chapter}.trans.txt", []).append(f"{utt_id} {text}")
    for part in LIBRILIGHT_PARTS:
        (root / part).mkdir(parents=True, exist_ok=True)
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    finish_build(out, params)
    logger.info("Libri-Light 10 h: %d utterances of train-clean-100 copied into %s", len(plan), root)
    return {**summary, "skipped": False}


TRAIN_960_CORPUS = "librispeech_960"
"""Name of the done marker of the two extra training subsets (``<out>/.mini_librispeech_960.done``)."""

# subset -> first speaker id / first chapter id (disjoint from every other subset's ids)
TRAIN_960_IDS: dict[str, tuple[int, int]] = {"train-clean-360": (5001, 50001), "train-other-500": (6001, 60001)}

# size -> (chapters per voice, utterances per chapter) of each of the two subsets
TRAIN_960_LAYOUT: dict[str, tuple[int, int]] = {"tiny": (1, 1), "small": (1, 3)}


def plan_train_960(seed: int, size: str, sentences: list[str] | None = None) -> list[tuple[str, str, int, int, str]]:
    """The mini train-clean-360 and train-other-500: every voice, sentences of no other subset.

    Sentences are drawn by their own generator (seeded with ``seed``), so the subsets of
    :func:`plan_utterances` and :func:`plan_dev_other` are unchanged, and none of theirs is
    repeated (dev and test sentences stay unseen in training).

    Returns
    -------
    list[tuple]
        ``(subset, utt_id, speaker_index, chapter_id, text)`` as :func:`plan_utterances`.

    Examples
    --------
    >>> plan = plan_train_960(0, "small")
    >>> {s: sum(1 for p in plan if p[0] == s) for s in TRAIN_960_IDS}
    {'train-clean-360': 24, 'train-other-500': 24}
    """
    used = {p[-1] for p in plan_utterances(seed, size, sentences)} | {p[-1] for p in plan_dev_other(seed, size, sentences)}
    rng = random.Random(f"train-960-{seed}")
    num_voices = LAYOUT[size][0]
    chapters, utts = TRAIN_960_LAYOUT[size]
    plan = []
    for subset, (spk_base, chapter_base) in TRAIN_960_IDS.items():
        for k in range(num_voices):
            for c in range(chapters):
                chapter = chapter_base + 100 * k + c
                for n in range(utts):
                    text = make_sentence(rng)
                    while text in used:
                        text = make_sentence(rng)
                    used.add(text)
                    plan.append((subset, f"{spk_base + k}-{chapter}-{n:04d}", k, chapter, text))
    return plan


def build_train_960(out: str | Path, seed: int = 0, size: str = "small", num_workers: int = 2,
                    force: bool = False, sentences: str | Path | None = None) -> dict:
    """Add ``LibriSpeech/train-clean-360`` and ``LibriSpeech/train-other-500`` to a finished :func:`build`.

    They have their own done marker (``.mini_librispeech_960.done``): a build without them is
    kept and only they are written; they are written again when ``LibriSpeech/`` was rebuilt
    (which removes them) or with ``force``.

    Returns
    -------
    dict
        ``train_960`` (utterances per subset) and ``skipped``.
    """
    out = Path(out)
    librispeech = out / "LibriSpeech"
    if not (librispeech / "train-clean-100").is_dir():
        raise FileNotFoundError(f"{librispeech}/train-clean-100 is missing: build the mini LibriSpeech first")
    params = build_params(TRAIN_960_CORPUS, seed, size, **({"sentences": str(sentences)} if sentences else {}))
    plan = plan_train_960(seed, size, read_sentences(sentences))
    counts = {subset: sum(1 for p in plan if p[0] == subset) for subset in TRAIN_960_IDS}
    rebuilt = force or not all((librispeech / subset).is_dir() for subset in TRAIN_960_IDS)
    first, *others = TRAIN_960_IDS
    if prepare_out(out, params, rebuilt, librispeech / first):
        return {"train_960": counts, "skipped": True}
    for subset in others:  # ours: the marker of this build was there, or LibriSpeech/ was just rebuilt
        shutil.rmtree(librispeech / subset, ignore_errors=True)
    jobs, transcripts = [], {}
    for subset, utt_id, k, chapter, text in plan:
        spk = utt_id.split("-")[0]
        chapter_dir = librispeech / subset / spk / str(chapter)
        jobs.append(SynthesisJob(text.lower(), SPEAKER_PALETTE[k][1], chapter_dir / f"{utt_id}.flac"))
        transcripts.setdefault(chapter_dir / f"{spk}-{chapter}.trans.txt", []).append(f"{utt_id} {text}")
    logger.info("LibriSpeech train-clean-360, train-other-500: synthesizing %d utterances", len(jobs))
    run_synthesis_jobs(jobs, num_workers)
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    finish_build(out, params)
    return {"train_960": counts, "skipped": False}


def main(argv: list[str] | None = None) -> int:
    parser = make_arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=Path, default=None,
                        help="file with one transcript per line, used instead of vocabulary sentences")
    parser.add_argument("--librilight", action="store_true",
                        help="also write Libri-Light's 10 h layout (librispeech_finetuning/) from train-clean-100, "
                             "and a dev-other subset")
    parser.add_argument("--train-960", action="store_true",
                        help="also write train-clean-360 and train-other-500, for local/data_prep.py --train-960")

    def build_parts(librilight=False, train_960=False, **options):
        summary = (build_librilight if librilight else build)(**options)
        if train_960:
            extra = build_train_960(**options)
            summary = {**summary, "train_960": extra["train_960"], "skipped": summary["skipped"] and extra["skipped"]}
        return summary

    return run_cli(build_parts, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
