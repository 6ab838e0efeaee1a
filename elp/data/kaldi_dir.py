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
``utt2num_samples`` ``<utt> <samples at 16 kHz after resampling>`` (written by validation)
``trials``          ``<enroll-utt> <test-utt> target|nontarget`` (speaker verification; kept
                    in the order given, not a key-value file)
=================== ==========================================================================

Typical use::

    write_data_dir("data/train", wav_scp=wavs, utt2spk=spks, text=texts)
    validate_data_dir("data/train")              # raises DataDirError naming the problem
    dataset = DynamicItemDataset(data_dir_to_dict("data/train"))
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from elp.data.audio import TARGET_SAMPLE_RATE, num_samples

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

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

_MAX_LISTED_PROBLEMS = 20


class DataDirError(ValueError):
    """A data directory (or one of its files) is malformed; the message says how to fix it."""


@dataclass(frozen=True)
class Segment:
    """One line of ``segments``: an utterance cut out of a recording (seconds)."""

    recording: str
    start: float
    end: float

    def as_tuple(self) -> Tuple[float, float]:
        """``(start, end)`` as :func:`elp.data.audio.read_audio` takes it."""
        return (self.start, self.end)


@dataclass(frozen=True)
class Trial:
    """One speaker-verification trial: is ``test`` spoken by the speaker of ``enroll``?"""

    enroll: str
    test: str
    target: bool


@dataclass
class DataDir:
    """The mappings of a data dir in memory (None: the file is absent).

    Field names are the keyword arguments of :func:`write_data_dir`, so
    ``write_data_dir(path, **data.mappings())`` writes it back.
    """

    wav_scp: Dict[str, str]
    utt2spk: Dict[str, str]
    text: Optional[Dict[str, str]] = None
    utt2label: Optional[Dict[str, str]] = None
    segments: Optional[Dict[str, Segment]] = None
    utt2num_samples: Optional[Dict[str, int]] = None
    trials: Optional[List[Trial]] = None

    @property
    def utterances(self) -> List[str]:
        """Sorted utterance ids."""
        return sorted(self.utt2spk)

    def mappings(self) -> Dict[str, object]:
        """The fields as a dict (for ``write_data_dir(path, **data.mappings())``)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# --------------------------------------------------------------------------- generic mappings
def _check_key(key: str, where: str) -> None:
    if not key or any(ch.isspace() for ch in key):
        raise DataDirError(f"{where}: key {key!r} is empty or contains whitespace (Kaldi keys are single tokens)")


def read_mapping_lines(path: PathLike) -> List[Tuple[str, str]]:
    """Read ``<key> <value>`` lines in file order, keeping duplicates (for validation).

    Arguments
    ---------
    path : str or Path
        A Kaldi mapping file. The value is the rest of the line after the first whitespace
        (may contain spaces, as in ``text``; may be empty). Blank lines are skipped.

    Returns
    -------
    list of (str, str)
    """
    path = Path(path)
    if not path.is_file():
        raise DataDirError(f"{path}: file not found")
    lines = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            lines.append((parts[0], parts[1] if len(parts) > 1 else ""))
    return lines


def read_mapping(path: PathLike) -> Dict[str, str]:
    """Read a Kaldi mapping file (``wav.scp``, ``utt2spk``, ``text``, ``utt2label``, ...).

    Arguments
    ---------
    path : str or Path
        The file.

    Returns
    -------
    dict
        key -> value (value = rest of the line, stripped).

    Raises
    ------
    DataDirError
        If a key occurs twice (the message names the key and both lines).

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "text")
    >>> write_mapping(path, {"u2": "B C", "u1": "A"})
    >>> open(path).read()
    'u1 A\\nu2 B C\\n'
    >>> read_mapping(path)
    {'u1': 'A', 'u2': 'B C'}
    """
    mapping: Dict[str, str] = {}
    for key, value in read_mapping_lines(path):
        if key in mapping:
            raise DataDirError(
                f"{path}: key {key!r} occurs more than once ({mapping[key]!r} and {value!r}); "
                "keep one line per key (validate_data_dir(fix=True) drops identical duplicates)"
            )
        mapping[key] = value
    return mapping


def write_mapping(path: PathLike, mapping: Mapping[str, object]) -> None:
    """Write ``<key> <value>`` lines sorted by key (C-locale order).

    Arguments
    ---------
    path : str or Path
        Output file (parent dirs are created).
    mapping : Mapping[str, object]
        key -> value; values are written with ``str()``; an empty value writes the key alone.
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
def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> Dict[str, List[str]]:
    """Invert ``utt2spk``: speaker -> sorted utterances (keys sorted).

    Example
    -------
    >>> utt2spk_to_spk2utt({"a-2": "a", "b-1": "b", "a-1": "a"})
    {'a': ['a-1', 'a-2'], 'b': ['b-1']}
    """
    spk2utt: Dict[str, List[str]] = defaultdict(list)
    for utt in sorted(utt2spk):
        spk2utt[utt2spk[utt]].append(utt)
    return {spk: spk2utt[spk] for spk in sorted(spk2utt)}


