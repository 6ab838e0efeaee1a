"""Shared synthesis helpers for the synthetic mini corpora (Debian's ``espeak-ng``).

The mini-corpus builders (``librispeech.py``, ``voxceleb.py``, ``iemocap.py``, ``slurp.py``,
``speech_commands.py``)
render short English sentences with espeak-ng in the real corpus layouts so that recipes run
end to end on a machine without the corpora. This module holds what they share:

- :class:`Voice`: an espeak-ng voice = variant (``en+m3``) + pitch + speed + amplitude
  (+ optional SSML pitch range). espeak-ng *silently ignores* unknown variant names (the
  output is then the default voice), so :func:`check_voice` validates a variant against
  ``espeak-ng --voices=variant`` and raises otherwise.
- :func:`synthesize`: text -> float32 waveform [T] at 16 kHz (espeak renders 22050 Hz;
  resampled with a fixed polyphase filter, so the result is deterministic).
- :func:`write_audio`: atomic write of flac/wav (16-bit PCM, mono) via soundfile.
- :func:`run_synthesis_jobs`: render many (text, voice, path) jobs with at most 2 workers.
- :func:`done_marker` / :func:`is_done` / :func:`mark_done`: the idempotence marker.
- :func:`make_arg_parser` / :func:`run_cli`: the common CLI
  (``--out DIR [--seed 0] [--size {tiny,small}] [--num_workers 2] [--force]``).

espeak-ng is deterministic: the same text and voice give the same samples, so a build with the
same seed gives byte-identical files.

Examples
--------
>>> voice = Voice(variant="m3", pitch=40, speed=160)
>>> wav = synthesize("one two three", voice)          # doctest: +SKIP
>>> wav.dtype, wav.ndim                                # doctest: +SKIP
(dtype('float32'), 1)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence
from xml.sax.saxutils import escape

import numpy as np

# soundfile and scipy.signal are imported where used: a rerun of a finished build (which only
# reads the done marker) then starts in a fraction of a second.

logger = logging.getLogger("mini_corpus")

SAMPLE_RATE = 16000
"""Sample rate of every file written by the mini-corpus builders."""

ESPEAK_SAMPLE_RATE = 22050
"""Native output rate of espeak-ng (checked against the WAV header of every rendering)."""

MAX_WORKERS = 2
"""Upper bound on parallel espeak-ng processes (the build machines have 2 shared cores)."""

SIZES = ("tiny", "small")
"""Build sizes: ``tiny`` = a handful of utterances (tests), ``small`` = a few hundred."""

BUILDER_VERSION = 1
"""Bumped when a builder's output changes; a marker from another version triggers a rebuild."""


class EspeakError(RuntimeError):
    """espeak-ng is missing, failed, or was asked for a voice it does not have."""


# ----------------------------------------------------------------------------------------
# espeak-ng binary and its variants
# ----------------------------------------------------------------------------------------
def espeak_binary() -> str:
    """Return the path of the espeak-ng binary.

    Returns
    -------
    str
        Absolute path (``$ESPEAK_NG`` if set, else ``espeak-ng`` on ``$PATH``).

    Raises
    ------
    EspeakError
        If espeak-ng is not installed (fix: ``sudo apt-get install espeak-ng`` or
        ``tools/install.sh``).
    """
    path = os.environ.get("ESPEAK_NG") or shutil.which("espeak-ng")
    if not path:
        raise EspeakError(
            "espeak-ng not found on PATH; install it with `sudo apt-get install espeak-ng` "
            "(tools/install.sh does this when run as root) or set $ESPEAK_NG"
        )
    return path


