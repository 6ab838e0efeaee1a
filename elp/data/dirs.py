"""Data-dir utilities in the Kaldi idiom: subset, combine, copy with prefixes, filter, perturb speed.

Each function reads data dirs with :func:`elp.data.kaldi_dir.read_data_dir`, works on the
in-memory :class:`~elp.data.kaldi_dir.DataDir` with the helpers of :mod:`elp.data.kaldi_dir`
(:func:`~elp.data.kaldi_dir.subset_data_dir`, :func:`~elp.data.kaldi_dir.combine_data_dirs`)
and writes the result with :func:`~elp.data.kaldi_dir.write_data_dir`, so every output is
sorted in C-locale order with ``spk2utt`` derived from ``utt2spk``: it passes elp's
:func:`~elp.data.kaldi_dir.validate_data_dir` and Kaldi's ``utils/validate_data_dir.sh``
(which also wants ``utt2spk`` sorted by speaker to give the same order as sorted by
utterance: true when speaker ids prefix utterance ids, which is why :func:`copy_dir` and
:func:`perturb_speed` prefix both).

======================= ====================================================== ==============================
function                what                                                   Kaldi / ESPnet counterpart
======================= ====================================================== ==============================
:func:`subset_dir`      the first / last / N random utterances, or those of a  ``utils/subset_data_dir.sh``
                        speaker or utterance list
:func:`combine_dirs`    the union of several dirs                              ``utils/combine_data.sh``
:func:`copy_dir`        a copy with utterance / speaker id prefixes            ``utils/copy_data_dir.sh``
:func:`filter_dir`      utterances between two durations                       ``utils/data/remove_dup_utts.sh``-style
                                                                               filters, ESPnet ``--min/max``
:func:`perturb_speed`   one copy per speed factor, ids prefixed ``sp<F>-``     ``utils/data/perturb_data_dir_speed.sh``
======================= ====================================================== ==============================

Speed perturbation writes no audio: each recording's ``wav.scp`` entry becomes a ``sox ...
speed F |`` pipe, which elp reads natively (:mod:`elp.data.pipes`: the file is read and
resampled from ``F`` times its rate back to its rate, as sox's ``speed`` effect does) and
Kaldi runs with sox. A plain path ``P`` becomes ``sox P -t wav - speed F |``; a pipe entry
``CMD |`` becomes ``CMD | sox -t wav - -t wav - speed F |`` (Kaldi's own form). Segment
times are divided by ``F``. Archive entries (``path.ark:offset``) cannot be piped into sox
and are refused.

Every function reads ``source`` (a data dir path, or a :class:`~elp.data.kaldi_dir.DataDir`
in memory) and writes its result to ``dest``, returning ``dest``; with ``dest`` None it
returns the result in memory. Files other than those :class:`~elp.data.kaldi_dir.DataDir` knows (``feats.scp``,
``utt2dur``, ...) are not carried over; a warning names them.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> root = Path(tempfile.mkdtemp())
>>> src = write_data_dir(root / "train", wav_scp={"s1-a": "/c/a.flac", "s2-b": "/c/b.wav"},
...                      utt2spk={"s1-a": "s1", "s2-b": "s2"})
>>> sp = perturb_speed(src, root / "train_sp", [0.9, 1.0])
>>> print((sp / "wav.scp").read_text(), end="")
s1-a /c/a.flac
s2-b /c/b.wav
sp0.9-s1-a sox /c/a.flac -t wav - speed 0.9 |
sp0.9-s2-b sox /c/b.wav -t wav - speed 0.9 |
>>> print((sp / "spk2utt").read_text(), end="")
s1 s1-a
s2 s2-b
sp0.9-s1 sp0.9-s1-a
sp0.9-s2 sp0.9-s2-b
"""
from __future__ import annotations

import logging
import random as random_module
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

from elp.data.kaldi_dir import (
    DATA_DIR_FILES,
    DataDir,
    DataDirError,
    PathLike,
    Segment,
    Trial,
    combine_data_dirs,
    read_data_dir,
    read_text_lines,
    subset_data_dir,
    utterance_lengths,
    write_data_dir,
)
from elp.data.pipes import pipe_kind
from elp.runtime import SAMPLE_RATE

logger = logging.getLogger(__name__)

_KNOWN = set(DATA_DIR_FILES) | {".audio_checked"}


def _read(source: PathLike | DataDir) -> DataDir:
    if isinstance(source, DataDir):
        return source
    source = Path(source)
    if not source.is_dir():
        raise DataDirError(f"{source}: not a data directory (run the data preparation first, or fix the path)")
    unknown = sorted(p.name for p in source.iterdir() if p.is_file() and p.name not in _KNOWN
                     and not p.name.startswith("."))
    if unknown:
        logger.warning("%s: not carried over (elp does not manage them): %s", source, ", ".join(unknown))
    return read_data_dir(source)


