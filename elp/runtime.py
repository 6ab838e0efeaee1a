"""Process-level helpers every layer shares: the sample rate, atomic writes, logging, seeding,
memory, user errors, shared data, the CUDA driver check.

Examples
--------
>>> peak_memory_mb("cpu") > 0
True
"""

from __future__ import annotations

import gc
import logging
import os
import re
import resource
import shutil
import subprocess
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
    >>> import gc; _ = gc.collect()
    >>> start = peak_memory_mb("cpu", reset=True)
    >>> in_use = _proc_status_mib("VmRSS")  # now: the process may have shrunk since the reset
    >>> block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
    >>> peak_memory_mb("cpu") - in_use > 60
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


def parse_nvidia_smi(text: str) -> tuple[str, str] | None:
    """(driver version, newest CUDA version the driver runs) from ``nvidia-smi``'s header; None without one.

    Examples
    --------
    >>> parse_nvidia_smi("| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2  |")
    ('535.104.05', '12.2')
    >>> parse_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.") is None
    True
    """
    match = re.search(r"Driver Version:\s*([0-9.]+)\s+CUDA Version:\s*([0-9.]+)", text)
    return (match.group(1), match.group(2)) if match else None


def nvidia_driver() -> tuple[str, str] | None:
    """:func:`parse_nvidia_smi` of this machine's ``nvidia-smi``; None when there is none or it fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        result = subprocess.run([smi], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(result.stdout)


def _cuda_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def torch_cuda_tag(driver_cuda: str) -> str | None:
    """The ``TORCH_CUDA`` build of ``tools/install.sh`` for a driver that runs CUDA ``driver_cuda``
    at most: ``cu126`` for CUDA 12.0-12.7 (CUDA 12's minor-version compatibility), ``cu128`` for
    12.8 and 12.9, ``cu130`` from 13.0 on; None below 12.

    Examples
    --------
    >>> [torch_cuda_tag(v) for v in ("12.2", "12.4", "12.8", "13.0", "11.8")]
    ['cu126', 'cu126', 'cu128', 'cu130', None]
    """
    major_minor = _cuda_tuple(driver_cuda)
    if major_minor < (12,):
        return None
    if major_minor < (12, 8):
        return "cu126"
    return "cu128" if major_minor < (13,) else "cu130"


def cuda_driver_message(driver: str, driver_cuda: str, torch_version: str, torch_cuda: str | None,
                        visible: str | None = None) -> str:
    """One line on why torch cannot use the GPUs of this NVIDIA driver, with the fix.

    Parameters
    ----------
    driver, driver_cuda
        The driver version and the newest CUDA version it runs (``nvidia-smi``).
    torch_version, torch_cuda
        ``torch.__version__`` and ``torch.version.cuda`` (None: a CPU-only build).
    visible
        ``CUDA_VISIBLE_DEVICES`` (None: unset), named when the builds fit.

    Examples
    --------
    >>> cuda_driver_message("535.104.05", "12.2", "2.11.0+cu130", "13.0")
    'NVIDIA driver 535.104.05 runs CUDA 12.2 at most, but torch 2.11.0+cu130 was built for CUDA 13.0: install the build for this driver with TORCH_CUDA=cu126 ./tools/install.sh'
    """
    fix = "install the build for this driver with TORCH_CUDA={} ./tools/install.sh"
    tag = torch_cuda_tag(driver_cuda)
    if torch_cuda is None:
        return (f"torch {torch_version} is a CPU-only build, and NVIDIA driver {driver} (CUDA {driver_cuda}) is here: "
                + (fix.format(tag) if tag else "update the NVIDIA driver (the cu126 build needs R525 or newer)"))
    if _cuda_tuple(driver_cuda) >= _cuda_tuple(torch_cuda):
        return (f"NVIDIA driver {driver} runs CUDA {driver_cuda}, enough for torch {torch_version} (CUDA {torch_cuda}), "
                f"yet torch finds no GPU: check CUDA_VISIBLE_DEVICES (now {'<unset>' if visible is None else repr(visible)}) "
                "and that nvidia-smi lists the GPUs")
    head = f"NVIDIA driver {driver} runs CUDA {driver_cuda} at most, but torch {torch_version} was built for CUDA {torch_cuda}: "
    if tag is None:
        return head + "update the NVIDIA driver (the cu126 build needs R525 or newer), or use TORCH_CUDA=cpu ./tools/install.sh"
    return head + fix.format(tag)


def cuda_driver_problem() -> str | None:
    """For a run that asked for CUDA: :func:`cuda_driver_message` when torch finds no GPU while
    ``nvidia-smi`` reports an NVIDIA driver; None when torch can use CUDA or no driver answers.
    ``recipes/utils/launch.sh`` adds it to the error of ``--ngpu N`` without N usable devices.
    """
    if torch.cuda.is_available():
        return None
    driver = nvidia_driver()
    if driver is None:
        return None
    return cuda_driver_message(*driver, torch.__version__, torch.version.cuda,
                               os.environ.get("CUDA_VISIBLE_DEVICES"))


def leave_process_group(*, wait: bool = True) -> None:
    """Destroy the default process group, if one was joined, so that no rank aborts at exit.

    With ``wait`` (a rank that finished its work), every rank first meets at a barrier: a rank
    that tears down its gloo or NCCL connections while another still works, or still sits in
    a collective, makes the other abort with "terminate called without an active exception".
    The garbage left in reference cycles (DDP wrappers hold the group) is collected before the
    group is destroyed: a gloo worker thread still holding work whose tensors are freed during
    interpreter finalization aborts the process the same way (the mechanism described in
    pytorch/pytorch pull request 179291). ``wait=False`` is for a rank leaving on an error, which cannot expect
    the others at a barrier. Without a process group it does nothing.

    Examples
    --------
    >>> import torch.distributed as dist
    >>> leave_process_group()  # no group joined: nothing to do
    >>> dist.is_initialized()
    False
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if wait:
        torch.distributed.barrier()
    gc.collect()  # frees what the caller left in reference cycles (DDP wrappers hold the group)
    torch.distributed.destroy_process_group()


def run_main(main, argv: list[str]) -> int:
    """Run an entry point; a user error (bad option, file, data, experiment state) prints one
    line ``ERROR: <message>`` and returns 1 instead of a traceback (``ELP_DEBUG=1``: raise).

    Otherwise it returns the status of ``main(argv) -> int``. A process group that ``main``
    joined (torchrun) is left with :func:`leave_process_group` before returning: after a
    barrier when ``main`` returned normally, without one when it raised.

    Examples
    --------
    >>> def main(argv):
    ...     raise FileNotFoundError("data/train/wav.scp is missing: run stage 0 first")
    >>> run_main(main, [])  # prints "ERROR: data/train/wav.scp is missing: ..." on stderr
    1
    """
    try:
        status = main(argv)
        leave_process_group(wait=True)
        return status
    except (ValueError, FileNotFoundError, KeyError, UserError) as err:
        if os.environ.get("ELP_DEBUG"):
            raise
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print(f"ERROR: {' '.join(message.split())}", file=sys.stderr)
        return 1
    finally:
        leave_process_group(wait=False)
