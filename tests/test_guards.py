"""The non-finite guard: masked steps on the device, checks before saves, no host sync per step."""

import itertools
import logging
import math
import sys
from types import SimpleNamespace

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from elp.train.brains import guards
from elp.train.brains.guards import NonFiniteGuard, NonFiniteTrainingError
from elp.train.checkpoints import AtomicCheckpointer


class TinyBrain(NonFiniteGuard, sb.Brain):
    """A linear regression; batches hold ``x`` [B, 3] and ``y`` [B, 1]."""

    def compute_forward(self, batch, stage):
        return self.modules.net(batch.x.data)

    def compute_objectives(self, out, batch, stage):
        return (out - batch.y.data).pow(2).mean()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        self.seen.append((self.step, len(self._skipped_ids)))  # what the host knew after each batch

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            stage_loss = self.checked_train_loss()
            self.final_loss = stage_loss


def make_brain(tmp_path, optimizer="sgd", patience=3, accumulation=1, check_steps=100, ckpt_steps=0, minutes=0,
               brain_class=None, lr=0.05, max_grad_norm=5.0):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))

    def opt_class(params):
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=lr)
        return torch.optim.SGD(params, lr=lr)

    run_opts = {"nonfinite_patience": patience, "grad_accumulation_factor": accumulation, "noprogressbar": True,
                "ckpt_interval_steps": ckpt_steps, "ckpt_interval_minutes": minutes, "max_grad_norm": max_grad_norm}
    checkpointer = AtomicCheckpointer(tmp_path / "save", {"net": net})
    brain = (brain_class or TinyBrain)({"net": net}, opt_class, hparams={"nonfinite_check_steps": check_steps},
                                       run_opts=run_opts, checkpointer=checkpointer)
    brain.seen = []
    return brain


def loader(spec, scale=1.0):
    """spec: list of (id, bad): one utterance per batch, its data a function of the digits of its id;
    a bad one holds a NaN input."""
    batches = []
    for utt, bad in spec:
        k = int("".join(c for c in utt if c.isdigit()))
        x = torch.linspace(-1.0, 1.0, 3) * (k + 1) / 8 * scale
        if bad:
            x[0] = float("nan")
        batches.append(PaddedBatch([{"id": utt, "x": x, "y": torch.ones(1) * k / 8}]))
    return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


def weights(brain):
    return [p.detach().clone() for p in brain.modules.net.parameters()]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_nan_at_step_k_is_caught_before_the_next_save_and_never_saved(tmp_path, caplog):
    spec = [("u1", False), ("u2", False), ("nan3", True), ("u4", False), ("u5", False), ("u6", False)]
    brain = make_brain(tmp_path / "a", ckpt_steps=4)  # saves after batch 4; checks every 100 batches
    with caplog.at_level(logging.DEBUG):
        brain.fit(range(1), loader(spec), None)
    # deferred: the host learnt of batch 3 at the check before the save at batch 4, not before
    assert brain.seen == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 1), (6, 1)]
    messages = [r.getMessage() for r in caplog.records]
    warning = next(i for i, m in enumerate(messages) if "skipping batch 3 (nan3)" in m)
    saved = next(i for i, m in enumerate(messages) if "Saved an intra-epoch checkpoint" in m)
    assert warning < saved and "a non-finite loss (nan)" in messages[warning]
    assert brain.skipped_utterances == ["nan3"]
    # the checkpoint after batch 4 holds the weights of batches 1, 2, 4: as if batch 3 had not been there
    clean = make_brain(tmp_path / "b", ckpt_steps=3)
    clean.fit(range(1), loader([s for s in spec if s[0] != "nan3"]), None)
    checkpoint = brain.checkpointer.find_checkpoint()
    clean_checkpoint = clean.checkpointer.find_checkpoint()
    saved_state = torch.load(checkpoint.paramfiles["net"])
    assert all(torch.equal(saved_state[k], v) for k, v in torch.load(clean_checkpoint.paramfiles["net"]).items())
    assert all(torch.isfinite(v).all() for v in saved_state.values())