def _write(data: DataDir, dest: PathLike) -> Path:
    return write_data_dir(dest, **data.mappings())


def read_id_list(path: PathLike) -> list[str]:
    """The first token of every non-empty line of a list file (Kaldi ``--utt-list`` style).

    Parameters
    ----------
    path
        A text file, one id per line (further columns are ignored, as ``utils/filter_scp.pl``
        does).

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "list")
    >>> _ = open(path, "w").write("u2 extra\\n\\nu1\\n")
    >>> read_id_list(path)
    ['u2', 'u1']
    """
    return [line.split()[0] for _, line in read_text_lines(path) if line.strip()]


# --------------------------------------------------------------------------- subset
def subset_dir(source: PathLike | DataDir, dest: PathLike | None = None, *, first: int | None = None,
               last: int | None = None, random: int | None = None, seed: int = 0,
               spk_list: Iterable[str] | None = None, utt_list: Iterable[str] | None = None) -> Path | DataDir:
    """Keep some utterances of a data dir (``utils/subset_data_dir.sh``).

    Exactly one selection: ``first`` / ``last`` N utterances in sorted order, ``random`` N
    (reproducible by ``seed``), the utterances of the speakers in ``spk_list``, or those in
    ``utt_list``. Trials are kept when both their sides are.

    Parameters
    ----------
    spk_list, utt_list
        Speaker / utterance ids to keep; an id absent from the dir is an error.

    Raises
    ------
    DataDirError
        No or several selections, N larger than the dir, or unknown ids (naming them).

    Examples
    --------
    >>> data = DataDir(wav_scp={u: f"/c/{u}.wav" for u in ("a1", "a2", "b1")},
    ...                utt2spk={"a1": "a", "a2": "a", "b1": "b"})
    >>> subset_dir(data, first=2).utterances, subset_dir(data, spk_list=["b"]).utterances
    (['a1', 'a2'], ['b1'])
    """
    data = _read(source)
    chosen = [name for name, value in (("first", first), ("last", last), ("random", random),
                                       ("spk_list", spk_list), ("utt_list", utt_list)) if value is not None]
    if len(chosen) != 1:
        raise DataDirError(f"subset: give exactly one of --first, --last, --random, --spk-list, --utt-list "
                           f"(got {', '.join(chosen) or 'none'})")
    utts = data.utterances
    count = first if first is not None else last if last is not None else random
    if count is not None and not 0 < count <= len(utts):
        raise DataDirError(f"subset: cannot take {count} of the {len(utts)} utterances; give 1 to {len(utts)}")
    if first is not None:
        keep = utts[:first]
    elif last is not None:
        keep = utts[-last:]
    elif random is not None:
        keep = random_module.Random(seed).sample(utts, random)
    elif spk_list is not None:
        speakers = set(spk_list)
        unknown = sorted(speakers - set(data.utt2spk.values()))
        if unknown:
            raise DataDirError(f"subset: speakers not in the data dir: {unknown[:5]} ({len(unknown)} in all); "
                               "fix the speaker list")
        keep = [utt for utt in utts if data.utt2spk[utt] in speakers]
    else:
        keep = list(utt_list)
        unknown = sorted(set(keep) - set(utts))
        if unknown:
            raise DataDirError(f"subset: utterances not in the data dir: {unknown[:5]} ({len(unknown)} in all); "
                               "fix the utterance list")
    subset = subset_data_dir(data, keep)
    return subset if dest is None else _write(subset, dest)


# --------------------------------------------------------------------------- combine
def combine_dirs(sources: Sequence[PathLike | DataDir], dest: PathLike | None = None) -> Path | DataDir:
    """The union of data dirs (``utils/combine_data.sh``).

    Optional files (``text``, ``utt2label``, ``segments``, ...) are kept only when every
    source has them (a warning names the dropped ones); an id in two sources must have equal
    values everywhere. ``wav.scp`` of dirs with and without ``segments`` cannot be mixed.

    Raises
    ------
    DataDirError
        An id with two values, or ``segments`` in some sources only.

    Examples
    --------
    >>> a = DataDir(wav_scp={"a1": "/c/a1.wav"}, utt2spk={"a1": "a"}, text={"a1": "HI"})
    >>> b = DataDir(wav_scp={"b1": "/c/b1.wav"}, utt2spk={"b1": "b"})
    >>> combine_dirs([a, b]).utterances, combine_dirs([a, b]).text
    (['a1', 'b1'], None)
    """
    parts = [_read(source) for source in sources]
    with_segments = [part.segments is not None for part in parts]
    if any(with_segments) and not all(with_segments):
        raise DataDirError("combine: some data dirs have segments and some do not; give each an utterance-keyed "
                           "wav.scp (or segments covering whole recordings: '<utt> <utt> 0 -1')")
    for name in ("text", "utt2label", "utt2num_samples", "trials"):
        have = [getattr(part, name) is not None for part in parts]
        if any(have) and not all(have):
            logger.warning("combine: dropping %s (only %d of %d data dirs have it)", name, sum(have), len(parts))
    combined = combine_data_dirs(parts)
    return combined if dest is None else _write(combined, dest)


