#!/usr/bin/env python3
"""Synthetic mini SLURP in the real layout (built-in sentences, espeak-ng audio).

Layout written (exactly the real one)::

    <out>/slurp/dataset/slurp/{train,devel,test}.jsonl
    <out>/slurp/slurp_real/<recordings[].file>          # e.g. audio-1497872916-headset.flac

Every jsonl line is a SLURP object with the real fields in the real order (slurp_id, sentence,
sentence_annotation, intent, action, tokens, scenario, recordings, entities); each recording
``{file, wer, ent_wer, status}`` it lists exists under ``slurp_real/`` (16 kHz mono flac).

Where the text comes from
-------------------------
- **Built-in text** (the default): sentences generated from our own templates
  (:data:`BUILTIN_TEMPLATES`, :data:`BUILTIN_SLOTS`) for six intents whose wording differs
  (weather_query, play_music, news_query, email_query, calendar_set, datetime_query), at most
  :data:`BUILTIN_MAX_WORDS` words each. Per intent, every expansion of the templates is listed
  (sorted), shuffled by a generator seeded with (seed, intent) (:func:`builtin_order`), and
  the first ``--sentences_per_intent`` are split
  70/15/15 % into train/devel/test. Tokens carry ``lemma`` = surface and a placeholder ``pos``
  ("X"); recording names are ``audio-<10 digits>[-headset].flac`` drawn from the seed;
  ``slurp_id`` starts at 900001. The corpus depends on nothing outside the repository: the
  same options give the same bytes on every machine.
- **Real annotations** (only with ``--annotations DIR``): ``devel.jsonl``/``test.jsonl`` of
  the real corpus. The ``--num_intents`` most frequent intents (or ``--intents``) are kept;
  per intent, lines whose sentence is unique and at most ``--max_words`` words long are
  shuffled with the seed and split like the built-in ones. Lines are copied verbatim except
  ``recordings``, which keeps the first ``--recordings_per_line`` listed files.

Recordings that share a name stem (``audio-X-headset.flac`` and ``audio-X.flac``) are the same
session: same voice, the far-field one quieter. Each stem gets a voice from
:data:`~tools.mini_corpus.espeak.SPEAKER_PALETTE` with a small pitch/speed jitter.

Sizes: ``small`` = 6 intents x 32 lines (22/5/5), 2 recordings per line (264 train, 60
devel, 60 test recordings); ``tiny`` = 6 intents x 3 lines (1/1/1), 1 recording per line.

Usage::

    python tools/mini_corpus/slurp.py --out corpus [--seed 0] [--size small]
        [--annotations DIR] [--num_intents 6] [--sentences_per_intent 32]
        [--recordings_per_line 2]
"""
from __future__ import annotations

import itertools
import json
import logging
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
SPLITS = ("train", "devel", "test")
FIELD_ORDER = ("slurp_id", "sentence", "sentence_annotation", "intent", "action", "tokens",
               "scenario", "recordings", "entities")
MAX_WORDS = 12
"""Real lines longer than this are not chosen (keeps every recording short)."""

# size -> (lines per intent, recordings per line)
SIZE_DEFAULTS: dict[str, tuple[int, int]] = {"tiny": (3, 1), "small": (32, 2)}

ENTITY_RE = re.compile(r"\[\s*([a-z_]+)\s*:\s*([^\]]+?)\s*\]")

