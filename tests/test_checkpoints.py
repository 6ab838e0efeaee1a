"""Checkpoints: only what trains, identity-checked, complete-or-absent, exact resume (RNG included)."""

import logging
import random
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from speechbrain.utils.epoch_loop import EpochCounter

from elp.core.backbones import load_backbone
from elp.train.checkpoints import AtomicCheckpointer, CheckpointMismatchError, RNGState, TrainableState
from elp.core.export import save_adapters
from elp.core.heads import PooledClassifier
from elp.core.model import AdaptedSSL

OPTIONS = dict(l_dim=16, e_dim=8, prompt_frames=3, lora_rank=2, prefix_frames=2)


def build(checkpoints, name="wavlm", method="elp", seed=0, **options):
    torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)  # what a recipe's seed does
    model = AdaptedSSL(load_backbone(name, source=str(checkpoints[name])), method, **{**OPTIONS, **options})
    head = PooledClassifier(model.output_dim, 3, hidden_dim=8)
    return model, head


@pytest.mark.parametrize("method", ["elp", "full", "lora"])
def test_checkpoint_holds_only_learnable_tensors_and_round_trips(tiny_checkpoints, tmp_path, method):
    model, _ = build(tiny_checkpoints, method=method, seed=1)
    with torch.no_grad():  # "training" moves every learnable tensor (LoRA B and full's layers too)
        for param in model.learnable_parameters().values():
            param.add_(torch.randn_like(param))
    TrainableState(model).save(tmp_path / "model.ckpt")
    keys = set(load_file(tmp_path / "model.ckpt"))
    assert keys == set(model.learnable_parameters())
    assert not any(part in k for k in keys for part in ("feature_extractor", "feature_projection", "pos_conv"))
    if method == "full":  # the transformer trains, so it is stored
        assert any("attention.k_proj" in k for k in keys)
    else:
        backbone_params = {id(p) for p in model.parameter_groups().get("backbone", [])}
        assert not backbone_params and not any(".layers." in k and "layer_norm" not in k and "lora" not in k
                                               and "parametrizations" not in k for k in keys)

    fresh, _ = build(tiny_checkpoints, method=method, seed=2)
    assert not all(torch.equal(p, model.learnable_parameters()[n]) for n, p in fresh.learnable_parameters().items())
    TrainableState(fresh).load(tmp_path / "model.ckpt", True)
    for name, param in fresh.learnable_parameters().items():
        assert torch.equal(param, model.learnable_parameters()[name]), name


def test_checkpoint_is_much_smaller_than_the_module(tiny_checkpoints, tmp_path):
    model, head = build(tiny_checkpoints, method="elp")
    torch.save(model.state_dict(), tmp_path / "whole.ckpt")
    TrainableState(model).save(tmp_path / "model.ckpt")
    save_adapters(model, tmp_path / "export")
    size = lambda p: p.stat().st_size  # noqa: E731
    export = size(tmp_path / "export" / "adapters.safetensors") + size(tmp_path / "export" / "adapters.json")
    assert size(tmp_path / "model.ckpt") <= 1.1 * export
    assert size(tmp_path / "model.ckpt") < size(tmp_path / "whole.ckpt")


