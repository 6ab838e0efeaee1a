"""Joint training of several tasks on one frozen backbone (elp.train.multitask, JointBrain,
elp.data.task_mixer, egs/multitask): one forward per mixed batch equals each task's model on its
own samples, gradients reach exactly the tasks whose samples produced them, the mixer draws what
it promises, and packages of a joint run give the jointly trained model's outputs alone and
together (one transformer pass when the encoder is shared)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from elp.core.backbones import load_backbone
from elp.core.heads import PooledClassifier
from elp.core.methods import METHODS
from elp.core.routing import share_parameters
from elp.data.inventory import LabelMap
from elp.data.task_mixer import TaskConcatDataset, TaskEvalBatchSampler, TaskMixer, task_shares
from elp.eval.results import append_results_line, load_results, summary_markdown, validate_result, ResultsError
from elp.runtime import UserError
from elp.serve.inference import load_predictor
from elp.serve.multitask import MultiTask
from elp.serve.package import read_package_config, write_package
from elp.tasks import UtteranceClassification
from elp.testing import save_tiny_checkpoint
from elp.train.brains import UtteranceClassifierBrain
from elp.train.brains.multitask import JointBrain
from elp.train.multitask import JointModel, check_joint_hparams, joint_modules, task_model

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {"l_dim": 8, "e_dim": 4, "prompt_frames": 2, "prefix_frames": 2, "lora_rank": 2}
NAMES = ["er", "ic", "kws"]
LENGTHS = [8000, 5600, 6400, 4000, 7200]  # task-major: er 2, ic 1, kws 2
COUNTS = [2, 1, 2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint("wavlm", tmp_path_factory.mktemp("joint_backbone"), seed=4)


def backbone_of(checkpoint):
    return load_backbone("wavlm", source=str(checkpoint)).eval()


def joint_of(shared, method, groups=(), seed=0) -> JointModel:
    """Three task models of ``method`` (``groups`` tied), every learnable tensor perturbed so that it matters."""
    torch.manual_seed(seed)
    joint = JointModel(shared, {name: task_model(shared, method, OPTIONS) for name in NAMES}, shared=groups)
    with torch.no_grad():
        for param in {id(p): p for m in joint.models.values() for p in m.learnable_parameters().values()}.values():
            param.add_(0.1 * torch.randn_like(param))
    return joint.eval()


def batch(lengths=LENGTHS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    waves = [0.1 * torch.randn(n, generator=generator) for n in lengths]
    wavs = torch.zeros(len(waves), max(lengths))
    for row, wave in enumerate(waves):
        wavs[row, :len(wave)] = wave
    return wavs, torch.tensor(lengths, dtype=torch.float) / max(lengths), waves


def rows_of(task, counts=COUNTS):
    start = sum(counts[:task])
    return slice(start, start + counts[task])


# ------------------------------------------------------------------ one forward per mixed batch
CASES = [(method, ()) for method in METHODS] + [("el", ("e",)), ("el", ("e", "ln")), ("elp", ("e", "ln", "p")),
                                                ("lora", ("lora",))]
PLAN = {"weighted_sum": "frozen", "l_only": "frozen", "full": "own"}


@pytest.mark.parametrize("method,groups", CASES, ids=[f"{m}-{'+'.join(g) or 'own'}" for m, g in CASES])
def test_mixed_batch_equals_each_task_model_on_its_own_samples(checkpoint, method, groups):
    shared = backbone_of(checkpoint)
    joint = joint_of(shared, method, groups)
    everything_shared = groups in (("e", "ln"), ("e", "ln", "p"), ("lora",))
    kind = "encoder" if everything_shared else PLAN.get(method, "routed")
    assert {k for k, _ in joint.plan()} == {kind}
    wavs, wav_lens, _ = batch()
    with torch.no_grad():
        outputs = joint(wavs, wav_lens, COUNTS)
        for task, name in enumerate(NAMES):
            rows = rows_of(task)
            alone, mask = joint.models[name](wavs[rows], wav_lens[rows])
            feats, joint_mask = outputs[task]
            assert torch.equal(joint_mask, mask)
            diff = ((feats - alone) * mask[..., None]).abs().max().item()
            assert diff <= 1e-5, f"{method} {name}: the joint forward differs by {diff}"
    # a batch without some task's samples: that task gets None, the others the same features
    with torch.no_grad():
        partial = joint(wavs[2:3], wav_lens[2:3], [0, 1, 0])
    assert partial[0] is None and partial[2] is None and partial[1][0].shape[0] == 1


def test_the_cnn_runs_once_and_the_shared_encoder_once_per_batch(checkpoint, monkeypatch):
    shared = backbone_of(checkpoint)
    joint = joint_of(shared, "elp", ("e", "ln", "p"))
    calls = {"cnn": 0, "layer0": 0}
    original = shared.extract_cnn_features
    monkeypatch.setattr(shared, "extract_cnn_features", lambda *a, **k: calls.__setitem__("cnn", calls["cnn"] + 1)
                        or original(*a, **k))
    for model in joint.models.values():
        model.backbone.layers[0].register_forward_hook(lambda *_: calls.__setitem__("layer0", calls["layer0"] + 1))
    wavs, wav_lens, _ = batch()
    with torch.no_grad():
        joint(wavs, wav_lens, COUNTS)
    assert calls == {"cnn": 1, "layer0": 1}


# ------------------------------------------------------------------ gradients
def _grads(params):
    return {name: None if p.grad is None else p.grad.clone() for name, p in params.items()}


def _nonzero(grad):
    return grad is not None and bool(torch.count_nonzero(grad))


def test_shared_e_adapters_get_every_tasks_gradient_and_the_rest_only_their_own(checkpoint):
    shared = backbone_of(checkpoint)
    joint = joint_of(shared, "el", ("e",)).train()
    wavs, wav_lens, _ = batch()
    params = {f"{name}.{p}": t for name in NAMES for p, t in joint.models[name].learnable_parameters().items()}
    e_params = {k: v for k, v in params.items() if k.startswith("er.encoder_adapters.")}
    assert e_params and all(params[k.replace("er.", "ic.", 1)] is v for k, v in e_params.items())
    per_task = []
    for task, name in enumerate(NAMES):
        joint.zero_grad(set_to_none=True)
        feats, mask = joint(wavs, wav_lens, COUNTS)[task]
        (feats * mask[..., None]).pow(2).sum().backward()
        grads = _grads(params)
        per_task.append(grads)
        # the shared E-adapters learn from this task's samples ...
        assert all(_nonzero(grads[k]) for k in e_params), f"{name}: an E-adapter got no gradient"
        for key, grad in grads.items():
            owner = key.split(".", 1)[0]
            if key.split(".", 1)[1].startswith("encoder_adapters."):
                continue
            if owner == name:  # ... its own L-adapters and LayerNorms too (the last LayerNorm feeds nothing read)
                if "layer_adapters" in key or ".layers.0." in key:
                    assert _nonzero(grad), f"{name}: own tensor {key} got no gradient"
            else:  # ... and the other tasks' own tensors nothing at all
                assert grad is None or not torch.count_nonzero(grad), f"{name}'s samples reached {key}"
    # the mixed batch's gradient of the shared E-adapters is the sum of each task's model on its own samples
    joint.zero_grad(set_to_none=True)
    outputs = joint(wavs, wav_lens, COUNTS)
    sum((f * m[..., None]).pow(2).sum() for f, m in outputs).backward()
    mixed = _grads(e_params)
    joint.zero_grad(set_to_none=True)
    for task, name in enumerate(NAMES):
        rows = rows_of(task)
        feats, mask = joint.models[name](wavs[rows], wav_lens[rows])
        (feats * mask[..., None]).pow(2).sum().backward()
    alone = _grads(e_params)
    for key in e_params:
        torch.testing.assert_close(mixed[key], alone[key], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(mixed[key], sum(g[key] for g in per_task), rtol=1e-4, atol=1e-6)


def test_routed_training_gives_each_task_exactly_its_own_gradient(checkpoint):
    """Nothing shared (elp, routed): a task's loss reaches only its own tensors (E, LayerNorms, prompt, L)."""
    shared = backbone_of(checkpoint)
    joint = joint_of(shared, "elp").train()
    wavs, wav_lens, _ = batch()
    for task, name in enumerate(NAMES):
        joint.zero_grad(set_to_none=True)
        feats, mask = joint(wavs, wav_lens, COUNTS)[task]
        (feats * mask[..., None]).pow(2).sum().backward()
        for other in NAMES:
            params = joint.models[other].learnable_parameters()
            if other == name:
                for key in ("prompt.frames", "encoder_adapters.ffn.0.down.weight", "layer_adapters.layer_weights"):
                    assert _nonzero(params[key].grad), f"{name}: {key} got no gradient"
                norm = next(p for k, p in params.items() if k.endswith("layers.0.layer_norm.weight"))
                assert _nonzero(norm.grad)
            else:
                assert all(p.grad is None or not torch.count_nonzero(p.grad) for p in params.values()), \
                    f"{name}'s samples reached {other}'s tensors"