def read_spk2utt(path: PathLike) -> Dict[str, List[str]]:
    """Read ``spk2utt``: speaker -> list of utterances (in file order)."""
    return {spk: utts.split() for spk, utts in read_mapping(path).items()}


def write_spk2utt(path: PathLike, spk2utt: Mapping[str, Sequence[str]]) -> None:
    """Write ``spk2utt`` (speakers sorted, utterances sorted within a speaker)."""
    write_mapping(path, {spk: " ".join(sorted(utts)) for spk, utts in spk2utt.items()})


def read_segments(path: PathLike) -> Dict[str, Segment]:
    """Read ``segments``: utt -> :class:`Segment` (``<utt> <recording> <start> <end>``)."""
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


def read_utt2num_samples(path: PathLike) -> Dict[str, int]:
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


def read_trials(path: PathLike) -> List[Trial]:
    """Read a ``trials`` file: lines ``<enroll-utt> <test-utt> target|nontarget``.

    Returns
    -------
    list of Trial
        In file order.
    """
    trials = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
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
    """Write a ``trials`` file in the order given."""
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
    utt2spk: Optional[Mapping[str, str]] = None,
    text: Optional[Mapping[str, str]] = None,
    utt2label: Optional[Mapping[str, str]] = None,
    segments: Optional[Mapping[str, Segment]] = None,
    utt2num_samples: Optional[Mapping[str, int]] = None,
    trials: Optional[Sequence[Trial]] = None,
) -> Path:
    """Write a data dir: sorted mapping files, ``spk2utt`` derived from ``utt2spk``.

    Files of :data:`DATA_DIR_FILES` left over from an earlier write and not given now are
    removed (with a log line), so the directory never mixes two versions.

    Arguments
    ---------
    data_dir : str or Path
        Output directory (created).
    wav_scp : Mapping[str, str]
        utt (or recording, with ``segments``) -> audio entry.
    utt2spk : Mapping[str, str], optional
        utt -> speaker; None maps every utterance to itself (speakers unknown).
    text, utt2label : Mapping[str, str], optional
        Transcripts / class labels.
    segments : Mapping[str, Segment], optional
        utt -> segment of a recording in ``wav_scp``.
    utt2num_samples : Mapping[str, int], optional
        Usually left to :func:`validate_data_dir`.
    trials : sequence of Trial, optional
        Verification trials over the utterances of this dir.

    Returns
    -------
    Path
        ``data_dir``.

    Raises
    ------
    DataDirError
        If the mappings do not cover the same utterances (names the first offenders).

    Example
    -------
    >>> import tempfile
    >>> out = write_data_dir(tempfile.mkdtemp(), wav_scp={"s1-u1": "/a.flac"}, utt2spk={"s1-u1": "s1"})
    >>> sorted(p.name for p in out.iterdir())
    ['spk2utt', 'utt2spk', 'wav.scp']
    """
    data_dir = Path(data_dir)
    utts = set(segments) if segments is not None else set(wav_scp)
    if utt2spk is None:
        utt2spk = {utt: utt for utt in utts}
    per_utt = {UTT2SPK: utt2spk, TEXT: text, UTT2LABEL: utt2label, UTT2NUM_SAMPLES: utt2num_samples}
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
    given = {WAV_SCP: wav_scp, SPK2UTT: utt2spk, SEGMENTS: segments, TRIALS: trials, **per_utt}
    for name in DATA_DIR_FILES:
        if given[name] is None and (data_dir / name).exists():
            logger.info("%s: removing stale %s (not part of this write)", data_dir, name)
            (data_dir / name).unlink()
    write_mapping(data_dir / WAV_SCP, wav_scp)
    write_mapping(data_dir / UTT2SPK, utt2spk)
    write_spk2utt(data_dir / SPK2UTT, utt2spk_to_spk2utt(utt2spk))
    for name, mapping in ((TEXT, text), (UTT2LABEL, utt2label)):
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
        If ``wav.scp`` or ``utt2spk`` is missing or a key is duplicated.
    """
    data_dir = Path(data_dir)

    def optional(name, reader):
        return reader(data_dir / name) if (data_dir / name).is_file() else None

    for name in (WAV_SCP, UTT2SPK):
        if not (data_dir / name).is_file():
            raise DataDirError(f"{data_dir}: {name} is missing (every data dir needs {WAV_SCP} and {UTT2SPK})")
    return DataDir(
        wav_scp=read_mapping(data_dir / WAV_SCP),
        utt2spk=read_mapping(data_dir / UTT2SPK),
        text=optional(TEXT, read_mapping),
        utt2label=optional(UTT2LABEL, read_mapping),
        segments=optional(SEGMENTS, read_segments),
        utt2num_samples=optional(UTT2NUM_SAMPLES, read_utt2num_samples),
        trials=optional(TRIALS, read_trials),
    )


def subset_data_dir(data: DataDir, utterances: Iterable[str]) -> DataDir:
    """Keep only ``utterances`` (and trials whose two sides are both kept).

    Example
    -------
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
            merged: Dict[str, object] = {}
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
def _utterance_files(data_dir: Path, check_audio: bool) -> List[str]:
    """Names of the files keyed by utterance that exist in ``data_dir``."""
    names = [UTT2SPK, TEXT, SEGMENTS]
    names += sorted(p.name for p in data_dir.glob("utt2*") if p.name not in (UTT2SPK, UTT2NUM_SAMPLES))
    if not check_audio:
        names.append(UTT2NUM_SAMPLES)
    if not (data_dir / SEGMENTS).is_file():
        names.insert(0, WAV_SCP)
    return [name for name in dict.fromkeys(names) if (data_dir / name).is_file()]


