"""Kaldi-style data directories: read, write, validate, and hand over to SpeechBrain.

A data dir holds one file per mapping, one ``<key> <value>`` line per utterance, keys sorted
(C-locale byte order, which equals Python's ``sorted`` on str) and unique:

=================== ==========================================================================
``wav.scp``         ``<utt> <entry>``: a path (wav, flac, ...) or ``path.ark:offset``; keyed
                    by recording instead when ``segments`` exists
``utt2spk``         ``<utt> <speaker>`` (``<utt> <utt>`` when speakers are unknown)
``spk2utt``         ``<speaker> <utt> <utt> ...``, always derived from ``utt2spk``
``text``            ``<utt> <transcript>`` (ASR; also the SLURP sentence)
``utt2label``       ``<utt> <class>``: THE label file of classification tasks (emotion for
                    ER, intent for IC); one generic name so every recipe reads the same file
``segments``        ``<utt> <recording> <start-s> <end-s>`` (optional; ``end`` -1 = to the end)
``utt2num_samples`` ``<utt> <samples at 16 kHz after resampling>`` (written by validation;
                    trusted by :func:`utterance_lengths` while newer than ``wav.scp``)
``trials``          ``<enroll-utt> <test-utt> target|nontarget`` (speaker verification; kept
                    in the order given, not a key-value file)
=================== ==========================================================================

Labels (``utt2label``, ``utt2spk`` and every other ``utt2*`` file) are one non-empty token;
transcripts are non-empty. Files are UTF-8 (an undecodable byte is an error naming the file
and line). A ``wav.scp`` entry may be a standard decoder pipe (``flac -c -d -s PATH |``,
``sox PATH -t wav - |``, ``sph2pipe``, ``ffmpeg``, ``cat``; read natively, see
:mod:`elp.data.pipes`); any other command runs only with ``allow_shell_pipes``, and no entry
may start with ``-`` or hold a ``|`` elsewhere (see :func:`elp.data.audio.check_entry`):
nothing of a data file reaches a shell without the opt-in.

``.audio_checked`` (JSON, written by :func:`validate_data_dir` after every recording passed
its audio checks) lets a later validation trust ``utt2num_samples`` instead of re-reading
every header, as long as it is newer than ``wav.scp``/``segments`` and no audio file changed
since (it records :func:`audio_identity`: size and modification time of every file
``wav.scp`` names, checked with one ``stat`` each); :func:`write_data_dir` removes it.

Typical use::

    write_data_dir("data/train", wav_scp=wavs, utt2spk=spks, text=texts)
    validate_data_dir("data/train")              # raises DataDirError naming the problem
    dataset = DynamicItemDataset(data_dir_to_dict("data/train"))
"""
from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import shlex
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from elp.data.audio import (
    AudioInfo,
    audio_info,
    segment_num_samples,
    unsafe_entry_reason,
)
from elp.data.audio import check_audio as check_recording
from elp.data.errors import AudioError, DataError
from elp.data.pipes import SHELL_PIPE_OPT_IN, parse_pipe, pipe_kind
from elp.runtime import SAMPLE_RATE, atomic_write

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

MIN_SAMPLES = 400
"""Shortest input (samples at 16 kHz) the wav2vec2/WavLM/HuBERT CNN feature encoder accepts:
its receptive field is 400 samples (25 ms), shorter input yields zero frames."""

WAV_SCP = "wav.scp"
UTT2SPK = "utt2spk"
SPK2UTT = "spk2utt"
TEXT = "text"
UTT2LABEL = "utt2label"
SEGMENTS = "segments"
UTT2NUM_SAMPLES = "utt2num_samples"
TRIALS = "trials"
DATA_DIR_FILES = (WAV_SCP, UTT2SPK, SPK2UTT, TEXT, UTT2LABEL, SEGMENTS, UTT2NUM_SAMPLES, TRIALS)
"""Every file :func:`write_data_dir` manages (stale ones are removed when rewriting)."""
AUDIO_CHECKED = ".audio_checked"
"""Stamp of a completed audio check (see the module docstring)."""
_AUDIO_CHECK_VERSION = 2  # 2: the stamp records the audio files' identity (:func:`audio_identity`)
_ARK_ENTRY = re.compile(r"^(?P<path>.+):(?P<offset>\d+)$")
"""``path.ark:offset`` (read as :mod:`elp.data.audio` reads it: the archive first, else a file of that name)."""
DEFAULT_MAX_DROP = 0.05
"""Largest share of a set's utterances (or trials) ``fix=True`` may remove."""

MAX_LISTED_PROBLEMS = 10
"""Problems a :class:`DataDirError` lists one per line; the rest are counted."""


class DataDirError(DataError):
    """A data directory (or one of its files) is malformed; the message says how to fix it."""


@dataclass(frozen=True)
class Segment:
    """One line of ``segments``: an utterance cut out of ``recording`` (a key of ``wav.scp``), in seconds."""

    recording: str
    start: float
    end: float

    def as_tuple(self) -> tuple[float, float]:
        """``(start, end)`` in seconds, as :func:`elp.data.audio.read_audio` takes it."""
        return (self.start, self.end)


@dataclass(frozen=True)
class Trial:
    """One speaker-verification trial: is ``test`` spoken by the speaker of ``enroll`` (``target``)?"""

    enroll: str
    test: str
    target: bool


@dataclass
class DataDir:
    """The mappings of a data dir in memory, one field per file of the module's table (None: absent).

    Field names are the keyword arguments of :func:`write_data_dir`, so
    ``write_data_dir(path, **data.mappings())`` writes it back; ``segments`` maps utterances to
    :class:`Segment`, ``utt2num_samples`` holds 16 kHz counts.
    """

    wav_scp: dict[str, str]
    utt2spk: dict[str, str]
    text: dict[str, str] | None = None
    utt2label: dict[str, str] | None = None
    segments: dict[str, Segment] | None = None
    utt2num_samples: dict[str, int] | None = None
    trials: list[Trial] | None = None

    @property
    def utterances(self) -> list[str]:
        """Sorted utterance ids."""
        return sorted(self.utt2spk)

    def mappings(self) -> dict[str, object]:
        """Field name -> value (None for absent files), for ``write_data_dir(path, **data.mappings())``."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# --------------------------------------------------------------------------- generic mappings
def _check_key(key: str, where: str) -> None:
    if not key or any(ch.isspace() for ch in key):
        raise DataDirError(f"{where}: key {key!r} is empty or contains whitespace (Kaldi keys are single tokens)")


def read_text_lines(path: PathLike) -> list[tuple[int, str]]:
    """``(1-based line number, line without its break)`` of a UTF-8 text file.

    Raises
    ------
    DataDirError
        The file is missing, starts with a byte-order mark or is not UTF-8.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "text")
    >>> _ = open(path, "wb").write(bytes([117, 49, 10, 117, 50, 32, 99, 97, 102, 0xE9, 10]))  # "u1", "u2 caf\\xe9"
    >>> read_text_lines(path)
    Traceback (most recent call last):
    ...
    elp.data.kaldi_dir.DataDirError: ...text:2: not valid UTF-8 (byte 0xe9 at column 7); convert the file to UTF-8, e.g. iconv -f LATIN1 -t UTF-8 ...
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataDirError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataDirError(f"{path}: is a directory, expected a text file") from None
    if data.startswith(codecs.BOM_UTF8):
        raise DataDirError(f"{path}:1: starts with a UTF-8 byte-order mark, which would become part of the "
                           f"first key; remove it (e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' {shlex.quote(str(path))})")
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    result = []
    quoted = shlex.quote(str(path))
    for number, raw in enumerate(lines, start=1):
        try:
            result.append((number, raw.decode("utf-8").rstrip("\r")))
        except UnicodeDecodeError as error:
            raise DataDirError(
                f"{path}:{number}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
                f"convert the file to UTF-8, e.g. iconv -f LATIN1 -t UTF-8 {quoted} > {quoted}.utf8 && "
                f"mv {quoted}.utf8 {quoted}"
            ) from None
    return result


