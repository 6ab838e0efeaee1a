"""Training guards for SpeechBrain 1.1.2 Brains: non-finite batches and clipping of every group.

:class:`NonFiniteGuard` is a mixin placed before the Brain class::

    class ASRBrain(NonFiniteGuard, ELPBrain): ...

It replaces ``Brain.fit_batch`` / ``Brain.optimizers_step`` with a step that never waits for
the device: every decision about a batch is a flag on the device, and the host reads the flags
only at a *check*.

**Per batch (on the device, no host synchronisation, no collective):**

* A non-finite loss multiplies the backward pass by NaN, so the batch's gradients are
  non-finite, also on every other DDP process (through the gradient all-reduce): the
  processes agree on the step without a collective of their own.
* **Gradient clipping covers every parameter group of every optimizer** (SpeechBrain 1.1.2
  clips the first group only; docs/DESIGN.md): the total L2 norm over all parameters of all
  active optimizers is clipped to ``max_grad_norm`` (SpeechBrain's run option, default 5.0;
  ``0``/``None`` disables clipping).
* **Masked step**: the parameters and the optimizer's tensor state (Adam's moments) are
  copied on the device before the optimizer step; when the gradient norm or the updated
  parameters are non-finite, the step is undone (``torch.where`` puts the copies back).

**Checks** (one host synchronisation each): after the first batch of a training stage, then
every ``nonfinite_check_steps`` batches (an hparams key; default :data:`CHECK_STEPS` on an
accelerator and every batch on the CPU, where a check waits for nothing), before every
intra-epoch checkpoint, at the end of the training stage, and after each ``fit_batch`` called
outside SpeechBrain's ``fit`` loop. The progress bar's ``train_loss`` is the mean as of the last
check. A check

* logs every non-finite batch since the previous check with its utterance ids (``batch.id``)
  and the reason, and adds them to :attr:`NonFiniteGuard.skipped_utterances`;
* folds the batches' losses into the running training loss (``avg_train_loss``); a skipped
  batch is left out of the average;
* stops training with :class:`NonFiniteTrainingError` (a one-line message naming the
  utterances and the likely causes) after ``nonfinite_patience`` (SpeechBrain's run option,
  default 3) skipped optimizer steps in a row, or when an update made parameters non-finite
  (finite gradients but e.g. an absurd learning rate);
* refuses an intra-epoch checkpoint right after a skipped step (the next step saves).

**What holds between checks.** A non-finite batch changes neither the weights nor the
optimizer's tensor state; the batches after it train normally. Its warning, its exclusion from
the loss average and the patience error come at the next check, at most ``nonfinite_check_steps``
batches later and always before a checkpoint is written: a checkpoint never holds the update of
a non-finite step, and the error propagates out of ``fit`` before any save, so the last
checkpoint on disk stays the last good one. Details: optimizer step counters kept on the host
(``torch.optim.Adam`` keeps ``step`` on the CPU for GPU parameters) advance with a masked step
and are put back at the check; optimizer state that a masked first step created starts from
zeros; with gradient accumulation a non-finite batch voids the optimizer step it belongs to;
the learning-rate schedule advances on a masked step. The price is one copy of the trainable
tensors and their optimizer state on the device (about 1.1 GB for ``full`` on a base-size
backbone with Adam).

Under fp16 with a GradScaler, non-finite gradients are the scaler's business (it skips the step
and lowers the scale), so only the loss (agreed over DDP processes by an all-reduce on the
device) and the parameters count then.

Examples
--------
>>> import speechbrain as sb
>>> class Brain(NonFiniteGuard, sb.Brain):
...     def compute_forward(self, batch, stage):
...         return self.modules.lin(batch.x.data)
...     def compute_objectives(self, out, batch, stage):
...         return out.pow(2).mean()
>>> brain = Brain({"lin": torch.nn.Linear(2, 1)}, lambda p: torch.optim.SGD(p, lr=0.1))
>>> brain.init_optimizers()
>>> from speechbrain.dataio.batch import PaddedBatch
>>> batch = PaddedBatch([{"id": "utt_nan", "x": torch.tensor([float("nan"), 1.0])}])
>>> before = brain.modules.lin.weight.clone()
>>> brain.step = 1; loss = brain.fit_batch(batch)
>>> torch.equal(brain.modules.lin.weight, before), brain.skipped_utterances
(True, ['utt_nan'])
"""

