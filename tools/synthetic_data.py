#!/usr/bin/env python3
"""Kaldi data dirs of synthetic audio at a corpus's real utterance lengths (GPU load tests).

The mini corpora (``tools/mini_corpus``) are short espeak-ng sentences: right for checking a
recipe on CPU, far too short to say what a GPU does with LibriSpeech's 12.7 s or VoxCeleb's
minutes-long test files. This tool writes data dirs whose audio is a noisy harmonic signal (no
speech content: the figures it serves are throughput and memory, never accuracy) with
durations drawn from a gamma distribution of the given mean, clipped to [min, max] seconds,
plus the tables each task reads: ``text`` (random words, 2.7 per second as read speech),
``utt2label`` (classes in turn), ``utt2spk`` and, for verification test sets, ``trials``. Stage 1 of a recipe
then validates it like any other data dir. Used by ``tools/gpu_check.sh``.

Usage::

    python tools/synthetic_data.py --out data --kind asr --speakers 40 \\
        --set train_clean_100:800:12.7:1:24.5 --set dev_clean:64:7.2:1:32

``--set NAME:UTTERANCES:MEAN_S[:MIN_S[:MAX_S]]``, any number of times. ``--kind``: ``asr``
(text), ``sv`` (speakers; sets named ``test*`` get trials and speakers of their own; others
share the training speakers), ``classify`` (``--labels`` classes in ``utt2label``).

Examples
--------
>>> import tempfile
>>> from elp.data.kaldi_dir import read_data_dir
>>> out = Path(tempfile.mkdtemp())
>>> main(["--out", str(out), "--kind", "sv", "--speakers", "4", "--set", "train:8:1.5:1:2",
...       "--set", "test:6:2:1:3"])
0
>>> train, test = read_data_dir(out / "train"), read_data_dir(out / "test")
>>> len(train.wav_scp), len(set(train.utt2spk.values())), len(test.trials) > 0
(8, 4, True)
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import soundfile

from elp.data.kaldi_dir import Trial, write_data_dir

SAMPLE_RATE = 16000
WORDS_PER_SECOND = 2.7  # read speech (LibriSpeech: about 2.7 words/s)
#: upper-case words without punctuation, as LibriSpeech's transcripts
VOCABULARY = [f"{a}{b}" for a in ("KA", "TO", "MI", "RE", "SU", "NO", "LA", "PE") for b in ("N", "ST", "RO", "LE", "D")]


def parse_set(spec: str) -> tuple[str, int, float, float, float]:
    """``NAME:UTTERANCES:MEAN_S[:MIN_S[:MAX_S]]`` -> (name, count, mean, min, max).

    Examples
    --------
    >>> parse_set("dev:10:4.5")
    ('dev', 10, 4.5, 1.0, 13.5)
    """
    parts = spec.split(":")
    if not 3 <= len(parts) <= 5:
        raise SystemExit(f"--set {spec!r}: expected NAME:UTTERANCES:MEAN_S[:MIN_S[:MAX_S]]")
    name, count, mean = parts[0], int(parts[1]), float(parts[2])
    low = float(parts[3]) if len(parts) > 3 else 1.0
    high = float(parts[4]) if len(parts) > 4 else 3 * mean
    if count < 2 or not 0 < low <= mean <= high:
        raise SystemExit(f"--set {spec!r}: need at least 2 utterances and 0 < MIN_S <= MEAN_S <= MAX_S")
    return name, count, mean, low, high


def synthetic_audio(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A noisy harmonic signal with a slow amplitude envelope, [samples] float32 in [-1, 1]."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = rng.uniform(90, 250) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t) ** 2
    signal = 0.1 * envelope * voiced + 0.01 * rng.standard_normal(t.size)
    return np.clip(signal, -1, 1).astype(np.float32)


def _write_wav(path: str, seconds: float, seed: int) -> None:
    soundfile.write(path, synthetic_audio(np.random.default_rng(seed), seconds), SAMPLE_RATE, subtype="PCM_16")


def write_set(out: Path, name: str, count: int, mean: float, low: float, high: float, kind: str,
              speakers: list[str], labels: int, rng: np.random.Generator, processes: int = 1) -> None:
    """Write one data dir ``out/name`` and its audio (``out/name/wav``, ``processes`` writers)."""
    wav_dir = out / name / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    shape = 4.0  # gamma shape: a right-skewed length distribution like real corpora
    durations = np.clip(rng.gamma(shape, mean / shape, count), low, high)
    durations[0] = high  # the longest utterance is always there: evaluation memory meets its worst case
    wav_scp, utt2spk, text, utt2label, jobs = {}, {}, {}, {}, []
    for index, seconds in enumerate(durations):
        speaker = speakers[index % len(speakers)]
        utt = f"{speaker}-{name}-{index:06d}"
        path = wav_dir / f"{utt}.wav"
        jobs.append((str(path), float(seconds), int(rng.integers(2**31))))
        wav_scp[utt], utt2spk[utt] = str(path.resolve()), speaker
        text[utt] = " ".join(rng.choice(VOCABULARY, max(1, int(seconds * WORDS_PER_SECOND))))
        utt2label[utt] = f"class{index % labels}"  # every class present once a set has `labels` utterances
    with multiprocessing.Pool(processes) as pool:
        pool.starmap(_write_wav, jobs, chunksize=16)
    trials = None
    if kind == "sv" and name.startswith("test"):
        utts = sorted(wav_scp)
        trials = [Trial(a, b, utt2spk[a] == utt2spk[b]) for i, a in enumerate(utts) for b in utts[i + 1:]]
    write_data_dir(out / name, wav_scp=wav_scp, utt2spk=utt2spk, text=text if kind == "asr" else None,
                   utt2label=utt2label if kind == "classify" else None, trials=trials)


def main(argv: list[str]) -> int:
    """Write every ``--set`` (see the module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where the data dirs go (e.g. data)")
    parser.add_argument("--kind", required=True, choices=["asr", "sv", "classify"])
    parser.add_argument("--set", action="append", required=True, dest="sets", metavar="NAME:N:MEAN_S[:MIN_S[:MAX_S]]")
    parser.add_argument("--speakers", type=int, default=20, help="speakers of the non-test sets")
    parser.add_argument("--labels", type=int, default=4, help="classes (--kind classify)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="processes writing audio")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    train_speakers = [f"spk{index:04d}" for index in range(args.speakers)]
    for spec in args.sets:
        name, count, mean, low, high = parse_set(spec)
        # verification test speakers are unseen; every other set shares the training speakers
        speakers = ([f"test{index:04d}" for index in range(max(2, count // 3))]
                    if args.kind == "sv" and name.startswith("test") else train_speakers)
        write_set(args.out, name, count, mean, low, high, args.kind, speakers, args.labels, rng, args.jobs)
        print(f"{args.out / name}: {count} utterances, mean {mean:g} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
