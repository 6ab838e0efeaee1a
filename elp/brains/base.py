"""What every ELP Brain shares: per-group learning rates, cost accounting, checkpoints."""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import speechbrain as sb
import torch

from elp.feature_cache import HiddenStateCache, cached_forward
from elp.methods import PARAMETER_GROUPS

logger = logging.getLogger(__name__)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP/DP wrapper (or the module itself)."""
    return getattr(module, "module", module)


def peak_memory_mb(device: str | torch.device) -> float:
    """Peak memory of this process: CUDA max allocated, or peak RSS on CPU (MiB)."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ELPBrain(sb.Brain):
    """Base Brain: ``modules`` holds ``model`` (:class:`elp.model.AdaptedSSL`) and ``head``.

    Hparams it reads
    ----------------
    lr: dict, learning rate per parameter group (``head``, ``e``, ``l``, ``p``, ``ln``, ``lora``,
        ``prefix``, ``backbone``); a group without an entry is an error.
    train_logger: a SpeechBrain ``FileTrainLogger``.
    valid_key: name of the validation statistic that selects the best checkpoint.
    valid_key_mode: ``"min"`` or ``"max"``.

    Subclasses implement :meth:`compute_forward`, :meth:`compute_objectives`, the per-stage
    statistics (:meth:`stage_stats`) and inference (:meth:`predict`).
    """

    def on_fit_start(self):
        super().on_fit_start()  # recovers the latest checkpoint, if any
        # training time already spent by an interrupted run (stored in end-of-epoch checkpoints)
        checkpoints = self.checkpointer.list_checkpoints() if self.checkpointer is not None else []
        self.train_wall_s = max([c.meta.get("train_wall_s", 0.0) for c in checkpoints], default=0.0)

    # ------------------------------------------------------------------ optimisation
    def init_optimizers(self):
        """Adam with one parameter group (and learning rate) per group of :mod:`elp.methods`."""
        lrs = dict(self.hparams.lr)
        unknown = set(lrs) - set(PARAMETER_GROUPS)
        if unknown:
            raise ValueError(f"lr has unknown groups {sorted(unknown)}; groups are {PARAMETER_GROUPS}")
        groups = dict(unwrap(self.modules.model).parameter_groups())
        groups["head"] = self.head_parameters()
        param_groups = []
        for name, params in groups.items():
            if name not in lrs:
                raise ValueError(f"no learning rate for parameter group {name!r}: add lr.{name} to the hparams")
            param_groups.append({"params": params, "lr": lrs[name], "name": name})
            logger.info("parameter group %-8s %10d parameters, lr %g", name, sum(p.numel() for p in params), lrs[name])
        self.optimizer = torch.optim.Adam(param_groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def head_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters of the task head (the ``head`` learning-rate group)."""
        return [p for p in unwrap(self.modules.head).parameters() if p.requires_grad]

    def learnable_parameter_count(self) -> int:
        """Learnable parameters of adapters/backbone plus the head."""
        model = unwrap(self.modules.model)
        return sum(p.numel() for p in model.learnable_parameters().values()) + \
            sum(p.numel() for p in self.head_parameters())

    # ------------------------------------------------------------------ features
    def features(self, batch, stage):
        """Waveforms of the batch -> (feats [B, F, D], frame_mask [B, F]).

        With ``hidden_state_cache: true`` in the hparams, methods whose backbone is frozen and
        un-adapted (``weighted_sum``, ``l_only``) read the backbone's hidden states from an
        on-disk cache after the first epoch (:mod:`elp.feature_cache`); it is refused when
        training crops audio at random (the cached states would not match).
        """
        wavs, wav_lens = batch.sig
        wavs, wav_lens = wavs.to(self.device), wav_lens.to(self.device)
        cache = self.hidden_state_cache()
        if cache is not None:
            return cached_forward(unwrap(self.modules.model), cache, list(batch.id), wavs, wav_lens)
        return self.modules.model(wavs, wav_lens)

    def hidden_state_cache(self) -> HiddenStateCache | None:
        """The hidden-state cache when the hparams ask for one and the method allows it."""
        if not getattr(self.hparams, "hidden_state_cache", False):
            return None
        if not hasattr(self, "_hidden_state_cache"):
            model = unwrap(self.modules.model)
            if getattr(self.hparams, "max_train_seconds", 0):
                raise ValueError("hidden_state_cache needs whole utterances: set max_train_seconds: 0")
            self._hidden_state_cache = None
            if model.hidden_states_cacheable:
                self._hidden_state_cache = HiddenStateCache.for_model(
                    Path(self.hparams.output_folder) / "hidden_state_cache", model, dtype="float16")
            else:
                logger.info("hidden_state_cache: method %s trains inside the backbone; not cached",
                            model.method.name)
        return self._hidden_state_cache

    def class_targets(self, batch) -> torch.Tensor:
        """[B] class ids of the batch (``label_id``, one per utterance)."""
        return batch.label_id.data[:, 0].to(self.device)

    # ------------------------------------------------------------------ stages
    def on_stage_start(self, stage, epoch=None):
        self.stage_started = time.time()
        self.reset_stats(stage)

    def reset_stats(self, stage):
        """Start collecting this stage's statistics (subclasses)."""

    def stage_stats(self, stage) -> dict:
        """Statistics of the finished stage besides the loss (subclasses)."""
        return {}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_wall_s = getattr(self, "train_wall_s", 0.0) + time.time() - self.stage_started
            self.train_stats = stats
            return
        stats.update(self.stage_stats(stage))
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr_head": self.optimizer.param_groups[-1]["lr"]},
                train_stats=self.train_stats, valid_stats=stats)
            key, mode = self.hparams.valid_key, self.hparams.valid_key_mode
            meta = {key: stats[key], "train_wall_s": self.train_wall_s}
            self.checkpointer.save_and_keep_only(
                meta=meta, num_to_keep=1, **({"min_keys": [key]} if mode == "min" else {"max_keys": [key]}))
        elif stage == sb.Stage.TEST:
            self.hparams.train_logger.log_stats(stats_meta={"epoch loaded": self.hparams.epoch_counter.current},
                                                test_stats=stats)
        self.last_stats = stats

    def predict(self, dataset, loader_kwargs: dict) -> dict:
        """Run inference over ``dataset``; returns what the task writes in stage 4."""
        raise NotImplementedError

    def eval_batches(self, dataset, loader_kwargs: dict):
        """Yield (batch, feats, frame_mask) over ``dataset`` in eval mode without autograd."""
        loader = self.make_dataloader(dataset, sb.Stage.TEST, **loader_kwargs)
        self.modules.eval()
        with torch.no_grad():
            for batch in loader:
                feats, frame_mask = self.features(batch, sb.Stage.TEST)
                yield batch, feats, frame_mask
