"""Several tasks trained together on one frozen backbone: one forward per mixed batch.

:class:`JointBrain` trains the tasks of a joint recipe (``tasks:`` in its YAML,
:mod:`elp.train.multitask`). Each batch mixes the tasks' utterances
(:class:`elp.data.task_mixer.MixedBatch`); the :class:`elp.train.multitask.JointModel` runs the
frozen CNN once and shares or routes the transformer pass, and every task's own Brain (the one
its single-task recipe names, e.g. :class:`~elp.train.brains.classify.UtteranceClassifierBrain`)
computes its head, loss and validation statistics on its own samples, from those features.

* **Loss**: ``sum_t loss_weight_t * loss_t``, where ``loss_t`` is task t's loss over its
  samples in the batch (its Brain's ``compute_objectives``, e.g. the mean cross-entropy); a
  task without samples in a batch adds nothing.
* **Optimiser**: one parameter group per (task, learning-rate group) named ``<task>_<group>``
  at the task's ``lr`` (falling back to the recipe's ``lr``), one per shared group named
  ``shared_<group>`` at the recipe's ``lr``. Gradient clipping (``max_grad_norm``) applies to
  each task's groups on their own and to the shared groups on theirs
  (:meth:`JointBrain.clip_gradients`), not to the total norm of every task.
* **Validation**: every task on its own validation set, with its own statistics
  (``<task>_loss``, ``<task>_accuracy``, ...) and the weighted sum of the task losses as
  ``loss``.
* **Best checkpoint**: without shared groups, each task's best epoch by its own ``valid_key``
  (one checkpoint kept per task, :meth:`JointBrain.recover_best` takes a task); with shared
  groups, the epoch with the lowest joint validation loss for every task, so that the packages
  hold the same shared tensors.

Examples
--------
>>> import torch
>>> from elp.core.backbones import SSLBackbone
>>> from elp.core.heads import PooledClassifier
>>> from elp.data.inventory import LabelMap
>>> from elp.tasks import UtteranceClassification
>>> from elp.testing import tiny_config
>>> from elp.train.brains import UtteranceClassifierBrain
>>> from elp.train.multitask import JointModel, joint_modules, task_model
>>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
>>> tasks = {}
>>> for name in ("er", "ic"):
...     model = task_model(backbone, "l_only", {"l_dim": 8})
...     tasks[name] = {"task": UtteranceClassification(), "inventory": LabelMap.from_values(["a", "b"]),
...                    "modules": {"model": model, "head": PooledClassifier(8, 2, hidden_dim=4)},
...                    "loss": torch.nn.CrossEntropyLoss(), "brain_class": UtteranceClassifierBrain,
...                    "lr": {"head": 1e-2}}
>>> hparams = {"tasks": tasks, "lr": {"default": 1e-3}, "opt_class": torch.optim.Adam, "shared": [],
...            "joint_model": JointModel(backbone, {n: t["modules"]["model"] for n, t in tasks.items()})}
>>> brain = JointBrain(modules=joint_modules(hparams), hparams=hparams, run_opts={"device": "cpu"})
>>> brain.init_optimizers()
>>> [(group["name"], group["lr"]) for group in brain.optimizer.param_groups]
[('er_l', 0.001), ('er_head', 0.01), ('ic_l', 0.001), ('ic_head', 0.01)]
"""

from __future__ import annotations

import json
import logging

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from elp.runtime import UserError
from elp.train.brains.base import ELPBrain, known_lr_groups, unwrap
from elp.train.brains.guards import clip_each_unit

logger = logging.getLogger(__name__)


class _JointFeatures:
    """A task Brain whose :meth:`features` hands out the joint forward's features when it has set them."""

    joint_features = None

    def features(self, batch, stage):
        if self.joint_features is not None:
            return self.joint_features
        return super().features(batch, stage)  # a batch of this task alone: its own model


_TASK_BRAIN_CLASSES: dict[type, type] = {}


