#!/usr/bin/env python3
"""Synthetic mini SLURP in the real layout (real annotations when present, espeak-ng audio).

Layout written (exactly the real one)::

    <out>/slurp/dataset/slurp/{train,devel,test}.jsonl
    <out>/slurp/slurp_real/<recordings[].file>          # e.g. audio-1497872916-headset.flac

Every jsonl line is a SLURP object with the real fields in the real order (slurp_id, sentence,
sentence_annotation, intent, action, tokens, scenario, recordings, entities); each recording
``{file, wer, ent_wer, status}`` it lists exists under ``slurp_real/`` (16 kHz mono flac).

Where the text comes from
-------------------------
- **Real annotations** (default when found): ``devel.jsonl`` and ``test.jsonl`` of the real
  corpus, looked up in ``--annotations DIR``, else ``$ELP_SHARED_DATA/slurp``, else
  ``<project root>/../shared/data/slurp``. The ``--num_intents`` most frequent intents (over
  both files; ties by name) are kept; per intent, lines whose sentence is unique and at most
  :data:`MAX_WORDS` words long are shuffled with the seed and the first
  ``--sentences_per_intent`` are split 70/15/15 % into train/devel/test (so our "train" lines
  come from the real devel/test files). Lines are copied verbatim except ``recordings``, which
  keeps the first ``--recordings_per_line`` listed files: the ones synthesized.
- **Built-in fallback** (no annotation files, or ``--builtin``): sentences generated from
  templates for six intents (alarm_set, weather_query, play_music, calendar_set,
  datetime_query, iot_hue_lightoff) written in the same JSON format; tokens carry
  ``lemma`` = surface and a placeholder ``pos`` ("X"); recording names are
  ``audio-<10 digits>[-headset].flac`` drawn from the seed; ``slurp_id`` starts at 900001.

Recordings that share a name stem (``audio-X-headset.flac`` and ``audio-X.flac``) are the same
session: same voice, the far-field one quieter. Each stem gets a voice from
:data:`~tools.mini_corpus.espeak.SPEAKER_PALETTE` with a small pitch/speed jitter.

Sizes: ``small`` = 6 intents x 32 lines (22/5/5), 2 recordings per line (about 250 train,
55 devel, 55 test recordings with the real annotations; about 225/50/50 built-in);
``tiny`` = 6 intents x 3 lines (1/1/1), 1 recording per line.

Usage::

    python tools/mini_corpus/slurp.py --out corpus [--seed 0] [--size small]
        [--annotations DIR | --builtin] [--num_intents 6] [--sentences_per_intent 32]
        [--recordings_per_line 2]
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
from collections import Counter
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

CORPUS = "slurp"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "devel", "test")
FIELD_ORDER = ("slurp_id", "sentence", "sentence_annotation", "intent", "action", "tokens",
               "scenario", "recordings", "entities")
MAX_WORDS = 12
"""Real lines longer than this are not chosen (keeps every recording short)."""

# size -> (lines per intent, recordings per line)
SIZE_DEFAULTS: dict[str, tuple[int, int]] = {"tiny": (3, 1), "small": (32, 2)}

ENTITY_RE = re.compile(r"\[\s*([a-z_]+)\s*:\s*([^\]]+?)\s*\]")

# Built-in fallback: intent -> templates; {slot} is filled from BUILTIN_SLOTS[slot].
BUILTIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "alarm_set": ("wake me up at [time : {time}]", "set an alarm for [time : {time}]",
                  "alarm at [time : {time}] [date : {date}] please"),
    "weather_query": ("what is the weather like [date : {date}]",
                      "will it rain in [place_name : {place}] [date : {date}]",
                      "how hot is it in [place_name : {place}]"),
    "play_music": ("play some [music_genre : {genre}]", "put on [artist_name : {artist}]",
                   "i want to hear [music_genre : {genre}] music"),
    "calendar_set": ("remind me about the [event_name : {event}] [date : {date}]",
                     "add a [event_name : {event}] at [time : {time}]",
                     "schedule the [event_name : {event}] for [date : {date}]"),
    "datetime_query": ("what time is it in [place_name : {place}]",
                       "what is the date [date : {date}]", "what day is it [date : {date}]",
                       "tell me the time in [place_name : {place}]"),
    "iot_hue_lightoff": ("turn off the lights in the [house_place : {room}]",
                         "switch the [house_place : {room}] lights off",
                         "kill the lights in the [house_place : {room}]",
                         "lights off in the [house_place : {room}] at [time : {time}]"),
}
BUILTIN_SLOTS: dict[str, tuple[str, ...]] = {
    "time": ("seven am", "six thirty", "nine pm", "noon", "eight fifteen", "ten"),
    "date": ("today", "tomorrow", "on monday", "this weekend", "on friday"),
    "place": ("london", "paris", "new york", "tokyo", "berlin"),
    "genre": ("jazz", "rock", "classical", "pop", "blues"),
    "artist": ("adele", "queen", "the beatles", "madonna", "coldplay"),
    "event": ("meeting", "dentist appointment", "party", "team lunch", "call with mum"),
    "room": ("kitchen", "bedroom", "living room", "bathroom", "hall"),
}


def shared_annotation_dir() -> Path | None:
    """The folder with the real ``devel.jsonl``/``test.jsonl``, or None when absent.

    Looked up as ``$ELP_SHARED_DATA/slurp``, else ``<project root>/../shared/data/slurp``.
    """
    base = os.environ.get("ELP_SHARED_DATA")
    folder = (Path(base) if base else PROJECT_ROOT.parent / "shared" / "data") / "slurp"
    return folder if (folder / "devel.jsonl").is_file() else None


def ordered(line: dict) -> dict:
    """The line with SLURP's field order (extra fields, if any, follow)."""
    return {**{k: line[k] for k in FIELD_ORDER if k in line},
            **{k: v for k, v in line.items() if k not in FIELD_ORDER}}


