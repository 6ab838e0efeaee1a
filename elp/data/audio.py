"""Reading audio named by a Kaldi ``wav.scp`` entry, as a 16 kHz mono float32 waveform.

A ``wav.scp`` value (an *entry*) is one of

* a plain path to any file soundfile reads (wav, flac, ogg, uncompressed NIST SPHERE, ...);
* ``path.ark:offset``, a RIFF wave inside a Kaldi archive (as written by ``wav-copy`` or
  ``kaldiio.save_ark(ark, {utt: (rate, samples)})``);
* a standard decoder pipe (``flac -c -d -s PATH |``, ``sox PATH -t wav - ... |``,
  ``sph2pipe -f wav PATH |``, ``ffmpeg -i PATH ... -f wav - |``, ``cat PATH |``; see
  :mod:`elp.data.pipes`): PATH is read natively and the command's channel selection, speed
  and rate conversion are applied here. No process is started.

Nothing else of an entry reaches a shell or an unpickler unless the user opts in. Kaldi (and
kaldiio) run entries that end with ``|`` as shell commands, read ``-`` from standard input,
and kaldiio unpickles ``PKL`` archive entries; so :func:`check_entry` refuses every other
command ending in ``|`` unless ``allow_shell_pipes`` (then it runs as Kaldi runs it,
``sh -c``, and its standard output is decoded whole), and always refuses a ``|`` elsewhere,
a leading ``-`` or whitespace outside a recognised pipe. Archive entries are parsed here
(RIFF header + raw samples), never by ``kaldiio.load_mat``.

Each recording is opened once (one ``open``, no ``stat`` of the path): soundfile reads from
that descriptor, and for WAV files (plain or inside an archive) the RIFF chunk headers are
read with ``pread`` to detect a truncated data chunk (the header declares more frames than
the file holds; libsndfile silently reports the shorter length). Archive entries are
measured from their RIFF header alone.

An optional segment ``(start, end)`` in seconds (Kaldi ``segments`` convention, ``end < 0``
meaning "to the end of the recording") cuts a part of the recording.

In every function here ``entry`` is a ``wav.scp`` value, ``utt`` the utterance (or
recording) named in error messages, ``target_sr`` the output rate in Hz and
``allow_shell_pipes`` the opt-in to run other commands ending in ``|`` with ``sh -c``
(off: they are refused).

Every waveform comes out mono (channels averaged) at ``target_sr`` (16 kHz by default),
resampled with :func:`torchaudio.functional.resample`; resampling is logged once per
distinct source rate. :func:`read_audio` refuses non-finite samples (NaN/inf) and short
reads, naming the utterance and the entry; :func:`check_audio` (stage 1) also detects
them without loading whole files where the format cannot hold them (integer PCM, FLAC).

Examples
--------
>>> import numpy as np, soundfile as sf, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
>>> sf.write(path, np.zeros((800, 2), dtype="float32"), 8000)  # 0.1 s stereo at 8 kHz
>>> read_audio(path).shape
torch.Size([1600])
>>> num_samples(path)
1600
>>> read_audio(f"sox {path} -t wav - remix 1 |").shape  # read natively: channel 1, no shell
torch.Size([1600])
>>> check_entry("| cat in.flac", utt="u1")
Traceback (most recent call last):
...
elp.data.errors.UnsafeEntryError: utt 'u1': wav.scp entry '| cat in.flac' contains '|' (kaldiio and Kaldi run such entries with a shell); convert the audio to files first (e.g. with sox or ffmpeg) and list their paths (or path.ark:offset) in wav.scp
"""
from __future__ import annotations

import logging
import math
import os
import re
import struct
from dataclasses import dataclass

import numpy as np
import soundfile
import torch
import torchaudio.functional

from elp.data.errors import AudioError, AudioNotFoundError, UndecodableAudioError, UnsafeEntryError
from elp.data.pipes import (SHELL_PIPE_OPT_IN, NativeRead, decode_wav_bytes, parse_pipe, pipe_kind,
                            run_shell_pipe)
from elp.runtime import SAMPLE_RATE

logger = logging.getLogger(__name__)

