#!/usr/bin/env python3
"""Synthetic mini Speech Commands v0.02 in the real layout (espeak-ng, 1 s clips).

Layout written (the real one)::

    <out>/speech_commands_v0.02/<word>/<speaker>_nohash_<n>.wav   # 16 kHz mono 16-bit, 1 s
    <out>/speech_commands_v0.02/validation_list.txt               # "<word>/<file>.wav" lines
    <out>/speech_commands_v0.02/testing_list.txt
    <out>/speech_commands_v0.02/_background_noise_/{white,pink,brown}_noise.wav  (+ README.md)
    <out>/speech_commands_v0.02/README.md

Words: the 35 words of v0.02 (:data:`COMMAND_WORDS` + :data:`AUXILIARY_WORDS`). The mini
recipe is the usual 12-class task: the 10 command words, ``_unknown_`` (the 25 auxiliary
words) and ``_silence_`` (1 s windows of the background noise, cut by data preparation).

Speakers
--------
A speaker is an espeak-ng voice: variant + pitch + speed (:func:`candidate_voices`). Its id
is the first 8 hex digits of the SHA-1 of ``"<variant>/p<pitch>/s<speed>"`` (the real ids are
8 hex digits too). Every speaker says each command word once (``_nohash_0``) and
:data:`UNKNOWN_PER_SPEAKER` auxiliary word(s), taken in turn from a seeded permutation, so an
auxiliary word is said far less often than a command word (as in the real corpus).

The split rule (the real corpus's, reimplemented; :func:`which_split`)
---------------------------------------------------------------------
The real corpus puts a file in a split by its speaker id alone, so one speaker's files are all
in one split and the split of a file never changes when files are added: take the file name
up to ``_nohash_`` (the speaker id), compute its SHA-1 as a 160-bit integer, keep the
remainder modulo 2**27 (a value in 0 .. 2**27-1, "2**27 - 1 is the most files per class
the scheme expects" + 1), scale it to a percentage by multiplying by ``100 / (2**27 - 1)``;
below 10 the file is in ``validation_list.txt``, below 20 in ``testing_list.txt``, otherwise
in training (which has no list: it is every other file). The builder walks the candidate
voices in a seeded order and keeps the first ones whose id falls in each split until the split
has its number of speakers (:data:`SPEAKERS`), so the split is exactly the real rule's.

Clips
-----
Each word is rendered by espeak-ng (silence trimmed, 80 ms kept), scaled by a gain in
[0.4, 1.0] and placed at a random offset in a 1.0 s clip (exactly 16000 samples) over a low
noise floor (Gaussian, standard deviation 0.002). Gain, offset and floor are drawn from a
generator seeded by the seed and the file's relative path, so builds are byte-identical. The
background noise files are 20 s each: white, pink (1/f power) and brown (1/f^2 power, above
20 Hz) noise at an RMS of 0.1, from a generator seeded by the seed and the file name.

Sizes (speakers train/validation/test; clips = speakers x (10 + 1)):

- ``small``: 24/4/4 speakers: 264/44/44 clips (240/40/40 of command words, 24/4/4
  auxiliary); about 350 espeak-ng calls, a few seconds.
- ``tiny``: 2/1/1 speakers: 22/11/11 clips.

Usage::

    python tools/mini_corpus/speech_commands.py --out corpus [--seed 0] [--size small]

A finished build leaves ``<out>/.mini_speech_commands.done``; a rerun with the same options
returns at once.
"""
from __future__ import annotations