@register_checkpoint_hooks
class TaskLosses:
    """Each task's losses of the batches of the epoch so far (a checkpoint recoverable).

    Saved in intra-epoch checkpoints, so that the per-task training losses of an epoch that
    resumed after a kill are those of the uninterrupted run.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> losses = TaskLosses(["er", "ic"])
    >>> losses.values["er"].append(0.5)
    >>> path = Path(tempfile.mkdtemp()) / "losses.ckpt"
    >>> losses.save(path); losses.reset(); losses.load(path)
    >>> losses.values
    {'er': [0.5], 'ic': []}
    """

    def __init__(self, names):
        self.names = list(names)
        self.reset()

    def reset(self) -> None:
        """Forget every loss."""
        self.values = {name: [] for name in self.names}

    def mean(self, name: str) -> float:
        """Mean loss of task ``name`` over the batches that held it (NaN for none)."""
        values = self.values[name]
        return sum(values) / len(values) if values else float("nan")

    @mark_as_saver
    def save(self, path) -> None:
        """Write the losses as JSON."""
        with open(path, "w", encoding="utf-8") as stream:
            json.dump(self.values, stream)

    @mark_as_loader
    def load(self, path, end_of_epoch: bool = False) -> None:
        """Read the losses :meth:`save` wrote (``end_of_epoch`` unused: SpeechBrain's signature)."""
        del end_of_epoch
        with open(path, encoding="utf-8") as stream:
            self.values = {name: list(values) for name, values in json.load(stream).items()}


def task_brain_class(brain_class: type) -> type:
    """``brain_class`` taking its features from the joint forward (one class per Brain class).

    Examples
    --------
    >>> from elp.train.brains import UtteranceClassifierBrain
    >>> task_brain_class(UtteranceClassifierBrain).__name__
    'JointUtteranceClassifierBrain'
    """
    if brain_class not in _TASK_BRAIN_CLASSES:
        _TASK_BRAIN_CLASSES[brain_class] = type(f"Joint{brain_class.__name__}", (_JointFeatures, brain_class), {})
    return _TASK_BRAIN_CLASSES[brain_class]


