"""DataLoader workers: training workers persist across epochs, evaluation workers end with their pass.

Also the loader-throughput tool (``tools/loader_throughput.py``): every path reads every sample.
"""

from __future__ import annotations

import gc
import multiprocessing
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from elp.train.recipe import RUN_DEFAULTS, loader_kwargs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import loader_throughput  # noqa: E402


class Lengths(torch.utils.data.Dataset):
    """Six utterances of 0.1-0.6 s; an item is its length in samples."""

    data_ids = [f"u{i}" for i in range(6)]
    data = {u: {"num_samples": 1600 * (i + 1)} for i, u in enumerate(data_ids)}

    def __len__(self):
        return len(self.data_ids)

    def __getitem__(self, index):
        return self.data[self.data_ids[index]]["num_samples"]


def _hparams(**changes):
    return {**RUN_DEFAULTS, "seed": 0, "device": "cpu", "task": SimpleNamespace(max_train_seconds=0), **changes}


def test_only_training_loaders_keep_their_workers():
    dataset = Lengths()
    train = loader_kwargs(_hparams(num_workers=2), dataset, train=True)
    assert (train["num_workers"], train["persistent_workers"]) == (2, True)
    dynamic = loader_kwargs(_hparams(num_workers=2, dynamic_batching=True), dataset, train=True)
    assert (dynamic["num_workers"], dynamic["persistent_workers"]) == (2, True)
    for shard in (False, True):  # stage 4, and validation during (DDP) training
        valid = loader_kwargs(_hparams(num_workers=2), dataset, train=False, shard=shard)
        assert valid["num_workers"] == 2 and "persistent_workers" not in valid
    for train_flag in (True, False):  # no workers: DataLoader refuses persistent_workers=True
        assert "persistent_workers" not in loader_kwargs(_hparams(num_workers=0), dataset, train=train_flag)
    gpu = loader_kwargs(_hparams(device="cuda:0"), dataset, train=False)  # auto: 4 workers, pinned
    assert (gpu["num_workers"], gpu["pin_memory"], "persistent_workers" in gpu) == (4, True, False)


def test_evaluation_workers_exit_after_the_pass_and_training_workers_stay():
    dataset = Lengths()
    before = len(multiprocessing.active_children())
    valid = torch.utils.data.DataLoader(dataset, **loader_kwargs(_hparams(num_workers=2), dataset, train=False))
    assert sorted(int(n) for batch in valid for n in batch) == [1600 * (i + 1) for i in range(6)]
    assert len(multiprocessing.active_children()) == before
    train = torch.utils.data.DataLoader(dataset, **loader_kwargs(_hparams(num_workers=2), dataset, train=True))
    assert sorted(int(n) for batch in train for n in batch) == [1600 * (i + 1) for i in range(6)]
    assert len(multiprocessing.active_children()) == before + 2
    del train  # the loader's iterator shuts its workers down when it is freed
    gc.collect()
    assert len(multiprocessing.active_children()) == before


def test_loader_throughput_tool_reads_every_sample(tmp_path):
    for fmt in loader_throughput.FORMATS:
        data_dir = loader_throughput.write_corpus(tmp_path, fmt, utterances=3, seconds=0.5)
        for workers in (0, 1):
            assert loader_throughput.training_loader_pass(data_dir, workers)() == 3 * 8000
    rows = loader_throughput.measure(utterances=2, seconds=0.25, workers=[0], repeats=2)
    assert [(row["format"], row["path"], row["audio_s"], len(row["rates"]), len(row["cpu_rates"])) for row in rows] == [
        (fmt, path, 0.5, 2, 2) for fmt in ("flac", "wav") for path in ("soundfile.read", "read_audio", "loader, 0 workers")]