Segment = tuple[float, float]
"""``(start, end)`` in seconds; ``end < 0`` means the end of the recording."""

_ARK_ENTRY = re.compile(r"^(?P<path>.+):(?P<offset>\d+)$")
_resampling_logged: set = set()
_INTEGER_SUBTYPES = ("PCM_", "ULAW", "ALAW", "DPCM_", "DWVW_", "IMA_ADPCM", "MS_ADPCM", "GSM610",
                     "G721_32", "G723_", "VOX_ADPCM", "NMS_ADPCM", "ALAC_")
"""soundfile subtypes that store integers: their samples are always finite."""
_SCAN_BLOCK = 1 << 20
_UNKNOWN_SIZE = 0xFFFFFFFF  # data chunk size of a streamed WAV whose length was never written


@dataclass(frozen=True)
class AudioInfo:
    """Length and format of a recording, without its samples: frames per channel and rate at the source.

    ``read_audio`` averages the ``num_channels`` channels.
    """

    num_frames: int
    sample_rate: int
    num_channels: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_frames / self.sample_rate


def resampled_length(num_frames: int, orig_sr: int, target_sr: int) -> int:
    """Length ``ceil(num_frames * target_sr / orig_sr)`` after :func:`torchaudio.functional.resample` (exact).

    Examples
    --------
    >>> resampled_length(2401, 44100, 16000)
    872
    """
    if orig_sr == target_sr:
        return num_frames
    divisor = math.gcd(orig_sr, target_sr)
    orig, new = orig_sr // divisor, target_sr // divisor
    return -(-num_frames * new // orig)


def _where(utt: str | None) -> str:
    return f"utt {utt!r}: " if utt else ""


def unsafe_entry_reason(entry: str, allow_shell_pipes: bool = False) -> str | None:
    """Why an entry is refused, worded to follow "entry '...'" (None when elp can read it).

    A standard decoder pipe (:func:`elp.data.pipes.parse_pipe`) is read natively and is no
    reason; another command ending in ``|`` is refused unless ``allow_shell_pipes``.

    Examples
    --------
    >>> unsafe_entry_reason("/corpus/a.flac") is None
    True
    >>> unsafe_entry_reason("flac -c -d -s /corpus/a.flac |") is None  # read natively
    True
    >>> unsafe_entry_reason("evil |:0")
    "contains '|' (kaldiio and Kaldi run such entries with a shell)"
    """
    if not entry:
        return "is empty"
    if "\x00" in entry:
        return "contains a NUL byte"
    kind = pipe_kind(entry)
    if kind == "native" or (kind == "shell" and allow_shell_pipes):
        return None
    if kind == "shell":
        return ("is a command elp does not read natively (it would run it with a shell, as Kaldi does); "
                f"opt in with {SHELL_PIPE_OPT_IN}")
    if kind == "refused":
        return "contains '|' (kaldiio and Kaldi run such entries with a shell)"
    if entry.startswith("-"):
        return "starts with '-' (read as standard input or taken for a command-line option)"
    if any(ch.isspace() for ch in entry):
        return "contains whitespace (a command line in Kaldi's convention, run with a shell)"
    return None


def check_entry(entry: str, utt: str | None = None, where: str = "", allow_shell_pipes: bool = False) -> None:
    """Refuse an entry that would reach a shell (without the opt-in) or standard input.

    Parameters
    ----------
    where
        Prefix of the message, e.g. ``"data/test/wav.scp:3: "``.

    Raises
    ------
    UnsafeEntryError
        Naming the entry, why it is refused and the fix.
    """
    reason = unsafe_entry_reason(entry, allow_shell_pipes)
    if reason is None:
        return
    if pipe_kind(entry) == "shell":
        raise UnsafeEntryError(f"{where}{_where(utt)}wav.scp entry {entry!r} {reason}; "
                               "or convert the audio to files first")
    raise UnsafeEntryError(
        f"{where}{_where(utt)}wav.scp entry {entry!r} {reason}; convert the audio to files first "
        "(e.g. with sox or ffmpeg) and list their paths (or path.ark:offset) in wav.scp"
    )


# --------------------------------------------------------------------------- RIFF headers
@dataclass(frozen=True)
class _Riff:
    """What the chunk headers of a RIFF/WAVE stream declare."""

    format_tag: int
    channels: int
    sample_rate: int
    bits: int
    data_offset: int
    declared_bytes: int
    available_bytes: int

    @property
    def block_align(self) -> int:
        return max(1, self.channels * self.bits // 8)

    @property
    def declared_frames(self) -> int:
        return self.declared_bytes // self.block_align

    @property
    def available_frames(self) -> int:
        return min(self.declared_bytes, max(0, self.available_bytes)) // self.block_align

    @property
    def truncated(self) -> bool:
        return self.declared_bytes != _UNKNOWN_SIZE and self.declared_bytes > self.available_bytes


def _pread(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 30), offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _parse_riff(fd: int, base: int, file_size: int) -> _Riff | None:
    """The RIFF/WAVE header at ``base`` (None if there is none or it is malformed)."""
    head = _pread(fd, 12, base)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    position, fmt = base + 12, None
    for _ in range(256):  # bounded walk over the chunk headers
        chunk = _pread(fd, 8, position)
        if len(chunk) < 8:
            return None
        chunk_id, size = chunk[:4], int.from_bytes(chunk[4:8], "little")
        if chunk_id == b"fmt ":
            body = _pread(fd, min(size, 40), position + 8)
            if len(body) < 16:
                return None
            tag, channels, rate = struct.unpack_from("<HHI", body, 0)
            bits = struct.unpack_from("<H", body, 14)[0]
            if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format
                tag = struct.unpack_from("<H", body, 24)[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                return None
            return _Riff(*fmt, data_offset=position + 8, declared_bytes=size,
                         available_bytes=file_size - (position + 8))
        position += 8 + size + (size & 1)
    return None


_ARK_DTYPES = {(1, 8): np.dtype("u1"), (1, 16): np.dtype("<i2"), (1, 32): np.dtype("<i4"),
               (3, 32): np.dtype("<f4"), (3, 64): np.dtype("<f8")}


def _to_float(raw: np.ndarray) -> np.ndarray:
    if raw.dtype == np.uint8:
        return (raw.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(raw.dtype, np.integer):
        return raw.astype(np.float32) / (float(np.iinfo(raw.dtype).max) + 1.0)
    return raw.astype(np.float32)


# --------------------------------------------------------------------------- one open per read
class _Recording:
    """An opened recording: a plain file read by soundfile, or a wave inside a Kaldi ark.

    Opens the source exactly once (``os.open``); use as a context manager.
    """

    def __init__(self, entry: str, utt: str | None = None, plain: bool = False):
        if not plain:
            check_entry(entry, utt)
        self.entry, self.where = entry, _where(utt)
        self.fd, ark_offset = self._open(entry, plain)
        self.sound: soundfile.SoundFile | None = None
        try:
            file_size = os.fstat(self.fd).st_size
            if ark_offset is not None:
                self._init_ark(ark_offset, file_size)
            else:
                self._init_file(file_size)
        except BaseException:
            self.close()
            raise

    def _open(self, entry: str, plain: bool = False) -> tuple[int, int | None]:
        match = None if plain else _ARK_ENTRY.match(entry)
        if match is not None:
            try:
                return os.open(match.group("path"), os.O_RDONLY), int(match.group("offset"))
            except FileNotFoundError:
                pass  # maybe a plain file whose name ends in ":<digits>"
            except OSError as error:
                raise AudioError(f"{self.where}cannot open audio {entry!r}: {error.strerror}") from None
        try:
            return os.open(entry, os.O_RDONLY), None
        except FileNotFoundError:
            raise AudioNotFoundError(
                f"{self.where}audio not found: {entry!r} (neither a file nor path.ark:offset); "
                "fix the path in wav.scp or remove the utterance"
            ) from None
        except OSError as error:
            raise AudioError(f"{self.where}cannot open audio {entry!r}: {error.strerror}") from None

    def _init_ark(self, offset: int, file_size: int) -> None:
        self.riff = _parse_riff(self.fd, offset, file_size)
        if self.riff is None:
            head = _pread(self.fd, 5, offset)
            kind = "a Kaldi matrix (features)" if head[:2] == b"\x00B" else f"no RIFF wave (starts {head!r})"
            raise AudioError(
                f"{self.where}{self.entry!r} holds {kind}, not a waveform: wav.scp must name audio "
                "(a RIFF wave ark written by wav-copy or kaldiio.save_ark(ark, {utt: (rate, samples)}))"
            )
        key = (self.riff.format_tag, self.riff.bits)
        if key not in _ARK_DTYPES:
            raise AudioError(f"{self.where}{self.entry!r}: unsupported wave format (tag {key[0]}, "
                             f"{key[1]} bits); use 8/16/32-bit PCM or 32/64-bit float")
        self.dtype = _ARK_DTYPES[key]
        self.subtype = "FLOAT" if key[0] == 3 else "PCM"
        self.info = AudioInfo(self.riff.declared_frames, self.riff.sample_rate, self.riff.channels)

    def _init_file(self, file_size: int) -> None:
        self.riff = _parse_riff(self.fd, 0, file_size)
        head = _pread(self.fd, 1024, 0)
        if head.startswith(b"NIST_1A") and b"shorten" in head:
            raise UndecodableAudioError(
                f"{self.where}{self.entry!r} is shorten-compressed NIST SPHERE, which soundfile cannot decode "
                "(uncompressed SPHERE it reads); decompress it first (sph2pipe -f wav)")
        try:
            self.sound = soundfile.SoundFile(self.fd, closefd=False)
        except (RuntimeError, TypeError, ValueError) as error:
            raise UndecodableAudioError(f"{self.where}cannot read audio {self.entry!r}: {error}") from None
        self.subtype = self.sound.subtype
        self.info = AudioInfo(int(self.sound.frames), int(self.sound.samplerate), int(self.sound.channels))

    # ------------------------------------------------------------------ checks and reads
    def check_truncation(self) -> None:
        if self.riff is not None and self.riff.truncated:
            raise AudioError(
                f"{self.where}audio {self.entry!r} is truncated: its header declares "
                f"{self.riff.declared_frames} frames but the file holds {self.riff.available_frames}; "
                "re-create (re-download or re-convert) the file or remove the utterance from the data dir"
            )

    @property
    def may_hold_non_finite(self) -> bool:
        return not self.subtype.startswith(_INTEGER_SUBTYPES) and self.subtype != "PCM"

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as float32 ``[T, C]``; a short read is an error."""
        if self.sound is None:
            nbytes = (stop - start) * self.riff.block_align
            raw = _pread(self.fd, nbytes, self.riff.data_offset + start * self.riff.block_align)
            raw = raw[: len(raw) - len(raw) % self.riff.block_align]
            samples = _to_float(np.frombuffer(raw, self.dtype).reshape(-1, self.riff.channels))
        else:
            try:
                self.sound.seek(start)
                samples = self.sound.read(stop - start, dtype="float32", always_2d=True)
            except (RuntimeError, ValueError) as error:
                raise AudioError(f"{self.where}cannot decode audio {self.entry!r}: {error}") from None
        if samples.shape[0] != stop - start:
            raise AudioError(
                f"{self.where}audio {self.entry!r} is truncated: decoded {start + samples.shape[0]} of the "
                f"{stop} frames its header declares; re-create the file or remove the utterance"
            )
        return samples

    def check_finite(self, samples: np.ndarray, start: int = 0) -> None:
        """Raise naming the count and the first time of non-finite samples (``[T, C]``)."""
        if np.isfinite(samples.sum(dtype=np.float64)):  # fast path: a sum of finite audio is finite
            return
        bad = ~np.isfinite(samples)
        if bad.any():
            first = start + int(np.argmax(bad.any(axis=1)))
            raise AudioError(
                f"{self.where}audio {self.entry!r} holds {int(bad.any(axis=1).sum())} non-finite sample(s) "
                f"(NaN or inf; first at {first / self.info.sample_rate:.3f} s): the recording is corrupt; "
                "re-create it or remove the utterance from every file of the data dir"
            )

    def scan(self) -> None:
        """Decode everything block by block: truncated streams and non-finite samples raise."""
        for start in range(0, self.info.num_frames, _SCAN_BLOCK):
            stop = min(start + _SCAN_BLOCK, self.info.num_frames)
            self.check_finite(self.read(start, stop), start)

    def close(self) -> None:
        if self.sound is not None:
            self.sound.close()
            self.sound = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> _Recording:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NativePipe:
    """A recognised decoder pipe read without a shell: the file through :class:`_Recording`,
    then the command's channel selection, speed and rate conversion.

    ``info`` and :meth:`read` describe the command's output (frames at its output rate).
    """

    _MARGIN_BLOCKS = 4  # resampling context on each side of a partial read, in polyphase blocks

    def __init__(self, entry: str, native: NativeRead, utt: str | None):
        self.entry, self.where, self.native = entry, _where(utt), native
        if native.path == "-" or not native.path:
            raise UnsafeEntryError(f"{self.where}wav.scp entry {entry!r} reads standard input; name a file")
        try:
            self.base = _Recording(native.path, None, plain=True)
        except AudioError as error:
            raise type(error)(f"{self.where}wav.scp entry {entry!r} (its file read natively): {error}") from None
        source = self.base.info
        if native.channel is not None and native.channel >= source.num_channels:
            self.close()
            raise AudioError(f"{self.where}wav.scp entry {entry!r} selects channel {native.channel + 1} but "
                             f"{native.path!r} has {source.num_channels}; fix the channel in wav.scp")
        self.in_rate = int(round(source.sample_rate * native.speed))
        self.out_rate = native.rate or source.sample_rate
        channels = 1 if native.channel is not None else source.num_channels
        self.info = AudioInfo(resampled_length(source.num_frames, self.in_rate, self.out_rate),
                              self.out_rate, channels)
        self.subtype = self.base.subtype

    @property
    def may_hold_non_finite(self) -> bool:
        return self.base.may_hold_non_finite

    def check_truncation(self) -> None:
        self.base.check_truncation()

    def _pick(self, samples: np.ndarray) -> np.ndarray:
        channel = self.native.channel
        return samples if channel is None else samples[:, channel:channel + 1]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Output frames ``[start, stop)`` as float32 ``[T, C]``."""
        source_frames = self.base.info.num_frames
        if self.in_rate == self.out_rate:
            return self._pick(self.base.read(start, stop))
        divisor = math.gcd(self.in_rate, self.out_rate)
        step_in, step_out = self.in_rate // divisor, self.out_rate // divisor
        # start on a polyphase block boundary (where a whole-file resampling has the same phase)
        first_block = max(0, start // step_out - self._MARGIN_BLOCKS)
        last_block = -(-stop // step_out) + self._MARGIN_BLOCKS
        src_start = min(first_block * step_in, source_frames)
        src_stop = min(last_block * step_in, source_frames)
        chunk = self._pick(self.base.read(src_start, src_stop))
        if self.out_rate not in _pipe_rates_logged:
            _pipe_rates_logged.add(self.out_rate)
            logger.info("converting %r-style pipe output to %d Hz natively (logged once per rate)",
                        self.entry.split()[0], self.out_rate)
        resampled = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(chunk.T)),
                                                   self.in_rate, self.out_rate).T.numpy()
        offset = start - first_block * step_out
        samples = resampled[offset:offset + stop - start]
        if samples.shape[0] < stop - start:  # the rounding of the last frames
            samples = np.pad(samples, ((0, stop - start - samples.shape[0]), (0, 0)))
        return np.ascontiguousarray(samples, dtype=np.float32)

    def check_finite(self, samples: np.ndarray, start: int = 0) -> None:
        self.base.check_finite(samples, start)

    def scan(self) -> None:
        self.base.scan()

    def close(self) -> None:
        self.base.close()

    def __enter__(self) -> _NativePipe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ShellPipe:
    """A command run with ``sh -c`` (only with ``allow_shell_pipes``): decoded whole, then sliced."""

    def __init__(self, entry: str, utt: str | None):
        self.entry, self.where = entry, _where(utt)
        self.samples, rate, self.subtype = decode_wav_bytes(run_shell_pipe(entry, self.where), self.where)
        self.info = AudioInfo(self.samples.shape[0], rate, self.samples.shape[1])

    @property
    def may_hold_non_finite(self) -> bool:
        return not self.subtype.startswith(_INTEGER_SUBTYPES) and self.subtype != "PCM"

    def check_truncation(self) -> None:
        """Nothing to check: the stream's length is what the command wrote."""

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.samples[start:stop]

    def check_finite(self, samples: np.ndarray, start: int = 0) -> None:
        if not np.isfinite(samples.sum(dtype=np.float64)):
            bad = ~np.isfinite(samples)
            first = start + int(np.argmax(bad.any(axis=1)))
            raise AudioError(
                f"{self.where}the output of {self.entry!r} holds {int(bad.any(axis=1).sum())} non-finite "
                f"sample(s) (first at {first / self.info.sample_rate:.3f} s); fix the command or remove the utterance")

    def scan(self) -> None:
        self.check_finite(self.samples)

    def close(self) -> None:
        self.samples = None

    def __enter__(self) -> _ShellPipe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_pipe_rates_logged: set = set()
_native_forms_logged: set = set()


def _open_recording(entry: str, utt: str | None = None, allow_shell_pipes: bool = False):
    """The reader of an entry: a file or ark, a native pipe, or (opted in) a shell pipe."""
    kind = pipe_kind(entry)
    if kind is None or kind == "refused" or (kind == "shell" and not allow_shell_pipes):
        check_entry(entry, utt, allow_shell_pipes=allow_shell_pipes)
        return _Recording(entry, utt)
    if kind == "shell":
        return _ShellPipe(entry, utt)
    program = os.path.basename(entry.split()[0])
    if program not in _native_forms_logged:
        _native_forms_logged.add(program)
        logger.info("reading %r pipe entries of wav.scp natively, without a shell (logged once per program)",
                    program)
    try:
        return _NativePipe(entry, parse_pipe(entry), utt)
    except UndecodableAudioError as error:
        if allow_shell_pipes:
            return _ShellPipe(entry, utt)
        raise UndecodableAudioError(
            f"{error}; elp reads the file of {entry!r} itself and cannot decode it: convert the audio to "
            f"a format soundfile reads (wav, flac), or let the command run (opt in with {SHELL_PIPE_OPT_IN})"
        ) from None


def audio_info(entry: str, utt: str | None = None, allow_shell_pipes: bool = False) -> AudioInfo:
    """Length, rate and channels of the audio an entry names (one open, headers only).

    For a pipe entry, of what the command outputs (its rate, its channels); a shell pipe
    (``allow_shell_pipes``) is run and decoded to know them.

    Examples
    --------
    >>> import numpy as np, soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, np.zeros(4000, dtype="float32"), 8000)
    >>> audio_info(path)
    AudioInfo(num_frames=4000, sample_rate=8000, num_channels=1)
    >>> audio_info(f"sox {path} -t wav -r 16000 - |")  # what the command would output
    AudioInfo(num_frames=8000, sample_rate=16000, num_channels=1)
    """
    with _open_recording(entry, utt, allow_shell_pipes) as recording:
        return recording.info


def check_audio(entry: str, utt: str | None = None, scan_samples: bool | None = None,
                allow_shell_pipes: bool = False) -> AudioInfo:
    """Stage-1 check of a recording: safe entry, readable, not truncated, finite samples.

    Parameters
    ----------
    scan_samples
        Decode every sample. None (default) decodes only formats that can hold non-finite
        values (float WAV, lossy codecs); integer PCM and FLAC are checked from their
        headers (a WAV data chunk shorter than declared is caught there). True also decodes
        integer formats (catches corrupt FLAC streams, at the cost of a full read).

    Raises
    ------
    AudioError
        Naming the utterance, the entry and the fix.

    Examples
    --------
    >>> import numpy as np, soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "nan.wav")
    >>> sf.write(path, np.array([0.0, np.nan] * 400, dtype="float32"), 16000, subtype="FLOAT")
    >>> check_audio(path, utt="u7")
    Traceback (most recent call last):
    ...
    elp.data.errors.AudioError: utt 'u7': audio '...nan.wav' holds 400 non-finite sample(s) (NaN or inf; first at 0.000 s): the recording is corrupt; re-create it or remove the utterance from every file of the data dir
    """
    with _open_recording(entry, utt, allow_shell_pipes) as recording:
        recording.check_truncation()
        if scan_samples or (scan_samples is None and recording.may_hold_non_finite):
            recording.scan()
        return recording.info


def segment_frames(segment: Segment | None, sample_rate: int, num_frames: int) -> tuple[int, int]:
    """Frame range ``[start, stop)`` a segment covers in a recording of ``num_frames`` at ``sample_rate``.

    ``segment`` None is the whole recording.

    Examples
    --------
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
        raise AudioError(
            f"segment {start_s}-{end_s} s is empty or outside the recording "
            f"({num_frames / sample_rate:.3f} s long)"
        )
    return start, stop


def segment_num_samples(info: AudioInfo, target_sr: int = SAMPLE_RATE,
                        segment: Segment | None = None) -> int:
    """Samples :func:`read_audio` returns for a segment of a recording described by ``info``.

    Examples
    --------
    >>> segment_num_samples(AudioInfo(16000, 8000, 1), 16000, (0.5, 1.0))
    8000
    """
    start, stop = segment_frames(segment, info.sample_rate, info.num_frames)
    return resampled_length(stop - start, info.sample_rate, target_sr)


def num_samples(entry: str, target_sr: int = SAMPLE_RATE, segment: Segment | None = None,
                utt: str | None = None, allow_shell_pipes: bool = False) -> int:
    """Number of samples :func:`read_audio` returns for an entry, from its header only."""
    return segment_num_samples(audio_info(entry, utt, allow_shell_pipes), target_sr, segment)


def _log_resampling_once(orig_sr: int, target_sr: int) -> None:
    if (orig_sr, target_sr) not in _resampling_logged:
        _resampling_logged.add((orig_sr, target_sr))
        logger.info("resampling audio from %d Hz to %d Hz (logged once per source rate)",
                    orig_sr, target_sr)


def read_audio(entry: str, target_sr: int = SAMPLE_RATE,
               segment: Segment | None = None, utt: str | None = None,
               allow_shell_pipes: bool = False) -> torch.Tensor:
    """Read the audio a ``wav.scp`` entry names: mono, float32, at ``target_sr``.

    One ``open`` per call. Non-finite samples, a truncated WAV data chunk and short reads
    raise :class:`~elp.data.errors.AudioError` naming ``utt`` and the entry, so a corrupt
    recording can never be trained on or silently predicted.

    Parameters
    ----------
    allow_shell_pipes
        Run other commands ending in ``|`` with ``sh -c`` as Kaldi does (the whole output is
        decoded, then the segment cut); off, they are refused.

    Returns
    -------
    torch.Tensor
        ``[T]`` float32 waveform, ``T == num_samples(entry, target_sr, segment)``.

    Examples
    --------
    >>> import numpy as np, soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, np.zeros(16000, dtype="float32"), 16000)
    >>> read_audio(path, segment=(0.25, 0.5)).shape
    torch.Size([4000])
    """
    with _open_recording(entry, utt, allow_shell_pipes) as recording:
        recording.check_truncation()
        rate = recording.info.sample_rate
        try:
            start, stop = segment_frames(segment, rate, recording.info.num_frames)
        except AudioError as error:
            raise AudioError(f"{_where(utt)}{entry!r}: {error}") from None
        samples = recording.read(start, stop)
        if recording.may_hold_non_finite and not np.isfinite(samples.sum(dtype=np.float64)):
            recording.check_finite(samples, start)  # integer formats cannot hold NaN/inf
    waveform = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1, dtype=np.float32)))
    if rate != target_sr:
        _log_resampling_once(rate, target_sr)
        waveform = torchaudio.functional.resample(waveform, rate, target_sr)
    return waveform.to(torch.float32)