# --------------------------------------------------------------------------- copy with prefixes
def copy_dir(source: PathLike | DataDir, dest: PathLike | None = None, *, utt_prefix: str = "",
             spk_prefix: str = "", reco_prefix: str | None = None) -> Path | DataDir:
    """A copy with prefixed ids (``utils/copy_data_dir.sh --utt-prefix --spk-prefix``).

    Utterance ids get ``utt_prefix``, speaker ids ``spk_prefix``; with ``segments``,
    recording ids get ``reco_prefix`` (None: unchanged, as ``copy_data_dir.sh`` does).
    Kaldi wants speaker ids to prefix utterance ids, so give both prefixes the same value
    when utterance ids start with the speaker id.

    Parameters
    ----------
    utt_prefix, spk_prefix
        Prefixes of utterance and speaker ids (no whitespace).
    reco_prefix
        Prefix of recording ids (only with ``segments``).

    Examples
    --------
    >>> data = DataDir(wav_scp={"s1-a": "/c/a.wav"}, utt2spk={"s1-a": "s1"}, text={"s1-a": "HI"})
    >>> copy = copy_dir(data, utt_prefix="rev1-", spk_prefix="rev1-")
    >>> copy.utt2spk, copy.text
    ({'rev1-s1-a': 'rev1-s1'}, {'rev1-s1-a': 'HI'})
    """
    data = _read(source)
    for name, prefix in (("utt_prefix", utt_prefix), ("spk_prefix", spk_prefix), ("reco_prefix", reco_prefix or "")):
        if any(ch.isspace() for ch in prefix):
            raise DataDirError(f"copy: {name} {prefix!r} contains whitespace (Kaldi ids are single tokens)")
    copied = _renamed(data, lambda u: utt_prefix + u, lambda s: spk_prefix + s,
                      (lambda r: reco_prefix + r) if reco_prefix else (lambda r: r))
    return copied if dest is None else _write(copied, dest)


def _renamed(data: DataDir, utt, spk, reco, wav=lambda entry: entry, times=lambda t: t) -> DataDir:
    """``data`` with utterance / speaker / recording ids, entries and segment times mapped."""
    def per_utt(mapping):
        return None if mapping is None else {utt(key): value for key, value in mapping.items()}

    if data.segments is not None:
        wav_scp = {reco(key): wav(entry) for key, entry in data.wav_scp.items()}
        segments = {utt(key): Segment(reco(seg.recording), times(seg.start), seg.end if seg.end < 0 else times(seg.end))
                    for key, seg in data.segments.items()}
    else:
        wav_scp, segments = {utt(key): wav(entry) for key, entry in data.wav_scp.items()}, None
    trials = None if data.trials is None else [Trial(utt(t.enroll), utt(t.test), t.target) for t in data.trials]
    return DataDir(wav_scp=wav_scp, utt2spk={utt(key): spk(value) for key, value in data.utt2spk.items()},
                   text=per_utt(data.text), utt2label=per_utt(data.utt2label), segments=segments,
                   utt2num_samples=per_utt(data.utt2num_samples), trials=trials)


# --------------------------------------------------------------------------- filter by duration
def filter_dir(source: PathLike, dest: PathLike | None = None, *, min_seconds: float = 0.0,
               max_seconds: float | None = None, allow_shell_pipes: bool = False) -> Path | DataDir:
    """Keep the utterances whose duration lies in ``[min_seconds, max_seconds]``.

    Durations come from ``utt2num_samples`` while it is fresh, otherwise from the audio
    headers (:func:`elp.data.kaldi_dir.utterance_lengths`; native pipes included).

    Parameters
    ----------
    min_seconds, max_seconds
        Bounds in seconds (None: no upper bound).
    allow_shell_pipes
        Run ``wav.scp`` commands elp does not read natively to measure them.

    Raises
    ------
    DataDirError
        Bad bounds, or no utterance left.

    Examples
    --------
    >>> import tempfile, numpy as np, soundfile as sf
    >>> root = Path(tempfile.mkdtemp())
    >>> for name, seconds in (("s-short", 0.5), ("s-long", 2.0)):
    ...     sf.write(root / f"{name}.wav", np.zeros(int(seconds * 16000), dtype="float32"), 16000)
    >>> src = write_data_dir(root / "all", wav_scp={n: str(root / f"{n}.wav") for n in ("s-short", "s-long")})
    >>> filter_dir(src, max_seconds=1.0).utterances
    ['s-short']
    """
    if min_seconds < 0 or (max_seconds is not None and max_seconds < min_seconds):
        raise DataDirError(f"filter: need 0 <= --min-seconds <= --max-seconds, got {min_seconds} and {max_seconds}")
    data = _read(source)
    lengths = utterance_lengths(source, allow_shell_pipes=allow_shell_pipes)
    keep = [utt for utt in data.utterances
            if lengths[utt] >= min_seconds * SAMPLE_RATE
            and (max_seconds is None or lengths[utt] <= max_seconds * SAMPLE_RATE)]
    if not keep:
        raise DataDirError(f"filter: no utterance of {source} lasts {min_seconds} to {max_seconds} s; "
                           "widen the bounds")
    dropped = len(data.utterances) - len(keep)
    logger.info("filter: kept %d of %d utterances (%d outside %s-%s s)", len(keep), len(data.utterances),
                dropped, min_seconds, max_seconds)
    data.utt2num_samples = {utt: lengths[utt] for utt in data.utterances}
    subset = subset_data_dir(data, keep)
    return subset if dest is None else _write(subset, dest)