@functools.lru_cache(maxsize=1)
def available_variants() -> frozenset[str]:
    """Names of the voice variants that this espeak-ng knows (``m1``, ``f3``, ``klatt2``...).

    Parsed from ``espeak-ng --voices=variant``: the last column is the variant file
    (``!v/m3``); its base name is what follows ``+`` in ``-v en+m3``. Names with spaces are
    skipped (they cannot be passed on the command line).
    """
    proc = subprocess.run(
        [espeak_binary(), "--voices=variant"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise EspeakError(f"`espeak-ng --voices=variant` failed: {proc.stderr.strip()}")
    names: set[str] = set()
    for line in proc.stdout.splitlines()[1:]:
        marker = line.find("!v/")
        if marker < 0:
            continue
        # The file column is fixed-width; strip the trailing "Other Languages" column.
        name = line[marker + 3:].split("  ")[0].strip()
        if name and " " not in name:
            names.add(name)
    if not names:
        raise EspeakError("`espeak-ng --voices=variant` listed no variants")
    return frozenset(names)


@dataclasses.dataclass(frozen=True)
class Voice:
    """One synthetic speaker (or one speaker in one emotional state).

    Parameters
    ----------
    variant
        espeak-ng variant file name, e.g. ``m3``, ``f2``, ``klatt4`` (see
        ``espeak-ng --voices=variant``); validated by :func:`check_voice`.
    pitch
        ``-p`` base pitch, 0..99 (50 = the variant's default).
    speed
        ``-s`` words per minute, 80..450.
    amplitude
        ``-a`` amplitude, 0..200 (100 = default).
    pitch_range
        Pitch range in percent of the default (SSML ``<prosody range="150%">``); None = default.
    language
        espeak-ng language voice (``en``, ``en-us``).

    Examples
    --------
    >>> Voice("f2", pitch=60).espeak_voice_name()
    'en+f2'
    """

    variant: str
    pitch: int = 50
    speed: int = 160
    amplitude: int = 100
    pitch_range: int | None = None
    language: str = "en"

    def espeak_voice_name(self) -> str:
        """``-v`` argument, e.g. ``en+m3``."""
        return f"{self.language}+{self.variant}"

    def with_prosody(
        self,
        pitch_shift: int = 0,
        speed_scale: float = 1.0,
        amplitude: int | None = None,
        pitch_range: int | None = None,
    ) -> "Voice":
        """Return a copy with shifted pitch / scaled speed / new amplitude and range.

        Parameters
        ----------
        pitch_shift
            Added to ``pitch`` (clipped to 0..99).
        speed_scale
            Multiplies ``speed`` (clipped to 80..450 wpm).
        amplitude
            New ``-a`` amplitude (None keeps the current one).
        pitch_range
            New SSML pitch range in percent (None keeps the current one).
        """
        return dataclasses.replace(
            self,
            pitch=int(np.clip(self.pitch + pitch_shift, 0, 99)),
            speed=int(np.clip(round(self.speed * speed_scale), 80, 450)),
            amplitude=self.amplitude if amplitude is None else int(np.clip(amplitude, 0, 200)),
            pitch_range=self.pitch_range if pitch_range is None else pitch_range,
        )


SPEAKER_PALETTE: tuple[tuple[str, Voice], ...] = (
    ("M", Voice("m1", pitch=35, speed=150)),
    ("F", Voice("f2", pitch=50, speed=165)),
    ("M", Voice("m3", pitch=55, speed=175)),
    ("F", Voice("f3", pitch=65, speed=155)),
    ("M", Voice("klatt4", pitch=45, speed=160)),
    ("F", Voice("Annie", pitch=45, speed=170)),
    ("M", Voice("m7", pitch=40, speed=180)),
    ("F", Voice("f5", pitch=55, speed=150)),
    ("M", Voice("Andy", pitch=60, speed=165)),
    ("F", Voice("linda", pitch=40, speed=160)),
    ("M", Voice("david", pitch=50, speed=155)),
    ("F", Voice("f1", pitch=70, speed=175)),
    ("M", Voice("m5", pitch=30, speed=170)),
    ("F", Voice("f4", pitch=40, speed=180)),
    ("M", Voice("robert", pitch=65, speed=150)),
    ("F", Voice("steph", pitch=60, speed=160)),
)
"""Distinct speakers (gender, voice): each a different espeak-ng variant, with spread pitch
and speed. Builders take speakers from the front of this tuple, so speaker k is the same voice
in every mini corpus (measured median F0 ~80-120 Hz for M, ~180-250 Hz for F)."""


def check_voice(voice: Voice) -> Voice:
    """Raise if espeak-ng does not know ``voice.variant`` (it would silently fall back).

    Returns
    -------
    Voice
        The same voice (for chaining).

    Raises
    ------
    EspeakError
        Naming the variant and listing the available ones.
    """
    variants = available_variants()
    if voice.variant not in variants:
        raise EspeakError(
            f"espeak-ng has no voice variant {voice.variant!r} (espeak-ng would silently use "
            f"the default voice); choose one of `espeak-ng --voices=variant`: "
            f"{', '.join(sorted(variants))}"
        )
    if not 0 <= voice.pitch <= 99 or not 80 <= voice.speed <= 450:
        raise EspeakError(f"voice {voice}: pitch must be 0..99 and speed 80..450 wpm")
    return voice


# ----------------------------------------------------------------------------------------
# synthesis
# ----------------------------------------------------------------------------------------
def _parse_espeak_wav(data: bytes, text: str) -> np.ndarray:
    """Decode espeak-ng's ``--stdout`` WAV (its size fields are placeholders when streaming).

    Returns int16 samples [T] at :data:`ESPEAK_SAMPLE_RATE`.
    """
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise EspeakError(f"espeak-ng returned no WAV data for {text!r}")
    pos = 12
    rate = None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk_id == b"fmt ":
            channels = int.from_bytes(data[pos + 10:pos + 12], "little")
            rate = int.from_bytes(data[pos + 12:pos + 16], "little")
            bits = int.from_bytes(data[pos + 22:pos + 24], "little")
            if channels != 1 or bits != 16:
                raise EspeakError(f"unexpected espeak-ng format: {channels} ch, {bits} bit")
        elif chunk_id == b"data":
            if rate != ESPEAK_SAMPLE_RATE:
                raise EspeakError(f"espeak-ng rendered at {rate} Hz, expected 22050")
            payload = data[pos + 8:]
            payload = payload[: len(payload) // 2 * 2]
            return np.frombuffer(payload, dtype="<i2")
        pos += 8 + size
    raise EspeakError(f"espeak-ng WAV for {text!r} has no data chunk")


def trim_silence(wav: np.ndarray, rel_threshold: float = 0.02, pad_s: float = 0.08,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Cuts leading/trailing silence, keeping ``pad_s`` seconds on each side.

    Parameters
    ----------
    wav
        float32 [T].
    rel_threshold
        A sample is "speech" when ``|x| > rel_threshold * max|x|``.
    pad_s
        Silence kept before the first and after the last speech sample.

    Returns
    -------
    np.ndarray
        float32 [T'] with T' <= T.
    """
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    if peak == 0.0:
        return wav
    loud = np.flatnonzero(np.abs(wav) > rel_threshold * peak)
    pad = int(pad_s * sample_rate)
    return wav[max(0, loud[0] - pad): min(wav.size, loud[-1] + pad + 1)]


def synthesize(text: str, voice: Voice, sample_rate: int = SAMPLE_RATE,
               trim: bool = True) -> np.ndarray:
    """Renders ``text`` with espeak-ng.

    Parameters
    ----------
    text
        Plain text (any case; it is XML-escaped when SSML is needed).
    voice
        Checked with :func:`check_voice` first.
    sample_rate
        Output rate (16000 for all mini corpora).
    trim
        Cut leading/trailing silence (see :func:`trim_silence`).

    Returns
    -------
    np.ndarray
        float32 waveform [T] in [-1, 1].

    Examples
    --------
    >>> wav = synthesize("yes", Voice("f2"))   # doctest: +SKIP
    """
    check_voice(voice)
    args = [
        espeak_binary(), "--stdout",
        "-v", voice.espeak_voice_name(),
        "-p", str(voice.pitch), "-s", str(voice.speed), "-a", str(voice.amplitude),
    ]
    if voice.pitch_range is not None:
        args += ["-m", f'<speak><prosody range="{int(voice.pitch_range)}%">'
                       f"{escape(text)}</prosody></speak>"]
    else:
        args += ["--", text]
    proc = subprocess.run(args, capture_output=True, check=False)
    if proc.returncode != 0:
        raise EspeakError(
            f"espeak-ng failed on {text!r} with {voice}: {proc.stderr.decode(errors='replace')}"
        )
    pcm = _parse_espeak_wav(proc.stdout, text)
    if pcm.size == 0:
        raise EspeakError(f"espeak-ng produced no samples for {text!r} with {voice}")
    wav = pcm.astype(np.float64) / 32768.0
    if sample_rate != ESPEAK_SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = np.gcd(sample_rate, ESPEAK_SAMPLE_RATE)
        wav = resample_poly(wav, sample_rate // g, ESPEAK_SAMPLE_RATE // g)
    wav = np.clip(wav, -1.0, 32767 / 32768).astype(np.float32)
    return trim_silence(wav, sample_rate=sample_rate) if trim else wav


def write_audio(path: str | Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit PCM; the format follows the suffix (``.flac`` or ``.wav``).

    The file is written to a temporary name and renamed, so an interrupted build never leaves
    a truncated audio file under the final name.

    Parameters
    ----------
    wav
        float32 [T] in [-1, 1].
    """
    import soundfile as sf

    path = Path(path)
    fmt = {".flac": "FLAC", ".wav": "WAV"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported audio suffix (use .flac or .wav)")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    sf.write(buf, wav, sample_rate, format=fmt, subtype="PCM_16")
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class SynthesisJob:
    """One file to render: ``text`` spoken by ``voice``, written to ``path``."""

    text: str
    voice: Voice
    path: Path


Transform = Callable[[SynthesisJob, np.ndarray], np.ndarray]
"""``(job, waveform [T]) -> waveform [T']``: applied to a rendering before it is written."""


def _render(job: SynthesisJob, transform: Transform | None = None) -> float:
    wav = synthesize(job.text, job.voice)
    if transform is not None:
        wav = transform(job, wav)
    write_audio(job.path, wav)
    return wav.size / SAMPLE_RATE


def run_synthesis_jobs(jobs: Sequence[SynthesisJob], num_workers: int = MAX_WORKERS,
                       transform: Transform | None = None) -> list[float]:
    """Renders and writes all jobs, with at most :data:`MAX_WORKERS` espeak-ng processes.

    The workers are threads, each waiting on one espeak-ng subprocess at a time, so at most
    ``num_workers`` synthesis processes run at once. Results do not depend on the order.

    Parameters
    ----------
    num_workers
        1 or 2 (values above :data:`MAX_WORKERS` are capped).
    transform
        ``transform(job, wav)`` returns the waveform to write instead of ``wav`` (float32
        [T] in [-1, 1]); it must depend on the job only, so that builds stay deterministic.

    Returns
    -------
    list[float]
        Duration in seconds of every written file, in job order.
    """
    for voice in {job.voice for job in jobs}:
        check_voice(voice)
    workers = max(1, min(int(num_workers), MAX_WORKERS))
    render = functools.partial(_render, transform=transform)
    if workers == 1:
        return [render(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(render, jobs))


def audio_duration(path: str | Path) -> float:
    """Duration in seconds of an audio file (from its header)."""
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / info.samplerate


# ----------------------------------------------------------------------------------------
# idempotence marker
# ----------------------------------------------------------------------------------------
def done_marker(out: str | Path, corpus: str) -> Path:
    """Path of the marker written when a build of ``corpus`` into ``out`` finished.

    It lives beside the corpus root (``<out>/.mini_<corpus>.done``), outside the corpus tree,
    so data preparation never sees it; several corpora can share one ``--out``.
    """
    return Path(out) / f".mini_{corpus}.done"


def build_params(corpus: str, seed: int, size: str, **extra: object) -> dict:
    """The parameters recorded in (and compared against) the done marker."""
    return {"corpus": corpus, "seed": seed, "size": size, "version": BUILDER_VERSION, **extra}


def is_done(out: str | Path, params: dict) -> bool:
    """True if ``out`` holds a finished build with exactly these parameters.

    Raises
    ------
    FileExistsError
        If a finished build with *other* parameters is there (fix: another ``--out`` or
        ``--force``).
    """
    marker = done_marker(out, params["corpus"])
    if not marker.is_file():
        return False
    try:
        previous = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    if previous == params:
        return True
    raise FileExistsError(
        f"{marker}: {out} already holds a {params['corpus']} mini corpus built with "
        f"{previous}, not {params}; use another --out or pass --force to rebuild"
    )


def mark_done(out: str | Path, params: dict) -> Path:
    """Write the done marker (last step of a build)."""
    marker = done_marker(out, params["corpus"])
    marker.write_text(json.dumps(params, sort_keys=True) + "\n")
    return marker


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------
def make_arg_parser(description: str) -> argparse.ArgumentParser:
    """The options every builder takes: --out, --seed, --size, --num_workers, --force."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (the corpus root is created inside it)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", choices=SIZES, default="small",
                        help="tiny = a handful of utterances (tests); small = a few hundred")
    parser.add_argument("--num_workers", type=int, default=MAX_WORKERS,
                        help=f"parallel espeak-ng processes (1..{MAX_WORKERS})")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if a finished build is there")
    return parser


def setup_logging() -> None:
    """Kaldi-style timestamped log lines on stderr."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
    )


def run_cli(build: Callable[..., dict], parser: argparse.ArgumentParser,
            argv: Iterable[str] | None = None) -> int:
    """Parse ``argv``, call ``build(out=..., seed=..., size=..., ...)`` and log the summary; return 0.

    Parameters
    ----------
    build
        A builder's ``build`` function; extra parser options are passed as keywords.
    """
    setup_logging()
    args = vars(parser.parse_args(None if argv is None else list(argv)))
    start = time.time()
    summary = build(**args)
    logger.info("%s in %.1f s: %s", "skipped (already built)" if summary.get("skipped")
                else "built", time.time() - start, json.dumps(summary, sort_keys=True))
    return 0


def building_marker(out: str | Path, corpus: str) -> Path:
    """Path of the marker present while a build of ``corpus`` into ``out`` is under way."""
    return Path(out) / f".mini_{corpus}.building"


def prepare_out(out: str | Path, params: dict, force: bool, corpus_root: str | Path) -> bool:
    """Common start of every build.

    Returns True when a finished identical build is there (nothing to do). Otherwise the
    corpus root is emptied when it was made by this builder (finished build + ``force``, or an
    interrupted build), so a rebuild never mixes old and new files, and a "building" marker is
    written. A corpus root that this builder did not create is never touched.

    Parameters
    ----------
    params
        From :func:`build_params`.
    force
        Rebuild even if a finished build is there.
    corpus_root
        The folder the builder fills (e.g. ``<out>/LibriSpeech``).

    Returns
    -------
    bool
        True if the build can be skipped.
    """
    out, corpus_root = Path(out), Path(corpus_root)
    corpus = params["corpus"]
    if params["size"] not in SIZES:
        raise ValueError(f"unknown --size {params['size']!r}; choose one of {SIZES}")
    done, building = done_marker(out, corpus), building_marker(out, corpus)
    if not force and is_done(out, params):
        logger.info("%s: already built (%s); nothing to do", corpus_root, done)
        return True
    ours = done.exists() or building.exists()
    if corpus_root.exists():
        if not ours:
            raise FileExistsError(
                f"{corpus_root} exists but was not made by this builder (no {done.name}); "
                f"choose an empty --out so that nothing of yours is overwritten"
            )
        shutil.rmtree(corpus_root)
    done.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    building.write_text(json.dumps(params, sort_keys=True) + "\n")
    return False


def finish_build(out: str | Path, params: dict) -> Path:
    """Last step of every build: writes the done marker and removes the building marker."""
    marker = mark_done(out, params)
    building_marker(out, params["corpus"]).unlink(missing_ok=True)
    return marker
