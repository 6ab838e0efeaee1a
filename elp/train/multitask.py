"""Joint training of several tasks' adapters on one frozen backbone: the model and the recipe plumbing.

A joint recipe's YAML (``egs/multitask/*/conf/joint.yaml``) builds one frozen backbone, one
model per task on a view of it (:func:`task_model`), a :class:`JointModel` over them, and names
every task under ``tasks:`` (:data:`TASK_KEYS`: its Task object, data sets, inventory, modules,
loss, learning rates, weights, Brain class). :class:`elp.train.brains.multitask.JointBrain`
trains them together; ``recipes/train_multitask.py`` drives the stages.

One forward per mixed batch (:meth:`JointModel.forward`): the frozen CNN runs once for every
utterance; then, by what the tasks train inside the transformer (:meth:`JointModel.plan`):

* nothing (``weighted_sum``, ``l_only``): ONE pass of the shared frozen transformer, without
  autograd, for all of them;
* the same tensors (every group inside the transformer shared, ``shared: [e, ln, p]``): ONE pass
  of either model, with autograd;
* their own E/P/LoRA/prefix tensors: ONE routed pass (:class:`elp.core.routing.RoutedGroup`,
  the routing multi-task serving runs), each sample through its task's tensors;
* the encoder itself (``full``): each task's layers on its own samples.

Each task then reads the hidden states of its own samples with its L-adapters (or weights) and
head. Sharing (:func:`elp.core.routing.share_parameters`) ties learning-rate groups of the task
models, e.g. one set of E-adapters for every task.

Examples
--------
>>> from elp.core.backbones import SSLBackbone
>>> from elp.testing import tiny_config
>>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
>>> models = {name: task_model(backbone, "el", {"e_dim": 4, "l_dim": 8}) for name in ("er", "ic")}
>>> joint = JointModel(backbone, models, shared=["e"])
>>> joint.plan()
[('routed', ['er', 'ic'])]
>>> feats = joint(torch.randn(3, 8000), torch.ones(3), counts=[2, 1])
>>> [tuple(f.shape) for f, mask in feats]
[(2, 24, 8), (1, 24, 8)]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from elp.core.backbones import SSLBackbone
from elp.core.model import AdaptedSSL
from elp.core.routing import (RoutedGroup, backbone_view, encoder_from_features, encoder_options, encoder_tensors,
                              routable, route_key, share_parameters, unshare_learnable)
from elp.data.task_mixer import TaskConcatDataset, TaskEvalBatchSampler, TaskMixer
from elp.runtime import SAMPLE_RATE, UserError

logger = logging.getLogger(__name__)

#: keys of a task entry under ``tasks:`` -> whether it is required
TASK_KEYS: dict[str, bool] = {
    "task": True, "train_set": True, "valid_set": True, "test_sets": True, "lang_dir": True, "inventory": True,
    "modules": True, "loss": True, "brain_class": True, "corpus": True, "benchmark": True,
    "lr": False, "loss_weight": False, "mix_weight": False,
}
#: run options a single-task recipe takes that joint training refuses (with the reason)
UNSUPPORTED_OPTIONS = {
    "cnn_cache": "the joint forward runs the CNN once per mixed batch",
    "hidden_state_cache": "the joint forward shares one live pass",
    "augmentation": "tasks share the frozen passes of one batch",
}


def task_model(backbone: SSLBackbone, method: str, options: Mapping | None = None,
               task_options: Mapping | None = None) -> AdaptedSSL:
    """One task's :class:`AdaptedSSL` on a view of the shared ``backbone`` (its own learnable tensors).

    ``task_options`` (e.g. ``{"activation": "relu"}``) go on top of the common ``options``.
    The view's frozen tensors are the shared backbone's; what the method trains inside the
    backbone (per-layer LayerNorms, the layers of ``full``) is copied for this task.

    Examples
    --------
    >>> from elp.testing import tiny_config
    >>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
    >>> model = task_model(backbone, "el", {"e_dim": 4}, {"activation": "relu"})
    >>> model.options["activation"], model.backbone.layers[0].layer_norm.weight is backbone.layers[0].layer_norm.weight
    ('relu', False)
    """
    model = AdaptedSSL(backbone_view(backbone), method, {**(options or {}), **(task_options or {})})
    unshare_learnable(model, backbone)
    return model


class JointModel(nn.Module):
    """Several tasks' models on one frozen backbone, run as one forward per mixed batch.

    Parameters
    ----------
    backbone
        The shared frozen backbone (the one the task models' views were made of).
    models
        Task name -> :class:`AdaptedSSL` from :func:`task_model`, in task order.
    shared
        Learning-rate groups trained once for all tasks (:func:`elp.core.routing.share_parameters`),
        e.g. ``["e"]``; sharing every group that acts inside the transformer (``e``, ``ln``,
        ``p``, ...) gives the tasks one transformer pass.

    Raises
    ------
    ValueError
        A shared group no task trains, or tasks whose shared tensors differ in shape.
    """

    def __init__(self, backbone: SSLBackbone, models: Mapping[str, AdaptedSSL], shared: Sequence[str] = ()):
        super().__init__()
        if not models:
            raise ValueError("JointModel needs at least one task model")
        self.backbone = backbone.eval()
        self.models = nn.ModuleDict(dict(models))
        self.names = list(models)
        self.shared = list(shared or [])
        self.tied = share_parameters(list(self.models.values()), self.shared, names=self.names)
        self._groups = self._make_plan()
        self._routed: dict = {}

    def _make_plan(self) -> list[tuple[str, list[int]]]:
        models = list(self.models.values())
        frozen = [i for i, m in enumerate(models) if not m.method.backbone_needs_grad and m.hidden_states_cacheable]
        groups: list[tuple[str, list[int]]] = [("frozen", frozen)] if frozen else []
        rest = [i for i in range(len(models)) if i not in frozen]
        by_tensors: dict[tuple, list[int]] = {}
        for i in rest:  # the same tensor objects inside the transformer (every such group tied)
            model = models[i]
            key = (tuple(type(a).kind for a in model.attachments if a is not model.reader),
                   json.dumps(encoder_options(model), sort_keys=True, default=str),
                   tuple((name, id(t)) for name, t in encoder_tensors(model).items()))
            by_tensors.setdefault(key, []).append(i)
        single = []
        for indices in by_tensors.values():
            if len(indices) > 1:
                groups.append(("encoder", indices))
            else:
                single += indices
        by_route: dict[tuple, list[int]] = {}
        for i in sorted(single):
            if routable(models[i]):
                by_route.setdefault(route_key(models[i]), []).append(i)
        own = [i for i in single if not routable(models[i])]
        for indices in by_route.values():
            if len(indices) > 1:
                groups.append(("routed", indices))
            else:
                own += indices
        groups += [("own", [i]) for i in sorted(own)]
        return groups

    def plan(self) -> list[tuple[str, list[str]]]:
        """How the tasks share a batch: ``(kind, task names)`` with kind ``frozen`` (one pass of the
        shared frozen transformer), ``encoder`` (one pass of tied tensors), ``routed`` (one routed
        pass) or ``own`` (the task's own layers)."""
        return [(kind, [self.names[i] for i in indices]) for kind, indices in self._groups]

    def train(self, mode: bool = True) -> JointModel:
        super().train(mode)
        self.backbone.eval()  # the shared frozen pass never trains
        return self

    def _routed_group(self, indices: list[int], device) -> RoutedGroup:
        key = (tuple(indices), str(device))
        if key not in self._routed:  # made after the modules moved to their device
            self._routed[key] = RoutedGroup(self.backbone, [self.models[self.names[i]] for i in indices])
        return self._routed[key]

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor, counts: Sequence[int],
                sources: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Each task's (features [n_t, F, D_t], frame_mask [n_t, F]) of a task-major batch.

        Parameters
        ----------
        wavs
            [U, T] waveforms at 16 kHz: with ``sources`` None, one per utterance (``counts[0]`` of
            the first task, then the second's, ...); else the batch's distinct waveforms.
        wav_lens
            [U] relative lengths.
        counts
            Utterances per task (one number per task, in task order; zeros allowed).
        sources
            [B] (B = ``sum(counts)``): the row of ``wavs`` of each utterance
            (:attr:`elp.data.task_mixer.MixedBatch.sources`). Utterances of several tasks on one
            waveform share its CNN pass, and its transformer pass where their tasks share one
            (``frozen`` and ``encoder`` groups of :meth:`plan`).

        Returns
        -------
        list
            Per task, its features and frame mask, or None when it has no utterance here.
        """
        counts = [int(c) for c in counts]
        if sources is None:
            sources = torch.arange(wavs.shape[0], device=wavs.device)
        sources = sources.to(wavs.device)
        if len(counts) != len(self.names) or sum(counts) != sources.shape[0]:
            raise ValueError(f"counts {counts} do not lay out a batch of {sources.shape[0]} over tasks {self.names}")
        lengths = self.backbone.sample_lengths(wavs, wav_lens)
        with torch.no_grad():
            cnn, frame_mask = self.backbone.extract_cnn_features(wavs, lengths)
        starts = [sum(counts[:t]) for t in range(len(counts))]
        outputs: list = [None] * len(counts)
        for kind, indices in self._groups:
            present = [i for i in indices if counts[i]]
            if not present:
                continue
            rows = torch.cat([torch.arange(starts[i], starts[i] + counts[i], device=cnn.device) for i in present])
            waveform_rows = sources.index_select(0, rows)
            models = [self.models[self.names[i]] for i in present]
            if kind in ("own", "routed"):  # each utterance through its own task's tensors
                features, mask = cnn.index_select(0, waveform_rows), frame_mask.index_select(0, waveform_rows)
            if kind == "own":
                outputs[present[0]] = models[0].forward_from_cnn_features(features, mask.sum(1))
                continue
            if kind == "routed":
                group = self._routed_group(indices, cnn.device)
                read = dict(zip(indices, group.features(features, mask, counts=[counts[i] for i in indices])))
                start = 0
                for i in present:
                    outputs[i] = (read[i], mask[start:start + counts[i]])
                    start += counts[i]
                continue
            # one transformer pass per distinct waveform, read by every task of the group
            distinct, inverse = torch.unique(waveform_rows, return_inverse=True)
            features, mask = cnn.index_select(0, distinct), frame_mask.index_select(0, distinct)
            if kind == "frozen":
                with torch.no_grad():
                    hidden_states, last = encoder_from_features(self.backbone, features, mask)
            else:  # tied tensors: one pass of the first model
                hidden_states, last = encoder_from_features(models[0].backbone, features, mask,
                                                            **models[0].backbone_inputs())
            start = 0
            for i, model in zip(present, models):
                picked = inverse[start:start + counts[i]]
                outputs[i] = (model.read_hidden_states([h.index_select(0, picked) for h in hidden_states],
                                                       last.index_select(0, picked)), mask.index_select(0, picked))
                start += counts[i]
        return outputs


# ------------------------------------------------------------------------------ recipe plumbing
def check_joint_hparams(hparams: Mapping) -> None:
    """Refuse a joint recipe's hparams that cannot run, one line each (:class:`elp.runtime.UserError`).

    Every task entry needs the keys of :data:`TASK_KEYS` (and no others); the run options of
    :data:`UNSUPPORTED_OPTIONS` are refused.
    """
    tasks = hparams.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        raise UserError(f"{hparams.get('hparams_file', 'the hparams')}: 'tasks' must map task names to their entries")
    for name, spec in tasks.items():
        if not isinstance(spec, Mapping):
            raise UserError(f"tasks.{name}: must be a mapping with the keys {', '.join(TASK_KEYS)}")
        missing = [key for key, required in TASK_KEYS.items() if required and key not in spec]
        unknown = sorted(set(spec) - set(TASK_KEYS))
        if missing or unknown:
            raise UserError(f"tasks.{name}: " + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else []) +
                ([f"unknown {', '.join(unknown)} (valid: {', '.join(TASK_KEYS)})"] if unknown else [])))
        if "model" not in spec["modules"] or "head" not in spec["modules"]:
            raise UserError(f"tasks.{name}.modules: needs 'model' and 'head'")
    for option, reason in UNSUPPORTED_OPTIONS.items():
        if hparams.get(option):
            raise UserError(f"{option} is not available in joint training ({reason}); set {option}: "
                            f"{'null' if option == 'augmentation' else 'false'}")


def joint_modules(hparams: Mapping) -> dict[str, nn.Module]:
    """The Brain's modules: ``joint`` (the :class:`JointModel`) and every task's other modules as ``<task>_<name>``."""
    modules = {"joint": hparams["joint_model"]}
    for name, spec in hparams["tasks"].items():
        modules.update({f"{name}_{key}": module for key, module in spec["modules"].items() if key != "model"})
    return modules


def task_output_dir(hparams: Mapping, name: str) -> Path:
    """A task's outputs of a joint run: ``<output_folder>/<task>`` (package, decodes, results)."""
    return Path(hparams["output_folder"]) / name


def joint_dataset(hparams: Mapping, split: str) -> TaskConcatDataset:
    """The tasks' ``train_set`` (``split="train"``) or ``valid_set`` as one :class:`TaskConcatDataset`."""
    key = "train_set" if split == "train" else "valid_set"
    datasets = []
    for spec in hparams["tasks"].values():
        datasets.append(spec["task"].dataset(spec[key], split, spec["inventory"],
                                             allow_shell_pipes=bool(hparams.get("allow_shell_pipes", False))))
    return TaskConcatDataset(datasets)


def _task_lengths(dataset, crop_seconds: float) -> list[int]:
    """A task dataset's utterance lengths in samples (training crops counted at their cropped length)."""
    lengths = [int(dataset.data[i]["num_samples"]) for i in dataset.data_ids]
    crop = int(crop_seconds * SAMPLE_RATE)
    return [min(n, crop) for n in lengths] if crop else lengths


def _audio_keys(dataset) -> list[tuple]:
    """A task dataset's audio identity per utterance: its ``wav.scp`` entry and segment (if any)."""
    return [(entry["wav"], entry.get("start"), entry.get("end"))
            for entry in (dataset.data[i] for i in dataset.data_ids)]


def joint_loader_kwargs(hparams: Mapping, dataset: TaskConcatDataset, train: bool) -> dict:
    """DataLoader options of a joint dataset: the task mixer (training) or per-task eval batches.

    Training: :class:`elp.data.task_mixer.TaskMixer` with each task's ``mix_weight``, the
    hparams' ``mix_temperature`` and ``epoch_size`` (null: all utterances), fixed batches of
    ``batch_size`` or, with dynamic batching, duration-capped ones (``max_batch_seconds``,
    ``max_batch_utterances``) as in single-task recipes (:func:`elp.train.recipe.loader_kwargs`);
    tasks labelled on the same recordings get them in the same batches (the mixer's
    ``audio_keys``: one backbone pass per recording, and the caps count recordings). Evaluation: :class:`elp.data.task_mixer.TaskEvalBatchSampler` (``eval_max_batch_seconds``,
    ``eval_batch_size``).
    """
    from elp.train.recipe import GPU_MAX_BATCH_UTTERANCES

    cuda = str(hparams.get("device", "cpu")).startswith("cuda")
    workers = hparams["num_workers"]
    workers = (4 if cuda else 0) if workers == "auto" else int(workers)
    common = {"num_workers": workers, "pin_memory": cuda, "collate_fn": dataset.collate,
              "generator": torch.Generator().manual_seed(int(hparams["seed"]))}
    if workers and train:
        common["persistent_workers"] = True
    specs = list(hparams["tasks"].values())
    lengths = [_task_lengths(data, spec["task"].max_train_seconds if train else 0.0)
               for data, spec in zip(dataset.datasets, specs)]
    audio_keys = [_audio_keys(data) for data in dataset.datasets]
    if not train:
        return {"batch_sampler": TaskEvalBatchSampler(lengths, hparams["eval_max_batch_seconds"],
                                                      hparams["eval_batch_size"], audio_keys=audio_keys), **common}
    dynamic = hparams["dynamic_batching"]
    dynamic = cuda if dynamic == "auto" else bool(dynamic)
    cap = hparams["max_batch_utterances"]
    cap = (GPU_MAX_BATCH_UTTERANCES if cuda else hparams["batch_size"]) if cap == "auto" else int(cap)
    mixer = TaskMixer(lengths, weights=[float(spec.get("mix_weight", 1.0)) for spec in specs],
                      temperature=hparams.get("mix_temperature"), epoch_size=hparams.get("epoch_size"),
                      max_batch_seconds=hparams["max_batch_seconds"] if dynamic else None,
                      max_batch_size=cap if dynamic else int(hparams["batch_size"]),
                      num_buckets=hparams["num_buckets"], seed=int(hparams["seed"]),
                      audio_keys=audio_keys)
    return {"batch_sampler": mixer, **common}