def read_numbered_lines(path: PathLike) -> list[tuple[int, str, str]]:
    """``(line number, key, value)`` of a Kaldi mapping file in file order, duplicates kept (for validation).

    The value is the rest of the line after the first whitespace (may contain spaces, as in
    ``text``; may be empty). Blank lines are skipped.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "text"
    >>> _ = path.write_text("u1 HELLO WORLD\\n\\nu2\\n")
    >>> read_numbered_lines(path)
    [(1, 'u1', 'HELLO WORLD'), (3, 'u2', '')]
    """
    result = []
    for number, line in read_text_lines(path):
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        result.append((number, parts[0], parts[1] if len(parts) > 1 else ""))
    return result


def read_mapping_lines(path: PathLike) -> list[tuple[str, str]]:
    """``(key, value)`` lines of a Kaldi mapping file in file order, duplicates kept (:func:`read_numbered_lines`)."""
    return [(key, value) for _, key, value in read_numbered_lines(path)]


def token_problem(path: PathLike, number: int, key: str, value: str) -> str | None:
    """Why line ``number`` (``key value``) of a one-token file (``utt2spk``, ``utt2*``) is invalid, or None.

    Examples
    --------
    >>> token_problem("d/utt2label", 3, "u3", "neu sad")
    "d/utt2label:3: utt 'u3' has 2 tokens 'neu sad' as its label; a label is one token (join words with '_', or fix the data preparation)"
    >>> token_problem("d/utt2label", 3, "u3", "neu") is None
    True
    """
    tokens = value.split()
    if len(tokens) == 1:
        return None
    kind = "speaker" if Path(path).name == UTT2SPK else "label"
    if not tokens:
        return (f"{path}:{number}: utt {key!r} has an empty {kind}; a {kind} is one token "
                "(write it, or remove the utterance from every file of the data dir)")
    return (f"{path}:{number}: utt {key!r} has {len(tokens)} tokens {value!r} as its {kind}; a {kind} is one "
            "token (join words with '_', or fix the data preparation)")


def read_token_mapping(path: PathLike) -> dict[str, str]:
    """Read a one-token-per-key file (``utt2spk``, ``utt2label``, any ``utt2*`` label file): key -> token.

    Raises
    ------
    DataDirError
        For a duplicated key, an empty value or a value of several tokens (naming the file,
        line and utterance).
    """
    mapping: dict[str, str] = {}
    for number, key, value in read_numbered_lines(path):
        problem = token_problem(path, number, key, value)
        if problem is not None:
            raise DataDirError(problem)
        if key in mapping:
            raise DataDirError(f"{path}:{number}: key {key!r} occurs more than once; keep one line per key")
        mapping[key] = value
    return mapping


def read_mapping(path: PathLike) -> dict[str, str]:
    """Read a Kaldi mapping file (``wav.scp``, ``utt2spk``, ``text``, ...): key -> rest of the line, stripped.

    Raises
    ------
    DataDirError
        If a key occurs twice (the message names the key and both lines).

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "text")
    >>> write_mapping(path, {"u2": "B C", "u1": "A"})
    >>> open(path).read()
    'u1 A\\nu2 B C\\n'
    >>> read_mapping(path)
    {'u1': 'A', 'u2': 'B C'}
    """
    mapping: dict[str, str] = {}
    for key, value in read_mapping_lines(path):
        if key in mapping:
            raise DataDirError(
                f"{path}: key {key!r} occurs more than once ({mapping[key]!r} and {value!r}); "
                "keep one line per key (validate_data_dir(fix=True) drops identical duplicates)"
            )
        mapping[key] = value
    return mapping


