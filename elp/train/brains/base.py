"""What every ELP Brain shares: per-group learning rates, cost accounting, checkpoints.

Examples
--------
A tiny untrained classifier (:class:`elp.train.brains.classify.UtteranceClassifierBrain`) with one
learning rate per parameter group, run over a two-utterance dataset:

>>> import tempfile
>>> from elp.train.brains import UtteranceClassifierBrain
>>> from elp.data.inventory import LabelMap
>>> from elp.serve.package import load_package
>>> from elp.testing import make_tiny_package
>>> from elp.tasks import CLASSIFY
>>> package = load_package(make_tiny_package(tempfile.mkdtemp(), task=CLASSIFY, method="el"))
>>> hparams = {"lr": {"default": 1e-3, "head": 1e-2}, "opt_class": torch.optim.Adam,
...            "loss": torch.nn.CrossEntropyLoss(), "inventory": LabelMap.from_values(package.labels)}
>>> brain = UtteranceClassifierBrain(modules={"model": package.model, "head": package.head},
...                                  hparams=hparams, run_opts={"device": "cpu"})
>>> brain.init_optimizers()
>>> [(group["name"], group["lr"]) for group in brain.optimizer.param_groups]
[('ln', 0.001), ('e', 0.001), ('l', 0.001), ('head', 0.01)]
>>> brain.learnable_parameter_count()
3462
>>> from speechbrain.dataio.dataset import DynamicItemDataset
>>> dataset = DynamicItemDataset({"u1": {"wav": torch.randn(16000)}, "u2": {"wav": torch.randn(12000)}})
>>> dataset.add_dynamic_item(lambda wav: wav, takes="wav", provides="sig")
>>> dataset.set_output_keys(["id", "sig"])
>>> predictions = brain.predict(dataset, {"batch_size": 2})
>>> sorted(predictions), set(predictions.values()) <= set(package.labels)
(['u1', 'u2'], True)
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import speechbrain as sb
import torch

from elp.core.methods import BACKBONE_GROUPS
from elp.runtime import (
    SAMPLE_RATE,
    distributed_rank_world,
    peak_memory_mb,  # noqa: F401  (re-exported for the drivers)
)
from elp.train.brains.guards import NonFiniteGuard
from elp.train.feature_cache import (
    CNNFeatureCache,
    HiddenStateCache,
    cached_cnn_forward,
    cached_forward,
)

logger = logging.getLogger(__name__)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP/DP wrapper (or the module itself).

    Examples
    --------
    >>> linear = torch.nn.Linear(2, 2)
    >>> unwrap(torch.nn.DataParallel(linear)) is linear, unwrap(linear) is linear
    (True, True)
    """
    return getattr(module, "module", module)


def known_lr_groups() -> set[str]:
    """Every learning-rate group a recipe may name.

    The adapters' ``lr_group`` declarations (any imported module class that declares one), the
    backbone's own groups, ``head`` and ``default``.

    Examples
    --------
    >>> {"e", "l", "p", "ln", "head", "default"} <= known_lr_groups()
    True
    """
    groups, pending = set(BACKBONE_GROUPS) | {"head", "default"}, [torch.nn.Module]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if isinstance(getattr(cls, "lr_group", None), str):
            groups.add(cls.lr_group)
    return groups