# The built-in text (the default source): our own templates, six intents whose wording
# differs (weather, music, news, email, calendar, time). ``{slot}`` is filled with every value
# of BUILTIN_SLOTS[slot]; a ``[type : value]`` group is a SLURP entity.
BUILTIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "weather_query": (
        "what is the weather [date : {wdate}]",
        "weather forecast for [place_name : {wplace}]",
        "weather in [place_name : {wplace}] [date : {wdate}]",
        "will it rain [date : {wdate}]",
        "will it rain in [place_name : {wplace}]",
        "is it [weather_descriptor : {sky}] outside",
        "is it going to be [weather_descriptor : {sky}]",
        "do i need an umbrella [date : {wdate}]",
        "temperature in [place_name : {wplace}]",
    ),
    "play_music": (
        "play some [music_genre : {genre}]",
        "play [music_genre : {genre}] music",
        "play songs by [artist_name : {artist}]",
        "put on some [artist_name : {artist}]",
        "i want to hear [music_genre : {genre}]",
        "start my [playlist_name : {playlist}] playlist",
        "shuffle my [playlist_name : {playlist}] playlist",
        "listen to [artist_name : {artist}]",
        "play [artist_name : {artist}] please",
        "i feel like [music_genre : {genre}]",
        "play the next song",
    ),
    "news_query": (
        "what is the latest news",
        "read me the [news_topic : {topic}] news",
        "any [news_topic : {topic}] headlines",
        "give me the [news_topic : {topic}] headlines",
        "latest [news_topic : {topic}] stories please",
        "show me news about [news_topic : {topic}]",
        "news about [news_topic : {topic}] from [media_type : {paper}]",
        "what does the [media_type : {paper}] say",
        "read the [media_type : {paper}] headlines",
        "[media_type : {paper}] news please",
    ),
    "email_query": (
        "do i have new emails",
        "check my inbox",
        "any emails from [person : {person}]",
        "read my latest email",
        "did [person : {person}] email me [date : {past}]",
        "show emails from [person : {person}]",
        "read the email from [person : {person}]",
        "how many unread emails",
        "check mail from [person : {person}] [date : {past}]",
        "open my [email_folder : {folder}] folder",
    ),
    "calendar_set": (
        "remind me about [event_name : {event}] [date : {cdate}]",
        "add [event_name : {event}] to my calendar",
        "schedule [event_name : {event}] at [time : {time}]",
        "set a reminder for [event_name : {event}]",
        "book [event_name : {event}] for [date : {cdate}]",
        "put [event_name : {event}] in my diary",
        "create an event at [time : {time}] [date : {cdate}]",
    ),
    "datetime_query": (
        "what time is it",
        "what time is it now",
        "what time is it in [place_name : {dplace}]",
        "what is the time in [place_name : {dplace}]",
        "current time in [place_name : {dplace}]",
        "time zone of [place_name : {dplace}]",
        "what is the date [date : {ddate}]",
        "what day is it [date : {ddate}]",
        "what date is it [date : {ddate}]",
        "which date is [event_name : {holiday}]",
        "what day is [event_name : {holiday}]",
        "when is [event_name : {holiday}]",
        "how many days until [event_name : {holiday}]",
        "how long until [event_name : {holiday}]",
        "is it [date : {weekday}] today",
        "is it [date : {weekday}] tomorrow",
        "tell me the time",
        "what month is it",
        "what year is it",
        "what is the time now",
    ),
}
BUILTIN_SLOTS: dict[str, tuple[str, ...]] = {
    # each intent has its own slot values (the words tell the intents apart)
    "wdate": ("today", "tonight", "tomorrow morning", "this weekend", "right now"),
    "wplace": ("london", "paris", "dublin", "madrid", "oslo", "rome", "lisbon", "vienna"),
    "sky": ("sunny", "windy", "cold", "warm", "cloudy", "foggy", "hot", "humid"),
    "genre": ("jazz", "rock", "classical", "pop", "blues", "reggae", "country", "folk", "soul",
              "metal"),
    "artist": ("adele", "queen", "the beatles", "madonna", "coldplay", "elvis", "shakira",
               "abba", "bowie", "rihanna"),
    "playlist": ("workout", "morning", "party", "study", "dinner", "running", "chill",
                 "road trip"),
    "topic": ("sports", "politics", "science", "business", "technology", "health",
              "football", "election"),
    "paper": ("bbc", "guardian", "times", "cnn", "reuters", "local paper"),
    "person": ("john", "mary", "my boss", "anna", "peter", "susan", "mum", "the bank"),
    "past": ("yesterday", "last night", "last week", "recently"),
    "folder": ("work", "spam", "personal", "archive", "travel"),
    "event": ("the meeting", "the dentist", "lunch", "yoga class", "the team call",
              "a haircut", "football practice", "the doctor"),
    "cdate": ("on monday", "on friday", "next week", "on thursday", "next month"),
    "time": ("nine am", "noon", "three pm", "six thirty", "ten", "four pm"),
    "dplace": ("tokyo", "sydney", "new york", "chicago", "berlin", "boston", "toronto",
               "denver"),
    "ddate": ("today", "tomorrow", "next sunday"),
    "holiday": ("christmas", "easter", "halloween", "new year", "my birthday",
                "the weekend"),
    "weekday": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
}
BUILTIN_MAX_WORDS = 6
"""Every built-in sentence has at most this many words (longer expansions are not used)."""

BUILTIN_FIRST_ID = 900001
"""``slurp_id`` of the first built-in line (real SLURP ids are below 20000)."""