class JointBrain(ELPBrain):
    """The tasks of ``hparams.tasks`` trained together (see the module docstring).

    ``modules`` holds ``joint`` (the :class:`elp.train.multitask.JointModel`) and each task's
    other modules as ``<task>_<name>`` (:func:`elp.train.multitask.joint_modules`).

    Notes
    -----
    Hparams it reads: ``tasks`` (name -> entry, :data:`elp.train.multitask.TASK_KEYS`), ``lr``
    (the shared groups' rates and every task's fallback), ``opt_class``, ``lr_scheduler``,
    ``train_logger``, ``epoch_counter``.

    Raises
    ------
    UserError
        Under DDP (joint training runs in one process).
    """

    def __init__(self, modules=None, opt_class=None, hparams=None, run_opts=None, checkpointer=None):
        super().__init__(modules=modules, opt_class=opt_class, hparams=hparams, run_opts=run_opts,
                         checkpointer=checkpointer)
        if self.distributed_launch:
            raise UserError("joint training runs in one process (one GPU or CPU); start it without torchrun "
                            "(--ngpu 1 or 0)")
        self.task_names = list(self.hparams.tasks)
        self.train_losses, self.eval_losses = TaskLosses(self.task_names), TaskLosses(self.task_names)
        self.task_brains = {}
        for name, spec in self.hparams.tasks.items():
            options = {"task": spec["task"], "inventory": spec["inventory"], "loss": spec["loss"],
                       "device": self.device, "precision": self.precision, "eval_precision": self.eval_precision,
                       "noprogressbar": True}
            self.task_brains[name] = task_brain_class(spec["brain_class"])(modules=dict(spec["modules"]),
                                                                           hparams=options)

    def on_fit_start(self):
        if self.checkpointer is not None:  # before the recovery of the latest checkpoint
            self.checkpointer.add_recoverable("task_losses", self.train_losses)
        super().on_fit_start()

    @property
    def joint(self):
        """The :class:`elp.train.multitask.JointModel`."""
        return unwrap(self.modules.joint)

    # ------------------------------------------------------------------ optimisation
    def init_optimizers(self):
        """``opt_class`` over the shared groups and every task's groups (module docstring).

        Raises
        ------
        ValueError
            An ``lr`` naming an unknown group, or a group without a rate (and no ``default``).
        """
        common = dict(self.hparams.lr)
        known = known_lr_groups()
        for where, lrs in [("lr", common)] + [(f"tasks.{n}.lr", dict(s.get("lr") or {}))
                                              for n, s in self.hparams.tasks.items()]:
            unknown = set(lrs) - known
            if unknown:
                raise ValueError(f"{where} names unknown parameter groups {sorted(unknown)}; known groups: "
                                 f"{', '.join(sorted(known))}")
        param_groups, seen = [], set()
        # the base Brain's batch-size scaling of every rate, where it has one (1: none)
        scale = self.lr_scale() if hasattr(self, "lr_scale") else 1.0

        def add(name, params, lrs, group):
            params = [p for p in params if id(p) not in seen]
            if not params:
                return
            lr = lrs.get(group, lrs.get("default"))
            if lr is None:
                raise ValueError(f"no learning rate for parameter group {name!r}: add lr.{group} (or lr.default)")
            seen.update(id(p) for p in params)
            lr = float(lr) * scale
            param_groups.append({"params": params, "lr": lr, "name": name})
            logger.info("parameter group %-12s %10d parameters, lr %g", name, sum(p.numel() for p in params), lr)

        models = self.joint.models
        first = models[self.task_names[0]].parameter_groups()
        for group in self.joint.shared:
            add(f"shared_{group}", first.get(group, []), common, group)
        for name, spec in self.hparams.tasks.items():
            lrs = {**common, **dict(spec.get("lr") or {})}
            for group, params in models[name].parameter_groups().items():
                add(f"{name}_{group}", params, lrs, group)
            add(f"{name}_head", self.task_brains[name].head_parameters(), lrs, "head")
        self.optimizer = self.hparams.opt_class(param_groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def clip_gradients(self, optimizers) -> torch.Tensor:
        """Clip each task's own groups (``<task>_*``) to ``max_grad_norm`` on their own, and the shared
        groups (``shared_*``) on theirs: a task's step does not depend on the other tasks' gradients,
        and without shared groups each task is clipped as its single-task run clips it."""
        units: dict[str, list] = {}
        prefixes = sorted(((f"{name}_", name) for name in self.task_names), key=lambda p: -len(p[0]))  # longest first
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                name = group.get("name", "")
                unit = "shared" if name.startswith("shared_") else next(
                    (task for prefix, task in prefixes if name.startswith(prefix)), name)
                units.setdefault(unit, []).extend(group["params"])
        return clip_each_unit(list(units.values()), self.max_grad_norm)

    def learnable_parameter_count(self) -> int:
        """Distinct learnable values of every task (a shared tensor counts once)."""
        return sum(p.numel() for p in self.learnable_parameters())

    def learnable_parameters(self) -> list[torch.nn.Parameter]:
        """Every learnable parameter of every task's model and head, each once."""
        params, seen = [], set()
        for name in self.task_names:
            own = list(self.joint.models[name].learnable_parameters().values())
            for param in own + self.task_brains[name].head_parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
        return params

    def task_learnable_count(self, name: str) -> int:
        """Learnable values of one task: its model (shared tensors included) and head."""
        model = self.joint.models[name]
        return sum(p.numel() for p in model.learnable_parameters().values()) + \
            sum(p.numel() for p in self.task_brains[name].head_parameters())

    # ------------------------------------------------------------------ forward and loss
    def compute_forward(self, batch, stage):
        wavs, wav_lens = batch.sig
        features = self.modules.joint(wavs.to(self.device), wav_lens.to(self.device), batch.counts,
                                      batch.sources.to(self.device))
        outputs = {}
        for index, name in enumerate(self.task_names):
            if features[index] is None:
                continue
            brain = self.task_brains[name]
            brain.joint_features = features[index]
            try:
                outputs[name] = brain.compute_forward(batch.task_batch(index), stage)
            finally:
                brain.joint_features = None
        return outputs

    def compute_objectives(self, outputs, batch, stage):
        total = None
        for index, name in enumerate(self.task_names):
            if name not in outputs:
                continue
            loss = self.task_brains[name].compute_objectives(outputs[name], batch.task_batch(index), stage)
            losses = self.train_losses if stage == sb.Stage.TRAIN else self.eval_losses
            losses.values[name].append(float(loss.detach()))
            weighted = float(self.hparams.tasks[name].get("loss_weight", 1.0)) * loss
            total = weighted if total is None else total + weighted
        return total

    # ------------------------------------------------------------------ stages
    def reset_stats(self, stage):
        # the training losses are reset after each epoch instead (a resumed epoch keeps its own)
        if stage != sb.Stage.TRAIN:
            self.eval_losses.reset()
        for brain in self.task_brains.values():
            brain.reset_stats(stage)

    def task_stats(self, stage) -> dict:
        """``<task>_loss`` (mean over the stage's batches that held the task) and each task Brain's statistics."""
        stats = {}
        losses = self.train_losses if stage == sb.Stage.TRAIN else self.eval_losses
        for name in self.task_names:
            stats[f"{name}_loss"] = losses.mean(name)
            if stage != sb.Stage.TRAIN:
                stats.update({f"{name}_{key}": value
                              for key, value in self.task_brains[name].stage_stats(stage).items()})
        return stats

    def selection(self, name: str | None = None) -> tuple[str, str]:
        """The checkpoint statistic and its mode for task ``name`` (module docstring): ``(key, "min"|"max")``."""
        if self.joint.shared or name is None:
            return "loss", "min"
        task = self.hparams.tasks[name]["task"]
        return f"{name}_{task.valid_key}", task.valid_key_mode

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            super().on_stage_end(stage, stage_loss, epoch)  # the training time
            self.train_stats.update(self.task_stats(stage))
            self.train_losses.reset()
            return
        stats = {"loss": stage_loss, **self.task_stats(stage)}
        if stage == sb.Stage.VALID:
            self.log_stats(
                stats_meta={"epoch": epoch, **{f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups}},
                train_stats=self.train_stats, valid_stats=stats)
            keys = dict(self.selection(name) for name in self.task_names)
            meta = {**{key: stats[key] for key in keys}, "train_wall_s": self.train_wall_s}
            self.checkpointer.save_and_keep_only(
                meta=meta, num_to_keep=1, min_keys=[k for k, m in keys.items() if m == "min"],
                max_keys=[k for k, m in keys.items() if m == "max"])
        self.last_stats = stats

    def recover_best(self, name: str | None = None) -> None:
        """Load the best checkpoint of task ``name`` (with shared groups, or None: the joint one).

        Raises
        ------
        FileNotFoundError
            When the experiment has no end-of-epoch checkpoint.
        """
        key, mode = self.selection(name)
        checkpoint = self.checkpointer.find_checkpoint(**({"min_key": key} if mode == "min" else {"max_key": key}))
        if checkpoint is None:
            raise FileNotFoundError(f"{self.checkpointer.checkpoints_dir}: no trained checkpoint; run stage 3 "
                                    "(training) for this --tag first")
        self.checkpointer.load_checkpoint(checkpoint)
        logger.info("loaded the best checkpoint%s %s (%s %s)", f" of {name}" if name else "", checkpoint.path.name,
                    key, checkpoint.meta.get(key))
