#!/usr/bin/env python3
"""Speech Commands v0.02 -> Kaldi data dirs for keyword spotting (data/{train,valid,test}).

Reads the corpus as downloaded (``speech_commands_v0.02.tar.gz`` unpacked): ``<word>/
<speaker>_nohash_<n>.wav`` (16 kHz mono, 1 s or a little less), ``validation_list.txt`` and
``testing_list.txt`` (one ``<word>/<file>.wav`` per line) and ``_background_noise_/*.wav``.
``--corpus-root`` is that folder, or its parent when it is named ``speech_commands_v0.02``.

* Splits: a file listed in ``validation_list.txt`` is in ``valid``, one in
  ``testing_list.txt`` in ``test``, every other word file in ``train`` (the corpus's own
  split, by a hash of the speaker id, so no speaker is in two splits).
* Classes (``--num-classes 12``, the default): the 10 command words (yes no up down left right
  on off stop go), ``_unknown_`` (every other word folder: 25 in v0.02) and ``_silence_``.
  ``--num-classes 35``: one class per word folder, no ``_silence_``.
* ``_unknown_`` is subsampled as in the corpus's reference training script: per split at most
  ``ceil(--unknown-percent / 100 * <command-word utterances of the split>)`` utterances
  (default 10 %), picked evenly over the unknown utterances sorted by (word, utterance id);
  the number dropped is logged. A large value (e.g. 1000) keeps them all.
* ``_silence_``: ``ceil(--silence-percent / 100 * <command-word utterances>)`` 1 s windows
  (default 10 %) per split, cut from the ``_background_noise_/*.wav`` files as Kaldi
  ``segments``: each noise file is divided in time, its first 80 % serving train, the next
  10 % valid and the last 10 % test (no window is heard in two splits); the windows are spread
  evenly over the files (in name order) and over each file's part (they overlap when more are
  needed than fit). Each window is its own speaker (``<utt> <utt>``).
* Every data dir therefore has ``segments``: a word clip is its own recording, cut from 0 to
  its end (``<utt> <utt> 0 -1``); the noise files are recordings ``noise-<file stem>``.
* Utterance ids: ``<speaker>-<word>-<n>`` (e.g. ``0a7c2a8d-yes-0``) and
  ``silence-<noise stem>-<start in ms, 7 digits>``; ``utt2spk`` maps a word clip to its
  speaker id, ``utt2label`` to its class.
* A partial corpus fails here, naming what is missing: ``validation_list.txt``,
  ``testing_list.txt``, a command-word folder, a listed file, or ``_background_noise_/``
  when ``_silence_`` windows are wanted.

Usage:
    python local/data_prep.py --corpus-root /corpora/speech_commands_v0.02 --out data
    python local/data_prep.py --corpus-root /corpora --num-classes 35
"""
from __future__ import annotations

import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import soundfile

from elp.data.kaldi_dir import Segment
from elp.data.prep import (CorpusLayoutError, audio_path, data_prep_parser, log_counts, require_parts,
                           run_data_prep, write_prepared_dir)

logger = logging.getLogger("speech_commands.data_prep")

CORPUS_NAME = "speech_commands_v0.02"
COMMAND_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
"""The 10 keywords of the 12-class task."""
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
NOISE_DIR = "_background_noise_"
LISTS = {"valid": "validation_list.txt", "test": "testing_list.txt"}
SPLITS = ("train", "valid", "test")
NOISE_PARTS = {"train": (0.0, 0.8), "valid": (0.8, 0.9), "test": (0.9, 1.0)}
"""Share of each background-noise file that a split's silence windows are cut from."""
SILENCE_SECONDS = 1.0
_FILE_NAME = re.compile(r"^(?P<speaker>[A-Za-z0-9]+)_nohash_(?P<n>\d+)\.wav$")


def find_root(corpus_root: Path) -> Path:
    """The folder holding the word folders and lists (``corpus_root`` or its
    ``speech_commands_v0.02``)."""
    corpus_root = Path(corpus_root)
    if not (corpus_root / LISTS["valid"]).exists() and (corpus_root / CORPUS_NAME).is_dir():
        return corpus_root / CORPUS_NAME
    if not corpus_root.is_dir():
        raise CorpusLayoutError(f"{corpus_root} is not a folder: --corpus-root must be the "
                                f"unpacked Speech Commands v0.02 folder")
    return corpus_root


