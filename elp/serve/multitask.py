"""Several tasks served by one frozen backbone.

:class:`MultiTask` loads N model packages trained on the same backbone (same
``weights_sha256``; others are refused) and runs a batch of audio through all of them:

* the frozen CNN runs once per utterance for every task;
* tasks whose method trains nothing inside the backbone (``weighted_sum``, ``l_only``) read
  ONE shared pass of the transformer (their L-adapters / layer weights differ, not the
  hidden states);
* tasks whose tensors inside the transformer are identical (packages trained jointly with
  shared E-adapters and LayerNorms, :func:`elp.core.routing.encoder_fingerprint`) read ONE pass
  of the first one's model: only their L-adapters and heads differ;
* other tasks that change the encoder through E-adapters (FFN or MHSA), LayerNorms, the P-adapter,
  deep prefixes or LoRA (every method but ``full``) with the same numbers of prompt and
  prefix frames share ONE batch: every utterance once per task, routed per sample (each
  sample's LayerNorms use its task's parameters, each task's adapters, prefixes and LoRA
  terms apply to its samples) (:class:`elp.core.routing.RoutedGroup`);
* full fine-tuning runs its own transformer
  layers from the shared CNN features. Each task that changes the encoder holds a *view* of
  the backbone: a structural copy whose frozen tensors are the shared backbone's tensors
  (same storage), with its own adapters, LayerNorms and LoRA factors. Memory is therefore one
  backbone plus each task's learnable tensors.

Every task predicts through its own prediction path (:meth:`elp.tasks.base.Task.predict_batch`,
the one stage 4 and :class:`elp.serve.inference.Predictor` run) with an ``encode`` that, for the
batch being served, hands out the task's features from the shared computation above; any other
batch the task encodes (speaker verification: the windows of long utterances) runs the task's
own model (its backbone view). Each task's results equal the task run alone to float rounding.

Examples
--------
>>> import tempfile
>>> from elp.testing import make_tiny_package
>>> from elp.testing import save_tiny_checkpoint
>>> ckpt = save_tiny_checkpoint("wavlm", tempfile.mkdtemp())
>>> dirs = [make_tiny_package(tempfile.mkdtemp(), task=t, method=m, backbone_dir=ckpt)
...         for t, m in [("classify", "l_only"), ("asr", "weighted_sum"), ("sv", "elp")]]
>>> tasks = MultiTask(dirs)
>>> tasks.plan()
{'shared_pass': [0, 1], 'routed_batches': [], 'own_layers': [2]}
>>> results = tasks.run([np.zeros(16000), np.zeros(8000)], sample_rate=16000)
>>> len(results), len(results[0])
(2, 3)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np  # noqa: F401  (doctest namespace)
import torch
from torch import nn

from elp.core.methods import get_method
from elp.core.routing import (RoutedGroup, backbone_view, encoder_fingerprint, encoder_from_features, routable,
                              route_key, unshare_learnable)
from elp.serve.inference import (MAX_BATCH_SECONDS, Predictor, _progress, as_batch, pad_batch, predictor_for,
                                 stream_batches, waveform_loader)
from elp.serve.package import (BackboneHashMismatchError, Package, build_head, build_model, check_loadable,
                               load_inventory, load_package_backbone, load_weights, stores_frozen_backbone)


class MixedBackbonesError(BackboneHashMismatchError):
    """Packages trained on different backbone weights were given to serve together.

    The message is one line: what differs, and the fix for the caller that raised it (Python:
    one :class:`MultiTask` per backbone). A front-end gives its own fix with :meth:`with_advice`.

    Parameters
    ----------
    mismatch
        Which packages differ and their backbones (name, weights sha256), without a fix.
    groups
        Every package given, grouped by backbone weights (first-seen order of backbones and of
        packages within one).
    advice
        The fix that ends the message.

    Examples
    --------
    >>> err = MixedBackbonesError("b was trained on 'x' but a on 'y'", [[Path("a")], [Path("b")]])
    >>> str(err)
    "b was trained on 'x' but a on 'y'; one backbone serves only packages trained on the same weights: run them in separate MultiTask objects, one per backbone"
    >>> str(err.with_advice("run one command per backbone"))
    "b was trained on 'x' but a on 'y'; one backbone serves only packages trained on the same weights: run one command per backbone"
    """

    def __init__(self, mismatch: str, groups: Sequence[Sequence[Path]],
                 advice: str = "run them in separate MultiTask objects, one per backbone"):
        self.mismatch = mismatch
        self.groups = [list(group) for group in groups]
        self.advice = advice
        super().__init__(f"{mismatch}; one backbone serves only packages trained on the same weights: {advice}")

    def with_advice(self, advice: str) -> MixedBackbonesError:
        """Return the same refusal ending with another fix (one line)."""
        return MixedBackbonesError(self.mismatch, self.groups, advice)


def _by_backbone(directories: Sequence[Path], configs: Sequence[dict]) -> list[list[Path]]:
    """Group package directories by the backbone weights they were trained on (first-seen order)."""
    groups: dict[str, list[Path]] = {}
    for directory, config in zip(directories, configs):
        groups.setdefault(config["backbone"]["weights_sha256"], []).append(directory)
    return list(groups.values())


class MultiTask:
    """N model packages on one frozen backbone.

    Parameters
    ----------
    directories
        Model packages; all must record the same backbone ``weights_sha256`` (others raise
        :class:`MixedBackbonesError`).
    backbone_source
        Checkpoint directory or hub id of the backbone (default: the recorded source, or the
        stored backbone of a package whose stored weights are the frozen ones, in any order:
        a ``full`` package's stored backbone holds its trained layers and never serves others).
    route
        Share routed batches between routable tasks.
    trust_head_module
        Modules of user heads the packages hold that may run (:mod:`elp.serve.head_registry`).
    """

    def __init__(self, directories: Sequence[str | os.PathLike], backbone_source: str | None = None,
                 device: str | torch.device = "cpu", route: bool = True,
                 trust_head_module: str | Sequence[str] | None = None):
        directories = [Path(d) for d in directories]
        if not directories:
            raise ValueError("MultiTask needs at least one package directory")
        trusted = [trust_head_module] if isinstance(trust_head_module, str) else list(trust_head_module or [])
        configs = [check_loadable(d) for d in directories]
        reference = configs[0]["backbone"]["weights_sha256"]
        for directory, config in zip(directories, configs):
            if config["backbone"]["weights_sha256"] != reference:
                raise MixedBackbonesError(
                    f"{directory} was trained on backbone {config['backbone']['name']!r} with weights sha256 "
                    f"{config['backbone']['weights_sha256'][:12]}... but {directories[0]} on "
                    f"{configs[0]['backbone']['name']!r} ({reference[:12]}...)",
                    _by_backbone(directories, configs))
        lender = next((i for i, config in enumerate(configs) if stores_frozen_backbone(config)), 0)
        heads = [self._build_head(config, directory, trusted) for directory, config in zip(directories, configs)]
        self.backbone = load_package_backbone(directories[lender], backbone_source, configs[lender]).to(device)
        self.backbone.eval()
        self.predictors: list[Predictor] = []
        self.shares_pass: list[bool] = []
        for directory, config, head in zip(directories, configs, heads):
            frozen_inside = not get_method(config["method"]).backbone_needs_grad
            if frozen_inside:
                model = build_model(config, self.backbone, directory)
            else:
                model = build_model(config, backbone_view(self.backbone), directory)
                unshare_learnable(model, self.backbone)
            load_weights(directory, model, head)
            if frozen_inside and not model.hidden_states_cacheable:
                raise ValueError(f"{directory}: method {config['method']} keeps backbone dropout; cannot share")
            tokenizer, labels = load_inventory(directory, config)
            package = Package(directory, config, model, head, tokenizer, labels, config.get("extra", {}))
            self.predictors.append(predictor_for(package.to(device)))
            self.shares_pass.append(frozen_inside)
        self.names = _unique_names([p.package.name for p in self.predictors])
        self.device = torch.device(device)
        # tasks with identical tensors inside the transformer share one pass of it (2+ per group)
        by_encoder: dict[str, list[int]] = {}
        for index, predictor in enumerate(self.predictors):
            if not self.shares_pass[index] and routable(predictor.package.model):
                by_encoder.setdefault(encoder_fingerprint(predictor.package.model), []).append(index)
        self.encoder_groups: list[list[int]] = [indices for indices in by_encoder.values() if len(indices) > 1]
        in_encoder_group = {i for indices in self.encoder_groups for i in indices}
        # other routable tasks with the same prompt and prefix lengths share one routed batch (2+ per group)
        self.groups: list[tuple[list[int], RoutedGroup]] = []
        if route:
            by_key: dict[tuple[int, int], list[int]] = {}
            for index, predictor in enumerate(self.predictors):
                model = predictor.package.model
                if not self.shares_pass[index] and index not in in_encoder_group and routable(model):
                    by_key.setdefault(route_key(model), []).append(index)
            for indices in by_key.values():
                if len(indices) > 1:
                    models = [self.predictors[i].package.model for i in indices]
                    self.groups.append((indices, RoutedGroup(self.backbone, models)))

    @staticmethod
    def _build_head(config: dict, directory: Path, trusted: list[str]) -> nn.Module:
        module = config["head"].get("module")
        name = module.get("name") if isinstance(module, dict) and module.get("name") in trusted else None
        return build_head(config, directory, name)

    def plan(self) -> dict[str, list]:
        """Return which tasks read the shared transformer pass, share routed batches, or run their own layers.

        ``shared_encoder`` (present when there are any): groups of tasks with identical tensors
        inside the transformer, each group reading one pass.
        """
        routed = {i for indices, _ in self.groups for i in indices}
        routed |= {i for indices in self.encoder_groups for i in indices}
        plan = {"shared_pass": [i for i, s in enumerate(self.shares_pass) if s],
                "routed_batches": [list(indices) for indices, _ in self.groups],
                "own_layers": [i for i, s in enumerate(self.shares_pass) if not s and i not in routed]}
        if self.encoder_groups:
            plan["shared_encoder"] = [list(indices) for indices in self.encoder_groups]
        return plan

    def tensor_bytes(self) -> int:
        """Return the bytes of every distinct tensor storage the loaded tasks hold.

        Backbone, views, heads and routed groups: the memory bound "one backbone + each task's
        learnable tensors" in tensor terms, without the allocator's and Python's overhead.
        """
        modules = [self.backbone.model] + [m for p in self.predictors for m in (p.package.model, p.package.head)]
        extra = [t for _, group in self.groups for norm in group.norms for t in norm.task_weights + norm.task_biases]
        return unique_tensor_bytes(modules, extra)

    def learnable_tensor_bytes(self) -> list[int]:
        """Return the bytes each task holds beyond the shared backbone (learnable tensors + head)."""
        sizes = []
        for predictor in self.predictors:
            model, head = predictor.package.model, predictor.package.head
            tensors = list(model.learnable_parameters().values()) + list(head.state_dict().values())
            sizes.append(sum(t.numel() * t.element_size() for t in tensors))
        return sizes

    @torch.no_grad()
    def forward_batch(self, waves: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Return per task, per utterance outputs of 16 kHz waveforms [T_i] as one padded batch.

        Each task runs its prediction path (:meth:`elp.tasks.base.Task.predict_batch`) with the
        encoder of :meth:`encoders`.
        """
        batch, rel_lengths = pad_batch(waves)
        batch, rel_lengths = batch.to(self.device), rel_lengths.to(self.device)
        return [predictor.task.predict_batch(encode, predictor.package.head, batch, rel_lengths)
                for predictor, encode in zip(self.predictors, self.encoders(batch, rel_lengths))]

    def encoders(self, batch: torch.Tensor, rel_lengths: torch.Tensor) -> list:
        """Return one ``encode(wavs, wav_lens) -> (feats, frame_mask)`` per task, in task order, for one served batch.

        For ``batch`` [B, T] and ``rel_lengths`` [B] themselves, a task's features come from the
        computation the tasks share, each part run at most once and only when a task asks for it:
        the CNN, the one transformer pass of the frozen-inside tasks, the pass of each group of
        tasks with one encoder, each routed group's batch.
        Any other input is encoded by the task's own model.
        """
        computed: dict = {}

        def cnn():
            if "cnn" not in computed:  # once for all tasks
                lengths = self.backbone.sample_lengths(batch, rel_lengths)
                computed["cnn"] = self.backbone.extract_cnn_features(batch, lengths)
            return computed["cnn"]

        def features_of(index: int) -> torch.Tensor:
            model = self.predictors[index].package.model
            features, frame_mask = cnn()
            group = next(((indices, g) for indices, g in self.groups if index in indices), None)
            if group is not None:
                indices, routed = group
                if ("group", id(routed)) not in computed:  # one routed batch for its tasks
                    computed[("group", id(routed))] = dict(zip(indices, routed.features(features, frame_mask)))
                return computed[("group", id(routed))][index]
            if self.shares_pass[index]:
                if "shared" not in computed:  # once for all frozen-inside tasks
                    computed["shared"] = encoder_from_features(self.backbone, features, frame_mask)[0]
                return model.forward_from_hidden_states(computed["shared"], frame_mask)[0]
            indices = next((indices for indices in self.encoder_groups if index in indices), None)
            if indices is not None:
                if ("encoder", indices[0]) not in computed:  # once for the tasks of one encoder
                    first = self.predictors[indices[0]].package.model
                    computed[("encoder", indices[0])] = encoder_from_features(
                        first.backbone, features, frame_mask, **first.backbone_inputs())
                return model.read_hidden_states(*computed[("encoder", indices[0])])
            hidden_states, last = encoder_from_features(model.backbone, features, frame_mask,
                                                        **model.backbone_inputs())
            return model.read_hidden_states(hidden_states, last)

        def encoder(index: int):
            model = self.predictors[index].package.model

            def encode(wavs: torch.Tensor, wav_lens: torch.Tensor):
                if wavs is batch and wav_lens is rel_lengths:
                    return features_of(index), cnn()[1]
                return model(wavs, wav_lens)  # another batch (windows): the task's own model

            return encode

        return [encoder(index) for index in range(len(self.predictors))]

    def outputs(self, wavs, sample_rate: int | None = None, batch_size: int = 8,
                progress: bool | None = None, max_batch_seconds: float | None = MAX_BATCH_SECONDS,
                names: Sequence[str] | None = None) -> list[list[torch.Tensor]]:
        """Return ``outputs[task][input]`` head outputs (input order); inputs are read lazily per batch.

        Options as in :meth:`elp.serve.inference.Predictor.outputs`, except that a routed batch holds
        every utterance once per task of its group, so ``max_batch_seconds`` counts samples x tasks
        (:meth:`batch_seconds`).
        """
        items = list(wavs)
        load = waveform_loader(sample_rate, self.backbone.receptive_field)
        results = [[None] * len(items) for _ in self.predictors]
        bar = _progress(len(items), progress, "tasks")
        for indices, waves in stream_batches(items, load, batch_size, self.batch_seconds(max_batch_seconds), names):
            for task, task_outputs in enumerate(self.forward_batch(waves)):
                for index, out in zip(indices, task_outputs):
                    results[task][index] = out
            if bar is not None:
                bar.update(len(indices))
        if bar is not None:
            bar.close()
        return results

    def batch_seconds(self, max_batch_seconds: float | None) -> float | None:
        """Return the cap on a served batch's padded seconds.

        It keeps each routed batch (utterances x tasks of the largest group) within ``max_batch_seconds``.
        """
        if max_batch_seconds is None:
            return None
        widest = max([len(indices) for indices, _ in self.groups], default=1)
        return max_batch_seconds / widest

    def run(self, wavs, sample_rate: int | None = None, batch_size: int = 8, beam_size: int | None = None,
            progress: bool | None = None, max_batch_seconds: float | None = MAX_BATCH_SECONDS):
        """Run every task on one input (-> dict task name -> result) or a list (-> one dict per input).

        Results are what the single-task API returns (:meth:`elp.serve.inference.Predictor.result`):
        text, a classification, or an embedding. ``beam_size``: ASR tasks' CTC beam (default: greedy);
        the other options as in :meth:`outputs`.
        """
        items, single = as_batch(wavs)
        per_task = self.outputs(items, sample_rate, batch_size, progress, max_batch_seconds)
        results = [{name: predictor.result(per_task[t][i], beam_size=beam_size)
                    for t, (name, predictor) in enumerate(zip(self.names, self.predictors))}
                   for i in range(len(items))]
        return results[0] if single else results


def unique_tensor_bytes(modules: Sequence[nn.Module], tensors: Sequence[torch.Tensor] = ()) -> int:
    """Return the bytes of the distinct storages behind the modules' parameters and buffers (and ``tensors``).

    Tensors that share a storage (a backbone view's frozen weights, a ``detach()``) count once.

    Examples
    --------
    >>> shared = nn.Linear(4, 4)
    >>> twin = nn.Linear(4, 4)
    >>> twin.weight, twin.bias = shared.weight, shared.bias
    >>> unique_tensor_bytes([shared, twin]) == 4 * (16 + 4)
    True
    """
    storages: dict[int, int] = {}
    for tensor in [t for m in modules for t in (*m.parameters(), *m.buffers())] + list(tensors):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}#{count + 1}")
    return unique
