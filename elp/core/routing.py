"""Per-sample routing: several tasks' adapted models in one batch through one frozen backbone.

A routed batch holds every utterance once per task (task-major blocks). Each task's model is
built on a *view* of the shared backbone (:func:`backbone_view`: a structural copy whose frozen
tensors are the shared backbone's), and :class:`RoutedGroup` runs one view for all of them,
each block with its task's adapters, LayerNorms, prompt/prefix frames and LoRA terms.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from elp.core.backbones import SSLBackbone
from elp.core.model import AdaptedSSL, adapter_site_module


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
    :func:`elp.core.speed.add_sdpa_attention`, whose projections are ordinary Linear calls that
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