def test_checkpoint_refuses_other_backbone_weights_and_method(tiny_checkpoints, tmp_path):
    model, _ = build(tiny_checkpoints, "wavlm", "elp")
    TrainableState(model).save(tmp_path / "model.ckpt")
    other, _ = build(tiny_checkpoints, "wavlm_plus", "elp")  # same architecture, other weights
    before = {n: p.clone() for n, p in other.learnable_parameters().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        TrainableState(other).load(tmp_path / "model.ckpt", True)
    message = str(err.value)
    assert "\n" not in message
    assert model.backbone.weights_sha256[:12] in message and other.backbone.weights_sha256[:12] in message
    assert all(torch.equal(p, before[n]) for n, p in other.learnable_parameters().items())

    el, _ = build(tiny_checkpoints, "wavlm", "el")
    with pytest.raises(CheckpointMismatchError, match="holds method 'elp' but this model uses 'el'"):
        TrainableState(el).load(tmp_path / "model.ckpt", True)
    wider, _ = build(tiny_checkpoints, "wavlm", "elp", l_dim=8)
    with pytest.raises(CheckpointMismatchError, match="options differ: l_dim"):
        TrainableState(wider).load(tmp_path / "model.ckpt", True)


def test_whole_module_checkpoint_of_older_elp_is_refused_in_one_line(tiny_checkpoints, tmp_path):
    model, _ = build(tiny_checkpoints)
    torch.save(model.state_dict(), tmp_path / "model.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"model.ckpt: not a readable elp model checkpoint") as err:
        TrainableState(model).load(tmp_path / "model.ckpt", True)
    assert "\n" not in str(err.value)


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    RNGState().save(tmp_path / "rng.ckpt")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
                torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    RNGState().load(tmp_path / "rng.ckpt", True)
    got = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
           torch.rand(3).tolist())
    assert got == expected


# ------------------------------------------------------------------ kill / resume == uninterrupted
EPOCHS, STEPS = 3, 2


def train(checkpoints, save_dir, method, stop_after_epoch=None, seed=0, rng=True):
    """A Brain-free training loop with every source of randomness a recipe has: random crops
    (``random``), additive noise (numpy), shuffling (torch), dropout (``full`` keeps it)."""
    model, head = build(checkpoints, method=method, seed=seed)
    params = list(model.learnable_parameters().values()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    counter = EpochCounter(EPOCHS)
    recoverables = {"model": TrainableState(model), "head": head, "optimizer": optimizer, "counter": counter}
    if rng:
        recoverables["rng"] = RNGState()
    checkpointer = AtomicCheckpointer(save_dir, recoverables)
    checkpointer.recover_if_possible()
    data = torch.randn(4, 2400, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 1, 2, 1])
    model.train(), head.train()
    for epoch in counter:
        order = torch.randperm(4)
        for step in range(STEPS):
            index = order[2 * step:2 * step + 2]
            offset = random.randint(0, 800)
            wavs = data[index, offset:offset + 1600] + torch.from_numpy(np.random.normal(0, 0.01, (2, 1600))).float()
            optimizer.zero_grad()
            feats, mask = model(wavs)
            torch.nn.functional.cross_entropy(head(feats, mask), labels[index]).backward()
            optimizer.step()
        checkpointer.save_and_keep_only(meta={"epoch": epoch}, num_to_keep=1, verbosity=logging.DEBUG)
        if epoch == stop_after_epoch:
            return None  # "killed" after this checkpoint
    return {**{f"model.{n}": p.detach().clone() for n, p in model.learnable_parameters().items()},
            **{f"head.{n}": t.clone() for n, t in head.state_dict().items()}}


@pytest.mark.parametrize("method", ["elp", "full"])
def test_resume_after_kill_equals_uninterrupted(tiny_checkpoints, tmp_path, method):
    assert model_has_dropout(tiny_checkpoints) or method != "full"
    uninterrupted = train(tiny_checkpoints, tmp_path / "a", method)
    assert train(tiny_checkpoints, tmp_path / "b", method, stop_after_epoch=1) is None
    # a fresh process with another seed: adapters initialised differently before recovery
    resumed = train(tiny_checkpoints, tmp_path / "b", method, seed=77)
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name


def test_resume_without_rng_state_differs(tiny_checkpoints, tmp_path):
    """The RNG recoverable is what makes the resume exact (this test fails if it does nothing)."""
    uninterrupted = train(tiny_checkpoints, tmp_path / "a", "elp", rng=False)
    train(tiny_checkpoints, tmp_path / "b", "elp", stop_after_epoch=1, rng=False)
    resumed = train(tiny_checkpoints, tmp_path / "b", "elp", seed=77, rng=False)
    assert not all(torch.equal(resumed[n], uninterrupted[n]) for n in uninterrupted)


def model_has_dropout(checkpoints) -> bool:
    model, _ = build(checkpoints, method="full")
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


# ------------------------------------------------------------------ complete-or-absent
def test_killed_save_leaves_no_checkpoint_and_previous_one_recovers(tmp_path, caplog):
    lin = torch.nn.Linear(3, 3)
    checkpointer = AtomicCheckpointer(tmp_path, {"lin": lin})
    good = checkpointer.save_checkpoint(verbosity=logging.DEBUG)
    saved = lin.weight.detach().clone()

    class Killed(Exception):
        pass

    def dying_saver(obj, path):
        path.write_bytes(b"PK\x03\x04 partial")
        raise Killed

    with torch.no_grad():
        lin.weight.add_(1.0)
    checkpointer.custom_save_hooks["lin"] = dying_saver
    with pytest.raises(Killed):
        checkpointer.save_checkpoint()
    assert [c.path for c in checkpointer.list_checkpoints()] == [good.path]
    assert any(p.name.startswith(".tmp+CKPT") for p in tmp_path.iterdir())

    del checkpointer.custom_save_hooks["lin"]
    with caplog.at_level(logging.WARNING, logger="elp.train.checkpoints"):
        newer = checkpointer.save_checkpoint(verbosity=logging.DEBUG)
    assert "unfinished checkpoint save" in caplog.text
    assert not any(p.name.startswith(".tmp+") for p in tmp_path.iterdir())
    assert {c.path for c in checkpointer.list_checkpoints()} == {good.path, newer.path}
    checkpointer.load_checkpoint(good)
    assert torch.equal(lin.weight, saved)


# ------------------------------------------------------------------ validated on load, not after a save
def count_reads(monkeypatch):
    """Count the reads of checkpoint files (safetensors, torch.load) and the validations."""
    from elp.train import checkpoints

    counts = {"validations": 0, "reads": 0}
    validate, load, torch_load = checkpoints._checkpoint_problem, checkpoints.load_file, checkpoints.torch.load

    def counting_validate(*args, **kwargs):
        counts["validations"] += 1
        return validate(*args, **kwargs)

    def counting(read):
        def wrapper(*args, **kwargs):
            counts["reads"] += 1
            return read(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(checkpoints, "_checkpoint_problem", counting_validate)
    monkeypatch.setattr(checkpoints, "load_file", counting(load))
    monkeypatch.setattr(checkpoints.torch, "load", counting(torch_load))
    return counts


def test_saves_are_not_read_back_and_the_loaded_checkpoint_is_validated_once(tiny_checkpoints, tmp_path, monkeypatch):
    model, head = build(tiny_checkpoints, method="full")
    optimizer = torch.optim.Adam(list(model.learnable_parameters().values()) + list(head.parameters()))
    checkpointer = AtomicCheckpointer(tmp_path, {"model": TrainableState(model), "head": head, "optimizer": optimizer,
                                                 "rng": RNGState()})
    counts = count_reads(monkeypatch)
    for step in range(5):  # what intra-epoch saves do: save, then delete all but the newest
        checkpointer.save_and_keep_only(meta={"step": step}, end_of_epoch=False, num_to_keep=1,
                                        verbosity=logging.DEBUG)
    assert counts == {"validations": 0, "reads": 0}
    assert len(checkpointer.list_checkpoints()) == 1 and counts["reads"] == 0
    loaded = checkpointer.recover_if_possible()
    assert loaded.meta["step"] == 4 and counts["validations"] == 1
    checkpointer.find_checkpoint()
    assert counts["validations"] == 1  # cached until a file changes


def test_a_corrupt_latest_checkpoint_is_skipped_on_load_with_one_warning(tiny_checkpoints, tmp_path, caplog):
    model, head = build(tiny_checkpoints)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": TrainableState(model), "head": head, "rng": RNGState()})
    states = []
    for epoch in (1, 2, 3):
        with torch.no_grad():
            for p in model.learnable_parameters().values():
                p.add_(1.0)
        states.append({n: p.detach().clone() for n, p in model.learnable_parameters().items()})
        saved = checkpointer.save_checkpoint(meta={"epoch": epoch}, verbosity=logging.DEBUG)
        time.sleep(0.01)
    data = (saved.path / "model.ckpt").read_bytes()
    (saved.path / "model.ckpt").write_bytes(data[: len(data) // 2])  # a disk that lost the end of the file
    with torch.no_grad():
        for p in model.learnable_parameters().values():
            p.mul_(3.0)
    with caplog.at_level(logging.WARNING, logger="elp.train.checkpoints"):
        loaded = checkpointer.recover_if_possible()
        again = checkpointer.recover_if_possible()
    assert loaded.meta["epoch"] == 2 and again.meta["epoch"] == 2
    assert all(torch.equal(p, states[1][n]) for n, p in model.learnable_parameters().items())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"skipping checkpoint {saved.path.name}: model.ckpt is unreadable" in warnings[0]
    assert (tmp_path / f"broken+{saved.path.name}").is_dir() and not saved.path.exists()


def test_loading_a_broken_checkpoint_by_hand_is_one_line(tmp_path):
    lin = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(tmp_path, {"lin": lin})
    saved = checkpointer.save_checkpoint(verbosity=logging.DEBUG)
    (saved.path / "lin.ckpt").write_bytes(b"")
    before = lin.weight.detach().clone()
    with pytest.raises(CheckpointMismatchError, match=r"lin.ckpt is empty \(0 bytes\); delete it"):
        checkpointer.load_checkpoint(saved)
    assert torch.equal(lin.weight, before)


# ------------------------------------------------------------------ intervals
def test_checkpoint_intervals_resolve_per_device_and_refuse_both(tmp_path, monkeypatch):
    from recipe_fixtures import make_recipe

    from elp.runtime import UserError
    from elp.train import recipe as plumbing
    from elp.train.recipe import load_experiment

    def release_experiment_locks():  # what the end of the driver's process does
        while plumbing._HELD:
            plumbing._HELD.pop().__exit__(None, None, None)

    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    monkeypatch.setattr(plumbing, "require_usable_device", lambda device: None)  # "cuda:0" on a CPU machine
    base = ["conf/train.yaml", "--backbone_arch", "tiny", "--backbone", "wavlm", "--method", "el"]

    def intervals(*args):
        try:
            hparams, run_opts = load_experiment([*base, *args])
        finally:
            release_experiment_locks()
        given = {k: run_opts[k] for k in ("ckpt_interval_steps", "ckpt_interval_minutes") if k in run_opts.overridden_args}
        return {**{k: hparams[k] for k in ("ckpt_interval_steps", "ckpt_interval_minutes")}, **given}

    assert intervals("--device", "cpu", "--tag", "a") == {"ckpt_interval_steps": 50, "ckpt_interval_minutes": 0.0}
    assert intervals("--device", "cuda:0", "--tag", "b") == {"ckpt_interval_steps": 0, "ckpt_interval_minutes": 15.0}
    assert intervals("--device", "cuda:0", "--tag", "c", "--ckpt_interval_steps", "500") == \
        {"ckpt_interval_steps": 500, "ckpt_interval_minutes": 0.0}
    assert intervals("--device", "cpu", "--tag", "d", "--ckpt_interval_minutes", "5") == \
        {"ckpt_interval_steps": 0, "ckpt_interval_minutes": 5}
    with pytest.raises(UserError, match="ckpt_interval_steps \\(3\\) and ckpt_interval_minutes \\(5\\) are both set"):
        intervals("--device", "cpu", "--tag", "e", "--ckpt_interval_steps", "3", "--ckpt_interval_minutes", "5")
