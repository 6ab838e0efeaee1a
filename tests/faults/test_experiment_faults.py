"""Fault injection on experiments: broken checkpoints, changed hparams, concurrent runs, missing
models, foreign or malformed exports, non-finite batches, clipping. Each probe asserts either a
one-line error naming the culprit and the fix, or that the recovered state is exactly right."""

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
import speechbrain as sb
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.checkpoints import Checkpointer

from elp.core.backbones import load_backbone
from elp.train.brains.guards import NonFiniteGuard, NonFiniteTrainingError, clip_all_groups
from elp.train.checkpoints import AtomicCheckpointer, RNGState, TrainableState
from elp.train.experiment import (ExperimentChangedError, ExperimentGuard, ExperimentLock, ExperimentLockedError,
                            NoTrainedModelError, check_hparams, require_trained_model)
from elp.core.export import (CONFIG_FILE, WEIGHTS_FILE, AdapterFileError, AdapterMismatchError, AdapterNotFoundError,
                        architecture_fingerprint, load_adapters, save_adapters)
from elp.core.heads import PooledClassifier
from elp.core.model import AdaptedSSL

OPTIONS = dict(l_dim=16, e_dim=8, prompt_frames=3)


def one_line(error) -> str:
    text = str(error.value if hasattr(error, "value") else error)
    assert "\n" not in text, text
    return text


def build(checkpoints, name="wavlm", method="elp", seed=0):
    torch.manual_seed(seed)
    model = AdaptedSSL(load_backbone(name, source=str(checkpoints[name])), method, **OPTIONS)
    return model, PooledClassifier(model.output_dim, 3, hidden_dim=8)


def snapshot(*modules):
    return [t.detach().clone() for m in modules for t in m.state_dict().values()]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# ============================================================== checkpoints
def two_checkpoints(checkpoints, save_dir):
    """An experiment's save dir with an older good checkpoint and a newer one; returns
    (checkpointer, model, head, good state, newer checkpoint)."""
    model, head = build(checkpoints)
    checkpointer = AtomicCheckpointer(save_dir, {"model": TrainableState(model), "head": head, "rng": RNGState()})
    checkpointer.save_checkpoint(meta={"epoch": 1}, verbosity=logging.DEBUG)
    good = snapshot(model, head)
    with torch.no_grad():
        for p in list(model.learnable_parameters().values()) + list(head.parameters()):
            p.add_(1.0)
    time.sleep(0.01)
    newer = checkpointer.save_checkpoint(meta={"epoch": 2}, verbosity=logging.DEBUG)
    with torch.no_grad():
        for p in list(model.learnable_parameters().values()) + list(head.parameters()):
            p.mul_(3.0)
    return checkpointer, model, head, good, newer


def test_zero_byte_model_file_after_ckpt_yaml_falls_back_to_previous(tiny_checkpoints, tmp_path, caplog):
    checkpointer, model, head, good, newer = two_checkpoints(tiny_checkpoints, tmp_path / "save")
    (newer.path / "model.ckpt").write_bytes(b"")  # killed while writing, by a non-atomic saver
    with caplog.at_level(logging.WARNING, logger="elp.train.checkpoints"):
        loaded = checkpointer.recover_if_possible()
    assert loaded.meta["epoch"] == 1
    assert same(snapshot(model, head), good)
    assert f"skipping checkpoint {newer.path.name}: model.ckpt is empty (0 bytes)" in caplog.text
    assert (newer.path.parent / f"broken+{newer.path.name}").is_dir()


def test_plain_speechbrain_checkpointer_dies_on_the_same_fault(tiny_checkpoints, tmp_path):
    """The 'before' of the probe above: SpeechBrain picks the broken checkpoint and dies."""
    _, model, head, _, newer = two_checkpoints(tiny_checkpoints, tmp_path / "save")
    (newer.path / "head.ckpt").write_bytes(b"")
    plain = Checkpointer(tmp_path / "save", {"head": head})
    with pytest.raises(Exception):
        plain.recover_if_possible()


