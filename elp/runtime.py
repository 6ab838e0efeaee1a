"""Process-level helpers every entry point shares: logging, seeding, memory, shared data.

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
from pathlib import Path

import torch

#: ``$ELP_SHARED_DATA`` or ``<repo>/../shared/data``: real speech and annotations that only
#: tests read (they skip without it); the recipes and their mini corpora never do.
SHARED_DATA_ENV = "ELP_SHARED_DATA"


class UserError(Exception):
    """A failure the user fixes (busy experiment, diverged training...), not a bug.

    Entry points (:func:`run_main`) print its message as one ``ERROR:`` line instead of a
    traceback, as they do for ``ValueError``, ``FileNotFoundError`` and ``KeyError``.
    """


def configure_logging(level: int = logging.INFO) -> None:
    """One log format for every entry point: ``time LEVEL logger: message`` on stdout.

    Parameters
    ----------
    level : int, optional
        Root logging level (a no-op when the root logger already has handlers).
    """
    logging.basicConfig(level=level, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (all devices) through SpeechBrain.

    Parameters
    ----------
    seed : int
        The seed.

    Examples
    --------
    >>> seed_everything(3); a = torch.rand(1)
    >>> seed_everything(3); bool((a == torch.rand(1)).all())
    True
    """
    from speechbrain.utils.seed import seed_everything as sb_seed

    sb_seed(int(seed), verbose=False)


def peak_memory_mb(device: str | torch.device) -> float:
    """Peak memory of this process in MiB: CUDA ``max_memory_allocated`` on a GPU device,
    the peak resident set size (VmHWM) on CPU.

    Parameters
    ----------
    device : str | torch.device
        The device the model ran on.

    Returns
    -------
    float
    """
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def distributed_rank_world() -> tuple[int, int]:
    """This process's rank and the world size of torch.distributed; (0, 1) without a process group.

    Returns
    -------
    tuple[int, int]
        (rank, world size).

    Examples
    --------
    >>> distributed_rank_world()
    (0, 1)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shared_data_dir() -> Path | None:
    """The shared real-data folder when it exists (tests only), else ``None``.

    Returns
    -------
    Path | None
        ``$ELP_SHARED_DATA`` if it is a folder, else ``<repo>/../shared/data`` if it is one.
    """
    candidates = [os.environ.get(SHARED_DATA_ENV), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def run_main(main, argv: list[str]) -> int:
    """Run an entry point; a user error (bad option, file, data, experiment state) prints one
    line ``ERROR: <message>`` and returns 1 instead of a traceback (``ELP_DEBUG=1``: raise).

    Parameters
    ----------
    main : Callable[[list[str]], int]
        ``main(argv) -> int``.
    argv : list[str]
        Its arguments.

    Returns
    -------
    int
        ``main``'s status, or 1 after a user error.

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