def _check_lines(name: str, lines: List[Tuple[str, str]], fix: bool,
                 problems: List[str]) -> Tuple[Dict[str, str], bool]:
    """Sortedness and uniqueness of one file. Returns (mapping, whether fix changed it)."""
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
                f"{keys[unsorted_at - 1]!r}; sort it (LC_ALL=C sort) or use validate_data_dir(fix=True)"
            )
    mapping: Dict[str, str] = {}
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


def _raise_if_problems(data_dir: Path, problems: List[str]) -> None:
    if not problems:
        return
    shown = problems[:_MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown)
    message = f"{data_dir}: {len(problems)} problem(s):\n  - " + "\n  - ".join(shown)
    if more:
        message += f"\n  ... and {more} more"
    raise DataDirError(message)


def _drop_incomplete_utterances(tables: Dict[str, Dict[str, str]], utt_names: List[str],
                                reco_of: Dict[str, str], fix: bool, problems: List[str]) -> None:
    """Every utterance must be in every utterance file (and its recording in wav.scp)."""
    all_utts = set().union(*(tables[name] for name in utt_names))
    missing_from: Dict[str, List[str]] = defaultdict(list)
    for name in utt_names:
        for utt in all_utts - set(tables[name]):
            missing_from[utt].append(name)
    for utt, reco in reco_of.items():
        if reco not in tables[WAV_SCP]:
            missing_from[utt].append(f"{WAV_SCP} (recording {reco!r})")
    for utt in sorted(missing_from):
        present = [name for name in utt_names if utt in tables[name]]
        where = ", ".join(missing_from[utt])
        if fix:
            logger.warning("removing utterance %r: missing from %s", utt, where)
        else:
            problems.append(
                f"utt {utt!r} is missing from {where} (present in {', '.join(present)}); add it there "
                "or remove it everywhere (validate_data_dir(fix=True) removes it)"
            )
    if fix and missing_from:
        logger.warning("removed %d utterance(s) not present in every file", len(missing_from))
        for name in utt_names:
            for utt in missing_from:
                tables[name].pop(utt, None)


