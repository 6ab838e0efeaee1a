"""Experiment-directory guards: one config per experiment, one writer at a time, a model before scoring.

* :func:`check_hparams` records a hash of the resolved hparams in ``<exp>/hparams_record.json``
  and refuses a rerun whose hparams differ (listing the changed keys and the fix) once the
  experiment holds something trained (a checkpoint or an export). With ``restart=True`` the
  old run is moved aside to ``<exp>.old-<time>`` and a fresh directory started.
  Keys in :data:`IGNORED_KEYS` do not change results and are left out of the hash.
  Keys in :data:`EXTENDABLE_KEYS` may grow (training longer resumes the same run).
* :class:`ExperimentLock` holds an exclusive ``fcntl.flock`` on ``<parent>/.<name>.lock``
  (next to the experiment dir, so it survives a restart's move); a second holder is refused
  with the pid, host and command of the first. The lock is released when the process ends,
  however it ends. On a file system without ``flock`` (Lustre mounted without ``-o flock``, NFS
  with ``nolock``) it falls back, with a warning naming the file system, to an exclusive
  create of ``<parent>/.<name>.pid``; a pid file of a dead process of the same host is taken
  over, one of another host must be deleted by hand (the message says so).
* :func:`require_trained_model` refuses stage 4 on an experiment without a checkpoint or an
  export (e.g. a mistyped ``--tag``), listing the experiments that do have one.

Examples
--------
>>> import tempfile
>>> exp = Path(tempfile.mkdtemp()) / "exp" / "elp"
>>> with ExperimentGuard(exp, {"lr": {"head": 0.002}, "num_workers": 4}):
...     (exp / "save" / "CKPT+1").mkdir(parents=True)
...     _ = (exp / "save" / "CKPT+1" / "CKPT.yaml").write_text("end-of-epoch: true\\n")
>>> with ExperimentGuard(exp, {"lr": {"head": 0.002}, "num_workers": 0}):  # num_workers is ignored
...     pass
>>> ExperimentGuard(exp, {"lr": {"head": 0.01}}).__enter__()
Traceback (most recent call last):
...
elp.train.experiment.ExperimentChangedError: ...: hparams changed since this experiment was trained: lr.head 0.002 -> 0.01; ...
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import socket
import sys
import time
from pathlib import Path

import yaml

from elp.runtime import UserError, atomic_write_text

logger = logging.getLogger(__name__)

RECORD_FILE = "hparams_record.json"
#: the layout of the recipe YAML a record describes: 2 = self-contained recipe files and the
#: layered library (``elp.core.model.AdaptedSSL(options=...)``); records without one are older
RECORD_LAYOUT = 2

#: Hparams keys that do not change what is trained or the numbers it produces, with the reason.
#: A dotted key (``method_options.activation_checkpointing``) names a nested entry; an entry
#: also covers everything below it.
IGNORED_KEYS: dict[str, str] = {
    "num_workers": "data-loading processes",
    "device": "where it runs (a run option)",
    "data_parallel_backend": "how it runs (a run option)",
    "distributed_launch": "how it runs (a run option)",
    "distributed_backend": "how it runs (a run option)",
    "find_unused_parameters": "a DDP setting",
    "output_folder": "the experiment directory itself",
    "save_folder": "derived from the experiment directory",
    "train_log": "derived from the experiment directory",
    "log_file": "derived from the experiment directory",
    "tag": "names the experiment directory",
    "restart": "the flag that asks for a restart",
    "stage": "which recipe stages run",
    "stop_stage": "which recipe stages run",
    "ckpt_interval_steps": "when checkpoints are written (resume is exact)",
    "ckpt_interval_minutes": "when checkpoints are written (resume is exact)",
    "progressbar": "display",
    "tqdm_colored_bar": "display",
    "log_interval": "display",
    "test_sets": "evaluation only (stage 4); training does not read them",
    "results_file": "evaluation only (stage 4)",
    "results_md": "evaluation only (stage 4)",
    "activation_checkpointing": "recomputes the same activations (memory only)",
    "method_options.activation_checkpointing": "recomputes the same activations (memory only)",
}

#: Keys whose value may increase on a rerun of the same experiment: training continues from
#: the last checkpoint (the record is updated); a decrease is refused like any other change.
#: A key matches when it is one of these or ends with ``.`` + one of them (the epoch counter's
#: ``limit`` follows ``number_of_epochs`` in every recipe).
EXTENDABLE_KEYS: tuple[str, ...] = ("number_of_epochs", "EpochCounter.limit")


def _extendable(key: str) -> bool:
    return any(key == name or key.endswith("." + name) for name in EXTENDABLE_KEYS)


class ExperimentChangedError(ValueError):
    """A rerun of an experiment with different hparams."""


class ExperimentLockedError(UserError, RuntimeError):
    """Another process holds the experiment directory's lock."""