# --------------------------------------------------------------------------- speed perturbation
def speed_prefix(factor: float) -> str:
    """The id prefix of a speed factor, as Kaldi writes it (``sp0.9-``).

    Examples
    --------
    >>> speed_prefix(0.9), speed_prefix(1.1), speed_prefix(0.95)
    ('sp0.9-', 'sp1.1-', 'sp0.95-')
    """
    return f"sp{factor:g}-"


def speed_entry(entry: str, factor: float, where: str = "") -> str:
    """The ``wav.scp`` entry of ``entry`` played ``factor`` times as fast.

    Parameters
    ----------
    entry
        A plain path or a pipe entry.
    where
        Prefix of error messages.

    Raises
    ------
    DataDirError
        For an archive entry or one elp refuses.

    Examples
    --------
    >>> speed_entry("/c/a.wav", 1.1)
    'sox /c/a.wav -t wav - speed 1.1 |'
    >>> speed_entry("flac -c -d -s /c/a.flac |", 0.9)
    'flac -c -d -s /c/a.flac | sox -t wav - -t wav - speed 0.9 |'
    """
    kind = pipe_kind(entry)
    if kind in ("native", "shell"):
        return f"{entry.strip()[:-1].rstrip()} | sox -t wav - -t wav - speed {factor:g} |"
    from elp.data.audio import _ARK_ENTRY, unsafe_entry_reason

    reason = unsafe_entry_reason(entry)
    if reason is not None:
        raise DataDirError(f"{where}entry {entry!r} {reason}")
    if _ARK_ENTRY.match(entry) and not Path(entry).exists():
        raise DataDirError(f"{where}entry {entry!r} is inside a Kaldi archive, which sox cannot read; "
                           "copy the audio to files first (e.g. wav-copy ark:... ark,t:- or one file per "
                           "utterance) and list their paths")
    return f"sox {shlex.quote(entry)} -t wav - speed {factor:g} |"


def perturb_speed(source: PathLike | DataDir, dest: PathLike | None, factors: Sequence[float]) -> Path | DataDir:
    """Speed-perturbed copies of a data dir (``utils/data/perturb_data_dir_speed.sh``).

    For each factor ``F`` other than 1 the utterance, speaker and recording ids get the
    prefix ``sp<F>-``, the audio is played ``F`` times as fast (a ``sox ... speed F |``
    entry, see the module docstring) and segment times are divided by ``F``; a factor of
    1.0 keeps the original ids and entries (``perturb_data_dir_speed_3way.sh`` with
    ``0.9 1.0 1.1``). ``utt2num_samples`` and trials are not carried over (validation
    measures the new lengths).

    Parameters
    ----------
    factors
        Speed factors, each in (0.1, 10].

    Raises
    ------
    DataDirError
        Bad factors, or an entry that cannot be piped into sox (names it).
    """
    factors = list(dict.fromkeys(float(f) for f in factors))
    if not factors or any(not 0.1 < f <= 10.0 for f in factors):
        raise DataDirError(f"perturb-speed: give speed factors between 0.1 and 10, e.g. 0.9 1.1 (got {factors})")
    data = _read(source)
    data.utt2num_samples, data.trials = None, None
    copies = []
    for factor in factors:
        if factor == 1.0:
            copies.append(data)
            continue
        prefix = speed_prefix(factor)
        copies.append(_renamed(
            data, lambda u, p=prefix: p + u, lambda s, p=prefix: p + s, lambda r, p=prefix: p + r,
            wav=lambda e, f=factor: speed_entry(e, f, f"{source}: "),
            times=lambda t, f=factor: round(t / f, 4)))
    combined = combine_data_dirs(copies)
    return combined if dest is None else _write(combined, dest)