def test_sharing_needs_a_group_that_trains_and_equal_shapes(checkpoint):
    shared = backbone_of(checkpoint)
    with pytest.raises(ValueError, match=r"shared group 'e' is trained by no task \(method 'l_only' trains l\)"):
        JointModel(shared, {n: task_model(shared, "l_only", OPTIONS) for n in NAMES[:2]}, shared=["e"])
    models = [task_model(shared, "el", OPTIONS), task_model(shared, "el", {**OPTIONS, "e_dim": 6})]
    with pytest.raises(ValueError, match=r"task 1 differs from task 0 \(e_dim 4 vs 6\); tasks that share tensors"):
        share_parameters(models, ["e"])
    relu = task_model(shared, "el", OPTIONS, {"activation": "relu"})
    with pytest.raises(ValueError, match=r"^shared groups \['e'\]: er differs from ic \(activation 'gelu' vs 'relu'\)"):
        JointModel(shared, {"ic": models[0], "er": relu}, shared=["e"])
    with pytest.raises(ValueError, match=r"\(method 'e_only'\)"):
        share_parameters([models[0], task_model(shared, "e_only", OPTIONS)], ["e"])
    # the L-adapters' width is the reader's own: tasks may differ in it and still share E-adapters
    assert share_parameters([models[0], task_model(shared, "el", {**OPTIONS, "l_dim": 12})], ["e"]) == 12