def test_skipped_batches_leave_the_result_and_the_adam_state_as_without_them(tmp_path):
    spec = [("nan0", True), ("u1", False), ("u2", False), ("nan3", True), ("u4", False)]
    brain = make_brain(tmp_path / "a", optimizer="adam")
    brain.fit(range(1), loader(spec), None)
    clean = make_brain(tmp_path / "b", optimizer="adam")
    clean.fit(range(1), loader([s for s in spec if not s[1]]), None)
    assert same(weights(brain), weights(clean))
    for p, q in zip(brain.modules.net.parameters(), clean.modules.net.parameters()):
        got, want = brain.optimizer.state[p], clean.optimizer.state[q]
        assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)  # step, moments
    assert brain.optimizer_step == clean.optimizer_step == 3
    assert brain.skipped_utterances == ["nan0", "nan3"]


class LossRecording(TinyBrain):
    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        self.losses = getattr(self, "losses", []) + [float(loss.detach())]  # the test's own read of the device


def test_the_training_loss_is_the_mean_over_the_used_batches(tmp_path):
    spec = [("u1", False), ("nan2", True), ("u3", False), ("u4", False), ("u5", False)]
    brain = make_brain(tmp_path, check_steps=2, brain_class=LossRecording)
    brain.fit(range(1), loader(spec), None)
    used = [x for x in brain.losses if not math.isnan(x)]
    assert len(used) == 4 and brain.final_loss == pytest.approx(sum(used) / 4, rel=1e-6)


def test_a_nan_batch_voids_its_accumulated_step(tmp_path):
    spec = [("u1", False), ("nan2", True), ("u3", False), ("u4", False)]
    brain = make_brain(tmp_path / "a", accumulation=2)
    brain.fit(range(1), loader(spec), None)
    clean = make_brain(tmp_path / "b", accumulation=2)
    clean.fit(range(1), loader(spec[2:]), None)  # the same second step from the same start
    assert same(weights(brain), weights(clean))
    assert brain.skipped_utterances == ["nan2"] and brain.optimizer_step == 1


def test_a_run_of_nan_batches_stops_at_the_check_before_the_save(tmp_path):
    spec = [("u1", False), ("nan2", True), ("nan3", True), ("u4", False)]
    brain = make_brain(tmp_path, patience=2, ckpt_steps=3)
    with pytest.raises(NonFiniteTrainingError, match=r"2 batches in a row had a non-finite loss \(utterances nan2, nan3\)"):
        brain.fit(range(1), loader(spec), None)
    assert brain.seen == [(1, 0), (2, 0), (3, 0)]  # no check ran before the one that stopped
    assert brain.checkpointer.list_checkpoints() == []  # nothing was saved


def test_an_update_that_makes_weights_non_finite_is_undone_and_stops_at_the_check(tmp_path):
    brain = make_brain(tmp_path, check_steps=3, lr=1e38, max_grad_norm=0)
    before = weights(brain)
    with pytest.raises(NonFiniteTrainingError, match=r"batch \(u1\) made parameters non-finite.*learning rate"):
        brain.fit(range(1), loader([("u1", False), ("u2", False), ("u3", False), ("u4", False)], scale=1e3), None)
    assert brain.seen == [(1, 0)]  # found at the check after the stage's first batch
    assert same(weights(brain), before)  # its update was undone on the device


def test_minute_checkpoints_read_the_clock_at_check_steps(tmp_path, monkeypatch):
    clock = itertools.count(0, 100)  # each reading of SpeechBrain's clock: 100 s later
    monkeypatch.setattr(sb.core, "time", SimpleNamespace(time=lambda: float(next(clock))))
    brain = make_brain(tmp_path, minutes=1, check_steps=2)
    saves = []
    brain._save_intra_epoch_ckpt = lambda: saves.append(brain.step)
    brain.fit(range(1), loader([(f"u{i}", False) for i in range(1, 8)]), None)
    assert saves == [2, 4, 6]  # a minute passes between two readings, and the clock is read every 2 steps


SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def count_syncs(monkeypatch, source_file):
    """Patch the tensor methods that make the host wait for the device; count the calls made
    while a function of ``source_file`` is on the stack."""
    counts = {"n": 0}

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_code.co_filename == source_file:
                    counts["n"] += 1
                    break
                frame = frame.f_back
            return original(self, *args, **kwargs)

        return wrapper

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    return counts


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_normal_step_makes_no_host_sync(tmp_path, monkeypatch, accumulation):
    in_guard = count_syncs(monkeypatch, guards.__file__)
    totals = {}
    for batches in (4, 12):
        in_guard["n"] = 0
        brain = make_brain(tmp_path / str(batches), accumulation=accumulation)
        brain.fit(range(1), loader([(f"u{i}", False) for i in range(batches)]), None)
        totals[batches] = in_guard["n"]
    # the checks after the epoch's first batch and at its end, whatever the number of steps
    assert totals == {4: 2, 12: 2}


def syncs_of_a_fit(tmp_path, monkeypatch, batches, brain_class=None):
    """Syncs while this file is on the stack: the whole of ``fit`` (SpeechBrain's loop, the guard, the Brain)."""
    counts = count_syncs(monkeypatch, __file__)
    brain = make_brain(tmp_path / str(batches), brain_class=brain_class)
    brain.fit(range(1), loader([(f"u{i}", False) for i in range(batches)]), None)
    monkeypatch.undo()
    return counts["n"]


class SyncingBrain(TinyBrain):
    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        self.finite = bool(torch.isfinite(loss))  # what a per-step check does


def test_the_whole_training_loop_syncs_per_epoch_not_per_step(tmp_path, monkeypatch):
    assert syncs_of_a_fit(tmp_path, monkeypatch, 4) == syncs_of_a_fit(tmp_path, monkeypatch, 12)
    # the counter sees a read per step where there is one
    per_step = syncs_of_a_fit(tmp_path / "s", monkeypatch, 12, SyncingBrain) - \
        syncs_of_a_fit(tmp_path / "s", monkeypatch, 4, SyncingBrain)
    assert per_step == 8


def test_inside_the_fit_loop_a_batch_waits_for_the_check(tmp_path):
    brain = make_brain(tmp_path)
    brain.fit(range(1), loader([("u1", False)]), None)
    brain._in_fit_loop, brain.step = True, 1
    brain.fit_batch(loader([("nan2", True)]).dataset[0])
    assert len(brain._pending) == 1 and brain._skipped_ids == []
    brain.check_nonfinite()
    assert brain._pending == [] and brain._skipped_ids == ["nan2"]


@pytest.mark.parametrize("check_steps", [None, 100])
def test_the_progress_bar_shows_the_running_loss_from_the_first_batch(tmp_path, check_steps):
    """Without ``nonfinite_check_steps`` a CPU run checks every batch (a check waits for nothing there), so the
    bar's ``train_loss`` is the running mean throughout; with 100 it is the first batch's loss until the next
    check, never 0."""
    brain = make_brain(tmp_path, check_steps=check_steps, brain_class=LossRecording)
    shown, update_average = [], brain.update_average
    brain.update_average = lambda loss, avg: shown.append(update_average(loss, avg)) or shown[-1]
    brain.fit(range(1), loader([(f"u{i}", False) for i in range(1, 6)]), None)
    losses = brain.losses
    if check_steps is None:
        assert shown == pytest.approx([sum(losses[:k]) / k for k in range(1, 6)], rel=1e-6)
    else:
        assert shown == pytest.approx([losses[0]] * 5, rel=1e-6) and losses[0] > 0
