"""Learning-rate schedules that keep each parameter group's own learning rate.

SpeechBrain's schedulers set one learning rate for every group of an optimizer; ELP trains
several groups (head, E, L, P, LayerNorms, ...) at different rates, so the schedules here
multiply each group's *initial* rate by one common factor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks


@register_checkpoint_hooks
class WarmupLinearDecay:
    """Linear warm-up to each group's lr, then linear decay to ``final_factor`` of it.

    Call it once per optimizer step with the optimizer; it sets every group's ``lr`` to
    ``initial_lr * factor(step)``. The number of steps per epoch is known only once the
    training loader exists: the Brain calls :meth:`set_total_steps`.

    Parameters
    ----------
    warmup_steps
        Optimizer steps of linear warm-up from 0.
    final_factor
        Factor reached at the last step (1.0: constant after warm-up).

    Examples
    --------
    >>> p = torch.nn.Parameter(torch.zeros(1))
    >>> opt = torch.optim.SGD([{"params": [p], "lr": 0.1}, {"params": [], "lr": 1.0}])
    >>> sched = WarmupLinearDecay(warmup_steps=2, final_factor=0.0)
    >>> sched.set_total_steps(6)
    >>> [round(sched(opt), 3) for _ in range(6)]
    [0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    >>> opt.param_groups[1]["lr"]
    0.0
    """

    def __init__(self, warmup_steps: int = 0, final_factor: float = 0.0):
        self.warmup_steps = int(warmup_steps)
        self.final_factor = float(final_factor)
        self.total_steps: int | None = None
        self.step = 0

    def set_total_steps(self, total_steps: int) -> None:
        """Set the optimizer steps of the whole training (epochs x batches per epoch)."""
        self.total_steps = int(total_steps)

    def factor(self, step: int) -> float:
        """The multiplier of the initial learning rates at optimizer ``step`` (from 1).

        ``step / warmup_steps`` during warm-up, then linear towards ``final_factor`` (1.0 while
        the total is unknown).

        Examples
        --------
        >>> sched = WarmupLinearDecay(warmup_steps=10, final_factor=0.1)
        >>> sched.factor(5), sched.factor(20)  # total unknown: constant after warm-up
        (0.5, 1.0)
        >>> sched.set_total_steps(110)
        >>> round(sched.factor(60), 3), round(sched.factor(110), 3)
        (0.55, 0.1)
        """
        if self.warmup_steps and step <= self.warmup_steps:
            return step / self.warmup_steps
        if not self.total_steps or self.total_steps <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return 1.0 + (self.final_factor - 1.0) * progress

    def __call__(self, optimizer: torch.optim.Optimizer) -> float:
        """Advance one step, set the groups' learning rates and return the factor.

        Each group's ``initial_lr`` is recorded on the first call.
        """
        self.step += 1
        factor = self.factor(self.step)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor
        return factor

    @mark_as_saver
    def _save(self, path):
        Path(path).write_text(json.dumps({"step": self.step, "total_steps": self.total_steps}))

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        state = json.loads(Path(path).read_text())
        self.step, self.total_steps = int(state["step"]), state["total_steps"]


@register_checkpoint_hooks
class ConstantLR(WarmupLinearDecay):
    """Each group's initial learning rate throughout (no warm-up, no decay).

    Examples
    --------
    >>> ConstantLR().factor(1000)
    1.0
    """

    def __init__(self):
        super().__init__(warmup_steps=0, final_factor=1.0)