import hashlib
import logging
import random
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``tools.mini_corpus`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.mini_corpus.espeak import (  # noqa: E402
    SAMPLE_RATE,
    EspeakError,
    SynthesisJob,
    Voice,
    build_params,
    check_voice,
    finish_build,
    make_arg_parser,
    prepare_out,
    run_cli,
    run_synthesis_jobs,
    write_audio,
)

logger = logging.getLogger("mini_corpus")

CORPUS = "speech_commands"
ROOT_NAME = "speech_commands_v0.02"
"""Folder created inside ``--out`` (the corpus root of data preparation)."""

COMMAND_WORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off",
                                  "stop", "go")
"""The 10 words of the 12-class task."""

AUXILIARY_WORDS: tuple[str, ...] = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine",
    "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero",
    "backward", "forward", "follow", "learn", "visual",
)
"""The other 25 words of v0.02 (``_unknown_`` in the 12-class task)."""

NOISE_FILES: tuple[str, ...] = ("white_noise.wav", "pink_noise.wav", "brown_noise.wav")
NOISE_SECONDS = 20
NOISE_RMS = 0.1
CLIP_SAMPLES = SAMPLE_RATE
"""Every word clip is exactly 1 s."""
FLOOR_STD = 0.002
UNKNOWN_PER_SPEAKER = 1

SPLITS = ("training", "validation", "testing")
SPEAKERS: dict[str, dict[str, int]] = {
    "tiny": {"training": 2, "validation": 1, "testing": 1},
    "small": {"training": 24, "validation": 4, "testing": 4},
}
"""Speakers per split and size."""

VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "Andy", "Annie", "linda", "steph", "adam", "john",
    "robert", "david", "max", "paul", "edward", "ed",
)
"""espeak-ng variants used as speakers (checked against ``espeak-ng --voices=variant``)."""
PITCHES: tuple[int, ...] = (35, 50, 65)
SPEEDS: tuple[int, ...] = (140, 175)

MAX_FILES_PER_CLASS = 2 ** 27 - 1
"""The real corpus's constant of its split rule (see :func:`which_split`)."""


def which_split(file_name: str, validation_percent: float = 10.0,
                testing_percent: float = 10.0) -> str:
    """The split of a Speech Commands file by the real corpus's rule (module docstring).

    Parameters
    ----------
    file_name
        A file name or path (``left/3b3d2f59_nohash_1.wav``) or a bare speaker id.
    validation_percent, testing_percent
        Shares of the hash range (10 and 10 in the real corpus).

    Returns
    -------
    str
        ``"validation"``, ``"testing"`` or ``"training"``.

    Examples
    --------
    >>> which_split("yes/0a7c2a8d_nohash_0.wav") == which_split("0a7c2a8d")
    True
    >>> sorted({which_split(f"{i:08x}") for i in range(100)})
    ['testing', 'training', 'validation']
    """
    speaker = Path(file_name).name.split("_nohash_")[0]
    digest = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    percent = (digest % (MAX_FILES_PER_CLASS + 1)) * (100.0 / MAX_FILES_PER_CLASS)
    if percent < validation_percent:
        return "validation"
    if percent < validation_percent + testing_percent:
        return "testing"
    return "training"


def speaker_id(voice: Voice) -> str:
    """8 hex digits naming a voice, e.g. ``speaker_id(Voice("m3", 50, 140))``.

    Examples
    --------
    >>> len(speaker_id(Voice("m3", pitch=50, speed=140)))
    8
    """
    key = f"{voice.variant}/p{voice.pitch}/s{voice.speed}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]


def candidate_voices() -> list[Voice]:
    """Every (variant, pitch, speed) combination, in a fixed order."""
    return [Voice(variant, pitch=pitch, speed=speed)
            for variant in VARIANTS for pitch in PITCHES for speed in SPEEDS]


def choose_speakers(seed: int, size: str) -> dict[str, list[tuple[str, Voice]]]:
    """Speakers of each split: the first voices (in a seeded order) whose id the split rule
    puts there, until :data:`SPEAKERS` is met.

    Returns
    -------
    dict
        split -> [(speaker id, voice), ...].

    Examples
    --------
    >>> chosen = choose_speakers(0, "tiny")
    >>> {s: len(v) for s, v in chosen.items()}
    {'training': 2, 'validation': 1, 'testing': 1}
    >>> all(which_split(spk) == s for s, v in chosen.items() for spk, _ in v)
    True
    """
    if size not in SPEAKERS:
        raise ValueError(f"unknown --size {size!r}; choose one of {sorted(SPEAKERS)}")
    wanted = SPEAKERS[size]
    voices = candidate_voices()
    random.Random(seed).shuffle(voices)
    chosen: dict[str, list[tuple[str, Voice]]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    for voice in voices:
        spk = speaker_id(voice)
        if spk in seen:
            raise ValueError(f"two voices share the speaker id {spk}; change VARIANTS")
        seen.add(spk)
        split = which_split(spk)
        if len(chosen[split]) < wanted[split]:
            chosen[split].append((spk, voice))
    short = {s: (len(chosen[s]), wanted[s]) for s in SPLITS if len(chosen[s]) < wanted[s]}
    if short:
        raise ValueError(f"not enough candidate voices for the splits {short}; add VARIANTS")
    return chosen


def plan_files(seed: int, size: str) -> list[tuple[str, str, Voice]]:
    """Every clip of the corpus (no audio yet).

    Returns
    -------
    list[tuple]
        ``(split, relative path, voice)``, e.g.
        ``("training", "yes/1d4e5a06_nohash_0.wav", Voice(...))``.
    """
    rng = random.Random(seed + 1)
    auxiliary = list(AUXILIARY_WORDS)
    rng.shuffle(auxiliary)
    turn = 0
    plan = []
    for split, speakers in choose_speakers(seed, size).items():
        for spk, voice in speakers:
            words = list(COMMAND_WORDS)
            for _ in range(UNKNOWN_PER_SPEAKER):
                words.append(auxiliary[turn % len(auxiliary)])
                turn += 1
            plan += [(split, f"{word}/{spk}_nohash_0.wav", voice) for word in words]
    return plan


def _clip_rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{name}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def place_in_clip(wav: np.ndarray, rng: np.random.Generator, name: str = "") -> np.ndarray:
    """A 1 s clip: ``wav`` scaled and placed at a random offset over a low noise floor.

    Parameters
    ----------
    wav
        float32 [T], T <= 16000 (a trimmed single word).
    name
        Named in the error for a too long word.

    Returns
    -------
    np.ndarray
        float32 [16000] in [-1, 1].

    Examples
    --------
    >>> clip = place_in_clip(np.ones(4000, dtype="float32") * 0.5, np.random.default_rng(0))
    >>> clip.shape, bool(np.abs(clip).max() <= 0.5 + 0.01)
    ((16000,), True)
    """
    if wav.size > CLIP_SAMPLES:
        raise EspeakError(f"{name}: the word lasts {wav.size / SAMPLE_RATE:.2f} s, longer than "
                          f"a 1 s clip; use a faster voice (SPEEDS)")
    gain = rng.uniform(0.4, 1.0)
    offset = int(rng.integers(0, CLIP_SAMPLES - wav.size + 1))
    clip = rng.normal(0.0, FLOOR_STD, CLIP_SAMPLES)
    clip[offset:offset + wav.size] += gain * wav
    return np.clip(clip, -1.0, 32767 / 32768).astype(np.float32)


def make_noise(kind: str, rng: np.random.Generator, seconds: float = NOISE_SECONDS,
               rms: float = NOISE_RMS) -> np.ndarray:
    """White, pink or brown noise at a given RMS.

    Parameters
    ----------
    kind
        ``white``, ``pink`` (power ~ 1/f) or ``brown`` (power ~ 1/f^2 above 20 Hz).

    Returns
    -------
    np.ndarray
        float32 [seconds * 16000].

    Examples
    --------
    >>> x = make_noise("pink", np.random.default_rng(0), seconds=1.0)
    >>> x.shape, round(float(np.sqrt(np.mean(x.astype("float64") ** 2))), 3)
    ((16000,), 0.1)
    """
    n = int(seconds * SAMPLE_RATE)
    white = rng.standard_normal(n)
    if kind == "white":
        noise = white
    else:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        if kind == "pink":
            shape = np.where(freqs > 0, 1.0 / np.sqrt(np.maximum(freqs, 1e-9)), 0.0)
        elif kind == "brown":
            shape = np.where(freqs >= 20.0, 1.0 / np.maximum(freqs, 1e-9), 0.0)
        else:
            raise ValueError(f"unknown noise kind {kind!r} (white, pink or brown)")
        noise = np.fft.irfft(spectrum * shape, n)
    noise = noise * (rms / np.sqrt(np.mean(noise ** 2)))
    return np.clip(noise, -1.0, 32767 / 32768).astype(np.float32)


NOISE_README = """\
Synthetic background noise of the elp mini Speech Commands corpus (not the real recordings):
white_noise.wav, pink_noise.wav (power ~ 1/f) and brown_noise.wav (power ~ 1/f^2 above
20 Hz), {seconds} s each, 16 kHz mono 16-bit, RMS {rms}. Data preparation cuts the _silence_
class out of these files.
"""

ROOT_README = """\
Synthetic mini Speech Commands v0.02, built by tools/mini_corpus/speech_commands.py of elp
with espeak-ng (seed {seed}, size {size}). Same layout as the real corpus: <word>/
<speaker>_nohash_<n>.wav (16 kHz mono 16-bit, 1 s), validation_list.txt, testing_list.txt
(split by a hash of the speaker id, as in the real corpus), _background_noise_/.
"""


def build(out: str | Path, seed: int = 0, size: str = "small", num_workers: int = 2,
          force: bool = False) -> dict:
    """Build ``<out>/speech_commands_v0.02`` (see the module docstring).

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
        Summary: ``root``, ``speakers`` and ``clips`` per split, ``skipped``.

    Examples
    --------
    >>> build("corpus", size="tiny")["clips"]   # doctest: +SKIP
    {'training': 22, 'validation': 11, 'testing': 11}
    """
    out = Path(out)
    root = out / ROOT_NAME
    params = build_params(CORPUS, seed, size)
    plan = plan_files(seed, size)
    summary = {"root": str(root),
               "speakers": {s: len({p[1].split("/")[1].split("_")[0] for p in plan
                                    if p[0] == s}) for s in SPLITS},
               "clips": {s: sum(p[0] == s for p in plan) for s in SPLITS}}
    if prepare_out(out, params, force, root):
        return {**summary, "skipped": True}
    for voice in {p[2] for p in plan}:
        check_voice(voice)

    def transform(job: SynthesisJob, wav: np.ndarray) -> np.ndarray:
        name = str(job.path.relative_to(root))
        return place_in_clip(wav, _clip_rng(seed, name), name)

    jobs = [SynthesisJob(rel.split("/")[0], voice, root / rel) for _, rel, voice in plan]
    logger.info("Speech Commands: synthesizing %d clips into %s", len(jobs), root)
    run_synthesis_jobs(jobs, num_workers, transform=transform)

    noise_dir = root / "_background_noise_"
    for name in NOISE_FILES:
        write_audio(noise_dir / name, make_noise(name.split("_")[0], _clip_rng(seed, name)))
    (noise_dir / "README.md").write_text(NOISE_README.format(seconds=NOISE_SECONDS,
                                                             rms=NOISE_RMS))
    for split, list_name in (("validation", "validation_list.txt"),
                             ("testing", "testing_list.txt")):
        (root / list_name).write_text("".join(
            f"{rel}\n" for rel in sorted(p[1] for p in plan if p[0] == split)))
    (root / "README.md").write_text(ROOT_README.format(seed=seed, size=size))
    finish_build(out, params)
    return {**summary, "skipped": False}


def main(argv: list[str] | None = None) -> int:
    return run_cli(build, make_arg_parser(__doc__.split("\n\n")[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
