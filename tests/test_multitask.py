"""elp.serve.multitask: N packages on one backbone give each task's single-task results, run the
CNN once and the shared transformer pass once, share frozen tensors, and refuse packages
trained on other weights."""
import pytest
import torch

from elp.core.backbones import weights_hash
from elp.serve.inference import Predictor
from elp.serve.multitask import MultiTask, unique_tensor_bytes
from elp.serve.package import BackboneHashMismatchError
from elp.testing import make_tiny_package, save_tiny_checkpoint

MIX = [("classify", "weighted_sum"), ("asr", "l_only"), ("sv", "el"), ("classify", "elp"), ("asr", "lora"),
       ("classify", "l_only"), ("asr", "e_only"), ("asr", "elp"), ("sv", "prefix"), ("classify", "prefix"),
       ("asr", "conventional"), ("classify", "full")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multitask")
    ckpt = save_tiny_checkpoint("wavlm_plus", root / "ckpt", seed=5)
    dirs = [make_tiny_package(root / f"{i}_{task}_{method}", task=task, method=method, seed=i,
                              backbone=("wavlm_plus"), backbone_dir=ckpt)
            for i, (task, method) in enumerate(MIX)]
    return ckpt, dirs


def _waves():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, generator=g) * 0.1 for n in (16000, 7000, 11000, 4000, 9000)]


@pytest.mark.parametrize("route", [True, False])
def test_multitask_equals_each_task_alone(setup, route):
    _, dirs = setup
    tasks = MultiTask(dirs, route=route)
    if not route:
        assert tasks.plan()["routed_batches"] == [] and tasks.plan()["own_layers"] == [2, 3, 4, 6, 7, 8, 9, 10, 11]
    else:  # grouped by (prompt frames, prefix frames); full fine-tuning keeps its own layers
        assert tasks.plan() == {"shared_pass": [0, 1, 5], "routed_batches": [[2, 4, 6, 10], [3, 7], [8, 9]],
                                "own_layers": [11]}
    # the routed LoRA task's factors are not zero, so matching it alone proves its term was applied
    lora = tasks.predictors[4].package.model.backbone.layers[0].attention.q_proj.parametrizations.weight[0]
    assert float(lora.lora_b.detach().abs().max()) > 0.01
    waves = _waves()
    together = tasks.outputs(waves, sample_rate=16000, batch_size=3)
    for directory, task_outputs in zip(dirs, together):
        alone = Predictor.from_package(directory).outputs(waves, sample_rate=16000, batch_size=2)
        for a, b in zip(task_outputs, alone):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    results = tasks.run(waves[:2], sample_rate=16000)
    assert list(results[0]) == tasks.names and len(set(tasks.names)) == len(dirs)