from __future__ import annotations

import logging
import math

import speechbrain as sb
import torch

from elp.runtime import UserError, distributed_rank_world

logger = logging.getLogger(__name__)

#: How many utterance ids an error message lists before "...".
MAX_IDS_IN_MESSAGE = 8
#: Batches between two checks of the device flags on an accelerator (hparams
#: ``nonfinite_check_steps``; on the CPU every batch is checked).
CHECK_STEPS = 100

# the bits of a batch's flags
LOSS = 1  # this batch's loss is non-finite (this process)
GRADS = 2  # the optimizer step's gradient norm is non-finite (every process)
PARAMS = 4  # the optimizer step made parameters non-finite (every process)
AGREED_LOSS = 8  # fp16: a loss of the step's batches was non-finite on some process
MASKED = GRADS | PARAMS | AGREED_LOSS


class NonFiniteTrainingError(UserError, RuntimeError):
    """Training stopped: batches kept producing non-finite losses, gradients or parameters."""


def _format_ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:MAX_IDS_IN_MESSAGE])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > MAX_IDS_IN_MESSAGE else "")


def batch_ids(batch, step: int | None = None) -> list[str]:
    """The utterance ids of a batch (``batch.id``), or ``["batch <step>"]`` without ids.

    ``batch`` is a SpeechBrain ``PaddedBatch`` or a dict with an ``"id"`` entry.

    Examples
    --------
    >>> batch_ids({"id": ["u1", "u2"]}), batch_ids({}, step=7)
    (['u1', 'u2'], ['batch 7'])
    """
    ids = getattr(batch, "id", None)
    if ids is None and isinstance(batch, dict):
        ids = batch.get("id")
    if ids is None:
        return [f"batch {step}"]
    return [str(i) for i in ids]


def all_parameters(optimizers) -> list[torch.nn.Parameter]:
    """Every distinct parameter of every group of the given optimizers (in order).

    Examples
    --------
    >>> a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(2))
    >>> len(all_parameters([torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=1.0)]))
    2
    """
    seen, params = set(), []
    for opt in optimizers:
        for group in opt.param_groups:
            for param in group["params"]:
                if id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
    return params


def clip_each_unit(units, max_norm: float | None) -> torch.Tensor:
    """Clip the total L2 gradient norm of each unit (a list of parameters) to ``max_norm`` on its own.

    Returns the norm over every unit together, before clipping (NaN/inf when a gradient is
    non-finite; the host does not wait for it). Joint training clips each task's own groups as
    one unit, so a task's step does not depend on the other tasks' gradients.

    Examples
    --------
    >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    >>> a.grad, b.grad = torch.tensor([3.0]), torch.tensor([400.0])
    >>> round(float(clip_each_unit([[a], [b]], 5.0)), 2), a.grad.tolist(), round(b.grad.item(), 4)
    (400.01, [3.0], 5.0)
    """
    norms = [_clip(unit, max_norm) for unit in units if unit]
    if not norms:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