# ------------------------------------------------------------------ the Brain
def classification_tasks(shared, method, groups=()):
    tasks = {}
    for index, name in enumerate(NAMES):
        model = task_model(shared, method, OPTIONS)
        tasks[name] = {"task": UtteranceClassification(), "inventory": LabelMap.from_values(["a", "b", "c"]),
                       "modules": {"model": model, "head": PooledClassifier(model.output_dim, 3, hidden_dim=4)},
                       "loss": torch.nn.CrossEntropyLoss(), "brain_class": UtteranceClassifierBrain,
                       "loss_weight": 0.5 + index, "lr": {"head": 1e-2 * (index + 1)}}
    joint = JointModel(shared, {n: t["modules"]["model"] for n, t in tasks.items()}, shared=groups)
    return {"tasks": tasks, "lr": {"default": 1e-3}, "opt_class": torch.optim.Adam, "joint_model": joint}


def items(names=NAMES, counts=COUNTS, seed=1):
    _, _, waves = batch(seed=seed)
    out, at = [], 0
    for task, count in enumerate(counts):
        for _ in range(count):
            out.append((task, {"id": f"{names[task]}-{at}", "sig": waves[at], "label_id": torch.tensor([at % 3])}))
            at += 1
    return out


def test_joint_loss_is_the_weighted_sum_of_each_tasks_own_loss(checkpoint):
    shared = backbone_of(checkpoint)
    hparams = classification_tasks(shared, "el", ("e",))
    brain = JointBrain(modules=joint_modules(hparams), hparams=hparams, run_opts={"device": "cpu"})
    brain.init_optimizers()
    names = [g["name"] for g in brain.optimizer.param_groups]
    assert names == ["shared_e"] + [f"{n}_{g}" for n in NAMES for g in ("ln", "l", "head")]
    assert [g["lr"] for g in brain.optimizer.param_groups if g["name"].endswith("_head")] == [1e-2, 2e-2, 3e-2]
    optimised = [p for g in brain.optimizer.param_groups for p in g["params"]]
    assert len(optimised) == len({id(p) for p in optimised}) == len(brain.learnable_parameters())
    data = TaskConcatDataset([[], [], []])
    mixed = data.collate(list(reversed(items())))  # any order in: task-major out, stable within a task
    assert mixed.counts == COUNTS and mixed.id == ["er-1", "er-0", "ic-2", "kws-4", "kws-3"]
    brain.modules.eval()
    brain.reset_stats(sb.Stage.VALID)
    with torch.no_grad():
        total = brain.compute_objectives(brain.compute_forward(mixed, sb.Stage.VALID), mixed, sb.Stage.VALID)
        expected = 0.0
        for task, name in enumerate(NAMES):
            own = PaddedBatch([item for t, item in items() if t == task])
            alone = UtteranceClassifierBrain(modules=dict(hparams["tasks"][name]["modules"]),
                                             hparams={"loss": torch.nn.CrossEntropyLoss()}, run_opts={"device": "cpu"})
            loss = alone.compute_objectives(alone.compute_forward(own, sb.Stage.TRAIN), own, sb.Stage.TRAIN)
            expected += hparams["tasks"][name]["loss_weight"] * float(loss)
    assert abs(float(total) - expected) < 1e-5
    assert sorted(brain.task_stats(sb.Stage.VALID)) == sorted(f"{n}_{k}" for n in NAMES for k in ("loss", "accuracy", "ua", "error"))