def write_mapping(path: PathLike, mapping: Mapping[str, object]) -> None:
    """Write ``<key> <value>`` lines sorted by key (C-locale order), creating parent dirs.

    Values are written with ``str()``; an empty value writes the key alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for key in sorted(mapping):
        _check_key(key, str(path))
        value = str(mapping[key])
        if "\n" in value or "\r" in value:
            raise DataDirError(f"{path}: the value of {key!r} contains a line break")
        lines.append(f"{key} {value}".rstrip() + "\n")
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(lines)


# --------------------------------------------------------------------------- specific files
def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> dict[str, list[str]]:
    """Invert ``utt2spk``: speaker -> sorted utterances (keys sorted).

    Examples
    --------
    >>> utt2spk_to_spk2utt({"a-2": "a", "b-1": "b", "a-1": "a"})
    {'a': ['a-1', 'a-2'], 'b': ['b-1']}
    """
    spk2utt: dict[str, list[str]] = defaultdict(list)
    for utt in sorted(utt2spk):
        spk2utt[utt2spk[utt]].append(utt)
    return {spk: spk2utt[spk] for spk in sorted(spk2utt)}


def read_spk2utt(path: PathLike) -> dict[str, list[str]]:
    """Read ``spk2utt``: speaker -> list of utterances (in file order)."""
    return {spk: utts.split() for spk, utts in read_mapping(path).items()}


def write_spk2utt(path: PathLike, spk2utt: Mapping[str, Sequence[str]]) -> None:
    """Write ``spk2utt`` (speakers sorted, utterances sorted within a speaker)."""
    write_mapping(path, {spk: " ".join(sorted(utts)) for spk, utts in spk2utt.items()})


def read_segments(path: PathLike) -> dict[str, Segment]:
    """Read ``segments``: utt -> :class:`Segment` (``<utt> <recording> <start> <end>``).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "segments"
    >>> write_segments(path, {"u1": Segment("rec1", 0.5, 2.0)})
    >>> read_segments(path)
    {'u1': Segment(recording='rec1', start=0.5, end=2.0)}
    """
    segments = {}
    for utt, value in read_mapping(path).items():
        segments[utt] = _parse_segment(value, f"{path}: utt {utt!r}")
    return segments


def _parse_segment(value: str, where: str) -> Segment:
    parts = value.split()
    try:
        if len(parts) != 3:
            raise ValueError
        segment = Segment(parts[0], float(parts[1]), float(parts[2]))
    except ValueError:
        raise DataDirError(f"{where}: expected '<recording> <start-s> <end-s>', got {value!r}") from None
    if segment.start < 0 or (segment.end >= 0 and segment.end <= segment.start):
        raise DataDirError(f"{where}: segment {segment.start}-{segment.end} s is empty or negative")
    return segment


def write_segments(path: PathLike, segments: Mapping[str, Segment]) -> None:
    """Write ``segments`` sorted by utterance."""
    write_mapping(path, {utt: f"{s.recording} {s.start:g} {s.end:g}" for utt, s in segments.items()})


def read_utt2num_samples(path: PathLike) -> dict[str, int]:
    """Read ``utt2num_samples``: utt -> number of samples at 16 kHz."""
    result = {}
    for utt, value in read_mapping(path).items():
        try:
            result[utt] = int(value)
        except ValueError:
            raise DataDirError(f"{path}: utt {utt!r} has a non-integer sample count {value!r}") from None
    return result


def write_utt2num_samples(path: PathLike, utt2num_samples: Mapping[str, int]) -> None:
    """Write ``utt2num_samples`` sorted by utterance."""
    write_mapping(path, {utt: int(n) for utt, n in utt2num_samples.items()})


def read_trials(path: PathLike) -> list[Trial]:
    """Read a ``trials`` file (lines ``<enroll-utt> <test-utt> target|nontarget``) in file order."""
    trials = []
    for number, line in read_text_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[2] not in ("target", "nontarget"):
            raise DataDirError(
                f"{path}:{number}: expected '<enroll-utt> <test-utt> target|nontarget', got {line.strip()!r}"
            )
        trials.append(Trial(parts[0], parts[1], parts[2] == "target"))
    return trials


def write_trials(path: PathLike, trials: Iterable[Trial]) -> None:
    """Write a ``trials`` file in the order given.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "trials"
    >>> write_trials(path, [Trial("e1", "t1", True), Trial("e1", "t2", False)])
    >>> path.read_text().splitlines()
    ['e1 t1 target', 'e1 t2 nontarget']
    >>> read_trials(path)[1]
    Trial(enroll='e1', test='t2', target=False)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for trial in trials:
            _check_key(trial.enroll, str(path))
            _check_key(trial.test, str(path))
            handle.write(f"{trial.enroll} {trial.test} {'target' if trial.target else 'nontarget'}\n")


# --------------------------------------------------------------------------- whole directories
def write_data_dir(
    data_dir: PathLike,
    *,
    wav_scp: Mapping[str, str],
    utt2spk: Mapping[str, str] | None = None,
    text: Mapping[str, str] | None = None,
    utt2label: Mapping[str, str] | None = None,
    segments: Mapping[str, Segment] | None = None,
    utt2num_samples: Mapping[str, int] | None = None,
    trials: Sequence[Trial] | None = None,
    label_files: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """Write a data dir (created) and return it: sorted mapping files, ``spk2utt`` derived from ``utt2spk``.

    Files of :data:`DATA_DIR_FILES` left over from an earlier write and not given now are
    removed (with a log line), so the directory never mixes two versions.

    Parameters
    ----------
    wav_scp
        utt (or recording, with ``segments``) -> audio entry.
    utt2spk
        utt -> speaker; None maps every utterance to itself (speakers unknown).
    text, utt2label
        Transcripts / class labels.
    segments
        utt -> segment of a recording in ``wav_scp``.
    utt2num_samples
        Usually left to :func:`validate_data_dir`.
    label_files
        Further per-utterance label files, file name -> mapping (e.g. ``{"utt2scenario": ...}``
        beside ``utt2label``: a second task on the same audio reads it through its Task's
        ``label_file``). Names start with ``utt2`` and are not one of :data:`DATA_DIR_FILES`.

    Raises
    ------
    DataDirError
        If the mappings do not cover the same utterances (names the first offenders).

    Examples
    --------
    >>> import tempfile
    >>> out = write_data_dir(tempfile.mkdtemp(), wav_scp={"s1-u1": "/a.flac"}, utt2spk={"s1-u1": "s1"})
    >>> sorted(p.name for p in out.iterdir())
    ['spk2utt', 'utt2spk', 'wav.scp']
    """
    data_dir = Path(data_dir)
    utts = set(segments) if segments is not None else set(wav_scp)
    if utt2spk is None:
        utt2spk = {utt: utt for utt in utts}
    label_files = dict(label_files or {})
    bad_names = sorted(name for name in label_files if not name.startswith("utt2") or "/" in name
                       or name in DATA_DIR_FILES)
    if bad_names:
        raise DataDirError(f"{data_dir}: label file names {bad_names} must start with 'utt2' and not be one of "
                           f"{', '.join(DATA_DIR_FILES)}")
    per_utt = {UTT2SPK: utt2spk, TEXT: text, UTT2LABEL: utt2label, UTT2NUM_SAMPLES: utt2num_samples, **label_files}
    for name, mapping in per_utt.items():
        if mapping is not None and set(mapping) != utts:
            missing = sorted(utts - set(mapping))[:5]
            extra = sorted(set(mapping) - utts)[:5]
            raise DataDirError(
                f"{data_dir}: {name} does not cover the utterances of "
                f"{SEGMENTS if segments is not None else WAV_SCP}: missing {missing}, extra {extra}"
            )
    if segments is not None:
        unknown = sorted(utt for utt, seg in segments.items() if seg.recording not in wav_scp)
        if unknown:
            raise DataDirError(f"{data_dir}: segments of {unknown[:5]} name recordings absent from wav.scp")
    if trials is not None:
        unknown = sorted({u for t in trials for u in (t.enroll, t.test)} - utts)
        if unknown:
            raise DataDirError(f"{data_dir}: trials name utterances absent from the dir: {unknown[:5]}")

    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / AUDIO_CHECKED).unlink(missing_ok=True)  # the audio check covered the old files
    given = {WAV_SCP: wav_scp, SPK2UTT: utt2spk, SEGMENTS: segments, TRIALS: trials, **per_utt}
    for name in DATA_DIR_FILES:
        if given[name] is None and (data_dir / name).exists():
            logger.info("%s: removing stale %s (not part of this write)", data_dir, name)
            (data_dir / name).unlink()
    write_mapping(data_dir / WAV_SCP, wav_scp)
    write_mapping(data_dir / UTT2SPK, utt2spk)
    write_spk2utt(data_dir / SPK2UTT, utt2spk_to_spk2utt(utt2spk))
    for name, mapping in ((TEXT, text), (UTT2LABEL, utt2label), *label_files.items()):
        if mapping is not None:
            write_mapping(data_dir / name, mapping)
    if segments is not None:
        write_segments(data_dir / SEGMENTS, segments)
    if utt2num_samples is not None:
        write_utt2num_samples(data_dir / UTT2NUM_SAMPLES, utt2num_samples)
    if trials is not None:
        write_trials(data_dir / TRIALS, trials)
    return data_dir


