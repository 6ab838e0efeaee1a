"""Validation under DDP is sharded across ranks and its statistics gathered (2 gloo processes):
the sampler's shards, the Brains' per-utterance records (``gather_by_utterance``) and the stage
loss (``ELPBrain._mean_over_ranks``)."""

from __future__ import annotations

import json
import socket
import statistics
from types import SimpleNamespace

import torch.distributed as dist
import torch.multiprocessing as mp

from elp.train.brains.base import ELPBrain
from elp.data.sampler import EvalBatchSampler, gather_by_utterance
from elp.runtime import leave_process_group

LENGTHS = [16000 * (index % 5 + 1) for index in range(11)]


def _batch_loss(batch: list[int]) -> float:
    return float(sum(batch))


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    batches = list(EvalBatchSampler(LENGTHS, 6.0, max_batch_size=4))  # rank and world from torch.distributed
    losses = [_batch_loss(batch) for batch in batches]
    brain = SimpleNamespace(device="cpu", eval_batches_seen=len(batches))
    record = {"own": [i for batch in batches for i in batch],
              "gathered": list(gather_by_utterance({f"u{i:02d}": i for batch in batches for i in batch}).values()),
              "loss": ELPBrain._mean_over_ranks(brain, statistics.mean(losses) if losses else 0.0)}
    with open(f"{out_dir}/rank{rank}.json", "w") as handle:
        json.dump(record, handle)
    leave_process_group()


def test_sharded_validation_sees_every_utterance_once_and_the_same_numbers_on_every_rank(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["own"] and ranks[1]["own"] and set(ranks[0]["own"]).isdisjoint(ranks[1]["own"])
    assert sorted(ranks[0]["gathered"]) == list(range(len(LENGTHS)))
    assert ranks[0]["gathered"] == ranks[1]["gathered"]
    # the stage loss is the mean over all batches of both ranks, as one process would compute it
    single = [_batch_loss(batch) for batch in EvalBatchSampler(LENGTHS, 6.0, max_batch_size=4, rank=0, world_size=1)]
    assert abs(ranks[0]["loss"] - statistics.mean(single)) < 1e-9
    assert ranks[0]["loss"] == ranks[1]["loss"]


def test_run_main_leaves_no_process_group_behind(tmp_path):
    import torch.distributed as dist

    from elp.runtime import run_main

    def main(argv):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
        return 0

    assert run_main(main, []) == 0
    assert not dist.is_initialized()


def _ends_at_different_times(rank: int, world: int, port: int, out_dir: str) -> None:
    import time

    from elp.runtime import run_main

    def main(argv):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        if rank == 1:
            time.sleep(1.0)  # still working when rank 0 is done
        with open(f"{out_dir}/arrived{rank}", "w") as handle:
            handle.write(repr(time.time()))
        return 0

    status = run_main(main, [])
    with open(f"{out_dir}/left{rank}", "w") as handle:
        handle.write(f"{time.time()!r} {status} {dist.is_initialized()}")


def test_run_main_ranks_leave_together_and_without_a_process_group(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_ends_at_different_times, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    late_arrival = float((tmp_path / "arrived1").read_text())
    for rank in (0, 1):
        left, status, initialized = (tmp_path / f"left{rank}").read_text().split()
        assert (status, initialized) == ("0", "False")
        assert float(left) >= late_arrival  # rank 0 waited for rank 1 before tearing down


def test_only_leave_process_group_destroys_a_process_group():
    """A rank that destroys its group without first meeting the others can abort one still in a
    collective; every caller (entry points, tools, test workers) goes through the one function."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    callers = []
    for folder in ("elp", "recipes", "tools", "egs", "tests"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
                        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "destroy_process_group"):
                    callers.append(str(path.relative_to(root)))
    assert callers == ["elp/runtime.py"]