def validate_data_dir(
    data_dir: PathLike,
    fix: bool = False,
    min_samples: int = MIN_SAMPLES,
    check_audio: bool = True,
    target_sr: int = TARGET_SAMPLE_RATE,
) -> Dict[str, int]:
    """Check a data dir and write its ``utt2num_samples``.

    Checks: ``wav.scp`` and ``utt2spk`` exist; every file is sorted with unique keys; every
    utterance file (``utt2spk``, ``text``, ``utt2*``, ``segments`` or ``wav.scp``) covers the same
    utterances; ``spk2utt`` matches ``utt2spk``; ``trials`` name known utterances; every
    utterance's audio can be read and has at least ``min_samples`` samples at ``target_sr``.

    ``fix=True`` repairs what has one right answer: sorts files, drops identical duplicate
    lines, removes utterances absent from some file (each logged, with a count), drops trials
    of removed utterances and rewrites ``spk2utt``. It never resolves contradictions (a key
    with two different values), unreadable or too short audio: those always raise.

    Arguments
    ---------
    data_dir : str or Path
        The data dir.
    fix : bool
        Repair the dir in place where possible.
    min_samples : int
        Shortest allowed utterance in samples at ``target_sr`` (400 = receptive field of the
        wav2vec2/WavLM/HuBERT CNN feature encoder).
    check_audio : bool
        Open every recording (soundfile header / kaldiio). False trusts an existing
        ``utt2num_samples`` (e.g. in a subset of a validated dir) and only checks its coverage
        and the length limit.
    target_sr : int
        Rate the sample counts refer to.

    Returns
    -------
    dict
        utt -> number of samples at ``target_sr`` (also written to ``utt2num_samples``).

    Raises
    ------
    DataDirError
        Listing every problem found, each naming the utterance / file / path and the fix.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataDirError(f"{data_dir}: not a directory (run the data preparation first)")
    problems: List[str] = []
    for name in (WAV_SCP, UTT2SPK):
        if not (data_dir / name).is_file():
            problems.append(f"{name} is missing (write utt2spk as '<utt> <utt>' if speakers are unknown)")
    if not check_audio and not (data_dir / UTT2NUM_SAMPLES).is_file():
        problems.append(f"{UTT2NUM_SAMPLES} is missing: validate with check_audio=True to create it")
    _raise_if_problems(data_dir, problems)

    utt_names = _utterance_files(data_dir, check_audio)
    tables: Dict[str, Dict[str, str]] = {}
    changed = set()
    for name in dict.fromkeys([WAV_SCP] + utt_names):
        tables[name], was_changed = _check_lines(name, read_mapping_lines(data_dir / name), fix, problems)
        if was_changed:
            changed.add(name)
    empty_audio = [utt for utt, entry in tables[WAV_SCP].items() if not entry]
    if empty_audio:
        problems.append(f"{WAV_SCP}: {len(empty_audio)} line(s) without an audio entry, e.g. {empty_audio[0]!r}")
    bad_speakers = [utt for utt, spk in tables[UTT2SPK].items() if len(spk.split()) != 1]
    if bad_speakers:
        problems.append(f"{UTT2SPK}: {len(bad_speakers)} line(s) whose speaker is not one token, "
                        f"e.g. {bad_speakers[0]!r}")
    _raise_if_problems(data_dir, problems)

    segments: Dict[str, Segment] = {}
    if SEGMENTS in tables:
        for utt, value in tables[SEGMENTS].items():
            try:
                segments[utt] = _parse_segment(value, f"{SEGMENTS}: utt {utt!r}")
            except DataDirError as error:
                problems.append(str(error))
    reco_of = {utt: seg.recording for utt, seg in segments.items()}
    before = {name: len(tables[name]) for name in utt_names}
    _drop_incomplete_utterances(tables, utt_names, reco_of, fix, problems)
    changed.update(name for name in utt_names if len(tables[name]) != before[name])
    utts = sorted(tables[UTT2SPK])

    trials = read_trials(data_dir / TRIALS) if (data_dir / TRIALS).is_file() else None
    if trials is not None:
        known = set(utts)
        bad = [t for t in trials if t.enroll not in known or t.test not in known]
        if bad and fix:
            logger.warning("dropping %d trial(s) naming removed or unknown utterances, e.g. %s %s",
                           len(bad), bad[0].enroll, bad[0].test)
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

    utt2num_samples: Dict[str, int] = {}
    if check_audio:
        for utt in utts:
            segment = segments.get(utt)
            entry = tables[WAV_SCP][segment.recording if segment else utt]
            try:
                utt2num_samples[utt] = num_samples(entry, target_sr, segment.as_tuple() if segment else None)
            except Exception as error:  # noqa: BLE001 - any reader failure is reported per utterance
                problems.append(f"utt {utt!r}: cannot read audio {entry!r}: {error}")
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
    logger.info("%s: valid, %d utterances, %d speakers", data_dir, len(utts), len(spk2utt))
    return utt2num_samples


# --------------------------------------------------------------------------- SpeechBrain
def data_dir_to_dict(data_dir: PathLike, label_file: Optional[str] = None) -> Dict[str, Dict[str, object]]:
    """A validated data dir as the ``data`` dict of SpeechBrain's ``DynamicItemDataset``.

    Arguments
    ---------
    data_dir : str or Path
        A data dir that passed :func:`validate_data_dir` (``utt2num_samples`` is required).
    label_file : str, optional
        Name of the label file inside the dir; None uses ``utt2label`` when present.

    Returns
    -------
    dict
        utt -> {"wav": wav.scp entry, "spk": speaker, "num_samples": int,
        "text": transcript (if ``text`` exists), "label": class (if a label file is used),
        "start"/"end": seconds (if ``segments`` exists)}, sorted by utt.

    Example
    -------
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
    labels = None
    if label_file is not None:
        labels = read_mapping(data_dir / label_file)
    elif data.utt2label is not None:
        labels = data.utt2label
    result: Dict[str, Dict[str, object]] = {}
    for utt in data.utterances:
        segment = data.segments.get(utt) if data.segments is not None else None
        try:
            item: Dict[str, object] = {
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