def read_data_dir(data_dir: PathLike) -> DataDir:
    """Read every file of a data dir into a :class:`DataDir` (absent optional files: None).

    Raises
    ------
    DataDirError
        If ``wav.scp`` or ``utt2spk`` is missing, a key is duplicated, a file is not UTF-8,
        or a speaker / label is not one token.
    """
    data_dir = Path(data_dir)

    def optional(name, reader):
        return reader(data_dir / name) if (data_dir / name).is_file() else None

    for name in (WAV_SCP, UTT2SPK):
        if not (data_dir / name).is_file():
            raise DataDirError(f"{data_dir}: {name} is missing (every data dir needs {WAV_SCP} and {UTT2SPK})")
    return DataDir(
        wav_scp=read_mapping(data_dir / WAV_SCP),
        utt2spk=read_token_mapping(data_dir / UTT2SPK),
        text=optional(TEXT, read_mapping),
        utt2label=optional(UTT2LABEL, read_token_mapping),
        segments=optional(SEGMENTS, read_segments),
        utt2num_samples=optional(UTT2NUM_SAMPLES, read_utt2num_samples),
        trials=optional(TRIALS, read_trials),
    )


def subset_data_dir(data: DataDir, utterances: Iterable[str]) -> DataDir:
    """A new data dir of only ``utterances`` (and trials whose two sides are both kept).

    With ``segments``, only the recordings still used are kept.

    Raises
    ------
    DataDirError
        If an utterance is not in ``data``.

    Examples
    --------
    >>> data = DataDir(wav_scp={"a": "a.wav", "b": "b.wav"}, utt2spk={"a": "a", "b": "b"})
    >>> subset_data_dir(data, ["b"]).wav_scp
    {'b': 'b.wav'}
    """
    keep = set(utterances)
    unknown = sorted(keep - set(data.utt2spk))
    if unknown:
        raise DataDirError(f"subset_data_dir: utterances not in the data dir: {unknown[:5]}")

    def pick(mapping):
        return None if mapping is None else {k: v for k, v in mapping.items() if k in keep}

    if data.segments is not None:
        segments = pick(data.segments)
        recordings = {seg.recording for seg in segments.values()}
        wav_scp = {k: v for k, v in data.wav_scp.items() if k in recordings}
    else:
        segments, wav_scp = None, pick(data.wav_scp)
    trials = None
    if data.trials is not None:
        trials = [t for t in data.trials if t.enroll in keep and t.test in keep]
    return DataDir(wav_scp, pick(data.utt2spk), pick(data.text), pick(data.utt2label),
                   segments, pick(data.utt2num_samples), trials)


def combine_data_dirs(parts: Sequence[DataDir]) -> DataDir:
    """Union of data dirs (like Kaldi's ``utils/combine_data.sh``).

    An optional mapping is kept only if every part has it. An utterance present in two parts
    must have identical values, otherwise :class:`DataDirError` names it.

    Raises
    ------
    DataDirError
        If ``parts`` is empty or an utterance has different values in two parts.
    """
    if not parts:
        raise DataDirError("combine_data_dirs: nothing to combine")
    combined = {}
    for name in DataDir.__dataclass_fields__:
        values = [getattr(part, name) for part in parts]
        if any(value is None for value in values):
            combined[name] = None
        elif name == "trials":
            combined[name] = [trial for value in values for trial in value]
        else:
            merged: dict[str, object] = {}
            for value in values:
                for key, item in value.items():
                    if key in merged and merged[key] != item:
                        raise DataDirError(
                            f"combine_data_dirs: {key!r} has two different values in "
                            f"{name}: {merged[key]!r} and {item!r}"
                        )
                    merged[key] = item
            combined[name] = merged
    return DataDir(**combined)


# --------------------------------------------------------------------------- validation
def _utterance_files(data_dir: Path, use_counts: bool) -> list[str]:
    """Names of the files keyed by utterance that exist in ``data_dir``."""
    names = [UTT2SPK, TEXT, SEGMENTS]
    names += sorted(p.name for p in data_dir.glob("utt2*") if p.name not in (UTT2SPK, UTT2NUM_SAMPLES))
    if use_counts:
        names.append(UTT2NUM_SAMPLES)
    if not (data_dir / SEGMENTS).is_file():
        names.insert(0, WAV_SCP)
    return [name for name in dict.fromkeys(names) if (data_dir / name).is_file()]


def _check_lines(path: Path, lines: list[tuple[str, str]], fix: bool,
                 problems: list[str]) -> tuple[dict[str, str], bool]:
    """Sortedness and uniqueness of one file. Returns (mapping, whether fix changed it)."""
    name = path.name
    changed = False
    keys = [key for key, _ in lines]
    unsorted_at = next((i for i in range(1, len(keys)) if keys[i] < keys[i - 1]), None)
    if unsorted_at is not None:
        if fix:
            logger.warning("%s was not sorted: sorting it", name)
            changed = True
        else:
            problems.append(
                f"{name} is not sorted: {keys[unsorted_at]!r} (entry {unsorted_at + 1}) comes after "
                f"{keys[unsorted_at - 1]!r}; sort it (LC_ALL=C sort -k1,1 -o {shlex.quote(str(path))} "
                f"{shlex.quote(str(path))}) or use validate_data_dir(fix=True)"
            )
    mapping: dict[str, str] = {}
    duplicates = []
    for key, value in lines:
        if key in mapping:
            if mapping[key] != value:
                problems.append(
                    f"{name}: {key!r} has two different values, {mapping[key]!r} and {value!r}; "
                    "decide which is right and delete the other line (fix=True does not guess)"
                )
            else:
                duplicates.append(key)
            continue
        mapping[key] = value
    if duplicates:
        if fix:
            logger.warning("%s: dropping %d identical duplicate line(s), e.g. %r", name, len(duplicates), duplicates[0])
            changed = True
        else:
            problems.append(
                f"{name}: {len(duplicates)} duplicate line(s), e.g. {duplicates[0]!r}; "
                "remove them or use validate_data_dir(fix=True)"
            )
    return mapping, changed


