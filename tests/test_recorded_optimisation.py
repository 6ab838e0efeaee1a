"""What training records: the effective batch, steps, processes, learning-rate scaling, host memory, logs."""

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from recipe_fixtures import DURATIONS, ROOT, experiment, make_recipe

from elp.eval.results import training_record, write_results_json
from elp.runtime import UserError
from elp.train import recipe as plumbing
from elp.train.recipe import epoch_batch, lr_scale_factor, make_dataset, peek_experiment

RUN = ["--method", "l_only", "--number_of_epochs", "1", "--batch_size", "4", "--ckpt_interval_steps", "0"]
TINY = ["--backbone_arch", "tiny", "--backbone", "wavlm", "--device", "cpu", *RUN]  # what experiment() adds


def release_experiment_locks():  # what the end of the driver's process does
    while plumbing._HELD:
        plumbing._HELD.pop().__exit__(None, None, None)


def stage_script(name: str):
    spec = importlib.util.spec_from_file_location(f"elp_stage_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_epoch_batch_is_the_epoch_average_per_optimizer_step():
    lengths = [48000] * 6 + [16000] * 10  # 6 x 3 s and 10 x 1 s = 28 s
    one = epoch_batch(lengths, batches_per_process=4)
    assert (one["utterances_per_step"], one["seconds_per_step"], one["steps_per_epoch"]) == (4.0, 7.0, 4)
    assert one["mean_utterance_seconds"] == 1.75
    ddp = epoch_batch(lengths, batches_per_process=4, grad_accumulation=2, world_size=2)  # 2 ranks x 2 batches
    assert (ddp["utterances_per_step"], ddp["seconds_per_step"], ddp["steps_per_epoch"]) == (8.0, 14.0, 2)
    cropped = epoch_batch(lengths, batches_per_process=4, crop_seconds=2.0)  # 3 s utterances count as 2 s
    assert cropped["seconds_per_step"] == 5.5
    assert epoch_batch(lengths, batches_per_process=1, grad_accumulation=2)["seconds_per_step"] is None


def test_lr_scale_factor_modes_and_errors():
    assert lr_scale_factor("none", 10.0, 0.0) == 1.0
    assert lr_scale_factor("linear", 300.0, 75.0) == 4.0
    assert lr_scale_factor("sqrt", 300.0, 75.0) == 2.0
    with pytest.raises(UserError, match="lr_scaling must be one of none, linear, sqrt, got 'cubic'"):
        lr_scale_factor("cubic", 1.0, 1.0)
    with pytest.raises(UserError, match="set lr_reference_batch_seconds"):
        lr_scale_factor("linear", 10.0, 0.0)


def test_learning_rates_scale_with_the_effective_batch(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    try:
        hparams, brain = experiment(recipe, *RUN, "--tag", "s", "--lr_scaling", "sqrt")
    finally:
        release_experiment_locks()
    brain.make_dataloader(make_dataset(hparams, hparams["train_set"], "train"), brain_stage_train(),
                          batch_size=2, shuffle=False)
    brain.init_optimizers()
    seconds = sum(DURATIONS) / 4  # 8 utterances in 4 batches of 2
    reference = 4 * sum(DURATIONS) / len(DURATIONS)  # batch_size 4 of the mean length (default reference)
    factor = math.sqrt(seconds / reference)
    assert brain.train_batch["seconds_per_step"] == pytest.approx(seconds, abs=1e-3)
    assert brain.train_batch["lr_scale"] == pytest.approx(factor, rel=1e-5)
    lrs = hparams["lr"]
    for group in brain.optimizer.param_groups:
        assert group["lr"] == pytest.approx(lrs.get(group["name"], lrs["default"]) * factor, rel=1e-5)


def brain_stage_train():
    import speechbrain as sb

    return sb.Stage.TRAIN


def test_train_stats_and_results_record_the_batch_the_steps_and_host_memory(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    args = ["conf/train.yaml", *TINY, "--tag", "rec", "--lr_scaling", "linear", "--lr_reference_batch_seconds", "1.0"]
    try:
        assert stage_script("train").main(args) == 0
    finally:
        release_experiment_locks()
    stats = json.loads(Path("exp/rec/train_stats.json").read_text())
    seconds = round(sum(DURATIONS) / 2, 3)  # 8 utterances in 2 batches of 4, one process, no accumulation
    assert stats["effective_batch"] == {
        "utterances_per_step": 4.0, "seconds_per_step": seconds, "mean_utterance_seconds": round(sum(DURATIONS) / 8, 4),
        "steps_per_epoch": 2, "batches_per_epoch_per_process": 2, "world_size": 1, "grad_accumulation_factor": 1,
        "lr_scaling": "linear", "lr_scale": pytest.approx(seconds / 1.0), "lr_reference_batch_seconds": 1.0}
    assert stats["peak_host_rss_mb"] >= stats["peak_mem_mb"] > 0 and stats["peak_mem_kind"] == "cpu peak RSS"
    optimizer = torch.load(next(Path("exp/rec/save").glob("CKPT+*")) / "optimizer.ckpt")
    lrs = peek_experiment(args)["lr"]
    for group in optimizer["param_groups"]:  # the rates the run started from
        assert group["initial_lr"] == pytest.approx(lrs.get(group["name"], lrs["default"]) * seconds, rel=1e-5)
    result = {"benchmark": "ic", "corpus": "slurp", "backbone": "wavlm", "method": "l_only",
              "metric": {"name": "accuracy", "value": 50.0, "higher_is_better": True},
              "learnable_params": stats["learnable_params"], "train_wall_s": stats["train_wall_s"],
              "peak_mem_mb": stats["peak_mem_mb"], **training_record(stats)}
    written = json.loads(write_results_json(tmp_path / "results.json", result) and
                         (tmp_path / "results.json").read_text())
    assert written["effective_batch"]["steps_per_epoch"] == 2
    assert written["peak_host_rss_mb"] == stats["peak_host_rss_mb"]


# ------------------------------------------------------------------ train_logger: any SpeechBrain TrainLogger
class RecordingLogger:
    """A train logger that is not SpeechBrain's FileTrainLogger: records calls and flushes."""

    def __init__(self):
        self.calls, self.flushes = [], 0
        self.writer = SimpleNamespace(flush=self.flush)

    def flush(self):
        self.flushes += 1

    def log_stats(self, stats_meta, train_stats=None, valid_stats=None, test_stats=None, verbose=False):
        self.calls.append({"meta": dict(stats_meta), "train": train_stats, "valid": valid_stats})


def fit_one_epoch(recipe, tag, *args):
    try:
        hparams, brain = experiment(recipe, *RUN, "--tag", tag, *args)
    finally:
        release_experiment_locks()
    return hparams, brain


def test_the_brain_logs_through_any_train_logger(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    hparams, brain = fit_one_epoch(recipe, "stub")
    brain.hparams.train_logger = RecordingLogger()
    data = make_dataset(hparams, hparams["train_set"], "train")
    brain.fit(brain.hparams.epoch_counter, data, make_dataset(hparams, hparams["valid_set"], "valid"),
              train_loader_kwargs={"batch_size": 4}, valid_loader_kwargs={"batch_size": 4})
    [call] = brain.hparams.train_logger.calls
    assert call["meta"]["epoch"] == 1 and set(call["meta"]) >= {"lr_head"}
    assert set(call["train"]) == {"loss"} and {"loss", "accuracy", "ua", "error"} <= set(call["valid"])
    assert brain.hparams.train_logger.flushes == 1


TENSORBOARD_YAML = """\
train_logger: !new:speechbrain.utils.train_logger.TensorboardLogger
    save_dir: !ref <output_folder>/tensorboard
"""


def test_tensorboard_logger_swapped_in_by_yaml_writes_the_epoch(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install elp[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    (recipe / "conf" / "tensorboard.yaml").write_text(TENSORBOARD_YAML)
    hparams, brain = fit_one_epoch(recipe, "tb", "--overrides_file", "conf/tensorboard.yaml")
    data = make_dataset(hparams, hparams["train_set"], "train")
    brain.fit(brain.hparams.epoch_counter, data, make_dataset(hparams, hparams["valid_set"], "valid"),
              train_loader_kwargs={"batch_size": 4}, valid_loader_kwargs={"batch_size": 4})
    events = EventAccumulator(str(recipe / "exp" / "tb" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"epoch", "lr_head", "loss/train", "loss/valid", "accuracy/valid"} <= tags
    assert [e.value for e in events.Scalars("epoch")] == [1.0]


def test_the_fold_mean_keeps_the_training_record():
    """ER's results.json is the mean over folds: host memory is the largest fold's, the batch
    record the first fold's (every fold trains with the same settings)."""
    aggregate = stage_script("aggregate_folds").aggregate
    batch = {"utterances_per_step": 4.0, "seconds_per_step": 9.5, "steps_per_epoch": 70, "world_size": 1}
    folds = [{"benchmark": "er", "corpus": "iemocap", "backbone": "wavlm", "method": "elp", "learnable_params": 10,
              "tag": f"mini_elp_fold{k}", "fold": k, "metric": {"name": "accuracy", "value": v, "chance": 25.0},
              "train_wall_s": 2.0, "peak_mem_mb": 100.0 + k, "peak_host_rss_mb": 800.0 + 10 * k,
              "effective_batch": dict(batch, steps_per_epoch=70 + k)} for k, v in ((1, 50.0), (2, 40.0))]
    result = aggregate(folds)
    assert result["metric"]["value"] == 45.0 and result["peak_mem_mb"] == 102.0
    assert result["peak_host_rss_mb"] == 820.0
    assert result["effective_batch"] == dict(batch, steps_per_epoch=71)