def read_list(root: Path, split: str) -> list[str]:
    """The relative paths of ``validation_list.txt`` / ``testing_list.txt`` (each checked)."""
    path = root / LISTS[split]
    if not path.is_file():
        raise CorpusLayoutError(
            f"{path} not found: --corpus-root must be the unpacked Speech Commands v0.02 folder "
            f"(holding {LISTS['valid']}, {LISTS['test']}, the <word>/ folders and {NOISE_DIR}/)")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        parts = entry.split("/")
        if len(parts) != 2 or not _FILE_NAME.match(parts[1]):
            raise CorpusLayoutError(f"{path}:{number}: expected '<word>/<speaker>_nohash_<n>.wav', "
                                    f"got {entry!r}")
        if not (root / entry).is_file():
            raise CorpusLayoutError(f"{path}:{number}: {entry} is listed but {root / entry} does not "
                                    f"exist (incomplete download?)")
        entries.append(entry)
    return entries


def word_files(root: Path) -> list[str]:
    """``<word>/<file>.wav`` of every word folder (folders starting with ``_`` or ``.`` skipped)."""
    files = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name[0] not in "_."):
        for path in sorted(folder.glob("*.wav")):
            if not _FILE_NAME.match(path.name):
                raise CorpusLayoutError(f"{path}: unexpected file name (expected "
                                        f"<speaker>_nohash_<n>.wav)")
            files.append(f"{folder.name}/{path.name}")
    if not files:
        raise CorpusLayoutError(f"no <word>/*.wav files in {root}: --corpus-root must be the "
                                f"unpacked Speech Commands v0.02 folder")
    return files


def utterance_id(relative: str) -> tuple[str, str]:
    """Utterance id and speaker of a word file.

    Examples
    --------
    >>> utterance_id("yes/0a7c2a8d_nohash_1.wav")
    ('0a7c2a8d-yes-1', '0a7c2a8d')
    """
    word, name = relative.split("/")
    match = _FILE_NAME.match(name)
    return f"{match['speaker']}-{word}-{match['n']}", match["speaker"]


def evenly_spaced(items: Sequence[str], count: int) -> list[str]:
    """``count`` items spread evenly over ``items`` (all of them when ``count >= len``).

    Item ``floor(i * len / count)`` is picked for ``i = 0 .. count-1``.

    Examples
    --------
    >>> evenly_spaced(list("abcdefghij"), 3)
    ['a', 'd', 'g']
    """
    if count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def silence_windows(noise_files: Sequence[Path], split: str, count: int) -> list[tuple[str, float]]:
    """``count`` 1 s windows in the split's part of the noise files (module docstring).

    Parameters
    ----------
    noise_files
        The ``_background_noise_/*.wav`` files, sorted.
    split
        ``train``, ``valid`` or ``test`` (a key of :data:`NOISE_PARTS`).
    count
        Windows wanted; file ``k`` gets ``count // F`` of them, plus one for ``k < count % F``.

    Returns
    -------
    list[tuple]
        (noise file, start in seconds, floored to the millisecond).
    """
    if count == 0:
        return []
    if not noise_files:
        raise CorpusLayoutError(f"no {NOISE_DIR}/*.wav files to cut {count} {SILENCE} windows of "
                                f"{split} from; pass --silence-percent 0 for no {SILENCE} class")
    low, high = NOISE_PARTS[split]
    windows = []
    for index, path in enumerate(noise_files):
        share = count // len(noise_files) + (index < count % len(noise_files))
        if share == 0:
            continue
        info = soundfile.info(str(path))
        seconds = info.frames / info.samplerate
        start, length = low * seconds, (high - low) * seconds
        if length < SILENCE_SECONDS:
            raise CorpusLayoutError(
                f"{path}: {seconds:.1f} s is too short for 1 s {SILENCE} windows in the {split} part "
                f"({high - low:.0%} of the file); background noise files must last >= 10 s")
        span = length - SILENCE_SECONDS
        if share > 1 and span / (share - 1) < 0.001:
            raise CorpusLayoutError(f"{path}: {share} {SILENCE} windows of {split} do not fit 1 ms "
                                    f"apart in {length:.1f} s; lower --silence-percent")
        for k in range(share):
            offset = span / 2 if share == 1 else span * k / (share - 1)
            windows.append((path, math.floor((start + offset) * 1000) / 1000))
    return windows