def test_each_tasks_gradients_are_clipped_on_their_own(checkpoint):
    """A task's clipped gradient does not depend on another task's gradient norm; shared groups are one unit."""
    shared = backbone_of(checkpoint)
    hparams = classification_tasks(shared, "el", ("e",))
    brain = JointBrain(modules=joint_modules(hparams), hparams=hparams, run_opts={"device": "cpu", "max_grad_norm": 1.0})
    brain.init_optimizers()
    groups = {g["name"]: g["params"] for g in brain.optimizer.param_groups}
    units = {"shared": ["shared_e"], **{n: [f"{n}_{g}" for g in ("ln", "l", "head")] for n in NAMES}}
    scales = {"shared": 7.0, "er": 0.01, "ic": 300.0, "kws": 3.0}  # er under the limit, the others over it
    expected = {}
    for unit, names in units.items():
        for name in names:
            for param in groups[name]:
                param.grad = scales[unit] * torch.ones_like(param) / (sum(p.numel() for n in names for p in groups[n])
                                                                      ** 0.5)
        norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for n in names for p in groups[n]]))
        assert abs(float(norm) - scales[unit]) < 1e-3
        expected[unit] = min(scales[unit], 1.0)
    total = brain.clip_gradients([brain.optimizer])
    assert abs(float(total) - sum(v * v for v in scales.values()) ** 0.5) < 1e-2  # the norm before clipping
    for unit, names in units.items():
        norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for n in names for p in groups[n]]))
        assert abs(float(norm) - expected[unit]) < 1e-4, unit  # er keeps 0.01: not scaled down by ic's 300


def test_joint_hparams_are_checked_in_one_line():
    with pytest.raises(UserError, match=r"^tasks\.er: missing brain_class, corpus; unknown lrr \(valid: "):
        check_joint_hparams({"tasks": {"er": {"task": 1, "train_set": 1, "valid_set": 1, "test_sets": 1,
                                              "lang_dir": 1, "inventory": 1, "modules": {}, "loss": 1,
                                              "benchmark": "er", "lrr": {}}}})
    spec = {key: 1 for key in ("task", "train_set", "valid_set", "test_sets", "lang_dir", "inventory", "loss",
                               "brain_class", "corpus", "benchmark")}
    with pytest.raises(UserError, match=r"^cnn_cache is not available in joint training"):
        check_joint_hparams({"tasks": {"er": {**spec, "modules": {"model": 1, "head": 2}}}, "cnn_cache": True})