def builtin_annotations(intent: str, max_words: int = BUILTIN_MAX_WORDS) -> list[str]:
    """Every expansion of the intent's templates (sorted, unique, at most ``max_words`` words).

    Parameters
    ----------
    intent
        A key of :data:`BUILTIN_TEMPLATES`.
    max_words
        Longest sentence kept (capped at :data:`BUILTIN_MAX_WORDS`).

    Returns
    -------
    list[str]
        SLURP ``sentence_annotation`` strings, e.g. ``"will it rain [date : today]"``.

    Examples
    --------
    >>> builtin_annotations("play_music")[:2]
    ['i feel like [music_genre : blues]', 'i feel like [music_genre : classical]']
    """
    if intent not in BUILTIN_TEMPLATES:
        raise ValueError(f"no built-in sentences for intent {intent!r}; choose from "
                         f"{', '.join(sorted(BUILTIN_TEMPLATES))} or pass --annotations DIR")
    limit = min(max_words, BUILTIN_MAX_WORDS)
    found: set[str] = set()
    for template in BUILTIN_TEMPLATES[intent]:
        slots = re.findall(r"\{(\w+)\}", template)
        for values in itertools.product(*(BUILTIN_SLOTS[s] for s in slots)):
            filled = iter(values)
            annotation = re.sub(r"\{\w+\}", lambda _: next(filled), template)
            if len(parse_annotation(annotation)[0].split()) <= limit:
                found.add(annotation)
    return sorted(found)


def builtin_order(intent: str, seed: int = 0, max_words: int = BUILTIN_MAX_WORDS) -> list[str]:
    """The intent's built-in annotations in the order the corpus takes them.

    The sorted expansions of :func:`builtin_annotations` shuffled by a generator seeded with
    ``(seed, intent)`` only, so an intent's order does not depend on the other intents or on
    the corpus size: a corpus with ``--sentences_per_intent N`` uses the first N, and text
    taken from position ``N`` on (``tools/pretrain_text.py``) never overlaps it.

    Examples
    --------
    >>> order = builtin_order("news_query", seed=0)
    >>> sorted(order) == builtin_annotations("news_query"), order == builtin_order("news_query")
    (True, True)
    """
    order = builtin_annotations(intent, max_words)
    random.Random(f"slurp-builtin-{seed}-{intent}").shuffle(order)
    return order


def ordered(line: dict) -> dict:
    """The line with SLURP's field order (extra fields, if any, follow)."""
    return {**{k: line[k] for k in FIELD_ORDER if k in line},
            **{k: v for k, v in line.items() if k not in FIELD_ORDER}}