def prepare_speech_commands(corpus_root: Path, out_dir: Path, num_classes: int = 12,
                            silence_percent: float = 10.0, unknown_percent: float = 10.0,
                            validate: bool = True) -> list[Path]:
    """Write ``<out>/{train,valid,test}``; returns their paths.

    Parameters
    ----------
    corpus_root
        The unpacked corpus (or its parent, when the folder is named ``speech_commands_v0.02``).
    out_dir
        Parent of the data dirs.
    num_classes
        12 (10 words, ``_unknown_``, ``_silence_``) or 35 (one class per word folder).
    silence_percent
        ``_silence_`` windows per split, in percent of the split's command-word utterances
        (12 classes only).
    unknown_percent
        Most ``_unknown_`` utterances per split, in percent of its command-word utterances.
    validate
        Validate each dir (opens every audio file, writes ``utt2num_samples``).

    Returns
    -------
    list[Path]
        The train, valid and test data dirs.
    """
    if num_classes not in (12, 35):
        raise ValueError(f"--num-classes must be 12 or 35, got {num_classes}")
    if silence_percent < 0 or unknown_percent < 0:
        raise ValueError("--silence-percent and --unknown-percent must be >= 0")
    root = find_root(Path(corpus_root))
    listed = {split: read_list(root, split) for split in LISTS}
    require_parts(root, COMMAND_WORDS, f"unpack the whole {CORPUS_NAME}.tar.gz into {root}")
    both = sorted(set(listed["valid"]) & set(listed["test"]))
    if both:
        raise CorpusLayoutError(f"{both[0]} is listed in both {LISTS['valid']} and {LISTS['test']} "
                                f"of {root} ({len(both)} such files)")
    split_of = {entry: split for split, entries in listed.items() for entry in entries}
    noise_files = sorted((root / NOISE_DIR).glob("*.wav")) if (root / NOISE_DIR).is_dir() else []

    words: dict[str, list[str]] = {split: [] for split in SPLITS}
    for relative in word_files(root):
        words[split_of.get(relative, "train")].append(relative)
    written = []
    for split in SPLITS:
        wav_scp, utt2spk, utt2label, segments = {}, {}, {}, {}
        unknown = []
        for relative in words[split]:
            utt, speaker = utterance_id(relative)
            word = relative.split("/")[0]
            label = word if num_classes == 35 or word in COMMAND_WORDS else UNKNOWN
            if label == UNKNOWN:
                unknown.append((word, utt))
            wav_scp[utt] = audio_path(root / relative)
            utt2spk[utt], utt2label[utt] = speaker, label
            segments[utt] = Segment(utt, 0.0, -1.0)
        commands = len(wav_scp) - len(unknown)
        if num_classes == 12:
            keep = set(evenly_spaced([utt for _, utt in sorted(unknown)],
                                     math.ceil(commands * unknown_percent / 100)))
            dropped = Counter(word for word, utt in unknown if utt not in keep)
            log_counts(f"{split}: {UNKNOWN} utterances beyond {unknown_percent:g}% of the "
                       f"{commands} command words, not used", dropped, level=logging.INFO)
            for word, utt in unknown:
                if utt not in keep:
                    for mapping in (wav_scp, utt2spk, utt2label, segments):
                        del mapping[utt]
            for path, start in silence_windows(noise_files, split,
                                               math.ceil(commands * silence_percent / 100)):
                recording = f"noise-{path.stem}"
                utt = f"silence-{path.stem}-{round(start * 1000):07d}"
                wav_scp[recording] = audio_path(path)
                utt2spk[utt], utt2label[utt] = utt, SILENCE
                segments[utt] = Segment(recording, start, start + SILENCE_SECONDS)
        log_counts(f"{split}: utterances per class", Counter(utt2label.values()), level=logging.INFO)
        written.append(write_prepared_dir(Path(out_dir) / split, validate=validate, wav_scp=wav_scp,
                                          utt2spk=utt2spk, utt2label=utt2label, segments=segments))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = data_prep_parser(__doc__)
    parser.add_argument("--num-classes", type=int, choices=(12, 35), default=12,
                        help="12: ten words + _unknown_ + _silence_ (default); 35: every word")
    parser.add_argument("--silence-percent", type=float, default=10.0,
                        help="_silence_ windows per split, in %% of its command-word utterances")
    parser.add_argument("--unknown-percent", type=float, default=10.0,
                        help="most _unknown_ utterances per split, in %% of its command-word "
                             "utterances (a large value keeps all)")
    return run_data_prep(parser, lambda args: prepare_speech_commands(
        args.corpus_root, args.out, args.num_classes, args.silence_percent, args.unknown_percent,
        validate=not args.skip_validation), argv)


if __name__ == "__main__":
    raise SystemExit(main())