# ------------------------------------------------------------------ the task mixer
def test_task_shares_and_the_mixers_draws():
    assert task_shares([300, 100], temperature=float("inf")) == [0.5, 0.5]
    with pytest.raises(ValueError, match="temperature must be > 0"):
        task_shares([3, 1], temperature=0)
    with pytest.raises(ValueError, match="2 task weights for 3 tasks"):
        task_shares([3, 1, 2], weights=[1, 1])
    lengths = [[16000] * 30, [8000 + 800 * i for i in range(10)], [12000] * 5]
    assert TaskMixer(lengths, weights=[1, 2, 1]).task_counts == [25, 16, 4]  # 30 : 2 x 10 : 5 of 45
    mixer = TaskMixer(lengths, weights=[1, 2, 1], temperature=float("inf"), max_batch_size=4, seed=3)
    assert mixer.task_counts == [11, 23, 11] and mixer.epoch_size == 45  # 1 : 2 : 1 of 45
    offsets = [0, 30, 40, 45]
    for epoch in (0, 1):
        mixer.set_epoch(epoch)
        drawn = [i for b in mixer for i in b]
        assert all(len(b) <= 4 for b in mixer) and len(mixer) == 12
        per_task = [sum(1 for i in drawn if offsets[t] <= i < offsets[t + 1]) for t in range(3)]
        assert per_task == [11, 23, 11]
        counts = {i: drawn.count(i) for i in set(drawn)}
        assert all(counts[i] == 1 for i in range(30) if i in counts)  # fewer draws than utterances: no repeat
        assert sorted(counts[i] for i in range(30, 40)) == [2] * 7 + [3] * 3  # 23 draws of 10
        assert sorted(counts[i] for i in range(40, 45)) == [2, 2, 2, 2, 3]  # 11 draws of 5
    again = TaskMixer(lengths, weights=[1, 2, 1], temperature=float("inf"), max_batch_size=4, seed=3)
    again.set_epoch(1)
    assert list(again) == list(mixer)
    again.set_epoch(2)
    assert list(again) != list(mixer)
    capped = TaskMixer(lengths, max_batch_seconds=3.0, max_batch_size=8, num_buckets=4, seed=0)
    for indices in capped:
        flat = [n for task in lengths for n in task]
        assert len(indices) * max(flat[i] for i in indices) <= 3.0 * 16000
    assert sum(len(b) for b in capped) == 45
    evaluation = list(TaskEvalBatchSampler(lengths, max_batch_seconds=4.0, max_batch_size=3))
    assert sorted(i for b in evaluation for i in b) == list(range(45))
    assert all(len({next(t for t in range(3) if offsets[t] <= i < offsets[t + 1]) for i in b}) == 1 for b in evaluation)


# ------------------------------------------------------------------ packages
def write_packages(joint, heads, root: Path, checkpoint: Path) -> list[Path]:
    return [write_package(root / name / "adapters", joint.models[name], heads[name], task="classify",
                          labels=["a", "b", "c"], backbone_source=str(checkpoint), extra={"joint": NAMES})
            for name in NAMES]