def read_annotations(folder: Path) -> list[dict]:
    """Read ``devel.jsonl`` and ``test.jsonl`` (whichever exist) of the real corpus.

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

    Examples
    --------
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


def builtin_lines(intents: list[str], per_intent: int, seed: int,
                  max_words: int = BUILTIN_MAX_WORDS) -> dict[str, list[dict]]:
    """SLURP lines from the built-in text: ``per_intent`` sentences of each intent, split.

    Per intent, the first ``per_intent`` annotations of :func:`builtin_order` are split
    70/15/15 % (:func:`split_counts`). Tokens carry
    ``lemma`` = surface and a placeholder ``pos`` ("X"); each line lists two recordings
    (``audio-<10 digits>-headset.flac`` and ``audio-<same>.flac``, one session).

    Parameters
    ----------
    intents
        Keys of :data:`BUILTIN_TEMPLATES`, in the order their lines are written.
    per_intent
        Lines per intent.
    seed
        Orders the sentences and draws the recording names.
    max_words
        Longest sentence used.

    Returns
    -------
    dict
        split name -> lines.

    Raises
    ------
    ValueError
        If an intent has fewer than ``per_intent`` built-in sentences (names the option).
    """
    chosen: dict[str, list[dict]] = {s: [] for s in SPLITS}
    slurp_id = BUILTIN_FIRST_ID
    stamps: set[int] = set()
    rng = random.Random(seed)
    for intent in intents:
        annotations = builtin_order(intent, seed, max_words)
        if len(annotations) < per_intent:
            raise ValueError(f"intent {intent} has {len(annotations)} built-in sentences of at "
                             f"most {max_words} words, fewer than --sentences_per_intent "
                             f"{per_intent}; lower it or raise --max_words")
        scenario, action = intent.split("_", 1)
        lines = []
        for annotation in annotations[:per_intent]:
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
          force: bool = False, annotations: str | Path | None = None,
          num_intents: int | None = None, sentences_per_intent: int | None = None,
          recordings_per_line: int | None = None, intents: str | None = None,
          max_words: int = MAX_WORDS) -> dict:
    """Build ``<out>/slurp`` (see the module docstring).

    Parameters
    ----------
    size
        ``tiny`` or ``small``.
    num_workers
        Parallel espeak-ng processes (at most 2).
    force
        Rebuild even if a finished build is there.
    annotations
        Folder with the real ``devel.jsonl``/``test.jsonl``; None (the default) uses the
        built-in text, so the corpus depends on nothing outside the repository.
    num_intents
        Intents kept: the most frequent ones of the real annotations, the first ones (in
        sorted order) of the built-in text; default 6 (all built-in intents).
    sentences_per_intent
        Lines per intent (default by size: tiny 3, small 32).
    recordings_per_line
        Recordings kept and synthesized per line (default by size: tiny 1, small 2).
    intents
        Comma-separated intents to keep instead of ``num_intents``.
    max_words
        Longest sentence (in words) used.

    Returns
    -------
    dict
        Summary: ``root``, ``source`` ("builtin" or "real"), ``intents``, ``lines`` and
        ``recordings`` per split, ``skipped``.

    Examples
    --------
    >>> build("corpus", size="tiny")["lines"]   # doctest: +SKIP
    {'train': 6, 'devel': 6, 'test': 6}
    """
    out = Path(out)
    root = out / "slurp"
    per_intent = sentences_per_intent or SIZE_DEFAULTS[size][0]
    per_line = recordings_per_line or SIZE_DEFAULTS[size][1]
    if per_line < 1 or per_intent < 1 or (num_intents is not None and num_intents < 1):
        raise ValueError("--num_intents, --sentences_per_intent and --recordings_per_line "
                         "must be >= 1")
    folder = Path(annotations) if annotations else None
    if folder is not None and not (folder / "devel.jsonl").is_file() \
            and not (folder / "test.jsonl").is_file():
        raise FileNotFoundError(f"{folder}: no devel.jsonl or test.jsonl (SLURP annotations); "
                                "pass the folder of the real files, or omit --annotations to "
                                "use the built-in text")
    source = "builtin" if folder is None else "real"
    chosen_intents = [i for i in (intents or "").split(",") if i]
    params = build_params(CORPUS, seed, size, source=source,
                          num_intents=num_intents or len(BUILTIN_TEMPLATES),
                          sentences_per_intent=per_intent, recordings_per_line=per_line,
                          **({"intents": chosen_intents} if chosen_intents else {}),
                          **({"max_words": max_words} if max_words != MAX_WORDS else {}))

    if folder is None:
        if not chosen_intents:
            chosen_intents = sorted(BUILTIN_TEMPLATES)[:num_intents or len(BUILTIN_TEMPLATES)]
        for intent in chosen_intents:
            builtin_annotations(intent)  # raises on an intent without built-in text
        chosen = builtin_lines(chosen_intents, per_intent, seed, max_words)
    else:
        logger.info("SLURP: real annotations from %s", folder)
        chosen = select_real_lines(read_annotations(folder), num_intents or len(BUILTIN_TEMPLATES),
                                   per_intent, random.Random(seed), chosen_intents, max_words)
    for lines in chosen.values():
        for i, line in enumerate(lines):
            lines[i] = ordered({**line, "recordings": line["recordings"][:per_line]})
    summary = {"root": str(root), "source": source,
               "intents": sorted({x["intent"] for v in chosen.values() for x in v}),
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
                        help="folder with the real SLURP devel.jsonl/test.jsonl to take the "
                             "sentences from (default: the built-in text)")
    parser.add_argument("--num_intents", type=int, default=None,
                        help="intents kept (default 6)")
    parser.add_argument("--sentences_per_intent", type=int, default=None,
                        help="lines per intent (default: tiny 3, small 32)")
    parser.add_argument("--recordings_per_line", type=int, default=None,
                        help="recordings synthesized per line (default: tiny 1, small 2)")
    parser.add_argument("--max_words", type=int, default=MAX_WORDS,
                        help=f"longest sentence used, in words (default {MAX_WORDS}; the "
                             f"built-in sentences have at most {BUILTIN_MAX_WORDS})")
    parser.add_argument("--intents", default=None,
                        help="comma-separated intents to keep instead of --num_intents "
                             f"(built-in: {','.join(sorted(BUILTIN_TEMPLATES))})")
    return run_cli(build, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
