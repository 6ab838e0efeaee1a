"""Process-level helpers every layer shares: the sample rate, atomic writes, logging, seeding,
memory, user errors, shared data.

Examples
--------
>>> peak_memory_mb("cpu") > 0
True
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

#: Hz: the rate every backbone reads; audio is resampled to it on reading
SAMPLE_RATE = 16000

#: ``$ELP_SHARED_DATA`` or ``<repo>/../shared/data``: real speech and annotations that only
#: tests read (they skip without it); the recipes and their mini corpora never do.
SHARED_DATA_ENV = "ELP_SHARED_DATA"


class UserError(Exception):
    """A failure the user fixes (busy experiment, diverged training...), not a bug.

    Entry points (:func:`run_main`) print its message as one ``ERROR:`` line instead of a
    traceback, as they do for ``ValueError``, ``FileNotFoundError`` and ``KeyError``.
    """


def configure_logging(program: str | None = None, level: int = logging.INFO, stream=None,
                      force: bool = False) -> None:
    """One log format for every entry point.

    ``time LEVEL logger: message`` on stdout; with ``program`` (a script's name),
    ``time (program) LEVEL message`` on stderr, so a tool's log stays apart from what it prints.
    A no-op when the root logger already has handlers, unless ``force``.

    Examples
    --------
    >>> configure_logging("prepare.py")  # no-op here: pytest holds the root logger
    """
    if program is None:
        logging.basicConfig(level=level, stream=stream or sys.stdout, force=force,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=level, stream=stream or sys.stderr, force=force, datefmt="%Y-%m-%dT%H:%M:%S",
                            format=f"%(asctime)s ({program}) %(levelname)s %(message)s")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write ``path`` completely or not at all: ``write(tmp)`` fills a temporary file beside it,
    which then replaces ``path`` in one rename (readers never see a partial file).

    Examples
    --------
    >>> target = Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = atomic_write(target, lambda tmp: tmp.write_text("done"))
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('done', ['a.txt'])
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # like any other file a user writes (mkstemp makes it 0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (all devices) through SpeechBrain.

    Examples
    --------
    >>> seed_everything(3); a = torch.rand(1)
    >>> seed_everything(3); bool((a == torch.rand(1)).all())
    True
    """
    from speechbrain.utils.seed import seed_everything as sb_seed

    sb_seed(int(seed), verbose=False)


def peak_memory_mb(device: str | torch.device, *, reset: bool = False) -> float:
    """Peak memory of this process in MiB: CUDA ``max_memory_allocated`` on a GPU device, the
    peak resident set size (``VmHWM``; ``ru_maxrss`` where ``/proc`` is missing) on CPU.

    The peak covers the process's life, or the time since the last call with ``reset=True``.
    Such a call starts a new window: the peak drops to the memory in use now, which it returns,
    so ``peak_memory_mb(device) - start`` is the increment over ``start``. Where the kernel
    refuses the reset (no ``/proc/self/clear_refs``), the CPU window cannot restart and the
    call returns the peak so far: the increment is then a lower bound.

    Examples
    --------
    >>> start = peak_memory_mb("cpu", reset=True)
    >>> block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
    >>> peak_memory_mb("cpu") - start > 60
    True
    """
    if str(device).startswith("cuda"):
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.memory_allocated(device) / 2**20
        return torch.cuda.max_memory_allocated(device) / 2**20
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # VmHWM := VmRSS
        except OSError:
            return peak_memory_mb(device)
        return _proc_status_mib("VmRSS")
    peak = _proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_mib(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def distributed_rank_world() -> tuple[int, int]:
    """This process's rank and the world size of torch.distributed; (0, 1) without a process group.

    Examples
    --------
    >>> distributed_rank_world()
    (0, 1)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shared_data_dir() -> Path | None:
    """``$ELP_SHARED_DATA``, else ``<repo>/../shared/data``, the first that is a folder (tests only); or None."""
    candidates = [os.environ.get(SHARED_DATA_ENV), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def run_main(main, argv: list[str]) -> int:
    """Run an entry point; a user error (bad option, file, data, experiment state) prints one
    line ``ERROR: <message>`` and returns 1 instead of a traceback (``ELP_DEBUG=1``: raise).

    Otherwise it returns the status of ``main(argv) -> int``. A process group that ``main``
    joined (torchrun) is destroyed before returning, so no rank is aborted at exit.

    Examples
    --------
    >>> def main(argv):
    ...     raise FileNotFoundError("data/train/wav.scp is missing: run stage 0 first")
    >>> run_main(main, [])  # prints "ERROR: data/train/wav.scp is missing: ..." on stderr
    1
    """
    try:
        return main(argv)
    except (ValueError, FileNotFoundError, KeyError, UserError) as err:
        if os.environ.get("ELP_DEBUG"):
            raise
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print(f"ERROR: {' '.join(message.split())}", file=sys.stderr)
        return 1
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