def read_annotations(folder: Path) -> list[dict]:
    """Reads ``devel.jsonl`` and ``test.jsonl`` (whichever exist) of the real corpus.

    Raises
    ------
    ValueError
        On a line that is not JSON or lacks a SLURP field (names file and line number).
    """
    lines = []
    for name in ("devel.jsonl", "test.jsonl"):
        path = folder / name
        if not path.is_file():
            continue
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err})") from err
            missing = [k for k in FIELD_ORDER if k not in line]
            if missing:
                raise ValueError(f"{path}:{number}: missing SLURP fields {missing}")
            lines.append(line)
    if not lines:
        raise ValueError(f"{folder}: no devel.jsonl/test.jsonl lines found")
    return lines


def select_real_lines(lines: list[dict], num_intents: int, per_intent: int,
                      rng: random.Random, intents: list[str] | None = None,
                      max_words: int = MAX_WORDS) -> dict[str, list[dict]]:
    """Most frequent intents (or the given ``intents``), up to ``per_intent`` short unique
    sentences each, split.

    Returns
    -------
    dict
        split name -> lines (verbatim copies).
    """
    counts = Counter(line["intent"] for line in lines)
    if intents:
        unknown = sorted(set(intents) - set(counts))
        if unknown:
            raise ValueError(f"intents {unknown} do not occur in the annotations")
    else:
        intents = sorted(counts, key=lambda i: (-counts[i], i))[:num_intents]
    chosen: dict[str, list[dict]] = {s: [] for s in SPLITS}
    skipped_long = 0
    for intent in intents:
        seen, pool = set(), []
        for line in sorted((x for x in lines if x["intent"] == intent),
                           key=lambda x: x["slurp_id"]):
            if line["sentence"] in seen or not line["recordings"]:
                continue
            if len(line["sentence"].split()) > max_words:
                skipped_long += 1
                continue
            seen.add(line["sentence"])
            pool.append(line)
        rng.shuffle(pool)
        for split, part in zip(SPLITS, split_counts(min(per_intent, len(pool)))):
            chosen[split] += [pool.pop(0) for _ in range(part)]
    logger.info("SLURP: intents %s; %d lines longer than %d words not chosen",
                intents, skipped_long, max_words)
    return chosen


def split_counts(n: int) -> tuple[int, int, int]:
    """(train, devel, test) line counts for ``n`` lines: 70/15/15 %, at least 1 each if n>=3."""
    if n < 3:
        return n, 0, 0
    held_out = max(1, int(0.15 * n + 0.5))
    return n - 2 * held_out, held_out, held_out


