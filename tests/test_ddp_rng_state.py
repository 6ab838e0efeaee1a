"""Under DDP every rank saves and restores its own random state (2 gloo processes)."""

from __future__ import annotations

import json
import random
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from elp.train.checkpoints import RNGState
from elp.runtime import leave_process_group


def _draw() -> list[float]:
    return [random.random(), float(np.random.rand()), float(torch.rand(1))]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    random.seed(rank)
    np.random.seed(rank)
    torch.manual_seed(rank)
    RNGState().save(f"{out_dir}/rng.ckpt")  # what a checkpoint holds
    dist.barrier()
    expected = _draw()                       # what the uninterrupted run draws next
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)                    # a fresh process before resuming
    RNGState().load(f"{out_dir}/rng.ckpt", True)
    with open(f"{out_dir}/rank{rank}.json", "w") as handle:
        json.dump({"expected": expected, "resumed": _draw()}, handle)
    leave_process_group()


def test_each_rank_resumes_its_own_random_numbers(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.glob("rng*.ckpt")) == ["rng.ckpt", "rng.rank1.ckpt"]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in ranks:
        assert record["resumed"] == record["expected"]
    assert ranks[0]["expected"] != ranks[1]["expected"]  # the ranks' streams differ