def test_nan_checkpoint_is_skipped(tiny_checkpoints, tmp_path, caplog):
    checkpointer, model, head, good, newer = two_checkpoints(tiny_checkpoints, tmp_path / "save")
    state = load_file(newer.path / "model.ckpt")
    name = sorted(state)[0]
    state[name][0] = float("nan")
    from safetensors import safe_open

    with safe_open(str(newer.path / "model.ckpt"), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(state, str(newer.path / "model.ckpt"), metadata=metadata)
    with caplog.at_level(logging.WARNING, logger="elp.train.checkpoints"):
        loaded = checkpointer.recover_if_possible()
    assert loaded.meta["epoch"] == 1 and same(snapshot(model, head), good)
    assert f"model.ckpt has non-finite values in {name}" in caplog.text


def test_nan_optimizer_state_is_skipped(tmp_path, caplog):
    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(lin.parameters(), lr=0.1)
    checkpointer = AtomicCheckpointer(tmp_path, {"lin": lin, "optimizer": opt})
    lin(torch.ones(1, 2)).sum().backward()
    opt.step()
    good = checkpointer.save_checkpoint(verbosity=logging.DEBUG)
    opt.state[lin.weight]["exp_avg_sq"][0, 0] = float("inf")  # only the optimizer state is damaged
    time.sleep(0.01)
    checkpointer.save_checkpoint(verbosity=logging.DEBUG)
    with caplog.at_level(logging.WARNING, logger="elp.train.checkpoints"):
        assert checkpointer.find_checkpoint().path == good.path
    assert "optimizer.ckpt has non-finite values in state.0.exp_avg_sq" in caplog.text


def test_checkpoint_of_another_method_is_one_line(tiny_checkpoints, tmp_path):
    model, head = build(tiny_checkpoints, method="elp")
    AtomicCheckpointer(tmp_path, {"model": TrainableState(model)}).save_checkpoint(verbosity=logging.DEBUG)
    other, _ = build(tiny_checkpoints, method="lora")
    before = snapshot(other)
    with pytest.raises(ValueError) as err:
        AtomicCheckpointer(tmp_path, {"model": TrainableState(other)}).recover_if_possible()
    assert "holds method 'elp' but this model uses 'lora'" in one_line(err) and "new --tag" in one_line(err)
    assert same(snapshot(other), before)


# ============================================================== experiment guard
HPARAMS = {"method": "elp", "lr": {"head": 0.002, "e": 0.001}, "number_of_epochs": 2, "num_workers": 0,
           "seed": 1986}


def trained_exp(tmp_path) -> Path:
    exp = tmp_path / "exp" / "wavlm_elp"
    check_hparams(exp, HPARAMS)
    ckpt = exp / "save" / "CKPT+2024"
    ckpt.mkdir(parents=True)
    (ckpt / "CKPT.yaml").write_text("end-of-epoch: true\n")
    return exp


def test_changed_hparams_are_refused_naming_the_keys(tmp_path):
    exp = trained_exp(tmp_path)
    with pytest.raises(ExperimentChangedError) as err:
        check_hparams(exp, {**HPARAMS, "lr": {"head": 0.01, "e": 0.001}, "method": "el"})
    text = one_line(err)
    assert "lr.head 0.002 -> 0.01" in text and "method elp -> el" in text
    assert "--tag" in text and "--restart" in text and "lr.e" not in text


def test_a_record_of_an_earlier_release_is_refused_in_one_line_with_the_conversion(tmp_path):
    exp = trained_exp(tmp_path)
    record = exp / "hparams_record.json"
    old = json.loads(record.read_text())
    old.pop("layout")  # what an earlier release wrote
    old["hparams"]["elp.model.!new:elp.model.AdaptedSSL.e_dim"] = 256
    record.write_text(json.dumps(old))
    with pytest.raises(ExperimentChangedError) as err:
        check_hparams(exp, HPARAMS)
    text = one_line(err)
    assert "earlier elp release" in text and f"delete {record}" in text and "--restart" in text
    record.unlink()  # the conversion the message names: the current hparams are adopted
    check_hparams(exp, HPARAMS)
    assert json.loads(record.read_text())["layout"] == 2


def test_ignored_keys_and_more_epochs_are_accepted(tmp_path):
    exp = trained_exp(tmp_path)
    check_hparams(exp, {**HPARAMS, "num_workers": 8, "device": "cuda:0"})
    check_hparams(exp, {**HPARAMS, "number_of_epochs": 5})  # train longer: resume
    with pytest.raises(ExperimentChangedError, match="number_of_epochs 5 -> 1"):
        check_hparams(exp, {**HPARAMS, "number_of_epochs": 1})


def test_a_run_option_added_after_the_record_counts_at_its_default(tmp_path):
    """A record written before a run option existed lacks its key: at its default the run
    resumes; set to anything else it is a change like any other."""
    exp = trained_exp(tmp_path)
    defaults = {"lr_scaling": "none", "cnn_cache_max_gb": None}
    check_hparams(exp, {**HPARAMS, **defaults}, defaults=defaults)
    with pytest.raises(ExperimentChangedError, match="lr_scaling <absent> -> none"):
        check_hparams(trained_exp(tmp_path / "no_defaults"), {**HPARAMS, **defaults})
    exp2 = trained_exp(tmp_path / "changed")
    with pytest.raises(ExperimentChangedError, match="lr_scaling <absent> -> linear"):
        check_hparams(exp2, {**HPARAMS, **defaults, "lr_scaling": "linear"}, defaults=defaults)


def test_more_epochs_continue_a_recipe_run(tmp_path):
    """A recipe's resolved YAML: the epoch counter's limit follows number_of_epochs."""
    exp = tmp_path / "exp"
    text = ("number_of_epochs: {n}\nlr: {{head: 0.002}}\n"
            "epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter\n  limit: {n}\n")
    check_hparams(exp, text.format(n=2))
    (exp / "adapters").mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (exp / "adapters" / name).write_text("x")
    check_hparams(exp, text.format(n=5))  # train longer: resume
    with pytest.raises(ExperimentChangedError, match="number_of_epochs 5 -> 3"):
        check_hparams(exp, text.format(n=3))


def test_restart_moves_the_old_run_aside(tmp_path):
    exp = trained_exp(tmp_path)
    check_hparams(exp, {**HPARAMS, "seed": 7}, restart=True)
    old = [p for p in exp.parent.iterdir() if p.name.startswith("wavlm_elp.old-")]
    assert len(old) == 1 and (old[0] / "save" / "CKPT+2024" / "CKPT.yaml").is_file()
    assert not (exp / "save").exists()
    assert json.loads((exp / "hparams_record.json").read_text())["hparams"]["seed"] == 7


def test_hparams_as_yaml_text(tmp_path):
    exp = tmp_path / "exp"
    text = "method: elp\nlr:\n  head: 0.002\nepoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter\n  limit: 2\n"
    check_hparams(exp, text)
    (exp / "adapters").mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (exp / "adapters" / name).write_text("x")
    with pytest.raises(ExperimentChangedError, match="epoch_counter.*limit 2 -> 1"):
        check_hparams(exp, text.replace("limit: 2", "limit: 1"))
    with pytest.raises(ExperimentChangedError, match="lr.head 0.002 -> 0.003"):
        check_hparams(exp, text.replace("head: 0.002", "head: 0.003"))


@pytest.mark.parametrize("code", ["ENOLCK", "ENOSYS", "EOPNOTSUPP"])
def test_a_file_system_without_flock_locks_with_a_pid_file(tmp_path, monkeypatch, caplog, code):
    import errno
    import fcntl

    def no_flock(fd, operation):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    exp = tmp_path / "exp" / "elp"
    with caplog.at_level(logging.WARNING), ExperimentLock(exp) as lock:
        assert lock.pid_path.is_file() and json.loads(lock.pid_path.read_text())["pid"] == os.getpid()
        assert "does not support flock" in caplog.text and str(lock.pid_path) in caplog.text
        with pytest.raises(ExperimentLockedError) as err:  # a second run is refused, not a false "in use"
            ExperimentLock(exp).acquire()
        assert f"pid {os.getpid()}" in one_line(err) and f"delete {lock.pid_path}" in one_line(err)
    assert not lock.pid_path.exists()


def test_a_pid_file_of_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    import errno
    import fcntl
    import socket

    monkeypatch.setattr(fcntl, "flock", lambda fd, op: (_ for _ in ()).throw(OSError(errno.ENOLCK, "no locks")))
    exp = tmp_path / "exp" / "elp"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = ExperimentLock(exp)
    exp.parent.mkdir(parents=True)
    lock.pid_path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": "x"}))
    with lock:
        assert json.loads(lock.pid_path.read_text())["pid"] == os.getpid()


def test_flock_held_elsewhere_is_still_reported_as_in_use(tmp_path, monkeypatch):
    import errno
    import fcntl

    monkeypatch.setattr(fcntl, "flock", lambda fd, op: (_ for _ in ()).throw(OSError(errno.EWOULDBLOCK, "busy")))
    with pytest.raises(ExperimentLockedError, match="is in use by"):
        ExperimentLock(tmp_path / "exp").acquire()
    assert not ExperimentLock(tmp_path / "exp").pid_path.exists()


def test_concurrent_run_on_one_tag_is_refused_naming_the_holder(tmp_path):
    exp = tmp_path / "exp" / "elp"
    code = ("import sys, time; from elp.train.experiment import ExperimentLock; "
            f"l = ExperimentLock({str(exp)!r}).acquire(); print('locked', flush=True); time.sleep(30)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExperimentLockedError) as err:
            with ExperimentGuard(exp, HPARAMS):
                pass
        text = one_line(err)
        assert f"pid {holder.pid}" in text and f"kill {holder.pid}" in text and "another --tag" in text
    finally:
        holder.kill()
        holder.wait()
    with ExperimentLock(exp):  # released when the holder died
        pass


def test_stage4_without_a_model_is_refused(tmp_path):
    exp = trained_exp(tmp_path)
    assert require_trained_model(exp)
    with pytest.raises(NoTrainedModelError) as err:
        require_trained_model(exp.parent / "wavlm_elpp")
    text = one_line(err)
    assert "wavlm_elpp has no trained model" in text and "existing --tag: wavlm_elp" in text


# ============================================================== exports
@pytest.fixture
def export(tiny_checkpoints, tmp_path):
    model, head = build(tiny_checkpoints, "wavlm", "elp", seed=1)
    return save_adapters(model, tmp_path / "adapters", head=head)


def fresh(tiny_checkpoints, name="wavlm"):
    model, head = build(tiny_checkpoints, name, "elp", seed=5)
    return model, head, snapshot(model, head)


def test_export_onto_another_pretrained_backbone_of_the_same_architecture(tiny_checkpoints, export):
    model, head, before = fresh(tiny_checkpoints, "wavlm_plus")
    saved = json.loads((export / CONFIG_FILE).read_text())
    assert saved["architecture"] == architecture_fingerprint(model)  # the old check could not tell them apart
    with pytest.raises(AdapterMismatchError) as err:
        load_adapters(model, export, head=head)
    text = one_line(err)
    assert saved["weights_sha256"][:12] in text and model.backbone.weights_sha256[:12] in text
    assert "backbone_source" in text
    assert same(snapshot(model, head), before)


def test_export_onto_another_checkpoint_of_the_same_name(tiny_checkpoints, export, tmp_path):
    from elp.testing import save_tiny_checkpoint

    other = save_tiny_checkpoint("wavlm", tmp_path / "other_wavlm", seed=42)  # another backbone_source
    model = AdaptedSSL(load_backbone("wavlm", source=str(other)), "elp", **OPTIONS)
    with pytest.raises(AdapterMismatchError, match="weights sha256"):
        load_adapters(model, export, head=PooledClassifier(model.output_dim, 3, hidden_dim=8))


@pytest.mark.parametrize("damage, culprit", [
    (lambda d: (d / CONFIG_FILE).write_text("{not json"), "adapters.json is not valid JSON"),
    (lambda d: (d / CONFIG_FILE).write_text("[1, 2]"), "holds a JSON list, not an object"),
    (lambda d: (d / CONFIG_FILE).write_bytes(b"\xff\xfe{"), "adapters.json is not UTF-8"),
    (lambda d: _edit_json(d, lambda c: c.pop("method")), "lacks the field 'method'"),
    (lambda d: _edit_json(d, lambda c: c.update(options="l_dim=16")), "field 'options' must be dict"),
    (lambda d: _edit_json(d, lambda c: c.update(format_version=99)), "format_version 99"),
    (lambda d: (d / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage"), "not a readable safetensors"),
    (lambda d: (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:100]), "not a readable safetensors"),
    (lambda d: (d / WEIGHTS_FILE).unlink(), "adapters.safetensors not found"),
])
def test_malformed_export_is_one_line_and_touches_nothing(tiny_checkpoints, export, damage, culprit):
    damage(export)
    model, head, before = fresh(tiny_checkpoints)
    with pytest.raises((AdapterFileError, AdapterNotFoundError)) as err:
        load_adapters(model, export, head=head)
    assert culprit in one_line(err) and str(export) in one_line(err)
    assert same(snapshot(model, head), before)


def _edit_json(directory, change):
    config = json.loads((directory / CONFIG_FILE).read_text())
    change(config)
    (directory / CONFIG_FILE).write_text(json.dumps(config))


def _edit_tensors(directory, change):
    state = load_file(directory / WEIGHTS_FILE)
    change(state)
    save_file(state, str(directory / WEIGHTS_FILE))


def test_missing_tensor_names_it(tiny_checkpoints, export):
    victim = sorted(k for k in load_file(export / WEIGHTS_FILE) if k.startswith("model."))[-1]
    _edit_tensors(export, lambda s: s.pop(victim))
    model, head, before = fresh(tiny_checkpoints)
    with pytest.raises(AdapterMismatchError) as err:
        load_adapters(model, export, head=head)
    assert f"tensors missing [{victim}]" in one_line(err)
    assert same(snapshot(model, head), before)


def test_wrong_shape_leaves_the_model_untouched(tiny_checkpoints, export):
    # the LAST tensor is the bad one: a loader copying as it goes would have overwritten the rest
    names = sorted(load_file(export / WEIGHTS_FILE))
    victim = names[-1]
    _edit_tensors(export, lambda s: s.update({victim: torch.zeros(*s[victim].shape[:-1], s[victim].shape[-1] + 1)}))
    model, head, before = fresh(tiny_checkpoints)
    with pytest.raises(AdapterMismatchError) as err:
        load_adapters(model, export, head=head)
    assert f"tensor {victim!r} has shape" in one_line(err)
    assert same(snapshot(model, head), before)


def test_nan_export_is_refused(tiny_checkpoints, export):
    victim = sorted(load_file(export / WEIGHTS_FILE))[0]
    _edit_tensors(export, lambda s: s[victim].view(-1).__setitem__(0, float("nan")))
    model, head, before = fresh(tiny_checkpoints)
    with pytest.raises(AdapterMismatchError, match=f"{victim}.*NaN"):
        load_adapters(model, export, head=head)
    assert same(snapshot(model, head), before)


def test_export_files_are_world_readable_and_replaced_whole(tiny_checkpoints, export):
    old_mask = os.umask(0o022)
    try:
        model, head = build(tiny_checkpoints, "wavlm", "elp", seed=3)
        (export / "stale.txt").write_text("old")
        save_adapters(model, export, head=head)
    finally:
        os.umask(old_mask)
    assert sorted(p.name for p in export.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        assert stat.S_IMODE((export / name).stat().st_mode) == 0o644
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".adapters")]


# ============================================================== training guards
class TinyBrain(NonFiniteGuard, sb.Brain):
    def compute_forward(self, batch, stage):
        return self.modules.net(batch.x.data)

    def compute_objectives(self, out, batch, stage):
        return (out - batch.y.data).pow(2).mean()


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.b(self.a(x))


def make_brain(tmp_path, patience=3, max_grad_norm=5.0):
    torch.manual_seed(0)
    net = TwoLayers()

    def opt_class(_params):  # one group per layer, like elp's per-adapter-kind groups
        return torch.optim.SGD([{"params": net.a.parameters()}, {"params": net.b.parameters()}], lr=0.1)

    checkpointer = AtomicCheckpointer(tmp_path / "save", {"net": net})
    return TinyBrain({"net": net}, opt_class, run_opts={"nonfinite_patience": patience, "max_grad_norm": max_grad_norm},
                     checkpointer=checkpointer)


def batches(spec):
    """spec: list of (ids, bad) -> a loader of PaddedBatches; bad batches hold a NaN input."""
    out = []
    for ids, bad in spec:
        rows = []
        for utt in ids:
            x = torch.ones(3)
            if bad:
                x[0] = float("nan")
            rows.append({"id": utt, "x": x, "y": torch.ones(1)})
        out.append(PaddedBatch(rows))
    return torch.utils.data.DataLoader(out, batch_size=None, collate_fn=lambda b: b)


def test_nan_batch_is_skipped_naming_its_utterances(tmp_path, caplog):
    brain = make_brain(tmp_path)
    brain.init_optimizers()
    before = snapshot(brain.modules)
    brain.step = 1
    with caplog.at_level(logging.WARNING, logger="elp.train.brains.guards"):
        loss = brain.fit_batch(next(iter(batches([(["spk1_utt7", "spk2_utt3"], True)]))))
    assert same(snapshot(brain.modules), before)
    assert all(p.grad is None or not p.grad.any() for p in brain.modules.parameters())
    assert brain.skipped_utterances == ["spk1_utt7", "spk2_utt3"]
    assert "spk1_utt7, spk2_utt3" in caplog.text and "non-finite loss" in caplog.text
    assert torch.isnan(loss)


def test_a_skipped_batch_does_not_change_the_training_result(tmp_path):
    clean = make_brain(tmp_path / "a")
    clean.fit(range(1), batches([(["u1"], False), (["u2"], False)]), None)
    with_nan = make_brain(tmp_path / "b")
    with_nan.fit(range(1), batches([(["u1"], False), (["bad"], True), (["u2"], False)]), None)
    assert same(snapshot(with_nan.modules), snapshot(clean.modules))
    assert with_nan.skipped_utterances == ["bad"]


def test_a_run_of_nan_batches_stops_without_saving(tmp_path, caplog):
    brain = make_brain(tmp_path, patience=2)
    brain.ckpt_interval_steps = 1  # would save after every batch
    data = batches([(["ok1"], False), (["bad1", "bad2"], True), (["bad3"], True), (["ok2"], False)])
    with caplog.at_level(logging.DEBUG), pytest.raises(NonFiniteTrainingError) as err:
        brain.fit(range(1), data, None)
    assert caplog.text.count("Saved an intra-epoch checkpoint") == 1  # after ok1 only
    text = one_line(err)
    assert "2 batches in a row" in text and "bad1, bad2, bad3" in text
    assert "audio" in text and "learning rate" in text
    assert "ok1" not in text
    saved = brain.checkpointer.list_checkpoints()
    assert len(saved) == 1 and saved[0].meta["end-of-epoch"] is False
    clean = make_brain(tmp_path / "clean")
    clean.fit(range(1), batches([(["ok1"], False)]), None)
    recovered = TwoLayers()
    recovered.load_state_dict(torch.load(saved[0].paramfiles["net"]))
    assert same(snapshot(recovered), snapshot(clean.modules.net))  # the state after ok1, saved once


def test_update_that_makes_weights_non_finite_stops(tmp_path):
    brain = make_brain(tmp_path, max_grad_norm=0)
    brain.init_optimizers()
    for group in brain.optimizer.param_groups:
        group["lr"] = 1e38
    brain.step = 1
    rows = [{"id": "loud", "x": torch.full((3,), 1e3), "y": torch.zeros(1)}]
    with pytest.raises(NonFiniteTrainingError, match=r"batch \(loud\) made parameters non-finite.*learning rate"):
        brain.fit_batch(PaddedBatch(rows))


def test_speechbrain_clips_only_the_first_group_and_the_guard_clips_all(tmp_path):
    def grads_after_step(brain_class):
        torch.manual_seed(0)
        net = TwoLayers()

        def opt_class(_params):
            return torch.optim.SGD([{"params": net.a.parameters()}, {"params": net.b.parameters()}], lr=0.0)

        brain = brain_class({"net": net}, opt_class, run_opts={"max_grad_norm": 1.0})
        brain.init_optimizers()
        for p in net.parameters():
            p.grad = torch.full_like(p, 10.0)
        seen = {}
        original = brain.optimizer.step

        def spy(*a, **k):
            seen["norm_a"] = torch.cat([p.grad.reshape(-1) for p in net.a.parameters()]).norm().item()
            seen["norm_b"] = torch.cat([p.grad.reshape(-1) for p in net.b.parameters()]).norm().item()
            return original(*a, **k)

        brain.optimizer.step = spy
        brain.optimizers_step()
        return seen

    class PlainBrain(sb.Brain):
        pass

    plain = grads_after_step(PlainBrain)
    assert plain["norm_a"] == pytest.approx(1.0) and plain["norm_b"] == pytest.approx(20.0)  # group 1 unclipped
    guarded = grads_after_step(TinyBrain)
    assert (guarded["norm_a"] ** 2 + guarded["norm_b"] ** 2) ** 0.5 == pytest.approx(1.0)
    assert guarded["norm_b"] / guarded["norm_a"] == pytest.approx(20.0 / (10.0 * 12 ** 0.5))


def test_clip_all_groups_bounds_the_global_norm():
    params = [torch.nn.Parameter(torch.zeros(4)) for _ in range(3)]
    opt = torch.optim.Adam([{"params": [params[0]]}, {"params": params[1:]}])
    for i, p in enumerate(params):
        p.grad = torch.full((4,), float(i + 1))
    before = clip_all_groups([opt], 0.5)
    assert float(before) == pytest.approx((4 * (1 + 4 + 9)) ** 0.5)
    assert torch.cat([p.grad for p in params]).norm().item() == pytest.approx(0.5)