def _raise_if_problems(data_dir: Path, problems: list[str]) -> None:
    """Raise one :class:`DataDirError`: a summary line, then one problem per line.

    The first :data:`MAX_LISTED_PROBLEMS` problems are listed (each ``file:line: utterance:
    what; fix``), then a count of the rest.

    Examples
    --------
    >>> _raise_if_problems(Path("d"), [f"d/text:{n}: utt 'u{n}' has an empty transcript" for n in (1, 2)])
    Traceback (most recent call last):
    ...
    elp.data.kaldi_dir.DataDirError: d: 2 problems
      d/text:1: utt 'u1' has an empty transcript
      d/text:2: utt 'u2' has an empty transcript
    """
    if not problems:
        return
    if len(problems) == 1:
        raise DataDirError(f"{data_dir}: {problems[0]}")
    shown = problems[:MAX_LISTED_PROBLEMS]
    lines = [f"{data_dir}: {len(problems)} problems"] + [f"  {problem}" for problem in shown]
    if len(problems) > len(shown):
        lines.append(f"  ... and {len(problems) - len(shown)} more (fix these and validate again to see them)")
    raise DataDirError("\n".join(lines))


def _file_of(where: str) -> str:
    """``"wav.scp (recording 'r')"`` -> ``"wav.scp"``."""
    return where.split(" ", 1)[0]


def _drop_incomplete_utterances(tables: dict[str, dict[str, str]], utt_names: list[str],
                                reco_of: dict[str, str], fix: bool, max_drop: float,
                                problems: list[str]) -> None:
    """Every utterance must be in every utterance file (and its recording in wav.scp).

    Without ``fix`` each gap is a problem; with ``fix`` the incomplete utterances are removed
    from every table (each logged, with per-file counts) unless they exceed ``max_drop`` of
    the set, which is a problem naming how many and why.
    """
    all_utts = set().union(*(tables[name] for name in utt_names))
    missing_from: dict[str, list[str]] = defaultdict(list)
    for name in utt_names:
        for utt in all_utts - set(tables[name]):
            missing_from[utt].append(name)
    for utt, reco in reco_of.items():
        if reco not in tables[WAV_SCP]:
            missing_from[utt].append(f"{WAV_SCP} (recording {reco!r})")
    if not missing_from:
        return
    counts = Counter(_file_of(where) for wheres in missing_from.values() for where in wheres)
    breakdown = ", ".join(f"missing from {name}: {counts[name]}" for name in sorted(counts))
    first = min(missing_from)
    present = [name for name in utt_names if first in tables[name]]
    example = (f"utt {first!r} is missing from {', '.join(missing_from[first])} "
               f"(present in {', '.join(present)})")
    total, dropped = len(all_utts), len(missing_from)
    if not fix:
        problems.append(
            f"{dropped} utterance(s) are not in every file ({breakdown}); e.g. {example}; add them there or "
            "remove them everywhere (validate_data.py --fix removes them from train/dev sets, --fix-test "
            "from test sets, as long as at most --max-drop of the set goes)"
        )
        return
    if dropped > max_drop * total:
        problems.append(
            f"--fix would remove {dropped} of {total} utterance(s) ({dropped / total:.1%} > --max-drop "
            f"{max_drop:.1%}): {breakdown}; e.g. {example}; a file is probably truncated or from another "
            "set: repair it, or raise --max-drop if removing them is intended"
        )
        return
    for utt in sorted(missing_from):
        logger.warning("removing utterance %r: missing from %s", utt, ", ".join(missing_from[utt]))
    logger.warning("removed %d utterance(s) not present in every file (%d of %d; %s)",
                   dropped, dropped, total, breakdown)
    for name in utt_names:
        for utt in missing_from:
            tables[name].pop(utt, None)


def _entry_source(entry: str) -> str | None:
    """The file a ``wav.scp`` entry reads, as :mod:`elp.data.audio` opens it (None: a shell command)."""
    kind = pipe_kind(entry)
    if kind == "native":
        return parse_pipe(entry).path
    if kind is not None:  # a shell command (or a refused entry): only its text is known
        return None
    match = _ARK_ENTRY.match(entry)
    if match is not None and os.path.exists(match.group("path")):  # path.ark:offset, tried first
        return match.group("path")
    return entry


