"""Reading audio named by a Kaldi ``wav.scp`` entry, as a 16 kHz mono float32 waveform.

A ``wav.scp`` value (an *entry*) is one of

* a plain path to any file soundfile reads (wav, flac, ogg, ...);
* ``path.ark:offset``, a wave matrix inside a Kaldi archive (read with kaldiio).

Piped commands (``sox ... |``) are not supported: convert such corpora to files first.
An optional segment ``(start, end)`` in seconds (Kaldi ``segments`` convention, ``end < 0``
meaning "to the end of the recording") cuts a part of the recording.

Every waveform comes out mono (channels averaged) at ``target_sr`` (16 kHz by default),
resampled with :func:`torchaudio.functional.resample`. That resampling happens is logged
once per distinct source rate, not once per file.

Example
-------
>>> import numpy as np, soundfile as sf, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
>>> sf.write(path, np.zeros((800, 2), dtype="float32"), 8000)  # 0.1 s stereo at 8 kHz
>>> read_audio(path).shape
torch.Size([1600])
>>> num_samples(path)
1600
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import soundfile
import torch
import torchaudio.functional

logger = logging.getLogger(__name__)

TARGET_SAMPLE_RATE = 16000
"""The sample rate every backbone of the toolkit consumes."""

Segment = Tuple[float, float]
"""``(start, end)`` in seconds; ``end < 0`` means the end of the recording."""

_ARK_ENTRY = re.compile(r"^(?P<path>.+):(?P<offset>\d+)$")
_resampling_logged: set = set()


@dataclass(frozen=True)
class AudioInfo:
    """Length and format of a recording, without its samples.

    Arguments
    ---------
    num_frames : int
        Samples per channel at the source rate.
    sample_rate : int
        Source sample rate in Hz.
    num_channels : int
        Number of channels (read_audio averages them).
    """

    num_frames: int
    sample_rate: int
    num_channels: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_frames / self.sample_rate


def resampled_length(num_frames: int, orig_sr: int, target_sr: int) -> int:
    """Length after :func:`torchaudio.functional.resample` (exactly, integer arithmetic).

    Arguments
    ---------
    num_frames : int
        Samples at ``orig_sr``.
    orig_sr, target_sr : int
        Source and target rates in Hz.

    Returns
    -------
    int
        ``ceil(num_frames * target_sr / orig_sr)``.

    Example
    -------
    >>> resampled_length(2401, 44100, 16000)
    872
    """
    if orig_sr == target_sr:
        return num_frames
    divisor = math.gcd(orig_sr, target_sr)
    orig, new = orig_sr // divisor, target_sr // divisor
    return -(-num_frames * new // orig)


def _split_ark_entry(entry: str) -> Optional[Tuple[str, int]]:
    """``(ark path, offset)`` if ``entry`` is an ark entry, None if it is a plain path."""
    if os.path.exists(entry):
        return None
    match = _ARK_ENTRY.match(entry)
    if match is None or not os.path.exists(match.group("path")):
        return None
    return match.group("path"), int(match.group("offset"))


def _check_entry(entry: str) -> None:
    """Raise a clear error for entries that name no readable source."""
    if entry.rstrip().endswith("|"):
        raise ValueError(
            f"piped wav.scp entry {entry!r} is not supported: write the audio to files "
            "(e.g. with sox or ffmpeg) and list their paths in wav.scp"
        )
    if not os.path.exists(entry) and _split_ark_entry(entry) is None:
        raise FileNotFoundError(f"audio not found: {entry!r} (neither a file nor path.ark:offset)")


def _load_ark_wave(entry: str) -> Tuple[np.ndarray, int]:
    """Read a Kaldi wave matrix: returns float32 ``[T, C]`` in [-1, 1] and its rate."""
    import kaldiio

    loaded = kaldiio.load_mat(entry)
    if not isinstance(loaded, tuple):
        raise ValueError(
            f"{entry!r} holds a feature matrix, not a waveform: wav.scp must name audio "
            "(a Kaldi wave ark written with kaldiio.save_ark(ark, {utt: (rate, samples)}))"
        )
    rate, samples = loaded
    samples = np.asarray(samples)
    if np.issubdtype(samples.dtype, np.integer):
        scale = float(np.iinfo(samples.dtype).max) + 1.0
        samples = samples.astype(np.float32) / scale
    samples = samples.astype(np.float32, copy=False)
    if samples.ndim == 1:
        samples = samples[:, None]
    return samples, int(rate)


def audio_info(entry: str) -> AudioInfo:
    """Length, rate and channels of the audio an entry names (cheap: a header read).

    Plain files are queried with :func:`soundfile.info`; ark entries have to be loaded.

    Arguments
    ---------
    entry : str
        A ``wav.scp`` value.

    Returns
    -------
    AudioInfo

    Example
    -------
    >>> import numpy as np, soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, np.zeros(4000, dtype="float32"), 8000)
    >>> audio_info(path)
    AudioInfo(num_frames=4000, sample_rate=8000, num_channels=1)
    """
    _check_entry(entry)
    ark = _split_ark_entry(entry)
    if ark is not None:
        samples, rate = _load_ark_wave(entry)
        return AudioInfo(samples.shape[0], rate, samples.shape[1])
    info = soundfile.info(entry)
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def segment_frames(segment: Optional[Segment], sample_rate: int, num_frames: int) -> Tuple[int, int]:
    """Frame range ``[start, stop)`` a segment covers inside a recording.

    Arguments
    ---------
    segment : (float, float) or None
        ``(start, end)`` seconds (``end < 0``: to the end); None is the whole recording.
    sample_rate : int
        Rate of the recording.
    num_frames : int
        Length of the recording (frames).

    Returns
    -------
    (int, int)
        First frame and one past the last.

    Example
    -------
    >>> segment_frames((0.5, 1.0), 8000, 16000)
    (4000, 8000)
    >>> segment_frames((0.5, -1), 8000, 16000)
    (4000, 16000)
    """
    if segment is None:
        return 0, num_frames
    start_s, end_s = segment
    start = int(round(start_s * sample_rate))
    stop = num_frames if end_s < 0 else min(int(round(end_s * sample_rate)), num_frames)
    if start < 0 or start >= stop:
        raise ValueError(
            f"segment {start_s}-{end_s} s is empty or outside the recording "
            f"({num_frames / sample_rate:.3f} s long)"
        )
    return start, stop


def num_samples(entry: str, target_sr: int = TARGET_SAMPLE_RATE, segment: Optional[Segment] = None) -> int:
    """Number of samples :func:`read_audio` returns for an entry, from its header only.

    Arguments
    ---------
    entry : str
        A ``wav.scp`` value.
    target_sr : int
        Rate the samples are counted at (after resampling).
    segment : (float, float) or None
        Optional part of the recording in seconds.

    Returns
    -------
    int
    """
    info = audio_info(entry)
    start, stop = segment_frames(segment, info.sample_rate, info.num_frames)
    return resampled_length(stop - start, info.sample_rate, target_sr)


def _log_resampling_once(orig_sr: int, target_sr: int) -> None:
    if (orig_sr, target_sr) not in _resampling_logged:
        _resampling_logged.add((orig_sr, target_sr))
        logger.info("resampling audio from %d Hz to %d Hz (logged once per source rate)",
                    orig_sr, target_sr)


def read_audio(entry: str, target_sr: int = TARGET_SAMPLE_RATE,
               segment: Optional[Segment] = None) -> torch.Tensor:
    """Read the audio a ``wav.scp`` entry names: mono, float32, at ``target_sr``.

    Arguments
    ---------
    entry : str
        Plain path (any soundfile format, e.g. wav or flac) or ``path.ark:offset``.
    target_sr : int
        Output rate in Hz (16 kHz for every backbone of the toolkit).
    segment : (float, float) or None
        ``(start, end)`` seconds to cut (``end < 0``: to the end), as in Kaldi ``segments``.

    Returns
    -------
    torch.Tensor
        ``[T]`` float32 waveform, ``T == num_samples(entry, target_sr, segment)``.

    Example
    -------
    >>> import numpy as np, soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, np.zeros(16000, dtype="float32"), 16000)
    >>> read_audio(path, segment=(0.25, 0.5)).shape
    torch.Size([4000])
    """
    _check_entry(entry)
    if _split_ark_entry(entry) is not None:
        samples, rate = _load_ark_wave(entry)
        start, stop = segment_frames(segment, rate, samples.shape[0])
        samples = samples[start:stop]
    else:
        info = soundfile.info(entry)
        rate = int(info.samplerate)
        start, stop = segment_frames(segment, rate, int(info.frames))
        samples, _ = soundfile.read(entry, start=start, stop=stop, dtype="float32", always_2d=True)
    waveform = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1, dtype=np.float32)))
    if rate != target_sr:
        _log_resampling_once(rate, target_sr)
        waveform = torchaudio.functional.resample(waveform, rate, target_sr)
    return waveform.to(torch.float32)