def parse_annotation(annotation: str) -> tuple[str, list[dict], list[dict]]:
    """SLURP ``sentence_annotation`` -> (sentence, tokens, entities).

    Example
    -------
    >>> s, toks, ents = parse_annotation("wake me up at [time : seven am]")
    >>> s, ents
    ('wake me up at seven am', [{'span': [4, 5], 'type': 'time'}])
    """
    words, entities = [], []
    pos = 0
    for match in ENTITY_RE.finditer(annotation):
        words += annotation[pos:match.start()].split()
        value = match.group(2).split()
        entities.append({"span": list(range(len(words), len(words) + len(value))),
                         "type": match.group(1)})
        words += value
        pos = match.end()
    words += annotation[pos:].split()
    tokens = [{"surface": w, "id": i, "lemma": w, "pos": "X"} for i, w in enumerate(words)]
    return " ".join(words), tokens, entities


def builtin_lines(per_intent: int, rng: random.Random) -> dict[str, list[dict]]:
    """The fallback text: SLURP lines generated from :data:`BUILTIN_TEMPLATES`, split.

    Returns
    -------
    dict
        split name -> lines; recordings are two files (headset + far-field) per line.
    """
    chosen: dict[str, list[dict]] = {s: [] for s in SPLITS}
    slurp_id = 900001
    stamps: set[int] = set()
    for intent, templates in BUILTIN_TEMPLATES.items():
        annotations: list[str] = []
        for _ in range(per_intent * 20):  # draw until enough distinct sentences
            if len(annotations) == per_intent:
                break
            template = rng.choice(templates)
            filled = re.sub(r"\{(\w+)\}", lambda m: rng.choice(BUILTIN_SLOTS[m.group(1)]),
                            template)
            if filled not in annotations:
                annotations.append(filled)
        scenario, action = intent.split("_", 1)
        lines = []
        for annotation in annotations:
            sentence, tokens, entities = parse_annotation(annotation)
            stamp = rng.randint(1_490_000_000, 1_510_000_000)
            while stamp in stamps:
                stamp += 1
            stamps.add(stamp)
            recordings = [{"file": f"audio-{stamp}{suffix}.flac", "wer": 0.0, "ent_wer": 0.0,
                           "status": "correct"} for suffix in ("-headset", "")]
            lines.append({"slurp_id": slurp_id, "sentence": sentence,
                          "sentence_annotation": annotation, "intent": intent,
                          "action": action, "tokens": tokens, "scenario": scenario,
                          "recordings": recordings, "entities": entities})
            slurp_id += 1
        for split, part in zip(SPLITS, split_counts(len(lines))):
            chosen[split] += [lines.pop(0) for _ in range(part)]
    return chosen


def recording_stem(file: str) -> str:
    """``audio-123-headset.flac`` and ``audio-123.flac`` -> ``audio-123`` (one session)."""
    return file.removesuffix(".flac").removesuffix("-headset")