def audio_identity(wav_scp: Mapping[str, str]) -> str:
    """A digest of the audio a ``wav.scp`` names: each entry with the size and ``st_mtime_ns`` of its file.

    One ``stat`` per distinct file (an archive shared by many entries is stat'ed once), no
    audio is read; a shell-pipe entry contributes its command text. Any file replaced,
    rewritten, truncated or removed since changes the digest, so ``.audio_checked`` records
    it and stage 1 re-reads the audio when it differs.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> _ = open(path, "wb").write(b"RIFF")
    >>> before = audio_identity({"u1": path, "u2": "sox a.mp3 -t wav - reverse |"})
    >>> _ = open(path, "ab").write(b"more")
    >>> audio_identity({"u1": path, "u2": "sox a.mp3 -t wav - reverse |"}) == before
    False
    """
    digest = hashlib.sha256()
    stats: dict[str, str] = {}
    for key in sorted(wav_scp):
        entry = wav_scp[key]
        source = _entry_source(entry)
        if source is None:
            state = "command"
        elif source in stats:
            state = stats[source]
        else:
            try:
                info = os.stat(source)
                state = stats[source] = f"{info.st_size} {info.st_mtime_ns}"
            except OSError:
                state = stats[source] = "absent"
        digest.update(f"{key}\t{entry}\t{state}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _current_audio_identity(data_dir: Path) -> str | None:
    """:func:`audio_identity` of the dir's ``wav.scp`` (None when it does not read)."""
    try:
        return audio_identity(read_mapping(data_dir / WAV_SCP))
    except DataError:
        return None


def _audio_check_is_fresh(data_dir: Path, target_sr: int, scan_samples: bool | None, identity: str | None) -> bool:
    """Whether ``.audio_checked`` vouches for ``utt2num_samples``, the current file lists and
    the audio files (``identity``: :func:`audio_identity` of the current ``wav.scp``)."""
    stamp = data_dir / AUDIO_CHECKED
    try:
        record = json.loads(stamp.read_text())
        stamp_time = stamp.stat().st_mtime_ns
        if (record.get("version") != _AUDIO_CHECK_VERSION or record.get("target_sr") != target_sr
                or (scan_samples and record.get("scan_samples") is not True)):
            return False
        inputs = [data_dir / UTT2NUM_SAMPLES, data_dir / WAV_SCP]
        if (data_dir / SEGMENTS).exists():
            inputs.append(data_dir / SEGMENTS)
        if not all(path.stat().st_mtime_ns <= stamp_time for path in inputs):
            return False
    except (OSError, ValueError, AttributeError):
        return False
    if identity is None or record.get("audio_identity") != identity:
        logger.warning("%s: audio files changed since the last check (size or modification time of a file "
                       "wav.scp names): re-reading every recording", data_dir)
        return False
    return True


def _write_audio_stamp(data_dir: Path, target_sr: int, scan_samples: bool | None, identity: str) -> None:
    record = {"version": _AUDIO_CHECK_VERSION, "target_sr": target_sr, "scan_samples": bool(scan_samples),
              "checks": "safe entries, readable, data chunk complete, finite samples of float formats",
              "audio_identity": identity}
    (data_dir / AUDIO_CHECKED).write_text(json.dumps(record) + "\n")


def _entry_problems(data_dir: Path, wav_scp: Mapping[str, str], line_of: Mapping[str, int], keyed_by: str,
                    allow_shell_pipes: bool) -> list[str]:
    """One problem per ``wav.scp`` entry elp will not read (``file:line: utt 'x': entry ...; fix``)."""
    problems, shell = [], []
    for key, entry in wav_scp.items():
        reason = unsafe_entry_reason(entry, allow_shell_pipes)
        if reason is None:
            continue
        where = f"{data_dir / WAV_SCP}:{line_of.get(key, '?')}: {keyed_by} {key!r}: entry {entry!r}"
        if pipe_kind(entry) == "shell":
            shell.append(f"{where} is a command elp does not read natively and runs only with the opt-in")
        else:
            problems.append(f"{where} {reason}; convert the audio to files first (e.g. with sox or ffmpeg) and "
                            "list their paths (or path.ark:offset) in wav.scp")
    if shell:
        shell[0] += (f" ({len(shell)} such entr{'y' if len(shell) == 1 else 'ies'}); to run them with a shell as "
                     f"Kaldi does, opt in with {SHELL_PIPE_OPT_IN}; or convert the audio to files first")
    return shell + problems


def _measure_audio(data_dir: Path, wav_scp: Mapping[str, str], wav_lines: Mapping[str, int],
                   utts: Sequence[str], segments: Mapping[str, Segment], target_sr: int,
                   deep: bool, scan_samples: bool | None, jobs: int,
                   problems: list[str], allow_shell_pipes: bool = False) -> dict[str, int]:
    """Samples at ``target_sr`` of every utterance, each recording opened once.

    ``deep`` runs :func:`elp.data.audio.check_audio` (truncation, non-finite samples),
    otherwise headers only. ``jobs`` threads open recordings concurrently.
    """
    by_recording: dict[str, list[str]] = defaultdict(list)
    for utt in utts:
        by_recording[segments[utt].recording if utt in segments else utt].append(utt)
    recordings = sorted(by_recording)

    def inspect(reco: str):
        try:
            if deep:
                return check_recording(wav_scp[reco], scan_samples=scan_samples, allow_shell_pipes=allow_shell_pipes)
            return audio_info(wav_scp[reco], allow_shell_pipes=allow_shell_pipes)
        except AudioError as error:
            return error

    if jobs > 1 and len(recordings) > 1:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            infos = list(pool.map(inspect, recordings))
    else:
        infos = [inspect(reco) for reco in recordings]
    counts: dict[str, int] = {}
    for reco, info in zip(recordings, infos):
        label = "recording" if segments else "utt"
        if not isinstance(info, AudioInfo):
            problems.append(f"{data_dir / WAV_SCP}:{wav_lines.get(reco, '?')}: {label} {reco!r}: {info}")
            continue
        for utt in by_recording[reco]:
            segment = segments.get(utt)
            try:
                counts[utt] = segment_num_samples(info, target_sr, segment.as_tuple() if segment else None)
            except AudioError as error:
                problems.append(f"{SEGMENTS}: utt {utt!r}: {error}")
    return counts


def validate_data_dir(
    data_dir: PathLike,
    fix: bool = False,
    min_samples: int = MIN_SAMPLES,
    check_audio: bool = True,
    target_sr: int = SAMPLE_RATE,
    max_drop: float = DEFAULT_MAX_DROP,
    recheck_audio: bool = False,
    scan_samples: bool | None = None,
    jobs: int = 1,
    allow_shell_pipes: bool = False,
) -> dict[str, int]:
    """Check a data dir and write its ``utt2num_samples``.

    Checks: ``wav.scp`` and ``utt2spk`` exist; every file is UTF-8, sorted, with unique keys;
    every ``wav.scp`` entry is readable without a shell (a path, ``path.ark:offset`` or a
    standard decoder pipe, see :mod:`elp.data.pipes`) or, with ``allow_shell_pipes``, a
    command ending in ``|``; ``utt2spk`` and every ``utt2*`` file hold one non-empty token per line;
    transcripts in ``text`` are non-empty; every utterance file (``utt2spk``, ``text``,
    ``utt2*``, ``segments`` or ``wav.scp``) covers the same utterances; ``spk2utt`` matches
    ``utt2spk``; ``trials`` name known utterances; every recording can be read, its WAV data
    chunk is complete, its samples are finite (decoded for float formats, see
    :func:`elp.data.audio.check_audio`) and every utterance has at least ``min_samples``
    samples at ``target_sr``.

    ``fix=True`` repairs what has one right answer: sorts files, drops identical duplicate
    lines, removes utterances absent from some file (each logged, with counts per file),
    drops trials of removed utterances and rewrites ``spk2utt``. Removing more than
    ``max_drop`` of the utterances (or trials) is an error naming how many and why. It never
    resolves contradictions (a key with two different values), bad labels, unreadable,
    corrupt or too short audio: those always raise. Never pass ``fix=True`` for a test set
    unless the user asked for it (``validate_data.py --fix-test``).

    Parameters
    ----------
    min_samples
        Shortest allowed utterance in samples at ``target_sr`` (400 = receptive field of the
        wav2vec2/WavLM/HuBERT CNN feature encoder).
    check_audio
        Open every recording. False trusts an existing ``utt2num_samples`` (e.g. in a subset
        of a validated dir) and only checks its coverage and the length limit.
    target_sr
        Rate the sample counts refer to.
    max_drop
        Largest share (0-1) of utterances or trials ``fix`` may remove.
    recheck_audio
        Re-read the audio even when ``.audio_checked`` vouches for ``utt2num_samples`` (a
        previous validation checked every recording and no file list changed since).
    scan_samples
        Passed to :func:`elp.data.audio.check_audio` (None: decode float formats only).
    jobs
        Threads opening recordings concurrently (I/O bound: helps on network storage).
    allow_shell_pipes
        Run ``wav.scp`` commands elp does not read natively with ``sh -c``, as Kaldi does
        (off: each such entry is a problem naming its line and the opt-in).

    Returns
    -------
    dict
        utt -> number of samples at ``target_sr`` (also written to ``utt2num_samples``).

    Raises
    ------
    DataDirError
        A summary line, then one line per problem (the first :data:`MAX_LISTED_PROBLEMS`,
        then a count), each naming the file:line / utterance / path and the fix.

    Examples
    --------
    >>> import tempfile, numpy as np, soundfile as sf, os
    >>> d = tempfile.mkdtemp(); wav = os.path.join(d, "u.wav")
    >>> sf.write(wav, np.zeros(800, dtype="float32"), 16000)
    >>> _ = write_data_dir(d, wav_scp={"u": wav}, utt2label={"u": "neu sad"})
    >>> validate_data_dir(d)
    Traceback (most recent call last):
    ...
    elp.data.kaldi_dir.DataDirError: ...utt2label:1: utt 'u' has 2 tokens 'neu sad' as its label; a label is one token (join words with '_', or fix the data preparation)
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataDirError(f"{data_dir}: not a directory (run the data preparation first)")
    if not 0.0 <= max_drop <= 1.0:
        raise DataDirError(f"max_drop must be a share between 0 and 1, got {max_drop}")
    problems: list[str] = []
    for name in (WAV_SCP, UTT2SPK):
        if not (data_dir / name).is_file():
            problems.append(f"{name} is missing (write utt2spk as '<utt> <utt>' if speakers are unknown)")
    if not check_audio and not (data_dir / UTT2NUM_SAMPLES).is_file():
        problems.append(f"{UTT2NUM_SAMPLES} is missing: validate with check_audio=True to create it")
    _raise_if_problems(data_dir, problems)
    # the audio's identity before it is read: a file changed during the check shows next time
    identity = _current_audio_identity(data_dir) if check_audio else None
    trusted = (check_audio and not recheck_audio
               and _audio_check_is_fresh(data_dir, target_sr, scan_samples, identity))
    use_counts = trusted or not check_audio
    if trusted:
        logger.info("%s: audio already checked (%s newer than %s, no audio file changed); not re-reading it "
                    "(--recheck-audio does)", data_dir, AUDIO_CHECKED, WAV_SCP)

    utt_names = _utterance_files(data_dir, use_counts)
    tables: dict[str, dict[str, str]] = {}
    line_of: dict[str, dict[str, int]] = {}
    changed = set()
    for name in dict.fromkeys([WAV_SCP] + utt_names):
        numbered = read_numbered_lines(data_dir / name)
        line_of[name] = {}
        for number, key, _ in numbered:
            line_of[name].setdefault(key, number)
        tables[name], was_changed = _check_lines(data_dir / name, [(k, v) for _, k, v in numbered], fix, problems)
        if was_changed:
            changed.add(name)
    keyed_by = "recording" if SEGMENTS in tables else "utt"
    problems.extend(_entry_problems(data_dir, tables[WAV_SCP], line_of[WAV_SCP], keyed_by, allow_shell_pipes))
    for name in utt_names:
        if name.startswith("utt2"):
            for key, value in tables[name].items():
                problem = token_problem(data_dir / name, line_of[name][key], key, value)
                if problem is not None:
                    problems.append(problem)
    if TEXT in tables:
        for utt, transcript in tables[TEXT].items():
            if not transcript.strip():
                problems.append(
                    f"{data_dir / TEXT}:{line_of[TEXT][utt]}: utt {utt!r} has an empty transcript; write its "
                    "words, or remove the utterance from every file of the data dir"
                )
    _raise_if_problems(data_dir, problems)

    segments: dict[str, Segment] = {}
    if SEGMENTS in tables:
        for utt, value in tables[SEGMENTS].items():
            try:
                segments[utt] = _parse_segment(value, f"{data_dir / SEGMENTS}:{line_of[SEGMENTS][utt]}: utt {utt!r}")
            except DataDirError as error:
                problems.append(str(error))
    reco_of = {utt: seg.recording for utt, seg in segments.items()}
    before = {name: len(tables[name]) for name in utt_names}
    _drop_incomplete_utterances(tables, utt_names, reco_of, fix, max_drop, problems)
    changed.update(name for name in utt_names if len(tables[name]) != before[name])
    segments = {utt: seg for utt, seg in segments.items() if utt in tables[UTT2SPK]}
    utts = sorted(tables[UTT2SPK])
    if SEGMENTS in tables:  # recordings no utterance uses any more leave wav.scp with them
        used = {seg.recording for seg in segments.values()}
        unused = sorted(set(tables[WAV_SCP]) - used)
        if unused and fix:
            logger.warning("%s: removing %d recording(s) no segment uses, e.g. %r", WAV_SCP, len(unused), unused[0])
            for reco in unused:
                del tables[WAV_SCP][reco]
            changed.add(WAV_SCP)

    trials = read_trials(data_dir / TRIALS) if (data_dir / TRIALS).is_file() else None
    if trials is not None:
        known = set(utts)
        bad = [t for t in trials if t.enroll not in known or t.test not in known]
        if bad and fix and len(bad) > max_drop * len(trials):
            problems.append(
                f"--fix would remove {len(bad)} of {len(trials)} trial(s) ({len(bad) / len(trials):.1%} > "
                f"--max-drop {max_drop:.1%}) naming utterances absent from the dir, e.g. {bad[0].enroll!r} "
                f"{bad[0].test!r}; repair the data dir, or raise --max-drop if removing them is intended"
            )
        elif bad and fix:
            logger.warning("dropping %d of %d trial(s) naming removed or unknown utterances, e.g. %s %s",
                           len(bad), len(trials), bad[0].enroll, bad[0].test)
            trials = [t for t in trials if t not in bad]
            changed.add(TRIALS)
        elif bad:
            problems.append(
                f"{TRIALS}: {len(bad)} trial(s) name utterances absent from the dir, e.g. "
                f"{bad[0].enroll!r} {bad[0].test!r}; remove them or use validate_data_dir(fix=True)"
            )

    spk2utt = utt2spk_to_spk2utt(tables[UTT2SPK])
    if (data_dir / SPK2UTT).is_file():
        existing = {spk: sorted(u) for spk, u in read_spk2utt(data_dir / SPK2UTT).items()}
        if existing != spk2utt:
            if fix:
                logger.warning("spk2utt did not match utt2spk: rewriting it")
            else:
                problems.append(f"{SPK2UTT} does not match {UTT2SPK}: regenerate it (fix=True does)")
    _raise_if_problems(data_dir, problems)

    utt2num_samples: dict[str, int] = {}
    if not use_counts:
        utt2num_samples = _measure_audio(data_dir, tables[WAV_SCP], line_of[WAV_SCP], utts, segments,
                                         target_sr, True, scan_samples, jobs, problems, allow_shell_pipes)
    else:
        for utt in utts:
            try:
                utt2num_samples[utt] = int(tables[UTT2NUM_SAMPLES][utt])
            except ValueError:
                problems.append(f"{UTT2NUM_SAMPLES}: utt {utt!r} has a non-integer count")
    for utt, count in utt2num_samples.items():
        if count < min_samples:
            problems.append(
                f"utt {utt!r} is too short: {count} samples at {target_sr} Hz < min_samples={min_samples} "
                "(the receptive field of the CNN feature encoder); remove the utterance from every "
                "file of the data dir or use a longer segment"
            )
    _raise_if_problems(data_dir, problems)

    for name in sorted(changed - {TRIALS}):
        write_mapping(data_dir / name, tables[name])
    if TRIALS in changed:
        write_trials(data_dir / TRIALS, trials)
    write_spk2utt(data_dir / SPK2UTT, spk2utt)
    write_utt2num_samples(data_dir / UTT2NUM_SAMPLES, utt2num_samples)
    if check_audio:
        if identity is None or WAV_SCP in changed:
            identity = audio_identity(tables[WAV_SCP])
        _write_audio_stamp(data_dir, target_sr, scan_samples, identity)
    logger.info("%s: valid, %d utterances, %d speakers", data_dir, len(utts), len(spk2utt))
    return utt2num_samples


def _counts_are_fresh(data_dir: Path) -> bool:
    """``utt2num_samples`` exists and is not older than ``wav.scp`` (and ``segments``)."""
    try:
        counts_time = (data_dir / UTT2NUM_SAMPLES).stat().st_mtime_ns
        inputs = [data_dir / WAV_SCP] + ([data_dir / SEGMENTS] if (data_dir / SEGMENTS).exists() else [])
        return all(path.stat().st_mtime_ns <= counts_time for path in inputs)
    except OSError:
        return False


def utterance_lengths(data_dir: PathLike, target_sr: int = SAMPLE_RATE, jobs: int = 1,
                      allow_shell_pipes: bool = False) -> dict[str, int]:
    """Samples of every utterance at ``target_sr``, for length sorting and dynamic batching.

    ``utt2num_samples`` is trusted while it is not older than ``wav.scp`` (and ``segments``):
    no audio is opened. Otherwise every recording header is read once (``jobs`` threads) and
    ``utt2num_samples`` is rewritten atomically (safe when several processes do it at once).

    Parameters
    ----------
    target_sr
        Rate of the counts (``utt2num_samples`` always holds 16 kHz counts).
    allow_shell_pipes
        Run ``wav.scp`` commands elp does not read natively (see :func:`validate_data_dir`).

    Returns
    -------
    dict
        utt -> samples, sorted by utt.

    Examples
    --------
    >>> import tempfile, numpy as np, soundfile as sf, os
    >>> d = tempfile.mkdtemp(); wav = os.path.join(d, "u.wav")
    >>> sf.write(wav, np.zeros(800, dtype="float32"), 8000)
    >>> _ = write_data_dir(d, wav_scp={"u": wav})
    >>> utterance_lengths(d)  # no utt2num_samples yet: reads the header, writes the file
    {'u': 1600}
    >>> os.remove(wav); utterance_lengths(d)  # trusted now: no audio opened
    {'u': 1600}
    """
    data_dir = Path(data_dir)
    if target_sr == SAMPLE_RATE and _counts_are_fresh(data_dir):
        return read_utt2num_samples(data_dir / UTT2NUM_SAMPLES)
    if (data_dir / UTT2NUM_SAMPLES).exists() and target_sr == SAMPLE_RATE:
        logger.warning("%s: %s is older than %s: re-reading the audio headers", data_dir, UTT2NUM_SAMPLES, WAV_SCP)
    for name in (WAV_SCP, UTT2SPK):
        if not (data_dir / name).is_file():
            raise DataDirError(f"{data_dir}: {name} is missing (every data dir needs {WAV_SCP} and {UTT2SPK})")
    wav_lines = {key: number for number, key, _ in read_numbered_lines(data_dir / WAV_SCP)}
    wav_scp = read_mapping(data_dir / WAV_SCP)
    segments = read_segments(data_dir / SEGMENTS) if (data_dir / SEGMENTS).is_file() else {}
    keyed_by = "recording" if segments else "utt"
    problems = _entry_problems(data_dir, wav_scp, wav_lines, keyed_by, allow_shell_pipes)
    _raise_if_problems(data_dir, problems)
    utts = sorted(read_mapping(data_dir / UTT2SPK))
    counts = _measure_audio(data_dir, wav_scp, wav_lines, utts, segments, target_sr, False, None, jobs, problems,
                            allow_shell_pipes)
    _raise_if_problems(data_dir, problems)
    if target_sr == SAMPLE_RATE:
        atomic_write(data_dir / UTT2NUM_SAMPLES, lambda tmp: write_utt2num_samples(tmp, counts))
    return counts


# --------------------------------------------------------------------------- SpeechBrain
def data_dir_to_dict(data_dir: PathLike, label_file: str | None = None,
                     allow_shell_pipes: bool = False) -> dict[str, dict[str, object]]:
    """A validated data dir as the ``data`` dict of SpeechBrain's ``DynamicItemDataset``.

    Parameters
    ----------
    data_dir
        A data dir that passed :func:`validate_data_dir` (``utt2num_samples`` is required).
    label_file
        Name of the label file inside the dir; None uses ``utt2label`` when present.
    allow_shell_pipes
        Passed to :func:`utterance_lengths` when the counts must be measured again.

    Returns
    -------
    dict
        utt -> {"wav": wav.scp entry, "spk": speaker, "num_samples": int,
        "text": transcript (if ``text`` exists), "label": class (if a label file is used),
        "start"/"end": seconds (if ``segments`` exists)}, sorted by utt.

    Examples
    --------
    >>> import tempfile, numpy as np, soundfile as sf, os
    >>> d = tempfile.mkdtemp(); wav = os.path.join(d, "u.wav")
    >>> sf.write(wav, np.zeros(800, dtype="float32"), 16000)
    >>> _ = write_data_dir(d, wav_scp={"u": wav}, utt2label={"u": "neu"})
    >>> _ = validate_data_dir(d)
    >>> data_dir_to_dict(d)["u"]["num_samples"], data_dir_to_dict(d)["u"]["label"]
    (800, 'neu')
    """
    data_dir = Path(data_dir)
    data = read_data_dir(data_dir)
    if data.utt2num_samples is None:
        raise DataDirError(f"{data_dir}: {UTT2NUM_SAMPLES} is missing: run validate_data_dir on it first")
    if not _counts_are_fresh(data_dir):
        data.utt2num_samples = utterance_lengths(data_dir, allow_shell_pipes=allow_shell_pipes)
    labels = None
    if label_file is not None:
        labels = read_token_mapping(data_dir / label_file)
    elif data.utt2label is not None:
        labels = data.utt2label
    result: dict[str, dict[str, object]] = {}
    for utt in data.utterances:
        segment = data.segments.get(utt) if data.segments is not None else None
        try:
            item: dict[str, object] = {
                "wav": data.wav_scp[segment.recording if segment else utt],
                "spk": data.utt2spk[utt],
                "num_samples": data.utt2num_samples[utt],
            }
            if segment is not None:
                item["start"], item["end"] = segment.start, segment.end
            if data.text is not None:
                item["text"] = data.text[utt]
            if labels is not None:
                item["label"] = labels[utt]
        except KeyError as missing:
            raise DataDirError(
                f"{data_dir}: utt {utt!r} is missing from a file ({missing}); run validate_data_dir"
            ) from None
        result[utt] = item
    return result
