#!/usr/bin/env python3
"""Job slots for run_all.sh: a disjoint GPU set, a free master port and a thread count each.

Usage::

    python recipes/utils/gpu_slots.py --ngpu 2 --jobs 8 [--base_port 29500]

prints one line per slot, tab-separated: ``<slot> <CUDA_VISIBLE_DEVICES or -> <port> <threads>``.

* GPUs visible: ``ELP_FAKE_GPU_COUNT`` when set (tests, dry runs), else the ids in
  ``CUDA_VISIBLE_DEVICES`` when it is set, else the GPUs ``nvidia-smi -L`` lists, else none.
* ``--ngpu N`` (N > 0): ``min(jobs, gpus // N)`` slots; slot k gets GPUs k*N .. k*N+N-1 of
  the visible list, and ``max(1, cpus // (slots * N))`` threads per process. Fewer visible
  GPUs than N is an error (one line on stderr, exit 1).
* ``--ngpu 0``: ``jobs`` CPU slots, no GPU (``-``: CUDA_VISIBLE_DEVICES set empty), 1 thread
  each.
* Ports: distinct, each free when checked (bind test), counting up from ``base_port + 1``
  (29500 itself is torchrun's default and often taken by another run). The jobs of one slot
  run one after the other, so they can share its port. These ports serve one node: on several
  nodes a probe on one says nothing of the others, and run_all.sh gives job k the port
  ``--master_port + 1 + k`` instead, which every node computes alike.

Nothing here imports torch (it runs in a fraction of a second).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys


class SlotError(ValueError):
    """A user error in the slot request (message names the option and the fix)."""


def visible_gpus(environ=os.environ) -> list[str]:
    """Ids of the GPUs a job may use, as CUDA_VISIBLE_DEVICES entries."""
    fake = environ.get("ELP_FAKE_GPU_COUNT")
    if fake is not None:
        if not fake.isdigit():
            raise SlotError(f"ELP_FAKE_GPU_COUNT must be a non-negative integer, got {fake!r}")
        return [str(i) for i in range(int(fake))]
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def port_is_free(port: int) -> bool:
    """Whether a TCP port can be bound on all interfaces right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def free_ports(count: int, base_port: int) -> list[int]:
    """``count`` distinct free ports above ``base_port``."""
    ports, port = [], base_port + 1
    while len(ports) < count:
        if port > 65535:
            raise SlotError(f"no {count} free TCP ports above {base_port}; pass a lower --base_port")
        if port_is_free(port):
            ports.append(port)
        port += 1
    return ports


def make_slots(ngpu: int, jobs: int, gpus: list[str], cpus: int, base_port: int = 29500) -> list[dict]:
    """The slots as dicts with ``slot``, ``devices`` (list of GPU ids), ``port``, ``threads``.

    Examples
    --------
    >>> [s["devices"] for s in make_slots(2, 8, ["0", "1", "2", "3"], cpus=16)]
    [['0', '1'], ['2', '3']]
    >>> [s["threads"] for s in make_slots(0, 3, [], cpus=16)]
    [1, 1, 1]
    """
    if ngpu < 0:
        raise SlotError(f"--ngpu must be >= 0, got {ngpu}")
    if jobs < 1:
        raise SlotError(f"--jobs must be >= 1, got {jobs}")
    if ngpu == 0:
        devices = [[] for _ in range(jobs)]
        threads = 1
    else:
        if len(gpus) < ngpu:
            raise SlotError(
                f"--ngpu {ngpu} per job but {len(gpus)} GPU(s) visible "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, nvidia-smi -L); "
                + (f"use --ngpu {len(gpus)} or fewer, or --ngpu 0 for CPU jobs" if gpus else
                   "use --ngpu 0 for CPU jobs, or fix the CUDA set-up (nvidia-smi must list the GPUs)")
            )
        count = min(jobs, len(gpus) // ngpu)
        devices = [gpus[k * ngpu:(k + 1) * ngpu] for k in range(count)]
        threads = max(1, cpus // (count * ngpu))
    ports = free_ports(len(devices), base_port)
    return [{"slot": k, "devices": d, "port": p, "threads": threads} for k, (d, p) in enumerate(zip(devices, ports))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ngpu", type=int, required=True, help="GPUs per job (0: CPU jobs)")
    parser.add_argument("--jobs", type=int, required=True, help="jobs wanted in parallel")
    parser.add_argument("--base_port", type=int, default=29500)
    args = parser.parse_args(argv)
    try:
        slots = make_slots(args.ngpu, args.jobs, visible_gpus(), os.cpu_count() or 1, args.base_port)
    except SlotError as error:
        print(f"gpu_slots.py: {error}", file=sys.stderr)
        return 1
    for slot in slots:
        print(f"{slot['slot']}\t{','.join(slot['devices']) or '-'}\t{slot['port']}\t{slot['threads']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