def build(out: str | Path, seed: int = 0, size: str = "small", num_workers: int = 2,
          force: bool = False, annotations: str | Path | None = None, builtin: bool = False,
          num_intents: int = 6, sentences_per_intent: int | None = None,
          recordings_per_line: int | None = None, intents: str | None = None,
          max_words: int = MAX_WORDS) -> dict:
    """Builds ``<out>/slurp`` (see the module docstring).

    Arguments
    ---------
    out : str or Path
    seed : int
    size : str
        ``tiny`` or ``small``.
    num_workers : int
        Parallel espeak-ng processes (at most 2).
    force : bool
        Rebuild even if a finished build is there.
    annotations : str or Path, optional
        Folder with the real ``devel.jsonl``/``test.jsonl`` (default: shared data, if any).
    builtin : bool
        Use the built-in sentences even if real annotations are found.
    num_intents : int
        Most frequent intents kept (real annotations).
    sentences_per_intent : int, optional
        Lines per intent (default by size: tiny 3, small 32).
    recordings_per_line : int, optional
        Recordings kept and synthesized per line (default by size: tiny 1, small 2).
    intents : str, optional
        Comma-separated intents to keep instead of the ``num_intents`` most frequent ones
        (real annotations only).
    max_words : int
        Longest sentence (in words) chosen from the real annotations.

    Returns
    -------
    dict
        Summary: ``root``, ``source`` ("real" or "builtin"), ``lines`` and ``recordings`` per
        split, ``skipped``.

    Example
    -------
    >>> build("corpus", size="tiny", builtin=True)["lines"]   # doctest: +SKIP
    {'train': 6, 'devel': 6, 'test': 6}
    """
    out = Path(out)
    root = out / "slurp"
    per_intent = sentences_per_intent or SIZE_DEFAULTS[size][0]
    per_line = recordings_per_line or SIZE_DEFAULTS[size][1]
    if per_line < 1 or per_intent < 1 or num_intents < 1:
        raise ValueError("--num_intents, --sentences_per_intent and --recordings_per_line "
                         "must be >= 1")
    folder = None if builtin else (Path(annotations) if annotations else shared_annotation_dir())
    if folder is not None and not (folder / "devel.jsonl").is_file() \
            and not (folder / "test.jsonl").is_file():
        raise FileNotFoundError(f"{folder}: no devel.jsonl or test.jsonl (SLURP annotations); "
                                "pass the folder of the real files or --builtin")
    source = "builtin" if folder is None else "real"
    chosen_intents = [i for i in (intents or "").split(",") if i]
    params = build_params(CORPUS, seed, size, source=source, num_intents=num_intents,
                          sentences_per_intent=per_intent, recordings_per_line=per_line,
                          **({"intents": chosen_intents} if chosen_intents else {}),
                          **({"max_words": max_words} if max_words != MAX_WORDS else {}))

    rng = random.Random(seed)
    if folder is None:
        logger.info("SLURP: no real annotations found; using the built-in sentences")
        chosen = builtin_lines(per_intent, rng)
    else:
        logger.info("SLURP: real annotations from %s", folder)
        chosen = select_real_lines(read_annotations(folder), num_intents, per_intent, rng,
                                   chosen_intents, max_words)
    for lines in chosen.values():
        for i, line in enumerate(lines):
            lines[i] = ordered({**line, "recordings": line["recordings"][:per_line]})
    summary = {"root": str(root), "source": source,
               "lines": {s: len(v) for s, v in chosen.items()},
               "recordings": {s: sum(len(x["recordings"]) for x in v)
                              for s, v in chosen.items()}}
    if prepare_out(out, params, force, root):
        return {**summary, "skipped": True}

    voice_rng = random.Random(seed + 1)
    stem_voice: dict[str, object] = {}
    jobs, seen = [], set()
    audio_dir = root / "slurp_real"
    for split in SPLITS:
        for line in chosen[split]:
            for rec in line["recordings"]:
                name = rec["file"]
                if name in seen:
                    raise ValueError(f"recording {name} listed twice (slurp_id "
                                     f"{line['slurp_id']}); the annotations are inconsistent")
                seen.add(name)
                stem = recording_stem(name)
                if stem not in stem_voice:
                    _, voice = SPEAKER_PALETTE[voice_rng.randrange(len(SPEAKER_PALETTE))]
                    stem_voice[stem] = voice.with_prosody(voice_rng.randint(-5, 5),
                                                          voice_rng.uniform(0.95, 1.1))
                voice = stem_voice[stem]
                if not name.endswith("-headset.flac"):  # far-field microphone: quieter
                    voice = voice.with_prosody(amplitude=60)
                jobs.append(SynthesisJob(line["sentence"], voice, audio_dir / name))
    logger.info("SLURP: synthesizing %d recordings into %s", len(jobs), audio_dir)
    durations = run_synthesis_jobs(jobs, num_workers)

    jsonl_dir = root / "dataset" / "slurp"
    jsonl_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (jsonl_dir / f"{split}.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in chosen[split]))
    finish_build(out, params)
    return {**summary, "seconds": round(sum(durations), 1),
            "max_seconds": round(max(durations), 2), "skipped": False}


def main(argv: list[str] | None = None) -> int:
    parser = make_arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", type=Path, default=None,
                        help="folder with the real devel.jsonl/test.jsonl (default: "
                             "$ELP_SHARED_DATA/slurp or <project>/../shared/data/slurp)")
    parser.add_argument("--builtin", action="store_true",
                        help="use the built-in sentences even if real annotations exist")
    parser.add_argument("--num_intents", type=int, default=6)
    parser.add_argument("--sentences_per_intent", type=int, default=None,
                        help="lines per intent (default: tiny 3, small 32)")
    parser.add_argument("--recordings_per_line", type=int, default=None,
                        help="recordings synthesized per line (default: tiny 1, small 2)")
    parser.add_argument("--max_words", type=int, default=MAX_WORDS,
                        help=f"longest sentence chosen, in words (default {MAX_WORDS})")
    parser.add_argument("--intents", default=None,
                        help="comma-separated intents to keep (real annotations) instead of the "
                             "--num_intents most frequent")
    return run_cli(build, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