@pytest.mark.parametrize("groups", [(), ("e", "ln", "p")], ids=["own-encoders", "shared-encoder"])
def test_packages_alone_and_together_give_the_jointly_trained_models_outputs(checkpoint, tmp_path, groups):
    shared = backbone_of(checkpoint)
    joint = joint_of(shared, "elp", groups, seed=5)
    torch.manual_seed(6)
    heads = {name: PooledClassifier(OPTIONS["l_dim"], 3, hidden_dim=4).eval() for name in NAMES}
    dirs = write_packages(joint, heads, tmp_path, checkpoint)
    fingerprints = {read_package_config(d)["encoder_sha256"] for d in dirs}
    assert len(fingerprints) == (1 if groups else 3)
    # each task's "test set": its own utterances, run through the joint model as one mixed batch
    wavs, wav_lens, waves = batch([9000, 4000, 7000, 6000, 3000, 8000], seed=2)
    counts = [2, 1, 3]
    task = UtteranceClassification()
    with torch.no_grad():
        joint_out = [task.head_outputs(heads[name], *feats)
                     for name, feats in zip(NAMES, joint(wavs, wav_lens, counts))]
    together = MultiTask(dirs)
    assert together.plan().get("shared_encoder") == ([[0, 1, 2]] if groups else None)
    served = together.outputs(waves, sample_rate=16000, batch_size=4)
    for index, name in enumerate(NAMES):
        own = waves[rows_of(index, counts)]
        alone = load_predictor(dirs[index]).outputs(own, sample_rate=16000, batch_size=2)
        for expected, single, multi in zip(joint_out[index], alone, served[index][rows_of(index, counts)]):
            torch.testing.assert_close(single, expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(multi, expected, atol=1e-5, rtol=0)


def test_served_shared_encoder_packages_run_one_transformer_pass(checkpoint, tmp_path):
    shared = backbone_of(checkpoint)
    joint = joint_of(shared, "el", ("e", "ln"), seed=7)
    heads = {name: PooledClassifier(OPTIONS["l_dim"], 3, hidden_dim=4).eval() for name in NAMES}
    tasks = MultiTask(write_packages(joint, heads, tmp_path, checkpoint))
    assert tasks.plan() == {"shared_pass": [], "routed_batches": [], "own_layers": [], "shared_encoder": [[0, 1, 2]]}
    calls = []
    for predictor in tasks.predictors:
        predictor.package.model.backbone.layers[0].register_forward_hook(lambda *_: calls.append(1))
    tasks.backbone.layers[0].register_forward_hook(lambda *_: calls.append(1))
    tasks.outputs([torch.randn(8000) * 0.1, torch.randn(5000) * 0.1], sample_rate=16000, batch_size=2)
    assert calls == [1]


# ------------------------------------------------------------------ results
def test_joint_rows_stay_apart_from_single_task_rows(tmp_path):
    common = {"benchmark": "ic", "corpus": "slurp", "backbone": "mini", "method": "elp", "tag": "mini_elp",
              "metric": {"name": "accuracy", "value": 60.0, "higher_is_better": True}, "learnable_params": 1,
              "train_wall_s": 1.0, "peak_mem_mb": 1.0}
    for name, extra in (("single", {}), ("joint", {"joint": NAMES})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({**common, **extra}))
        append_results_line(tmp_path / "RESULTS.md", {**common, **extra})
    rows = load_results([tmp_path])
    assert len(rows) == 2
    table = summary_markdown(rows)
    assert "| mini_elp |" in table and "| mini_elp [joint er+ic+kws] |" in table
    assert (tmp_path / "RESULTS.md").read_text().count("| elp |") == 2
    with pytest.raises(ResultsError, match="field 'joint' must be a non-empty list of task names, got 'er'"):
        validate_result({**common, "joint": "er"}, "x.json")


# ------------------------------------------------------------------ the recipe
RECIPE = ROOT / "egs" / "multitask" / "er_ic_kws"
#: top-level blocks the joint YAML spells as every single-task recipe does
SHARED_BLOCKS = ["__set_seed", "backbone", "backbone_source", "backbone_arch", "ssl_backbone", "method",
                 "final_lr_factor", "opt_class", "lr_scheduler", "epoch_counter", "train_logger"]


def top_level_blocks(yaml_file: Path) -> dict[str, str]:
    blocks, key = {}, None
    for line in yaml_file.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            key = line.split(":", 1)[0]
            blocks[key] = line
        elif key is not None and line.startswith(" "):
            blocks[key] += "\n" + line
    return blocks


def test_the_joint_yaml_names_every_task_as_its_own_recipe_does():
    from elp.train.hparams import peek_hparams, read_overrides
    from elp.train.multitask import TASK_KEYS
    from elp.train.recipe import RUN_DEFAULTS

    joint = RECIPE / "conf" / "joint.yaml"
    values = peek_hparams(joint, {"tag": "t", **read_overrides([RECIPE / "conf" / "mini.yaml"])},
                          allowed_new=RUN_DEFAULTS)
    assert list(values["tasks"]) == NAMES and values["joint_model"].target == "elp.train.multitask.JointModel"
    assert values["brain_class"].tag == "!name:elp.train.brains.JointBrain"
    assert values["tasks"]["ic"]["lr"] == {"head": 5e-3, "default": 3e-3, "backbone": 5e-4}  # mini.yaml merged in
    recoverables = values["checkpointer"].value["recoverables"]
    assert {f"{n}_{k}" for n in NAMES for k in ("model", "head")} | {"counter", "lr_scheduler", "rng"} == set(recoverables)
    members = {"er": "iemocap/er", "ic": "slurp/ic", "kws": "speech_commands/kws"}
    for name, spec in values["tasks"].items():
        assert {k for k, required in TASK_KEYS.items() if required} <= set(spec) <= set(TASK_KEYS)
        member = peek_hparams(ROOT / "egs" / members[name] / "conf" / "train.yaml", {"tag": "t"})
        assert (spec["corpus"], spec["benchmark"]) == (member["corpus"], member["benchmark"])
        assert spec["task"] == member["task"] and spec["brain_class"] == member["brain_class"]
        for key in ("train_set", "valid_set", "lang_dir"):  # the member's own sets (ER: fold 1)
            assert Path(spec[key]).name == Path(member[key]).name
            assert spec[key].startswith(f"../../{members[name]}/data/")
    single, ours = top_level_blocks(ROOT / "egs" / "slurp" / "ic" / "conf" / "train.yaml"), top_level_blocks(joint)
    assert {key: ours.get(key) for key in SHARED_BLOCKS} == {key: single[key] for key in SHARED_BLOCKS}


# ------------------------------------------------------------------ the recipe, end to end (slow)
TINY = ["--backbone_arch", "tiny", "--backbone", "wavlm_plus"]


def run(recipe: Path, *args: str, timeout: int = 1800) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["./run.sh", *args], cwd=recipe, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"run.sh {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The joint recipe copied alone into a tree (as tests/test_recipes.py copies recipes), after stages 0-2:
    stage 0 copies the member recipes next to it and runs their stages 0-2 (mini corpora)."""
    root = tmp_path_factory.mktemp("joint_recipe")
    recipe = root / "egs" / "multitask" / "er_ic_kws"
    shutil.copytree(RECIPE / "conf", recipe / "conf")
    shutil.copy2(RECIPE / "run.sh", recipe / "run.sh")
    (root / "recipes").symlink_to(ROOT / "recipes")
    output = run(recipe, "--stop_stage", "2", *TINY)
    assert "Stage 0: ../../iemocap/er is missing: copying" in output
    return recipe


def learnable(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(directory / "adapters.safetensors")


@pytest.mark.slow
def test_recipe_stages_3_to_5_with_a_shared_encoder(prepared):
    recipe = prepared
    run(recipe, "--stage", "3", *TINY, "--tag", "sh", "--", "--number_of_epochs", "2", "--shared", "[e, ln, p]",
        "--er_options", "{activation: gelu}")
    exp = recipe / "exp" / "sh"
    stats = json.loads((exp / "train_stats.json").read_text())
    assert stats["plan"] == [["encoder", NAMES]] and stats["shared"] == ["e", "ln", "p"]
    assert stats["train_utterances"] == 2 * sum(stats["utterances_per_epoch"].values())
    dirs = [exp / name / "adapters" for name in NAMES]
    for name, directory in zip(NAMES, dirs):
        result = json.loads((exp / name / "results.json").read_text())
        assert result["joint"] == NAMES and result["benchmark"] == name and result["method"] == "elp"
        assert read_package_config(directory)["extra"]["joint"] == NAMES
    tasks = MultiTask(dirs)
    assert tasks.plan()["shared_encoder"] == [[0, 1, 2]]
    scp = (recipe.parent.parent / "slurp" / "ic" / "data" / "test" / "wav.scp").read_text().split("\n")[:3]
    paths = [line.split(maxsplit=1)[1] for line in scp]
    together = tasks.outputs(paths)
    for index, directory in enumerate(dirs):
        for a, b in zip(together[index], load_predictor(directory).outputs(paths)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    table = (recipe / "RESULTS.md").read_text()
    assert "| er | iemocap | wavlm_plus[tiny] | elp | sh [joint er+ic+kws] |" in table
    assert json.loads((exp / "results.json").read_text())["benchmark"] == "er+ic+kws"


@pytest.mark.slow
def test_recipe_resumes_after_a_kill_as_if_uninterrupted(prepared):
    recipe = prepared
    common = ["--stage", "3", "--stop_stage", "3", *TINY, "--method", "el"]
    hparams = ["--", "--number_of_epochs", "2", "--ckpt_interval_steps", "5"]
    run(recipe, *common, "--tag", "straight", *hparams)
    save = recipe / "exp" / "resumed" / "save"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(["./run.sh", *common, "--tag", "resumed", *hparams], cwd=recipe, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    while time.time() < deadline and not any("intra" in (c / "CKPT.yaml").read_text().lower()
                                               for c in save.glob("CKPT+*") if (c / "CKPT.yaml").exists()):
        assert process.poll() is None, "training ended before an intra-epoch checkpoint was written"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (recipe / "exp" / "resumed" / "train_stats.json").exists()
    assert "Loading a checkpoint" in run(recipe, *common, "--tag", "resumed", *hparams)
    for name in NAMES:
        straight = learnable(recipe / "exp" / "straight" / name / "adapters")
        resumed = learnable(recipe / "exp" / "resumed" / name / "adapters")
        assert straight.keys() == resumed.keys()
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), f"{name}: resumed weights differ"
    logs = [(recipe / "exp" / tag / "train_log.txt").read_text() for tag in ("straight", "resumed")]
    assert [line.split(" - ", 1)[1] for line in logs[0].splitlines()] == \
        [line.split(" - ", 1)[1] for line in logs[1].splitlines()]


def test_the_running_train_loss_is_shown_from_the_first_batch(checkpoint):
    """The progress bar's ``train_loss`` (what ``update_average`` returns) is the mean of the batch losses so far
    at every batch on the CPU, not 0 until the training guard's first check."""
    shared = backbone_of(checkpoint)
    hparams = classification_tasks(shared, "el", ("e",))
    brain = JointBrain(modules=joint_modules(hparams), opt_class=hparams["opt_class"], hparams=hparams,
                       run_opts={"device": "cpu", "noprogressbar": True})
    losses, shown = [], []
    update_average = brain.update_average

    def spy(loss, avg_loss):
        losses.append(float(loss))
        shown.append(float(update_average(loss, avg_loss)))
        return shown[-1]

    brain.update_average = spy
    per_task = [[item for t, item in items() if t == task] for task in range(len(NAMES))]
    data = TaskConcatDataset(per_task)
    brain.fit(range(1), data, train_loader_kwargs={"batch_sampler": [[0, 2], [1, 3, 4], [0, 4], [2, 3]],
                                                   "collate_fn": data.collate})
    assert len(shown) == 4 and all(value > 0 for value in shown)
    for step, value in enumerate(shown, start=1):
        assert value == pytest.approx(sum(losses[:step]) / step, rel=1e-5)


def test_stage_0_failure_names_the_members_command_with_its_data_root(tmp_path):
    """A member that fails to prepare from a --data_roots entry: the command to rerun by hand keeps that data root
    (without it, the member recipe would build its mini corpus instead)."""
    recipe = tmp_path / "egs" / "multitask" / "er_ic_kws"
    shutil.copytree(RECIPE / "conf", recipe / "conf")
    shutil.copy2(RECIPE / "run.sh", recipe / "run.sh")
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    missing = tmp_path / "no_such_corpus"
    env = {**{k: v for k, v in os.environ.items() if k != "ELP_CALLER_PWD"}, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["./run.sh", "--stop_stage", "0", "--data_roots", f"iemocap={missing}"], cwd=recipe,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "ERROR: preparing iemocap/er failed: run its stages 0-2 by hand" in last
    assert last.endswith(f"(cd ../../iemocap/er && ./run.sh --stop_stage 2 --data_root {missing})"), last


def test_bad_hparam_overrides_of_the_joint_recipe_are_one_line_errors():
    """An override that is not valid YAML names its option, the parser's problem and the fix; a misspelt hparam
    gets the closest name instead of a list of every hparam."""
    def driver(*args):
        return subprocess.run([sys.executable, str(ROOT / "recipes" / "train_multitask.py"), "data-dirs",
                               "conf/joint.yaml", *args], cwd=RECIPE, capture_output=True, text=True, timeout=120)

    result = driver("--tasks", "{er:{mix_weight:2.0}}")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("ERROR: --tasks {er:{mix_weight:2.0}}: not valid YAML (expected ',' or '}', "
                                    "but got '{' at column 5 of the value)")
    assert result.stderr.strip().endswith('put a space after each colon: --tasks "{er: {mix_weight: 2.0}}"')
    result = driver("--tasks", "{er: {mix_weight:2.0}}")  # valid YAML, but the key 'mix_weight:2.0' without a value
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("ERROR: --tasks {er: {mix_weight:2.0}}: reads 'mix_weight:2.0' as one key")
    result = driver("--mix_temprature", "2")
    assert result.returncode == 1
    assert result.stderr.strip() == ("ERROR: conf/joint.yaml: no hparam named mix_temprature "
                                     "(did you mean mix_temperature?)")