class ELPBrain(NonFiniteGuard, sb.Brain):
    """Base Brain: ``modules`` holds ``model`` (:class:`elp.core.model.AdaptedSSL`) and ``head``.

    Subclasses implement :meth:`compute_forward`, :meth:`compute_objectives`, the per-stage
    statistics (:meth:`stage_stats`) and inference (:meth:`predict`). The constructor is
    SpeechBrain's ``Brain.__init__``.

    Notes
    -----
    Hparams it reads (a recipe's ``conf/train.yaml`` declares them):

    ``task`` : elp.tasks.base.Task
        The task kind (its ``valid_key``/``valid_key_mode`` pick the best checkpoint).
    ``inventory`` : object
        Tokenizer or label map (``elp.tasks.load_inventory``).
    ``loss`` : Callable
        The training loss (e.g. ``torch.nn.CrossEntropyLoss``, SpeechBrain's ``ctc_loss``).
    ``opt_class`` : Callable
        Called with a list of parameter groups (``torch.optim.Adam`` by default).
    ``lr`` : dict
        Learning rate per parameter group, ``default`` for the others.
    ``lr_scheduler`` : Callable, optional
        Called with the optimizer before every optimizer step (:mod:`elp.train.schedulers`).
    ``train_logger``, ``epoch_counter`` : SpeechBrain objects
        Validation/test logging and the epoch limit.
    ``augmentation`` : Callable, optional
        Applied to training waveforms only (:meth:`augment`), never in validation or test.

    Examples
    --------
    See the module docstring.
    """

    def on_fit_start(self):
        super().on_fit_start()  # recovers the latest checkpoint, if any
        # training time already spent by an interrupted run (stored in end-of-epoch checkpoints)
        checkpoints = self.checkpointer.list_checkpoints() if self.checkpointer is not None else []
        self.train_wall_s = max([c.meta.get("train_wall_s", 0.0) for c in checkpoints], default=0.0)

    # ------------------------------------------------------------------ optimisation
    def init_optimizers(self):
        """``opt_class`` over one parameter group per learning-rate group.

        ``lr`` maps group names (:meth:`elp.core.model.AdaptedSSL.parameter_groups` plus ``head``)
        to learning rates; ``default`` serves any group without its own entry. A name that is
        no known group is an error (a typo would otherwise train at the default rate).

        Raises
        ------
        ValueError
            If ``lr`` names an unknown group, or a group has no rate and there is no
            ``default``.
        """
        lrs = dict(self.hparams.lr)
        unknown = set(lrs) - known_lr_groups()
        if unknown:
            raise ValueError(f"lr names unknown parameter groups {sorted(unknown)}; known groups: "
                             f"{', '.join(sorted(known_lr_groups()))}")
        default = lrs.get("default")
        groups = dict(unwrap(self.modules.model).parameter_groups())
        groups["head"] = self.head_parameters()
        param_groups = []
        for name, params in groups.items():
            lr = lrs.get(name, default)
            if lr is None:
                raise ValueError(f"no learning rate for parameter group {name!r}: add lr.{name} "
                                 "(or lr.default) to the hparams")
            param_groups.append({"params": params, "lr": float(lr), "name": name})
            logger.info("parameter group %-8s %10d parameters, lr %g", name, sum(p.numel() for p in params), lr)
        self.optimizer = self.hparams.opt_class(param_groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    @property
    def lr_scheduler(self):
        """The hparams' ``lr_scheduler`` (called once per optimizer step), or ``None``."""
        return getattr(self.hparams, "lr_scheduler", None)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        batch_sampler = loader_kwargs.get("batch_sampler")
        if stage == sb.Stage.TRAIN and batch_sampler is not None and not self.distributed_launch:
            self.train_sampler = batch_sampler  # SpeechBrain calls its set_epoch every epoch
        loader = super().make_dataloader(dataset, stage, ckpt_prefix=ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            self.train_batches_per_epoch = len(loader)
        return loader

    def on_fit_batch_start(self, batch, should_step):
        scheduler = self.lr_scheduler
        if should_step and scheduler is not None:
            if scheduler.total_steps is None and getattr(self, "train_batches_per_epoch", None):
                steps = math.ceil(self.train_batches_per_epoch / self.grad_accumulation_factor)
                scheduler.set_total_steps(steps * self.hparams.epoch_counter.limit)
            scheduler(self.optimizer)

    def head_parameters(self) -> list[torch.nn.Parameter]:
        """The head's parameters that require gradients (the ``head`` learning-rate group)."""
        return [p for p in unwrap(self.modules.head).parameters() if p.requires_grad]

    def learnable_parameter_count(self) -> int:
        """Number of learnable values of adapters/backbone plus the head."""
        model = unwrap(self.modules.model)
        return sum(p.numel() for p in model.learnable_parameters().values()) + \
            sum(p.numel() for p in self.head_parameters())

    # ------------------------------------------------------------------ features
    def features(self, batch, stage):
        """Waveforms of ``batch`` (``sig``: [B, T] and relative lengths [B]) -> feats [B, F, D], frame_mask [B, F].

        Two on-disk caches, both keyed by the audio's content and the backbone's weights:

        * ``hidden_state_cache: true``: methods whose backbone is frozen and un-adapted
          (``weighted_sum``, ``l_only``) read all hidden states after the first epoch;
        * ``cnn_cache: true``: every method reads the frozen CNN's features (the CNN never
          trains); random training crops (``max_train_seconds``) become crops of the cached
          frame sequence.

        Augmentation and training crops apply only in ``sb.Stage.TRAIN``. The cached paths call the
        model as a module (``model(None, ..., hidden_states=...)``), so under DDP its gradients are
        all-reduced like the live path's.
        """
        wavs, wav_lens = batch.sig
        wavs, wav_lens = wavs.to(self.device), wav_lens.to(self.device)
        if stage == sb.Stage.TRAIN:
            wavs, wav_lens = self.augment(wavs, wav_lens)
        cache = self.hidden_state_cache()
        if cache is not None:
            return cached_forward(self.modules.model, cache, list(batch.id), wavs, wav_lens)
        cnn_cache = self.cnn_cache()
        if cnn_cache is not None:
            crop = self.train_crop_frames() if stage == sb.Stage.TRAIN else 0
            return cached_cnn_forward(self.modules.model, cnn_cache, list(batch.id), wavs, wav_lens, max_frames=crop)
        return self.modules.model(wavs, wav_lens)

    def augment(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the YAML's ``augmentation`` to training waveforms [B, T] and relative lengths [B].

        ``augmentation`` is any callable ``(wavs [B, T], wav_lens [B]) -> (wavs, wav_lens)``
        that keeps the batch size, e.g. ``speechbrain.augment.augmenter.Augmenter`` with
        ``concat_original: false`` and ``repeat_augment: 1``; None (the default) does nothing.
        :meth:`features` calls it for training batches only.

        Raises
        ------
        ValueError
            With ``cnn_cache`` or ``hidden_state_cache`` (they would reuse features of other
            audio), or when the augmentation changes the batch size.
        """
        augmentation = getattr(self.hparams, "augmentation", None)
        if augmentation is None:
            return wavs, wav_lens
        for cache in ("cnn_cache", "hidden_state_cache"):
            if getattr(self.hparams, cache, False):
                raise ValueError(f"augmentation changes the training audio at every step, so {cache} cannot reuse "
                                 f"its features: set {cache}: false, or remove augmentation")
        augmented, lens = augmentation(wavs, wav_lens)
        if augmented.shape[0] != wavs.shape[0]:
            raise ValueError(f"augmentation turned a batch of {wavs.shape[0]} into {augmented.shape[0]}; the targets "
                             "would not match: use concat_original: false, parallel_augment: false, repeat_augment: 1")
        return augmented, lens

    def hidden_state_cache(self) -> HiddenStateCache | None:
        """The hidden-state cache when the hparams ask for one (``hidden_state_cache: true``) and the method allows it.

        None otherwise, e.g. for a method that trains inside the backbone.

        Raises
        ------
        ValueError
            With random training crops (``max_train_seconds``), which need ``cnn_cache``.
        """
        if not getattr(self.hparams, "hidden_state_cache", False):
            return None
        if not hasattr(self, "_hidden_state_cache"):
            model = unwrap(self.modules.model)
            if self.hparams.task.max_train_seconds:
                raise ValueError("hidden_state_cache needs whole utterances: use cnn_cache with random crops")
            self._hidden_state_cache = None
            if model.hidden_states_cacheable:
                self._hidden_state_cache = HiddenStateCache.for_model(
                    Path(self.hparams.output_folder) / "hidden_state_cache", model, dtype="float16")
            else:
                logger.info("hidden_state_cache: method %s trains inside the backbone; not cached",
                            model.method.name)
        return self._hidden_state_cache

    def cnn_cache(self) -> CNNFeatureCache | None:
        """The CNN-feature cache (None without ``cnn_cache: true``).

        It is shared by every experiment of the recipe on the same backbone (``cnn_cache_dir``,
        default ``exp/cnn_cache``).
        """
        if not getattr(self.hparams, "cnn_cache", False):
            return None
        if not hasattr(self, "_cnn_cache"):
            root = getattr(self.hparams, "cnn_cache_dir", None) or Path(self.hparams.output_folder).parent / "cnn_cache"
            self._cnn_cache = CNNFeatureCache.for_model(root, unwrap(self.modules.model),
                                                        dtype=getattr(self.hparams, "cnn_cache_dtype", "float16"))
        return self._cnn_cache

    def train_crop_frames(self) -> int:
        """Backbone frames of the task's ``max_train_seconds`` (0: no cropping)."""
        seconds = self.hparams.task.max_train_seconds
        if not seconds:
            return 0
        return int(unwrap(self.modules.model).backbone.num_frames(torch.tensor(int(seconds * SAMPLE_RATE))))

    def class_targets(self, batch) -> torch.Tensor:
        """Class ids [B] of the batch (its ``label_id``, padded [B, 1]) on the Brain's device."""
        return batch.label_id.data[:, 0].to(self.device)

    # ------------------------------------------------------------------ stages
    def on_stage_start(self, stage, epoch=None):
        self.stage_started = time.time()
        self.eval_batches_seen = 0
        self.reset_stats(stage)

    def evaluate_batch(self, batch, stage):
        self.eval_batches_seen += 1  # this rank's share of the stage loss (see on_stage_end)
        return super().evaluate_batch(batch, stage)

    def _mean_over_ranks(self, stage_loss: float) -> float:
        """The stage loss averaged over the batches of every rank (each rank saw its shard)."""
        if distributed_rank_world()[1] == 1:
            return stage_loss
        backend_device = self.device if torch.distributed.get_backend() == "nccl" else "cpu"
        total = torch.tensor([float(stage_loss) * self.eval_batches_seen, float(self.eval_batches_seen)],
                             dtype=torch.float64, device=backend_device)
        torch.distributed.all_reduce(total)
        return float(total[0] / total[1]) if total[1] > 0 else float(stage_loss)

    def reset_stats(self, stage):
        """Start collecting this stage's statistics (subclasses)."""

    def stage_stats(self, stage) -> dict:
        """Statistic name -> value of the finished stage (VALID or TEST) besides the loss (subclasses).

        The task's ``valid_key`` is among them.
        """
        return {}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_wall_s = getattr(self, "train_wall_s", 0.0) + time.time() - self.stage_started
            self.train_stats = {"loss": stage_loss}
            return
        stats = {"loss": self._mean_over_ranks(stage_loss)}
        stats.update(self.stage_stats(stage))
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, **{f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups}},
                train_stats=self.train_stats, valid_stats=stats)
            key, mode = self.hparams.task.valid_key, self.hparams.task.valid_key_mode
            meta = {key: stats[key], "train_wall_s": self.train_wall_s}
            self.checkpointer.save_and_keep_only(
                meta=meta, num_to_keep=1, **({"min_keys": [key]} if mode == "min" else {"max_keys": [key]}))
        elif stage == sb.Stage.TEST:
            self.hparams.train_logger.log_stats(stats_meta={"epoch loaded": self.hparams.epoch_counter.current},
                                                test_stats=stats)
        self.last_stats = stats

    def recover_best(self) -> None:
        """Load the checkpoint with the best validation statistic (the task's ``valid_key``).

        Raises
        ------
        FileNotFoundError
            When the experiment has no end-of-epoch checkpoint (a mistyped ``--tag``, or stage
            3 has not run): evaluating a freshly initialised model would write wrong numbers.
        """
        key, mode = self.hparams.task.valid_key, self.hparams.task.valid_key_mode
        checkpoint = self.checkpointer.find_checkpoint(**({"min_key": key} if mode == "min" else {"max_key": key}))
        if checkpoint is None:
            raise FileNotFoundError(f"{self.checkpointer.checkpoints_dir}: no trained checkpoint; run stage 3 "
                                    "(training) for this --tag first")
        self.checkpointer.load_checkpoint(checkpoint)
        logger.info("loaded the best checkpoint %s (%s %s)", checkpoint.path.name, key, checkpoint.meta.get(key))

    def predict(self, dataset, loader_kwargs: dict) -> dict:
        """Run inference over ``dataset``: utterance id -> what the task writes in stage 4 (subclasses).

        Parameters
        ----------
        dataset : speechbrain.dataio.dataset.DynamicItemDataset
            Items with ``id`` and ``sig``.
        loader_kwargs
            DataLoader options (:func:`elp.train.recipe.loader_kwargs`).
        """
        raise NotImplementedError

    def eval_batches(self, dataset, loader_kwargs: dict):
        """Iterate over ``dataset`` (as in :meth:`predict`) in eval mode without autograd.

        Yields
        ------
        batch : speechbrain.dataio.batch.PaddedBatch
            The batch.
        feats : torch.Tensor
            Its features [B, F, D] (float32).
        frame_mask : torch.Tensor
            [B, F] bool, True = real frame.
        """
        loader = self.make_dataloader(dataset, sb.Stage.TEST, **loader_kwargs)
        self.modules.eval()
        with torch.no_grad(), self.evaluation_ctx:  # the training precision (bf16 autocast on a GPU)
            for batch in loader:
                feats, frame_mask = self.features(batch, sb.Stage.TEST)
                yield batch, feats.float(), frame_mask