def test_cnn_once_shared_pass_once_and_frozen_tensors_shared(setup, monkeypatch):
    _, dirs = setup
    tasks = MultiTask(dirs)
    before = weights_hash(tasks.backbone.model)
    calls = {"cnn": 0, "shared_layer0": 0}
    original = tasks.backbone.extract_cnn_features

    def counting(*args, **kwargs):
        calls["cnn"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(tasks.backbone, "extract_cnn_features", counting)
    tasks.backbone.layers[0].register_forward_hook(lambda *_: calls.__setitem__("shared_layer0", calls["shared_layer0"] + 1))
    tasks.outputs(_waves(), sample_rate=16000, batch_size=5)
    assert calls == {"cnn": 1, "shared_layer0": 1}
    # views share the frozen tensors; trained LayerNorms are private
    shared_layer = tasks.backbone.layers[1]
    el_view = tasks.predictors[2].package.model.backbone
    assert el_view.layers[1].feed_forward.intermediate_dense.weight is shared_layer.feed_forward.intermediate_dense.weight
    assert el_view.layers[1].layer_norm.weight is not shared_layer.layer_norm.weight
    lora_view = tasks.predictors[4].package.model.backbone
    assert lora_view.layers[1].attention.q_proj.parametrizations.weight.original is shared_layer.attention.q_proj.weight
    assert weights_hash(tasks.backbone.model) == before  # loading the tasks changed nothing shared
    sizes = tasks.learnable_tensor_bytes()
    assert len(sizes) == len(dirs) and all(s > 0 for s in sizes)
    # tensor memory: exactly one backbone plus each task's learnable tensors (views and routed
    # groups hold no copies)
    assert tasks.tensor_bytes() == unique_tensor_bytes([tasks.backbone.model]) + sum(sizes)


def test_different_backbone_weights_are_refused(setup, tmp_path):
    _, dirs = setup
    other = make_tiny_package(tmp_path / "other", task="classify", method="l_only", backbone="wavlm_plus",
                              backbone_dir=save_tiny_checkpoint("wavlm_plus", tmp_path / "ckpt2", seed=6))
    with pytest.raises(BackboneHashMismatchError, match="same weights: run them in separate") as err:
        MultiTask([dirs[0], other])
    assert str(other) in str(err.value) and "\n" not in str(err.value)


def test_bench_worker_measures_both_modes(setup):
    import argparse

    from elp.commands.bench_multitask import format_table, worker

    _, dirs = setup
    spec = dict(dirs=[str(d) for d in dirs[:2]], duration=0.5, batch_size=2, warmup=0, repeats=1, threads=None,
                device="cpu")
    shared = worker({**spec, "mode": "shared"})
    separate = worker({**spec, "mode": "separate"})
    for result in (shared, separate):
        assert result["audio_s_per_s"] > 0 and result["audio_s_per_cpu_s"] > 0 and result["run_peak_mb"] >= 0
    assert shared["learnable_mb"] > 0 and separate["learnable_mb"] == 0
    # two separate models hold two backbones; the shared one holds one (plus the learnable tensors)
    assert separate["tensor_mb"] > shared["tensor_mb"] > shared["learnable_mb"]
    args = argparse.Namespace(backbone="wavlm_plus", tiny=True, device="cpu", batch_size=2, duration=0.5,
                              repeats=1, warmup=0)
    table = format_table([{"mix": "weighted_sum,l_only", "n": 2, "shared": shared, "separate": separate}],
                         {}, 1.0, args, None)
    assert "| weighted_sum,l_only | 2 |" in table


def test_long_sv_inputs_are_windowed_by_the_tasks_own_model(tmp_path, monkeypatch):
    """The served batch reads the shared computation once; windows of a long SV input run the
    task's own model, and the results equal the task alone (which windows as stage 4 does)."""
    ckpt = save_tiny_checkpoint("wavlm", tmp_path / "ckpt", seed=2)
    windows = {"window_seconds": 0.5, "window_overlap_seconds": 0.1}
    dirs = [make_tiny_package(tmp_path / name, task=task, method=method, seed=i, backbone_dir=ckpt,
                              task_options=windows if task == "sv" else None)
            for i, (name, task, method) in enumerate([("sv_el", "sv", "el"), ("sv_lora", "sv", "lora"),
                                                      ("er", "classify", "l_only")])]
    tasks = MultiTask(dirs)
    assert tasks.plan()["routed_batches"] == [[0, 1]]
    calls = []
    original = tasks.backbone.extract_cnn_features
    monkeypatch.setattr(tasks.backbone, "extract_cnn_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    g = torch.Generator().manual_seed(1)
    waves = [torch.randn(n, generator=g) * 0.1 for n in (6000, 24000)]  # 0.375 s (whole) and 1.5 s (4 windows)
    together = tasks.outputs(waves, sample_rate=16000, batch_size=2)
    assert calls == [1]  # the served batch's CNN once; the windows ran in each task's own model
    for directory, task_outputs in zip(dirs, together):
        alone = Predictor.from_package(directory).outputs(waves, sample_rate=16000, batch_size=1)
        for a, b in zip(task_outputs, alone):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
