#!/usr/bin/env python3
"""Synthetic mini Fluent Speech Commands in the real layout (espeak-ng, 16 kHz mono WAV).

Layout written (the real one)::

    <out>/fluent_speech_commands_dataset/data/{train,valid,test}_data.csv
    <out>/fluent_speech_commands_dataset/wavs/speakers/<speakerId>/<uuid>.wav

Every CSV has the real header ``,path,speakerId,transcription,action,object,location``: an
unnamed row index (0, 1, ... within the file), the WAV path relative to the dataset root
(``wavs/speakers/<speakerId>/<uuid>.wav``), the speaker, the sentence as said, and the three
slots. The intent of a row is its (action, object, location) triple.

Content
-------
- :data:`PHRASES`: eight intents that exist in the real corpus (``activate|lights|kitchen``,
  ``change language|Chinese|none``, ...), each with three or four wordings of our own.
- As in the real corpus, every speaker says every phrase once and the splits are
  speaker-disjoint: the test set holds known phrases said by unknown voices.
- A speaker is one voice of :data:`~tools.mini_corpus.espeak.SPEAKER_PALETTE` (a different
  espeak-ng variant each, M and F alternating); its id is 16 letters and digits drawn from
  the seed, and file names are UUID-shaped hex strings drawn from the seed, so the same
  options give the same bytes.

Sizes (speakers train/valid/test; utterances = speakers x phrases):

- ``small``: 10/3/3 speakers x 30 phrases: 300/90/90 utterances, about 1-2 s each.
- ``tiny``: 1/1/1 speakers x the first wording of each intent: 8/8/8 utterances.

Usage::

    python tools/mini_corpus/fluent_speech_commands.py --out corpus [--seed 0] [--size small]

A finished build leaves ``<out>/.mini_fluent_speech_commands.done``; a rerun with the same
options returns at once.
"""
from __future__ import annotations

import csv
import io
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
    Voice,
    build_params,
    finish_build,
    make_arg_parser,
    prepare_out,
    run_cli,
    run_synthesis_jobs,
)

logger = logging.getLogger("mini_corpus")

CORPUS = "fluent_speech_commands"
ROOT_NAME = "fluent_speech_commands_dataset"
SPLITS = ("train", "valid", "test")
CSV_HEADER = ("", "path", "speakerId", "transcription", "action", "object", "location")
"""The real CSV header: an unnamed index column, then the six named ones."""

PHRASES: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("activate", "lights", "kitchen"): (
        "Turn on the lights in the kitchen", "Kitchen lights on",
        "Switch on the kitchen lights", "Lights on in the kitchen"),
    ("deactivate", "lights", "bedroom"): (
        "Turn off the bedroom lights", "Bedroom lights off",
        "Switch the lights off in the bedroom", "Lights off in the bedroom"),
    ("increase", "heat", "none"): (
        "Turn up the heat", "Make it warmer", "Increase the heating", "Heat up"),
    ("decrease", "volume", "none"): (
        "Turn the volume down", "Lower the volume", "Quieter please", "Decrease the sound"),
    ("activate", "music", "none"): (
        "Play the music", "Put on some music", "Start the music", "Music on"),
    ("bring", "newspaper", "none"): (
        "Bring me the newspaper", "Fetch the newspaper", "Get me the paper"),
    ("change language", "Chinese", "none"): (
        "Change the language to Chinese", "Switch to Chinese",
        "Set my language to Chinese", "Use Chinese"),
    ("deactivate", "lamp", "none"): (
        "Turn off the lamp", "Lamp off", "Switch the lamp off"),
}
"""Intent (action, object, location) -> its wordings. The triples are real FSC intents; the
sentences are our own."""

# size -> speakers per split (train, valid, test), wordings per intent (None: all)
LAYOUT: dict[str, tuple[tuple[int, int, int], int | None]] = {
    "tiny": ((1, 1, 1), 1),
    "small": ((10, 3, 3), None),
}


def phrases(size: str) -> list[tuple[tuple[str, str, str], str]]:
    """The (intent, sentence) pairs every speaker of a ``size`` corpus says, in a fixed order.

    Examples
    --------
    >>> phrases("tiny")[0]
    (('activate', 'lights', 'kitchen'), 'Turn on the lights in the kitchen')
    >>> len(phrases("small"))
    30
    """
    per_intent = LAYOUT[size][1]
    return [(intent, sentence) for intent, wordings in PHRASES.items()
            for sentence in wordings[:per_intent]]