class NoTrainedModelError(FileNotFoundError):
    """Stage 4 on an experiment without a checkpoint or an export."""


# ------------------------------------------------------------------------------ canonical form
class _AnyTagLoader(yaml.SafeLoader):
    """YAML loader that keeps HyperPyYAML tags (``!new:``, ``!ref`` ...) as plain values."""


def _construct_tagged(loader, tag_suffix, node):
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return {f"!{tag_suffix}": value}


_AnyTagLoader.add_multi_constructor("!", _construct_tagged)


def _canonical_value(value):
    """A JSON-able, deterministic stand-in for an hparams value."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): _canonical_value(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical_value(v) for v in value]
    if isinstance(value, functools.partial):
        return {"partial": _qualified_name(value.func), "args": _canonical_value(list(value.args)),
                "kwargs": _canonical_value(dict(value.keywords))}
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
        return _qualified_name(value)
    # an object built by !new: / !apply: -- its settings come from plain keys; record its type
    return f"<{_qualified_name(type(value))}>"


def _qualified_name(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _ignored(key: str, ignore) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in ignore for i in range(1, len(parts) + 1)) or parts[-1] in ignore


def canonical_hparams(hparams: dict | str, ignore=None) -> dict:
    """Flatten resolved hparams to a sorted ``dotted.key -> JSON value`` mapping.

    Parameters
    ----------
    hparams
        The resolved hparams (the dict HyperPyYAML returns, overrides applied) or their YAML
        text. Keys starting with ``__`` (``__set_seed``) are side effects and left out.
        Objects (``!new:``) count by their type only: their settings must come from plain
        keys, as in elp's recipes.
    ignore : Iterable[str], optional
        Keys to leave out; default :data:`IGNORED_KEYS`.

    Examples
    --------
    >>> canonical_hparams({"lr": {"head": 1e-3, "e": 1e-4}, "num_workers": 2, "__set_seed": None})
    {'lr.e': 0.0001, 'lr.head': 0.001}
    >>> canonical_hparams("method: elp\\nepoch_counter: !new:x.Counter {limit: 3}\\n")
    {'epoch_counter.!new:x.Counter.limit': 3, 'method': 'elp'}
    """
    ignore = set(IGNORED_KEYS if ignore is None else ignore)
    if isinstance(hparams, str):
        hparams = yaml.load(hparams, Loader=_AnyTagLoader) or {}
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, sub in value.items():
                key = str(key)
                if key.startswith("__"):
                    continue
                walk(f"{prefix}.{key}" if prefix else key, sub)
        elif not _ignored(prefix, ignore):
            flat[prefix] = _canonical_value(value)

    walk("", hparams)
    return dict(sorted(flat.items()))


def hparams_digest(flat: dict) -> str:
    """SHA-256 (64 hex digits) of a :func:`canonical_hparams` mapping.

    Examples
    --------
    >>> hparams_digest({"lr": 0.1, "seed": 1}) == hparams_digest({"seed": 1, "lr": 0.1})
    True
    """
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def changed_keys(old: dict, new: dict) -> list[str]:
    """``key old -> new`` for every key of two flat mappings that differs, sorted by key.

    Added and removed keys are included.

    Examples
    --------
    >>> changed_keys({"lr": 0.1, "seed": 1}, {"lr": 0.2, "tag": "x"})
    ['lr 0.1 -> 0.2', 'seed 1 -> <absent>', 'tag <absent> -> x']
    """
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            out.append(f"{key} {_short(old.get(key, '<absent>'))} -> {_short(new.get(key, '<absent>'))}")
    return out


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------------ trained state
def trained_state(exp_dir: str | os.PathLike, save_dir: str = "save", export_dir: str = "adapters") -> list[Path]:
    """Checkpoint directories and complete exports of an experiment (what a restart would lose).

    Complete checkpoint directories of ``exp_dir/save_dir`` (sorted), then ``exp_dir/export_dir``
    if it is a complete export.

    Examples
    --------
    >>> import tempfile
    >>> exp = Path(tempfile.mkdtemp())
    >>> (exp / "save" / "CKPT+1").mkdir(parents=True)
    >>> trained_state(exp)  # no CKPT.yaml: incomplete
    []
    >>> _ = (exp / "save" / "CKPT+1" / "CKPT.yaml").write_text("end-of-epoch: true\\n")
    >>> [p.name for p in trained_state(exp)]
    ['CKPT+1']
    """
    exp_dir = Path(exp_dir)
    found = sorted(p for p in (exp_dir / save_dir).glob("CKPT+*") if (p / "CKPT.yaml").is_file()) \
        if (exp_dir / save_dir).is_dir() else []
    export = exp_dir / export_dir
    if (export / "adapters.json").is_file() and (export / "adapters.safetensors").is_file():
        found.append(export)
    return found


def check_hparams(exp_dir: str | os.PathLike, hparams: dict | str, restart: bool = False,
                  ignore=None, restart_flag: str = "--restart", save_dir: str = "save",
                  export_dir: str = "adapters", defaults: dict | None = None) -> Path:
    """Record the hparams' hash in ``exp_dir``; refuse a changed rerun of a trained experiment.

    Returns the record file.

    Parameters
    ----------
    exp_dir
        The experiment directory (``output_folder``).
    hparams
        Resolved hparams (see :func:`canonical_hparams`).
    restart
        When the hparams changed: move the old run aside (``<exp>.old-<time>``) and start over
        instead of refusing.
    ignore : Iterable[str], optional
        Keys left out of the comparison; default :data:`IGNORED_KEYS`.
    restart_flag
        How the user asks for a restart, for the message.
    save_dir, export_dir
        Where checkpoints and the export live inside ``exp_dir``.
    defaults : dict, optional
        Options with a default value (the recipes' run options). A record written before an
        option existed lacks its key: it counts as recorded with its default, so a new run
        option at its default does not change an experiment.

    Raises
    ------
    ExperimentChangedError
        The hparams differ from the recorded ones and the experiment holds a checkpoint or an
        export; the message lists the changed keys and the two fixes.
    """
    exp_dir = Path(exp_dir)
    flat = canonical_hparams(hparams, ignore)
    record_path = exp_dir / RECORD_FILE
    old, old_layout = None, RECORD_LAYOUT
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            old, old_layout = record["hparams"], record.get("layout", 1)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            logger.warning("%s is unreadable; treating the hparams as changed", record_path)
            old = {"<unreadable record>": True}
    if old is not None and defaults:
        for key, value in canonical_hparams(defaults, ignore).items():
            if key not in old and flat.get(key) == value:
                old[key] = value
    trained = trained_state(exp_dir, save_dir, export_dir)
    if old is not None and old != flat and trained and old_layout != RECORD_LAYOUT and not restart:
        raise ExperimentChangedError(
            f"{exp_dir}: its {RECORD_FILE} was written by an earlier elp release, whose recipe files "
            "named other modules, so the hparams cannot be compared; its checkpoints still evaluate "
            f"(stages 4-5); to train it further with the current hparams, delete {record_path} (the "
            "checkpoint's tensors are still checked when it loads), or pass "
            f"{restart_flag} to move the old run aside and train from scratch")
    if old is not None and old != flat:
        growing = [k for k in flat if _extendable(k) and k in old
                   and isinstance(old[k], (int, float)) and isinstance(flat[k], (int, float)) and flat[k] > old[k]]
        rest_old = {k: v for k, v in old.items() if k not in growing}
        rest_new = {k: v for k, v in flat.items() if k not in growing}
        changes = changed_keys(rest_old, rest_new)
        if not changes:
            logger.info("%s: %s increased (%s); training continues from the last checkpoint", exp_dir,
                        ", ".join(growing), "; ".join(changed_keys(old, flat)))
        elif trained and restart:
            moved = restart_experiment(exp_dir)
            logger.warning("%s: hparams changed (%s); restarting, the old run is in %s",
                           exp_dir, "; ".join(changes), moved)
        elif trained:
            aside = f"{exp_dir.name}.old-<time>"
            raise ExperimentChangedError(
                f"{exp_dir}: hparams changed since this experiment was trained: {'; '.join(changes[:8])}"
                f"{' ...' if len(changes) > 8 else ''}; use a new --tag for a new experiment, or pass "
                f"{restart_flag} to move the old run to {aside} and train from scratch")
        else:
            logger.info("%s: hparams changed (%s) but nothing was trained yet; recording the new ones",
                        exp_dir, "; ".join(changes))
    elif old is None and trained:
        logger.warning("%s holds a trained model but no %s (made before hparams were recorded); "
                       "recording the current hparams", exp_dir, RECORD_FILE)
    exp_dir.mkdir(parents=True, exist_ok=True)
    record = {"sha256": hparams_digest(flat), "hparams": flat, "layout": RECORD_LAYOUT,
              "ignored_keys": sorted(set(IGNORED_KEYS if ignore is None else ignore)),
              "recorded": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(record_path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record_path


def restart_experiment(exp_dir: str | os.PathLike) -> Path:
    """Move ``exp_dir`` (which must exist) aside to ``<exp_dir>.old-<YYYYmmdd-HHMMSS>`` and
    recreate it empty; return where the old directory went.

    Examples
    --------
    >>> import tempfile
    >>> exp = Path(tempfile.mkdtemp()) / "elp"
    >>> (exp / "save").mkdir(parents=True)
    >>> old = restart_experiment(exp)
    >>> old.name.startswith("elp.old-"), (old / "save").is_dir(), list(exp.iterdir())
    (True, True, [])
    """
    exp_dir = Path(exp_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = exp_dir.with_name(f"{exp_dir.name}.old-{stamp}")
    index = 1
    while target.exists():
        target = exp_dir.with_name(f"{exp_dir.name}.old-{stamp}-{index}")
        index += 1
    os.replace(exp_dir, target)
    exp_dir.mkdir(parents=True)
    return target


# ------------------------------------------------------------------------------ lock
def lock_path(exp_dir: str | os.PathLike) -> Path:
    """``<parent>/.<name>.lock``: next to the experiment dir, so a restart's move keeps it.

    Examples
    --------
    >>> lock_path("exp/wavlm/elp").as_posix()
    'exp/wavlm/.elp.lock'
    """
    exp_dir = Path(exp_dir)
    return exp_dir.parent / f".{exp_dir.name}.lock"


#: flock errnos that mean "another process holds it"; any other means "no flock here"
_HELD_ERRNOS = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def _holder_record() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv)[:200]})


def _dead_on_this_host(holder: str) -> bool:
    """Whether a lock record names a process of this host that no longer exists."""
    try:
        info = json.loads(holder)
        if info["host"] != socket.gethostname():
            return False
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, PermissionError, OSError):
        return False
    return False


class ExperimentLock:
    """Exclusive lock on an experiment directory (``fcntl.flock``, released at process exit).

    The directory need not exist yet; its parent is created when the lock is taken.

    Examples
    --------
    >>> import tempfile
    >>> exp = Path(tempfile.mkdtemp()) / "elp"
    >>> with ExperimentLock(exp):
    ...     ExperimentLock(exp).acquire()
    Traceback (most recent call last):
    ...
    elp.train.experiment.ExperimentLockedError: ...elp is in use by pid ... on ...
    """

    def __init__(self, exp_dir: str | os.PathLike):
        self.exp_dir = Path(exp_dir)
        self.path = lock_path(self.exp_dir)
        self._handle = None
        self._pid_file = False

    def acquire(self) -> ExperimentLock:
        """Take the lock without waiting, write who holds it into the lock file, return ``self``.

        Raises
        ------
        ExperimentLockedError
            If another process holds it (the message names that process and the fix).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            if err.errno not in _HELD_ERRNOS:  # the file system has no flock (Lustre, NFS nolock)
                return self._acquire_pid_file(err)
            raise self._locked_error(holder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(_holder_record())
        handle.flush()
        self._handle = handle
        return self

    def _locked_error(self, holder: str, fix: str = "") -> ExperimentLockedError:
        try:
            info = json.loads(holder)
            pid = int(info["pid"])
            who = (f"pid {pid} on {info['host']} (since {info['since']}: "
                   f"{_short(str(info.get('command', '?')))})")
        except (ValueError, KeyError, TypeError):
            pid, who = None, "another process"
        return ExperimentLockedError(
            f"{self.exp_dir} is in use by {who}; wait for it to finish"
            + (f" or stop it (kill {pid})" if pid else "") + ", or use another --tag" + fix)

    @property
    def pid_path(self) -> Path:
        """The exclusive pid file used where the file system has no ``flock``."""
        return self.path.with_suffix(".pid")

    def _acquire_pid_file(self, flock_error: OSError) -> ExperimentLock:
        """Lock by creating :attr:`pid_path` exclusively (``O_EXCL``), for file systems without
        ``flock``. A file left by a dead process of this host is taken over; one of another host
        cannot be checked, so the message says to delete it when no run is active."""
        logger.warning("the file system of %s does not support flock (%s); locking %s with the exclusive "
                       "pid file %s instead", self.path.parent, os.strerror(flock_error.errno or 0),
                       self.exp_dir, self.pid_path)
        for _ in range(2):
            try:
                fd = os.open(self.pid_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.pid_path.read_text(encoding="utf-8", errors="replace").strip()
                if _dead_on_this_host(holder):
                    logger.warning("%s was left by a process that is gone; taking it over", self.pid_path)
                    self.pid_path.unlink(missing_ok=True)
                    continue
                raise self._locked_error(
                    holder, f" (if no run is active, delete {self.pid_path}: this file system has no flock)") from None
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(_holder_record())
            self._pid_file = True
            return self
        raise self._locked_error(self.pid_path.read_text(encoding="utf-8", errors="replace"))

    def release(self) -> None:
        """Release the lock (no-op when not held)."""
        if self._pid_file:
            self.pid_path.unlink(missing_ok=True)
            self._pid_file = False
        if self._handle is not None:
            try:
                self._handle.seek(0)
                self._handle.truncate()
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            finally:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> ExperimentLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class ExperimentGuard:
    """Lock the experiment dir, then :func:`check_hparams`; for stage 3 (training).

    The arguments are those of :func:`check_hparams`. Use it around the whole training run,
    on the main process only, before SpeechBrain's ``create_experiment_directory`` writes into
    the directory::

        with ExperimentGuard(hparams["output_folder"], hparams, restart=args.restart):
            ... build, fit, export ...

    The lock is also released if the process dies.
    """

    def __init__(self, exp_dir: str | os.PathLike, hparams: dict | str, restart: bool = False,
                 ignore=None, restart_flag: str = "--restart", defaults: dict | None = None):
        self.exp_dir = Path(exp_dir)
        self.hparams, self.restart, self.ignore, self.restart_flag = hparams, restart, ignore, restart_flag
        self.defaults = defaults
        self.lock = ExperimentLock(self.exp_dir)

    def __enter__(self) -> ExperimentGuard:
        self.lock.acquire()
        try:
            check_hparams(self.exp_dir, self.hparams, self.restart, self.ignore, self.restart_flag,
                          defaults=self.defaults)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


# ------------------------------------------------------------------------------ stage 4
def require_trained_model(exp_dir: str | os.PathLike, save_dir: str = "save", export_dir: str = "adapters") -> list[Path]:
    """Refuse to score an experiment that holds no checkpoint and no export.

    Returns what :func:`trained_state` found.

    Raises
    ------
    NoTrainedModelError
        One line naming the directory, the experiments next to it that do hold a model
        (a mistyped ``--tag``?) and the fix.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "elp" / "save" / "CKPT+x").mkdir(parents=True)
    >>> _ = (root / "elp" / "save" / "CKPT+x" / "CKPT.yaml").write_text("end-of-epoch: true\\n")
    >>> require_trained_model(root / "elpp")
    Traceback (most recent call last):
    ...
    elp.train.experiment.NoTrainedModelError: ...elpp has no trained model (no save/CKPT+* checkpoint, no adapters/ export); run stage 3 for this tag first, or pick an existing --tag: elp
    """
    exp_dir = Path(exp_dir)
    found = trained_state(exp_dir, save_dir, export_dir)
    if found:
        return found
    siblings = sorted(p.name for p in exp_dir.parent.iterdir()
                      if p.is_dir() and p != exp_dir and trained_state(p, save_dir, export_dir)) \
        if exp_dir.parent.is_dir() else []
    hint = f"pick an existing --tag: {', '.join(siblings[:10])}" if siblings else "no experiment next to it has one either"
    raise NoTrainedModelError(
        f"{exp_dir} has no trained model (no {save_dir}/CKPT+* checkpoint, no {export_dir}/ export); "
        f"run stage 3 for this tag first, or {hint}")