def _clip(params, max_norm: float | None) -> torch.Tensor:
    """Clip the total L2 norm of the gradients of ``params`` (None, 0 or inf: only measure it)."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    limit = float(max_norm) if max_norm and math.isfinite(float(max_norm)) else float("inf")
    return torch.nn.utils.clip_grad_norm_(grads, limit)


def clip_all_groups(optimizers, max_norm: float | None) -> torch.Tensor:
    """Clip the total L2 gradient norm over all groups of all ``optimizers``; return the norm before.

    With ``max_norm`` None, 0 or inf nothing is clipped (the norm is only measured). The
    returned scalar (on the parameters' device) is NaN/inf when a gradient is non-finite; the
    host does not wait for it.

    Examples
    --------
    >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    >>> a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    >>> opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=1.0)
    >>> float(clip_all_groups([opt], 1.0)), round(float(torch.cat([a.grad, b.grad]).norm()), 4)
    (5.0, 1.0)
    """
    return _clip(all_parameters(optimizers), max_norm)


def parameters_finite(params: list[torch.Tensor]) -> torch.Tensor:
    """A device flag: True when every value of ``params`` is finite (one fused norm, no host wait).

    Values so large that their tensor's L2 norm overflows (beyond about 1e19 in float32) count
    as non-finite too: such weights have diverged.

    Examples
    --------
    >>> bool(parameters_finite([torch.ones(3), torch.zeros(2)])), bool(parameters_finite([torch.tensor([1.0, float("inf")])]))
    (True, False)
    """
    if not params:
        return torch.ones((), dtype=torch.bool)
    norms = torch._foreach_norm([p.detach() for p in params])
    return torch.isfinite(torch.stack([n.float() for n in norms]).sum())


def _agreed_any(flag: torch.Tensor) -> torch.Tensor:
    """``flag`` (a device bool) OR-ed over the DDP processes, by an all-reduce on the device."""
    if distributed_rank_world()[1] == 1:
        return flag
    value = flag.to(torch.int32)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return value > 0


class _StepUndo:
    """Device copies of trainable tensors taken before an optimizer step, put back when the step is bad."""

    def __init__(self):
        self.buffers: dict[tuple[int, str], torch.Tensor] = {}

    @staticmethod
    def live_tensors(optimizers, device) -> dict[tuple[int, str], torch.Tensor]:
        """(id(param), name) -> the parameter and its optimizer-state tensors on ``device``."""
        live = {}
        for opt in optimizers:
            for param in all_parameters([opt]):
                if param.device == device:
                    live[(id(param), "")] = param
                for name, value in opt.state.get(param, {}).items():
                    if isinstance(value, torch.Tensor) and value.device == device:
                        live[(id(param), name)] = value
        return live

    def take(self, live: dict[tuple[int, str], torch.Tensor]) -> None:
        """Copy ``live`` into the buffers (reused from step to step)."""
        buffers = {}
        for key, tensor in live.items():
            buffer = self.buffers.get(key)
            if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
                buffer = torch.empty_like(tensor, memory_format=torch.preserve_format)
            buffers[key] = buffer
        self.buffers = buffers
        if live:
            torch._foreach_copy_([buffers[k] for k in live], [t.detach() for t in live.values()])

    def undo_if(self, bad: torch.Tensor, live: dict[tuple[int, str], torch.Tensor]) -> None:
        """Where ``bad`` (device bool): put the copies back; state created by the step becomes zeros."""
        for key, tensor in live.items():
            buffer = self.buffers.get(key)
            if buffer is not None and buffer.shape == tensor.shape:
                tensor.detach().copy_(torch.where(bad, buffer, tensor.detach()))
            else:
                tensor.detach().copy_(torch.where(bad, torch.zeros_like(tensor), tensor.detach()))


class NonFiniteGuard:
    """Brain mixin: mask and name non-finite batches, stop after a run of them, clip every group.

    See the module docstring for what happens per batch, at a check, and between checks.

    Attributes
    ----------
    skipped_utterances
        Ids of every utterance in a skipped batch during this ``fit`` (for reports and tests);
        reading it checks the pending flags first.
    """

    # ------------------------------------------------------------------ bookkeeping
    def _guard_state(self):
        if not hasattr(self, "_skipped_ids"):
            self._skipped_ids: list[str] = []
            self._pending: list[tuple] = []  # (step, ids, flags [3] on the device, stepped, host counters)
            self._loss_total: torch.Tensor | None = None  # [2] on the device: loss sum, batches used
            self._last_flags: torch.Tensor | None = None
            self._in_fit_loop = False
            self._used_in_stage = 0
            self._first_step_of_stage = 1
            self._window_ids: list[str] = []  # batches since the last optimizer step
            self._window_reason = ""
            self._nonfinite_run: list[str] = []
            self._nonfinite_steps_in_run = 0
            self._last_step_masked = False
            self._step_loss_bad: torch.Tensor | None = None
            self._step_undo = _StepUndo()

    @property
    def skipped_utterances(self) -> list[str]:
        """Ids of the utterances of every skipped batch so far (checks the pending flags first)."""
        self._guard_state()
        self.check_nonfinite()
        return self._skipped_ids

    def _check_steps(self) -> int:
        hparams = getattr(self, "hparams", None)
        configured = getattr(hparams, "nonfinite_check_steps", None)
        if configured not in (None, "auto"):
            return max(int(configured), 1)
        return 1 if str(getattr(self, "device", "cpu")).startswith("cpu") else CHECK_STEPS

    def _patience(self) -> int:
        return max(int(getattr(self, "nonfinite_patience", 3) or 0), 1)

    def _largest_lr(self) -> float:
        lrs = [g.get("lr", 0.0) for opt in self._active_optimizers().values() for g in opt.param_groups]
        return max(lrs, default=float("nan"))

    def _active_optimizers(self) -> dict:
        if getattr(self, "optimizers_dict", None) is not None:
            return self.freeze_optimizers(self.optimizers_dict)
        if getattr(self, "opt_class", None) is not None and hasattr(self, "optimizer"):
            return {"optimizer": self.optimizer}
        return {}

    # ------------------------------------------------------------------ stage hooks
    def on_stage_start(self, stage, epoch=None):
        """Start deferring checks in the training stage, then SpeechBrain's ``on_stage_start``."""
        self._guard_state()
        self.check_nonfinite()
        self._in_fit_loop = stage == sb.Stage.TRAIN
        self._used_in_stage = int(getattr(self, "step", 0) or 0)  # a resumed epoch's batches so far
        self._first_step_of_stage = self._used_in_stage + 1
        return super().on_stage_start(stage, epoch)

    def checked_train_loss(self) -> float:
        """Check the pending flags and end the training stage; return its mean loss over the used batches."""
        self._guard_state()
        self.check_nonfinite()
        self._in_fit_loop = False
        return self.avg_train_loss

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """At the end of the training stage the loss is the checked mean (:meth:`checked_train_loss`)."""
        if stage == sb.Stage.TRAIN:
            stage_loss = self.checked_train_loss()
        return super().on_stage_end(stage, stage_loss, epoch)

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        """SpeechBrain's decision, after a check; never right after a skipped step.

        With ``ckpt_interval_minutes`` the clock (a broadcast under DDP) is read at check steps
        only (every ``nonfinite_check_steps`` batches).
        """
        self._guard_state()
        if (getattr(self, "ckpt_interval_minutes", 0) or 0) > 0 and self.step % self._check_steps():
            return False
        if not super()._should_save_intra_epoch_ckpt(last_ckpt_time, steps_since_ckpt):
            return False
        self.check_nonfinite()
        return not self._last_step_masked

    def update_average(self, loss, avg_loss):
        """Training: add the batch's loss to the device sums (a check folds them into the mean).

        Returns the mean as of the last check. In other stages SpeechBrain's running mean.
        """
        self._guard_state()
        flags, self._last_flags = self._last_flags, None
        if not self._in_fit_loop or flags is None:
            return super().update_average(loss, avg_loss)
        used = flags[0] == 0
        added = torch.stack([torch.where(used, flags[1], torch.zeros_like(flags[1])), used.float()])
        self._loss_total = added if self._loss_total is None else self._loss_total + added
        if self.step % self._check_steps() == 0 or self.step == self._first_step_of_stage:
            self.check_nonfinite()  # the first batch of the stage too: the bar has a loss at once
        return self.avg_train_loss

    # ------------------------------------------------------------------ training step
    def fit_batch(self, batch):
        """SpeechBrain 1.1.2's ``fit_batch`` with the device-side guard (see the module doc).

        Returns the detached loss on the device (NaN for a non-finite batch).
        """
        self._guard_state()
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)

        with self.no_sync(not should_step):
            with self.training_ctx:
                outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
            loss_bad = ~torch.isfinite(loss.detach()).all()
            poison = torch.where(loss_bad, float("nan"), 1.0).to(loss.dtype)  # 1.0 exactly for a finite loss
            scaled_loss = self.scaler.scale(loss * poison / self.grad_accumulation_factor)
            scaled_loss.backward()
        if self.scaler.is_enabled():
            self._step_loss_bad = loss_bad if self._step_loss_bad is None else self._step_loss_bad | loss_bad

        flags = loss_bad.to(torch.int32) * LOSS
        norm = torch.zeros((), device=loss.device)
        counters: list[torch.Tensor] = []
        if should_step:
            step_flags = self.optimizers_step()
            if step_flags is not None:
                flags = flags | step_flags.to(flags.device)
                norm = self._last_grad_norm.to(loss.device)
                counters = self._host_step_counters
        self.on_fit_batch_end(batch, outputs, loss, should_step)

        record = torch.stack([flags.float(), loss.detach().float().mean(), norm.float()])
        self._pending.append((getattr(self, "step", None), batch_ids(batch, getattr(self, "step", None)),
                              record, should_step, counters))
        self._last_flags = record
        if not self._in_fit_loop:
            self.check_nonfinite()
        return loss.detach()

    def clip_gradients(self, optimizers) -> torch.Tensor:
        """Clip the gradients of ``optimizers`` to ``max_grad_norm``; return the norm before clipping.

        One unit: the total norm over every group of every optimizer (:func:`clip_all_groups`).
        Joint training clips each task's groups on their own instead.
        """
        return clip_all_groups(optimizers, self.max_grad_norm)

    def optimizers_step(self):
        """Unscale, clip the total norm over every group of every optimizer, step; undo a bad step.

        Returns the step's flags (an int tensor on the device: 0, or :data:`GRADS` /
        :data:`PARAMS` / :data:`AGREED_LOSS` bits for a step that was undone), or None without
        an optimizer. The host never waits for the device here.
        """
        self._guard_state()
        optimizers = self._active_optimizers()
        self._host_step_counters = []
        if not optimizers:
            return None
        for opt in optimizers.values():
            self.scaler.unscale_(opt)
        norm = self.clip_gradients(list(optimizers.values()))
        device = norm.device
        flags = torch.zeros((), dtype=torch.int32, device=device)
        if not self.scaler.is_enabled():
            flags = flags | (~torch.isfinite(norm)).to(torch.int32) * GRADS
        elif self._step_loss_bad is not None:
            flags = flags | _agreed_any(self._step_loss_bad.to(device)).to(torch.int32) * AGREED_LOSS
        self._step_loss_bad = None
        params = all_parameters(optimizers.values())
        stepped = [p for p in params if p.grad is not None]
        undo = self._step_undo
        with torch.no_grad():
            undo.take(undo.live_tensors(optimizers.values(), device))
            for opt in optimizers.values():
                self.scaler.step(opt)
            self.scaler.update()
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            flags = flags | (~parameters_finite(params)).to(torch.int32) * PARAMS
            undo.undo_if((flags & MASKED) != 0, undo.live_tensors(optimizers.values(), device))
        if device.type != "cpu":  # step counters on the host: put back at the check if the step was undone
            self._host_step_counters = [opt.state[p]["step"] for opt in optimizers.values() for p in stepped
                                        if isinstance(opt.state.get(p, {}).get("step"), torch.Tensor)
                                        and opt.state[p]["step"].device.type == "cpu"]
        self._last_grad_norm = norm.detach()
        self.optimizer_step += 1
        return flags

    # ------------------------------------------------------------------ the check
    def check_nonfinite(self) -> None:
        """Read the pending device flags (one host synchronisation) and act on them.

        Logs each non-finite batch, updates ``avg_train_loss``, puts back host step counters of
        undone steps, and raises :class:`NonFiniteTrainingError` after ``nonfinite_patience``
        undone steps in a row or after an update that made parameters non-finite.
        """
        self._guard_state()
        pending, self._pending = self._pending, []
        total, self._loss_total = self._loss_total, None
        if not pending and total is None:
            return
        parts = [record for _, _, record, _, _ in pending] + ([total] if total is not None else [])
        values = torch.cat([part.reshape(-1).float() for part in parts]).tolist()  # the one host synchronisation
        if total is not None:
            loss_sum, used = values[-2], int(values[-1])
            if used:
                before = self._used_in_stage
                self.avg_train_loss = (float(self.avg_train_loss) * before + loss_sum) / (before + used)
                self._used_in_stage = before + used
        for index, (step, ids, _, stepped, counters) in enumerate(pending):
            flags, loss, norm = values[3 * index:3 * index + 3]
            self._on_checked_batch(step, ids, int(flags), loss, norm, stepped, counters)

    def _on_checked_batch(self, step, ids, flags, loss, norm, stepped, counters) -> None:
        self._window_ids.extend(ids)
        reason = ""
        if flags & (LOSS | AGREED_LOSS):
            reason = f"a non-finite loss ({loss})" if flags & LOSS else "a non-finite loss on another process"
        elif flags & GRADS:
            reason = f"non-finite gradients (total norm {norm})"
        if reason and not self._window_reason:
            self._window_reason = reason
        if flags:
            self._skipped_ids.extend(ids)
        if not stepped:
            if reason:
                logger.warning("batch %s (%s): %s; the optimizer step it belongs to is undone", step,
                               _format_ids(ids), reason)
            return
        masked = bool(flags & MASKED)
        window, window_reason = self._window_ids, self._window_reason or reason
        self._window_ids, self._window_reason = [], ""
        self._last_step_masked = masked
        if not masked:
            self._nonfinite_run, self._nonfinite_steps_in_run = [], 0
            return
        self.optimizer_step -= 1
        for counter in counters:
            counter.sub_(1)
        if flags & PARAMS and not flags & (GRADS | LOSS | AGREED_LOSS):
            raise NonFiniteTrainingError(
                f"training stopped without saving: the update of batch ({_format_ids(window)}) made parameters "
                f"non-finite; likely cause: a learning rate too large (largest lr {self._largest_lr():g}); lower it "
                "and restart the experiment")
        self._nonfinite_run.extend(window)
        self._nonfinite_steps_in_run += 1
        count, unit = self._nonfinite_steps_in_run, "batches" if self.grad_accumulation_factor == 1 else "optimizer steps"
        logger.warning("skipping batch %s (%s): %s; weights not updated (%d of %d allowed in a row)", step,
                       _format_ids(window), window_reason, count, self._patience())
        if count >= self._patience():
            raise NonFiniteTrainingError(
                f"training stopped without saving: {count} {unit} in a row had {window_reason.split(' (')[0]} "
                f"(utterances {_format_ids(self._nonfinite_run)}); likely causes: non-finite or corrupt audio in "
                f"these utterances (check them with stage 1's validation) or a learning rate too large "
                f"(largest lr {self._largest_lr():g}); fix and rerun to resume from the last good checkpoint")