def speaker_id(rng: random.Random) -> str:
    """A 16-character id of letters and digits, like the real ones (``2BqVo8kVB2Skwgyb``)."""
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(16))


def file_id(rng: random.Random) -> str:
    """A UUID-shaped name (8-4-4-4-12 hex digits), like the real file names."""
    return (f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-11e9-"
            f"{rng.getrandbits(16):04x}-{rng.getrandbits(48):012x}")


def plan_rows(seed: int, size: str) -> dict[str, list[tuple[str, str, str, tuple[str, str, str], Voice]]]:
    """Every row of the corpus (no audio yet).

    Speaker k of :data:`~tools.mini_corpus.espeak.SPEAKER_PALETTE` goes to train for the
    first speakers, then valid, then test; each says every phrase of :func:`phrases` once,
    in an order shuffled per speaker.

    Returns
    -------
    dict
        split -> rows ``(path, speakerId, transcription, intent, voice)``.
    """
    counts, _ = LAYOUT[size]
    if sum(counts) > len(SPEAKER_PALETTE):
        raise ValueError(f"{sum(counts)} speakers asked for, the palette has {len(SPEAKER_PALETTE)}")
    rng = random.Random(seed)
    rows: dict[str, list] = {split: [] for split in SPLITS}
    voices = iter(voice for _, voice in SPEAKER_PALETTE)
    names: set[str] = set()
    for split, count in zip(SPLITS, counts):
        for _ in range(count):
            voice, spk = next(voices), speaker_id(rng)
            said = phrases(size)
            rng.shuffle(said)
            for intent, sentence in said:
                name = file_id(rng)
                while name in names:
                    name = file_id(rng)
                names.add(name)
                rows[split].append((f"wavs/speakers/{spk}/{name}.wav", spk, sentence, intent, voice))
    return rows


def csv_text(rows: list[tuple[str, str, str, tuple[str, str, str], Voice]]) -> str:
    """One split's CSV file: the real header, then one line per row with its index.

    Examples
    --------
    >>> print(csv_text([("wavs/speakers/s/a.wav", "s", "Lamp off", ("deactivate", "lamp", "none"), None)]), end="")
    ,path,speakerId,transcription,action,object,location
    0,wavs/speakers/s/a.wav,s,Lamp off,deactivate,lamp,none
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for index, (path, spk, sentence, intent, _) in enumerate(rows):
        writer.writerow([index, path, spk, sentence, *intent])
    return buffer.getvalue()


def build(out: str | Path, seed: int = 0, size: str = "small", num_workers: int = 2,
          force: bool = False) -> dict:
    """Build ``<out>/fluent_speech_commands_dataset`` (see the module docstring).

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
        Summary: ``root``, ``utterances`` and ``speakers`` per split, ``intents``, ``seconds``
        of audio, ``skipped``.

    Examples
    --------
    >>> build("corpus", size="tiny")["utterances"]   # doctest: +SKIP
    {'train': 8, 'valid': 8, 'test': 8}
    """
    out = Path(out)
    root = out / ROOT_NAME
    params = build_params(CORPUS, seed, size)
    rows = plan_rows(seed, size)
    summary = {"root": str(root), "utterances": {s: len(r) for s, r in rows.items()},
               "speakers": {s: len({row[1] for row in r}) for s, r in rows.items()},
               "intents": len({row[3] for r in rows.values() for row in r})}
    if prepare_out(out, params, force, root):
        return {**summary, "skipped": True}
    jobs = [SynthesisJob(sentence, voice, root / path)
            for split in SPLITS for path, _, sentence, _, voice in rows[split]]
    logger.info("Fluent Speech Commands: synthesizing %d utterances into %s", len(jobs), root)
    durations = run_synthesis_jobs(jobs, num_workers)
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (root / "data" / f"{split}_data.csv").write_text(csv_text(rows[split]), encoding="utf-8")
    finish_build(out, params)
    return {**summary, "seconds": round(sum(durations), 1), "max_seconds": round(max(durations), 2),
            "skipped": False}


def main(argv: list[str] | None = None) -> int:
    return run_cli(build, make_arg_parser(__doc__.split("\n\n")[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
