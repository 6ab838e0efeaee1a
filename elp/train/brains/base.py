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
    UserError,
    distributed_rank_world,
    peak_memory_mb,  # noqa: F401  (re-exported for the drivers)
)
from elp.train.brains.guards import NonFiniteGuard
from elp.train.feature_cache import (
    CachedCNNDataset,
    CNNCacheBatch,
    CNNFeatureCache,
    HiddenStateCache,
    cached_cnn_forward,
    cached_forward,
    cnn_cache_forward,
    fill_cnn_cache,
)
from elp.train.recipe import epoch_batch, lr_scale_factor

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
        scale = self.lr_scale()
        param_groups = []
        for name, params in groups.items():
            lr = lrs.get(name, default)
            if lr is None:
                raise ValueError(f"no learning rate for parameter group {name!r}: add lr.{name} "
                                 "(or lr.default) to the hparams")
            lr = float(lr) * scale
            param_groups.append({"params": params, "lr": lr, "name": name})
            logger.info("parameter group %-8s %10d parameters, lr %g", name, sum(p.numel() for p in params), lr)
        self.optimizer = self.hparams.opt_class(param_groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def lr_scale(self) -> float:
        """The factor of every learning rate: the hparams' ``lr_scaling`` of the effective batch (1 by default).

        ``lr_scaling`` (``none`` | ``linear`` | ``sqrt``, :func:`elp.train.recipe.lr_scale_factor`)
        compares the effective batch's audio seconds per optimizer step (:attr:`train_batch`,
        an average over an epoch) with ``lr_reference_batch_seconds`` (null: ``batch_size``
        utterances of the training set's mean length). The factor and its inputs are recorded
        in :attr:`train_batch` and logged. A resumed run keeps the rates of its checkpoint.

        Raises
        ------
        elp.runtime.UserError
            For an unknown ``lr_scaling``, or scaling without a known training batch.
        """
        mode = str(getattr(self.hparams, "lr_scaling", None) or "none")
        batch = getattr(self, "train_batch", None)
        reference = getattr(self.hparams, "lr_reference_batch_seconds", None)
        if reference is None and batch is not None and batch["mean_utterance_seconds"]:
            reference = int(getattr(self.hparams, "batch_size", 8)) * batch["mean_utterance_seconds"]
        seconds = batch["seconds_per_step"] if batch is not None else None
        if mode != "none" and seconds is None:
            raise UserError(f"lr_scaling {mode}: the effective batch is unknown (the training loader must come "
                            "from a dataset with num_samples, with at least one optimizer step per epoch); "
                            "use lr_scaling: none and set the learning rates")
        factor = lr_scale_factor(mode, seconds or 0.0, float(reference or 0.0))
        if batch is not None:
            batch.update({"lr_scaling": mode, "lr_scale": round(factor, 6),
                          "lr_reference_batch_seconds": None if reference is None else round(float(reference), 3)})
            logger.info("effective batch: %s utterances, %s s of audio per optimizer step (averages over an epoch); "
                        "%d optimizer steps per epoch; world size %d; gradient accumulation %d; learning rates x %g "
                        "(lr_scaling %s%s)", batch["utterances_per_step"], batch["seconds_per_step"],
                        batch["steps_per_epoch"], batch["world_size"], batch["grad_accumulation_factor"], factor,
                        mode, "" if reference is None else f", reference {float(reference):g} s")
        return factor

    def measure_train_batch(self, loader) -> dict | None:
        """The effective batch of a training loader (:func:`elp.train.recipe.epoch_batch`), or None.

        None when the loader's dataset does not list ``num_samples`` per utterance.
        """
        dataset = getattr(loader, "dataset", None)
        try:
            lengths = [int(dataset.data[utt]["num_samples"]) for utt in dataset.data_ids]
        except (AttributeError, KeyError, TypeError):
            return None
        task = getattr(self.hparams, "task", None)
        return epoch_batch(lengths, len(loader), self.grad_accumulation_factor, distributed_rank_world()[1],
                           crop_seconds=float(getattr(task, "max_train_seconds", 0.0) or 0.0))

    @property
    def lr_scheduler(self):
        """The hparams' ``lr_scheduler`` (called once per optimizer step), or ``None``."""
        return getattr(self.hparams, "lr_scheduler", None)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        dataset, loader_kwargs = self.with_cnn_cache(dataset, stage, loader_kwargs)
        batch_sampler = loader_kwargs.get("batch_sampler")
        if stage == sb.Stage.TRAIN and batch_sampler is not None and not self.distributed_launch:
            self.train_sampler = batch_sampler  # SpeechBrain calls its set_epoch every epoch
        loader = super().make_dataloader(dataset, stage, ckpt_prefix=ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            self.train_batches_per_epoch = len(loader)
            self.train_batch = self.measure_train_batch(loader)  # the effective batch, recorded in train_stats.json
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
          trains): the loaders this Brain makes carry the cached frames (already cropped to
          ``max_train_seconds`` in training; :meth:`with_cnn_cache`), and the CNN runs only on
          the waveforms of utterances the cache lacks.

        Both caches are keyed by audio hashed on the host by the loader workers (the batch's
        ``audio_key``, or the cached frames themselves). Augmentation and training crops apply
        only in ``sb.Stage.TRAIN``. The cached paths call the model as a module
        (``model(None, ..., hidden_states=...)``), so under DDP its gradients are all-reduced
        like the live path's.
        """
        cnn_inputs = getattr(batch, "cnn_inputs", None)
        if cnn_inputs is not None:  # a loader of with_cnn_cache
            return cnn_cache_forward(self.modules.model, self.cnn_cache(), cnn_inputs, self.device,
                                     utt_ids=list(batch.id), store=not self.train_crop_frames(stage))
        wavs, wav_lens = batch.sig
        keys = getattr(batch, "audio_key", None)  # hashed in the loader workers (make_dataset)
        wavs, wav_lens = wavs.to(self.device), wav_lens.to(self.device)
        if stage == sb.Stage.TRAIN:
            wavs, wav_lens = self.augment(wavs, wav_lens)
        cache = self.hidden_state_cache()
        if cache is not None:
            return cached_forward(self.modules.model, cache, list(batch.id), wavs, wav_lens, keys=keys)
        cnn_cache = self.cnn_cache()
        if cnn_cache is not None:  # a loader made elsewhere: hash and read here
            return cached_cnn_forward(self.modules.model, cnn_cache, list(batch.id), wavs, wav_lens,
                                      max_frames=self.train_crop_frames(stage), keys=keys)
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
        default ``exp/cnn_cache``), holds at most ``cnn_cache_max_gb`` (null: no cap; the ranks
        of a DDP run share what is left of it) and stops storing, with one warning, when that
        is reached or a write fails.
        """
        if not getattr(self.hparams, "cnn_cache", False):
            return None
        if not hasattr(self, "_cnn_cache"):
            root = getattr(self.hparams, "cnn_cache_dir", None) or Path(self.hparams.output_folder).parent / "cnn_cache"
            self._cnn_cache = CNNFeatureCache.for_model(root, unwrap(self.modules.model),
                                                        dtype=getattr(self.hparams, "cnn_cache_dtype", "float16"),
                                                        max_gb=getattr(self.hparams, "cnn_cache_max_gb", None),
                                                        writers=distributed_rank_world()[1])
        return self._cnn_cache

    def with_cnn_cache(self, dataset, stage, loader_kwargs: dict):
        """The dataset and loader options :meth:`make_dataloader` uses with ``cnn_cache: true``.

        Training and validation: first the cache is filled (:func:`elp.train.feature_cache.fill_cnn_cache`:
        whole utterances, batches of at most ``max_batch_seconds`` of padded audio and
        ``eval_batch_size`` utterances), then the loader workers read each utterance's cached
        frames (a random ``max_train_seconds`` crop in training) instead of its audio
        (:class:`elp.train.feature_cache.CachedCNNDataset`), so the training batches hold what
        their sampler counted: crops. Test: the workers hash each utterance and read its frames
        when cached. Unchanged without the cache, with the hidden-state cache in use, or for a
        dataset without ``sig``.

        Raises
        ------
        ValueError
            With ``augmentation`` (see :meth:`augment`).
        """
        cache = self.cnn_cache()
        outputs = getattr(getattr(dataset, "pipeline", None), "output_mapping", {})
        if cache is None or "sig" not in outputs or self.hidden_state_cache() is not None:
            return dataset, loader_kwargs
        if getattr(self.hparams, "augmentation", None) is not None:
            self.augment(None, None)  # refuses the cache with one line
        keys = None
        if stage != sb.Stage.TEST:
            keys = fill_cnn_cache(unwrap(self.modules.model).backbone, cache, dataset,
                                  max_batch_seconds=float(getattr(self.hparams, "max_batch_seconds", 200.0)),
                                  max_batch_size=int(getattr(self.hparams, "eval_batch_size", 64)),
                                  num_workers=int(loader_kwargs.get("num_workers") or 0), device=self.device).keys
        seconds = self.hparams.task.max_train_seconds if stage == sb.Stage.TRAIN else 0
        wrapped = CachedCNNDataset(dataset, cache, keys, max_frames=self.train_crop_frames(stage),
                                   max_samples=int(seconds * SAMPLE_RATE))
        return wrapped, {**loader_kwargs, "collate_fn": CNNCacheBatch}

    def train_crop_frames(self, stage=sb.Stage.TRAIN) -> int:
        """Backbone frames of the task's ``max_train_seconds`` (0: no cropping, or not ``stage`` TRAIN)."""
        seconds = self.hparams.task.max_train_seconds if stage == sb.Stage.TRAIN else 0
        if not seconds:
            return 0
        return int(unwrap(self.modules.model).backbone.num_frames(torch.tensor(int(seconds * SAMPLE_RATE))))

    def class_targets(self, batch) -> torch.Tensor:
        """Class ids [B] of the batch (its ``label_id``, padded [B, 1]) on the Brain's device."""
        return batch.label_id.data[:, 0].to(self.device)

    # ------------------------------------------------------------------ stages
    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)  # the non-finite guard's stage bookkeeping
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
            stage_loss = self.checked_train_loss()  # the guard's last check of the epoch
            self.train_wall_s = getattr(self, "train_wall_s", 0.0) + time.time() - self.stage_started
            self.train_stats = {"loss": stage_loss}
            return
        stats = {"loss": self._mean_over_ranks(stage_loss)}
        stats.update(self.stage_stats(stage))
        if stage == sb.Stage.VALID:
            self.log_stats(stats_meta={"epoch": epoch, **{f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups}},
                           train_stats=self.train_stats, valid_stats=stats)
            key, mode = self.hparams.task.valid_key, self.hparams.task.valid_key_mode
            meta = {key: stats[key], "train_wall_s": self.train_wall_s}
            self.checkpointer.save_and_keep_only(
                meta=meta, num_to_keep=1, **({"min_keys": [key]} if mode == "min" else {"max_keys": [key]}))
        elif stage == sb.Stage.TEST:
            self.log_stats(stats_meta={"epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats)
        self.last_stats = stats

    def log_stats(self, **stats) -> None:
        """Pass a stage's statistics to the hparams' ``train_logger``, then flush what it writes to.

        Any SpeechBrain ``TrainLogger`` works (only ``log_stats`` is called): ``FileTrainLogger``
        (``train_log.txt``), ``TensorboardLogger`` (event files; its ``SummaryWriter`` is
        flushed here, so an epoch's scalars are on disk when the epoch ends), ``WandBLogger``.
        """
        train_logger = self.hparams.train_logger
        train_logger.log_stats(**stats)
        flush = getattr(getattr(train_logger, "writer", None), "flush", None)
        if callable(flush):
            flush()

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
