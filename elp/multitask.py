"""Several tasks served by one frozen backbone.

:class:`MultiTask` loads N model packages trained on the same backbone (same
``weights_sha256``; others are refused) and runs a batch of audio through all of them:

* the frozen CNN runs once per utterance for every task;
* tasks whose method trains nothing inside the backbone (``weighted_sum``, ``l_only``) read
  ONE shared pass of the transformer (their L-adapters / layer weights differ, not the
  hidden states);
* tasks that change the encoder through E-adapters (FFN or MHSA), LayerNorms, the P-adapter,
  deep prefixes or LoRA (every method but ``full``) with the same numbers of prompt and
  prefix frames share ONE batch: every utterance once per task, routed per sample (each
  sample's LayerNorms use its task's parameters, each task's adapters, prefixes and LoRA
  terms apply to its samples) (:class:`RoutedGroup`);
* full fine-tuning runs its own transformer
  layers from the shared CNN features. Each task that changes the encoder holds a *view* of
  the backbone: a structural copy whose frozen tensors are the shared backbone's tensors
  (same storage), with its own adapters, LayerNorms and LoRA factors. Memory is therefore one
  backbone plus each task's learnable tensors.

Each task's results equal the task run alone (:class:`elp.inference.Predictor`) to float
rounding.

Examples
--------
>>> import tempfile
>>> from elp.package import make_tiny_package
>>> from elp.testing import save_tiny_checkpoint
>>> ckpt = save_tiny_checkpoint("wavlm", tempfile.mkdtemp())
>>> dirs = [make_tiny_package(tempfile.mkdtemp(), task=t, method=m, backbone_dir=ckpt)
...         for t, m in [(CLASSIFY, "l_only"), (ASR, "weighted_sum"), (SV, "elp")]]
>>> tasks = MultiTask(dirs)
>>> tasks.plan()
{'shared_pass': [0, 1], 'routed_batches': [], 'own_layers': [2]}
>>> results = tasks.run([np.zeros(16000), np.zeros(8000)], sample_rate=16000)
>>> len(results), len(results[0])
(2, 3)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np  # noqa: F401  (doctest namespace)
import torch
from torch import nn
from torch.nn.utils import parametrize

from elp.backbones import SSLBackbone
from elp.inference import Predictor, _progress, as_batch, check_lengths, length_batches, load_waveform, pad_batch
from elp.methods import get_method
from elp.model import AdaptedSSL, adapter_site_module
from elp.package import (BackboneHashMismatchError, Package, build_head, build_model, load_inventory,
                         load_package_backbone, load_weights, read_package_config)
from elp.tasks import ASR, CLASSIFY, SV


def backbone_view(backbone: SSLBackbone) -> SSLBackbone:
    """A structural copy of ``backbone`` whose parameters and buffers ARE the original's tensors.

    Adapters attached to the view (hooks, LoRA parametrizations) do not touch the original;
    parameters that a method trains must be un-shared before loading (:func:`unshare_learnable`).

    Parameters
    ----------
    backbone : SSLBackbone
        The shared frozen backbone.

    Returns
    -------
    SSLBackbone
        The view (same weight storage, own modules).

    Examples
    --------
    >>> from elp.testing import tiny_config
    >>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
    >>> view = backbone_view(backbone)
    >>> view.model is backbone.model, all(a is b for a, b in zip(view.model.parameters(), backbone.model.parameters()))
    (False, True)
    """
    memo = {id(t): t for t in list(backbone.model.parameters()) + list(backbone.model.buffers())}
    model = copy.deepcopy(backbone.model, memo)  # keeps the original's speed hooks
    view = SSLBackbone(backbone.name, model, normalize_waveform=backbone.normalize_waveform,
                       contiguous_attention=False)
    view.weights_sha256 = backbone.weights_sha256
    # the copy keeps the original's attention implementation (SDPA attribute or speed hooks)
    view.sdpa_attention = getattr(backbone, "sdpa_attention", False)
    view.frozen_dtype = getattr(backbone, "frozen_dtype", None)
    return view


def unshare_learnable(model: AdaptedSSL, shared: SSLBackbone) -> int:
    """Give ``model`` private copies of the learnable tensors it shares with ``shared``.

    Parameters
    ----------
    model : AdaptedSSL
        A task's model built on a view of ``shared``.
    shared : SSLBackbone
        The shared backbone.

    Returns
    -------
    int
        The number of tensors copied (e.g. the per-layer LayerNorms ``el`` trains).
    """
    shared_ids = {id(p) for p in shared.model.parameters()}
    copied = 0
    for name, param in list(model.named_parameters()):
        if param.requires_grad and id(param) in shared_ids:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, nn.Parameter(param.detach().clone()))
            copied += 1
    # building the method on the view marked those shared tensors trainable; the shared
    # backbone stays frozen (else every other task would count them as its own)
    for param in shared.model.parameters():
        param.requires_grad_(False)
    return copied


def encoder_from_features(backbone: SSLBackbone, features: torch.Tensor, frame_mask: torch.Tensor,
                          prompt: torch.Tensor | None = None, layer_prefixes: torch.Tensor | None = None):
    """The transformer part of :meth:`SSLBackbone.forward`, from CNN features.

    :meth:`SSLBackbone.forward_from_cnn_features`, plus one P-adapter prompt per sample (a
    routed batch holds several tasks' pseudo frames).

    Parameters
    ----------
    backbone : SSLBackbone
        The backbone (or a view) whose feature projection and layers run.
    features : torch.Tensor
        CNN features [B, F, C] from :meth:`SSLBackbone.extract_cnn_features`.
    frame_mask : torch.Tensor
        [B, F] bool, True = real frame.
    prompt : torch.Tensor | None, optional
        P-adapter frames [K, C], or one set per sample [B, K, C], as in
        :meth:`SSLBackbone.forward`.
    layer_prefixes : torch.Tensor | None, optional
        Prefixes [L, K', D], as in :meth:`SSLBackbone.forward`.

    Returns
    -------
    hidden_states : Sequence[torch.Tensor]
        ``num_layers + 1`` tensors [B, F, D], prompt frames removed.
    last_hidden_state : torch.Tensor
        [B, F, D], prompt frames removed.
    """
    if prompt is not None and prompt.dim() == 3:  # per sample: prepend them here, as the backbone would
        num_prompt = prompt.shape[1]
        features = torch.cat([prompt.to(features.dtype), features], dim=1)
        mask = torch.cat([frame_mask.new_ones(frame_mask.shape[0], num_prompt), frame_mask], dim=1)
        out = backbone.forward_from_cnn_features(features, mask, None, layer_prefixes)
        return [h[:, num_prompt:] for h in out.hidden_states], out.last_hidden_state[:, num_prompt:]
    out = backbone.forward_from_cnn_features(features, frame_mask, prompt, layer_prefixes)
    return out.hidden_states, out.last_hidden_state


def routable(model: AdaptedSSL) -> bool:
    """Whether a task can share a batch with others through per-sample routing.

    True for every method that keeps the backbone's frozen matrices and changes the encoder
    through modules routed per sample: E-adapters after the FFN or the MHSA block
    (``e_only``, ``el``, ``elp``, ``conventional``), per-layer LayerNorms, the P-adapter, deep
    prefixes (each sample gets its task's prefix frames) and LoRA (each task's low-rank term
    is added to its own samples' projections). Only full fine-tuning, whose matrices are the
    task's own, runs its own layers.

    Parameters
    ----------
    model : AdaptedSSL
        A task's model.

    Returns
    -------
    bool
        Whether it can join a routed batch.
    """
    spec = model.method
    return spec.backbone_needs_grad and not spec.train_encoder


def route_key(model: AdaptedSSL) -> tuple[int, int]:
    """Tasks share a routed batch when they add the same numbers of prompt and prefix frames.

    Returns
    -------
    tuple[int, int]
        (P-adapter frames, prefix frames per layer), 0 for none.
    """
    return (0 if model.prompt is None else model.prompt.frames.shape[0],
            0 if model.prefix is None else model.prefix.frames.shape[1])


def _lora_of(module: nn.Module | None):
    """The LoRA parametrization of a Linear's weight, or None."""
    if module is None or not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if hasattr(p, "lora_a")), None)


class RoutedLayerNorm(nn.Module):
    """A LayerNorm whose affine parameters are chosen per sample (``route`` [B] task indices).

    It refers to the tasks' own LayerNorm tensors (no copy is held; they are stacked per call,
    [T, D], negligible next to the layer), so a routed group adds no tensor memory.
    """

    def __init__(self, base: nn.LayerNorm, weights: list[torch.Tensor], biases: list[torch.Tensor]):
        super().__init__()
        self.normalized_shape, self.eps = base.normalized_shape, base.eps
        self.task_weights = [w.detach() for w in weights]  # views of the tasks' tensors, not copies
        self.task_biases = [b.detach() for b in biases]
        self.route: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.layer_norm(x, self.normalized_shape, None, None, self.eps)
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        weights, biases = torch.stack(self.task_weights), torch.stack(self.task_biases)
        return y * weights[self.route].view(shape) + biases[self.route].view(shape)


class RoutedGroup:
    """Several routable tasks (same prompt and prefix lengths) in one batch through one backbone view.

    The batch holds every utterance once per task (task-major blocks); per-layer LayerNorms
    take each sample's task's parameters, each E-adapter (FFN or MHSA) is applied to its
    task's block only, each task's prompt and prefix frames go with its own block, and a LoRA
    task's ``scale * x A^T B^T`` is added to its block of the q/v projections (the shared
    view computes ``x W^T`` once for all blocks; WavLM's attention then runs through SDPA,
    :func:`elp.speed.add_sdpa_attention`, whose projections are ordinary Linear calls that
    forward hooks see). The tasks' own :class:`AdaptedSSL` modules (adapters, L-adapters,
    prompts, prefixes, LoRA factors) are used as loaded; nothing is copied (LayerNorm
    affines, prompts and prefixes are stacked per call).
    """

    def __init__(self, shared: SSLBackbone, models: list[AdaptedSSL]):
        self.models = models
        self.view = backbone_view(shared).eval()
        self.norms: list[RoutedLayerNorm] = []
        self.block = 0
        routes_lora = False
        for index, layer in enumerate(self.view.layers):
            for attr in ("layer_norm", "final_layer_norm"):
                base = getattr(layer, attr)
                sources = [getattr(m.backbone.layers[index], attr) for m in models]
                routed = RoutedLayerNorm(base, [n.weight for n in sources], [n.bias for n in sources])
                setattr(layer, attr, routed)
                self.norms.append(routed)
            for site in ("mhsa", "ffn"):
                adapters = []
                for model in models:
                    per_layer = model.encoder_adapters[site] if site in model.encoder_adapters else {}
                    adapters.append(per_layer[str(index)] if str(index) in per_layer else None)
                if any(a is not None for a in adapters):
                    adapter_site_module(layer, site).register_forward_hook(self._adapter_hook(adapters))
            for name, projection in layer.attention.named_children():
                factors = [_lora_of(getattr(m.backbone.layers[index].attention, name, None)) for m in models]
                if any(f is not None for f in factors):
                    projection.register_forward_hook(self._lora_hook(factors))
                    routes_lora = True
        if routes_lora:
            self.view.set_sdpa_attention(True)  # WavLM: projections as Linear calls the hooks see
        # the tasks' own tensors, stacked per call (a group holds no copies)
        self.prompts = [m.prompt.frames.detach() for m in models] if models[0].prompt is not None else None
        self.prefixes = [m.prefix.frames.detach() for m in models] if models[0].prefix is not None else None

    def _adapter_hook(self, adapters):
        def hook(module, inputs, output):
            first = output[0] if isinstance(output, tuple) else output  # attention: (output, ...)
            blocks = first.split(self.block, dim=0)
            routed = torch.cat([a(b) if a is not None else b for a, b in zip(adapters, blocks)], dim=0)
            return (routed,) + tuple(output[1:]) if isinstance(output, tuple) else routed

        return hook

    def _lora_hook(self, factors):
        def hook(module, inputs, output):
            blocks = zip(factors, inputs[0].split(self.block, dim=0), output.split(self.block, dim=0))
            return torch.cat([out if f is None else out + f.input_delta(x) for f, x, out in blocks], dim=0)

        return hook

    def features(self, features: torch.Tensor, frame_mask: torch.Tensor) -> list[torch.Tensor]:
        """Each task's model features from one routed pass.

        Parameters
        ----------
        features : torch.Tensor
            CNN features [B, F, C].
        frame_mask : torch.Tensor
            [B, F] bool, True = real frame.

        Returns
        -------
        list[torch.Tensor]
            Per task, model features [B, F, D'].
        """
        num_tasks, batch = len(self.models), features.shape[0]
        self.block = batch
        route = torch.arange(num_tasks, device=features.device).repeat_interleave(batch)
        for norm in self.norms:
            norm.route = route
        prompt = None if self.prompts is None else torch.stack(self.prompts).repeat_interleave(batch, dim=0)
        prefixes = (None if self.prefixes is None
                    else torch.stack(self.prefixes, dim=1).repeat_interleave(batch, dim=1))  # [L, T*B, K', D]
        hidden_states, last = encoder_from_features(self.view, features.repeat(num_tasks, 1, 1),
                                                    frame_mask.repeat(num_tasks, 1), prompt=prompt,
                                                    layer_prefixes=prefixes)
        outputs = []
        for task, model in enumerate(self.models):
            rows = slice(task * batch, (task + 1) * batch)
            outputs.append(model._read_hidden_states([h[rows] for h in hidden_states], last[rows]))
        return outputs


class MultiTask:
    """N model packages on one frozen backbone.

    Parameters
    ----------
    directories : list of path
        Model packages; all must record the same backbone ``weights_sha256``.
    backbone_source : str, optional
        Checkpoint directory or hub id of the backbone (default: the first package's).
    device : str or torch.device
    """

    def __init__(self, directories: Sequence[str | os.PathLike], backbone_source: str | None = None,
                 device: str | torch.device = "cpu", route: bool = True):
        directories = [Path(d) for d in directories]
        if not directories:
            raise ValueError("MultiTask needs at least one package directory")
        configs = [read_package_config(d) for d in directories]
        reference = configs[0]["backbone"]["weights_sha256"]
        for directory, config in zip(directories, configs):
            if config["backbone"]["weights_sha256"] != reference:
                raise BackboneHashMismatchError(
                    f"{directory} was trained on backbone {config['backbone']['name']!r} with weights sha256 "
                    f"{config['backbone']['weights_sha256'][:12]}... but {directories[0]} on "
                    f"{configs[0]['backbone']['name']!r} ({reference[:12]}...); one backbone serves only "
                    "packages trained on the same weights: run them in separate MultiTask objects")
        self.backbone = load_package_backbone(directories[0], backbone_source, configs[0]).to(device)
        self.backbone.eval()
        self.predictors: list[Predictor] = []
        self.shares_pass: list[bool] = []
        for directory, config in zip(directories, configs):
            frozen_inside = not get_method(config["method"]).backbone_needs_grad
            if frozen_inside:
                model = build_model(config, self.backbone, directory)
            else:
                model = build_model(config, backbone_view(self.backbone), directory)
                unshare_learnable(model, self.backbone)
            head = build_head(config)
            load_weights(directory, model, head)
            if frozen_inside and not model.hidden_states_cacheable:
                raise ValueError(f"{directory}: method {config['method']} keeps backbone dropout; cannot share")
            tokenizer, labels = load_inventory(directory, config)
            package = Package(directory, config, model, head, tokenizer, labels, config.get("extra", {}))
            self.predictors.append(Predictor(package.to(device)))
            self.shares_pass.append(frozen_inside)
        self.names = _unique_names([p.package.name for p in self.predictors])
        self.device = torch.device(device)
        # routable tasks with the same prompt and prefix lengths share one routed batch (2+ per group)
        self.groups: list[tuple[list[int], RoutedGroup]] = []
        if route:
            by_key: dict[tuple[int, int], list[int]] = {}
            for index, predictor in enumerate(self.predictors):
                model = predictor.package.model
                if not self.shares_pass[index] and routable(model):
                    by_key.setdefault(route_key(model), []).append(index)
            for indices in by_key.values():
                if len(indices) > 1:
                    models = [self.predictors[i].package.model for i in indices]
                    self.groups.append((indices, RoutedGroup(self.backbone, models)))

    def plan(self) -> dict[str, list]:
        """Which tasks read the shared transformer pass, which share routed batches, which run
        their own layers."""
        routed = {i for indices, _ in self.groups for i in indices}
        return {"shared_pass": [i for i, s in enumerate(self.shares_pass) if s],
                "routed_batches": [list(indices) for indices, _ in self.groups],
                "own_layers": [i for i, s in enumerate(self.shares_pass) if not s and i not in routed]}

    def tensor_bytes(self) -> int:
        """Bytes of every distinct tensor storage the loaded tasks hold (backbone, views, heads,
        routed groups): the memory bound "one backbone + each task's learnable tensors" in
        tensor terms, without the allocator's and Python's overhead."""
        modules = [self.backbone.model] + [m for p in self.predictors for m in (p.package.model, p.package.head)]
        extra = [t for _, group in self.groups for norm in group.norms for t in norm.task_weights + norm.task_biases]
        return unique_tensor_bytes(modules, extra)

    def learnable_tensor_bytes(self) -> list[int]:
        """Bytes each task holds beyond the shared backbone (learnable tensors + head)."""
        sizes = []
        for predictor in self.predictors:
            model, head = predictor.package.model, predictor.package.head
            tensors = list(model.learnable_parameters().values()) + list(head.state_dict().values())
            sizes.append(sum(t.numel() * t.element_size() for t in tensors))
        return sizes

    @torch.no_grad()
    def forward_batch(self, waves: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per task, per utterance head outputs of one padded batch.

        Parameters
        ----------
        waves : Sequence[torch.Tensor]
            16 kHz mono waveforms [T_i].

        Returns
        -------
        list[list[torch.Tensor]]
            Per task, :meth:`Predictor.head_outputs` of the batch.
        """
        batch, rel_lengths = pad_batch(waves)
        batch, rel_lengths = batch.to(self.device), rel_lengths.to(self.device)
        lengths = self.backbone.sample_lengths(batch, rel_lengths)
        features, frame_mask = self.backbone.extract_cnn_features(batch, lengths)  # once for all tasks
        shared = None
        routed_feats: dict[int, torch.Tensor] = {}
        for indices, group in self.groups:  # one batch per group, several tasks' utterances
            routed_feats.update(zip(indices, group.features(features, frame_mask)))
        outputs = []
        for index, (predictor, shares) in enumerate(zip(self.predictors, self.shares_pass)):
            model = predictor.package.model
            if index in routed_feats:
                feats = routed_feats[index]
            elif shares:
                if shared is None:  # once for all frozen-inside tasks
                    shared = encoder_from_features(self.backbone, features, frame_mask)[0]
                feats, _ = model.forward_from_hidden_states(shared, frame_mask)
            else:
                hidden_states, last = encoder_from_features(
                    model.backbone, features, frame_mask,
                    prompt=model.prompt.frames if model.prompt is not None else None,
                    layer_prefixes=model.prefix.frames if model.prefix is not None else None)
                feats = model._read_hidden_states(hidden_states, last)
            outputs.append(predictor.head_outputs(feats, frame_mask))
        return outputs

    def outputs(self, wavs, sample_rate: int | None = None, batch_size: int = 8,
                progress: bool | None = None) -> list[list[torch.Tensor]]:
        """Per task, per input (in input order) head outputs.

        Parameters
        ----------
        wavs : Iterable[AudioInput]
            The inputs.
        sample_rate : int | None, optional
            Rate of array/tensor inputs.
        batch_size : int, optional
            Utterances per forward pass.
        progress : bool | None, optional
            tqdm bar (default: for 50 or more inputs).

        Returns
        -------
        list[list[torch.Tensor]]
            ``outputs[task][input]``.
        """
        items = list(wavs)
        waves = [load_waveform(item, sample_rate) for item in items]
        check_lengths(items, waves, self.backbone.receptive_field)
        results = [[None] * len(waves) for _ in self.predictors]
        bar = _progress(len(items), progress, "tasks")
        for indices in length_batches([w.shape[0] for w in waves], batch_size):
            for task, task_outputs in enumerate(self.forward_batch([waves[i] for i in indices])):
                for index, out in zip(indices, task_outputs):
                    results[task][index] = out
            if bar is not None:
                bar.update(len(indices))
        if bar is not None:
            bar.close()
        return results

    def run(self, wavs, sample_rate: int | None = None, batch_size: int = 8, beam_size: int | None = None,
            progress: bool | None = None):
        """Every task on every input: per input a dict task name -> result.

        Parameters
        ----------
        wavs : AudioInput | list[AudioInput]
            One utterance or a list.
        sample_rate : int | None, optional
            Rate of array/tensor inputs.
        batch_size : int, optional
            Utterances per forward pass.
        beam_size : int | None, optional
            ASR tasks: CTC beam search with this beam (default: greedy).
        progress : bool | None, optional
            tqdm bar (default: for 50 or more inputs).

        Returns
        -------
        dict | list[dict]
            Task name -> result, for one input or per input of a list. Results are what the
            single-task API returns: text (ASR), :class:`Classification`, or an embedding [E]
            (SV).
        """
        items, single = as_batch(wavs)
        per_task = self.outputs(items, sample_rate, batch_size, progress)
        results = [{name: predictor.result(per_task[t][i], beam_size)
                    for t, (name, predictor) in enumerate(zip(self.names, self.predictors))}
                   for i in range(len(items))]
        return results[0] if single else results


def unique_tensor_bytes(modules: Sequence[nn.Module], tensors: Sequence[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages behind the modules' parameters and buffers (and ``tensors``).

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
