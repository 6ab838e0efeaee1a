"""Training guards for SpeechBrain 1.1.2 Brains: non-finite batches and clipping of every group.

:class:`NonFiniteGuard` is a mixin placed before the Brain class::

    class ASRBrain(NonFiniteGuard, ELPBrain): ...

What it changes in ``Brain.fit_batch`` / ``Brain.optimizers_step``:

* **Non-finite loss**: the batch's utterance ids (``batch.id``) are logged, no backward pass is
  run, nothing is updated. **Non-finite gradients** (total norm over every parameter of every
  optimizer is NaN/inf): logged with the ids, gradients zeroed, no optimizer step.
  A skipped batch leaves the weights, the optimizer state and the running training loss
  untouched (the average is over the batches that were used), and no intra-epoch checkpoint
  is written right after it.
* After ``nonfinite_patience`` (SpeechBrain's run option, default 3; settable in the hparams)
  consecutive skipped batches training stops with :class:`NonFiniteTrainingError`, a
  one-line message naming the utterances and the likely causes. The error propagates out of
  ``fit`` before any checkpoint is saved, so the last checkpoint on disk stays the last good one.
* **Parameters made non-finite by a step** (finite gradients but e.g. an absurd learning
  rate): training stops at once with :class:`NonFiniteTrainingError` (nothing is saved).
* **Gradient clipping covers every parameter group of every optimizer** (SpeechBrain 1.1.2
  clips the first group only; docs/DESIGN.md): the total L2 norm over all parameters of all
  active optimizers is clipped to ``max_grad_norm`` (SpeechBrain's run option, default 5.0;
  ``0``/``None`` disables clipping).

Under fp16 with a GradScaler, inf/NaN gradients are the scaler's business (it skips the step
and lowers the scale), so only the loss check and the clipping apply then. In DDP the
processes agree (all-reduce) on whether a batch is skipped, so they stay in step.

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


def clip_all_groups(optimizers, max_norm: float | None) -> torch.Tensor:
    """Clip the total L2 gradient norm over all groups of all ``optimizers``; return the norm before.

    With ``max_norm`` None, 0 or inf nothing is clipped (the norm is only measured). The
    returned scalar is NaN/inf when a gradient is non-finite.

    Examples
    --------
    >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    >>> a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    >>> opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=1.0)
    >>> float(clip_all_groups([opt], 1.0)), round(float(torch.cat([a.grad, b.grad]).norm()), 4)
    (5.0, 1.0)
    """
    grads = [p for p in all_parameters(optimizers) if p.grad is not None]
    if not grads:
        return torch.zeros(())
    limit = float(max_norm) if max_norm and math.isfinite(float(max_norm)) else float("inf")
    return torch.nn.utils.clip_grad_norm_(grads, limit)


def _agree_any(flag: bool, device) -> bool:
    """True when ``flag`` is True on any DDP process (``flag`` itself when not distributed)."""
    if distributed_rank_world()[1] == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(tensor)
    return bool(tensor.item() > 0)


class NonFiniteGuard:
    """Brain mixin: skip and name non-finite batches, stop after a run of them, clip every group.

    Attributes
    ----------
    skipped_utterances
        Ids of every utterance in a skipped batch during this ``fit`` (for reports and tests).
    """

    skipped_utterances: list[str]

    # ------------------------------------------------------------------ bookkeeping
    def _guard_state(self):
        if not hasattr(self, "skipped_utterances"):
            self.skipped_utterances = []
            self._nonfinite_run: list[str] = []
            self._skipped_in_stage = 0
            self._batch_skipped = False
            self._nonfinite_batches_in_run = 0
            self._last_batch_skipped = False

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        """No intra-epoch checkpoint right after a skipped batch (all processes agree on skips)."""
        self._guard_state()
        if self._last_batch_skipped:
            return False
        return super()._should_save_intra_epoch_ckpt(last_ckpt_time, steps_since_ckpt)

    def on_stage_start(self, stage, epoch=None):
        """Reset the per-stage skip counters, then SpeechBrain's ``on_stage_start``."""
        self._guard_state()
        self._skipped_in_stage = 0
        self._batch_skipped = False
        return super().on_stage_start(stage, epoch)

    def update_average(self, loss, avg_loss):
        """Running mean of the loss over the batches that were used (skipped ones excluded).

        ``avg_loss`` comes back unchanged after a skipped batch or a non-finite loss.
        """
        self._guard_state()
        if self._batch_skipped:
            self._batch_skipped = False
            return avg_loss
        count = max(self.step - self._skipped_in_stage, 1)
        if torch.isfinite(torch.as_tensor(loss)):
            avg_loss -= avg_loss / count
            avg_loss += float(loss) / count
        return avg_loss

    def _patience(self) -> int:
        return max(int(getattr(self, "nonfinite_patience", 3) or 0), 1)

    def _skip(self, batch, reason: str) -> torch.Tensor:
        """Record a skipped batch; raise after ``nonfinite_patience`` in a row."""
        ids = batch_ids(batch, getattr(self, "step", None))
        self.skipped_utterances.extend(ids)
        self._nonfinite_run.extend(ids)
        self._skipped_in_stage += 1
        self._batch_skipped = True
        self._last_batch_skipped = True
        run = self._nonfinite_run
        self._nonfinite_batches_in_run += 1
        count = self._nonfinite_batches_in_run
        logger.warning("skipping batch (%s): %s; weights not updated (%d of %d allowed in a row)",
                       _format_ids(ids), reason, count, self._patience())
        if count >= self._patience():
            raise NonFiniteTrainingError(
                f"training stopped without saving: {count} batches in a row had {reason.split(' (')[0]} "
                f"(utterances {_format_ids(run)}); likely causes: non-finite or corrupt audio in these "
                f"utterances (check them with stage 1's validation) or a learning rate too large "
                f"(largest lr {self._largest_lr():g}); fix and rerun to resume from the last good checkpoint")
        return torch.tensor(float("nan"))

    def _largest_lr(self) -> float:
        lrs = [g.get("lr", 0.0) for opt in self._active_optimizers().values() for g in opt.param_groups]
        return max(lrs, default=float("nan"))

    def _active_optimizers(self) -> dict:
        if getattr(self, "optimizers_dict", None) is not None:
            return self.freeze_optimizers(self.optimizers_dict)
        if getattr(self, "opt_class", None) is not None and hasattr(self, "optimizer"):
            return {"optimizer": self.optimizer}
        return {}

    # ------------------------------------------------------------------ training step
    def fit_batch(self, batch):
        """SpeechBrain 1.1.2's ``fit_batch`` with the non-finite checks (see the module doc).

        Returns the detached CPU loss (NaN for a skipped batch).
        """
        self._guard_state()
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)

        with self.no_sync(not should_step):
            with self.training_ctx:
                outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
            if _agree_any(not bool(torch.isfinite(loss.detach()).all()), self.device):
                value = float(loss.detach().float().reshape(-1)[0]) if loss.numel() else float("nan")
                return self._skip(batch, f"a non-finite loss ({value})")
            scaled_loss = self.scaler.scale(loss / self.grad_accumulation_factor)
            scaled_loss.backward()

        if should_step:
            problem = self.optimizers_step()
            if problem is not None:
                return self._skip(batch, problem)
            self._check_parameters(batch)

        self.on_fit_batch_end(batch, outputs, loss, should_step)
        self._last_batch_skipped = False
        self._nonfinite_run = []
        self._nonfinite_batches_in_run = 0
        return loss.detach().cpu()

    def optimizers_step(self):
        """Unscale, clip the total norm over every group of every optimizer, step.

        Returns a description of the problem when the gradients were non-finite (no step was
        taken, gradients zeroed), else None.
        """
        optimizers = self._active_optimizers()
        if not optimizers:
            return None
        for opt in optimizers.values():
            self.scaler.unscale_(opt)
        norm = clip_all_groups(optimizers.values(), self.max_grad_norm)
        if not self.scaler.is_enabled() and _agree_any(not bool(torch.isfinite(norm)), self.device):
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            return f"non-finite gradients (total norm {float(norm)})"
        for opt in optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.optimizer_step += 1
        return None

    def _check_parameters(self, batch) -> None:
        params = all_parameters(self._active_optimizers().values())
        if not params:
            return
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()
        if not bool(finite):
            raise NonFiniteTrainingError(
                f"training stopped without saving: the update of batch ({_format_ids(batch_ids(batch, self.step))}) "
                f"made parameters non-finite; likely cause: a learning rate too large (largest lr "
                f"{self._largest_lr():g}); lower it and restart the experiment")
