"""Per-sample routing: several tasks' adapted models in one batch through one frozen backbone.

A routed batch holds every utterance once per task (task-major blocks). Each task's model is
built on a *view* of the shared backbone (:func:`backbone_view`: a structural copy whose frozen
tensors are the shared backbone's), and :class:`RoutedGroup` runs one view for all of them.
The group names no adapter kind: each kind present in the group applies its members to their
own blocks (:meth:`elp.core.adapters.Attachment.route`), and a kind without routing support is
refused, so no model ever runs without its adapters.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from elp.core.adapters import RoutedLayerNorm, RoutingContext, RoutingError
from elp.core.backbones import SSLBackbone
from elp.core.model import AdaptedSSL


def backbone_view(backbone: SSLBackbone) -> SSLBackbone:
    """A structural copy of ``backbone`` whose parameters and buffers ARE the original's tensors.

    Adapters attached to the view (hooks, LoRA parametrizations) do not touch the original;
    parameters that a method trains must be un-shared before loading (:func:`unshare_learnable`).

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
    """Give ``model`` private copies of the learnable tensors it shares with ``shared``; return their number.

    E.g. the per-layer LayerNorms ``el`` trains.
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
                          prompt: torch.Tensor | None = None, layer_prefixes: torch.Tensor | None = None,
                          prompt_mask: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None):
    """The transformer part of :meth:`SSLBackbone.forward`, from CNN features.

    :meth:`SSLBackbone.forward_from_cnn_features`, plus one P-adapter prompt per sample (a
    routed batch holds several tasks' pseudo frames).

    Parameters
    ----------
    features
        CNN features [B, F, C] from :meth:`SSLBackbone.extract_cnn_features`.
    frame_mask
        [B, F] bool, True = real frame.
    prompt
        P-adapter frames [K, C], or one set per sample [B, K, C], as in
        :meth:`SSLBackbone.forward`.
    layer_prefixes
        Prefixes [L, K', D], or one set per sample [L, B, K', D], as in :meth:`SSLBackbone.forward`.
    prompt_mask, prefix_mask
        [B, K] and [B, K'] bool: which prompt frames and prefix vectors of each sample are
        attended to (default: all). A routed batch masks the padding of tasks with fewer; the
        masked ones come first in each sample.

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
        if prompt_mask is None:
            prompt_mask = frame_mask.new_ones(frame_mask.shape[0], num_prompt)
        mask = torch.cat([prompt_mask.to(frame_mask.dtype), frame_mask], dim=1)
        # masked prompt frames (front padding of tasks with fewer) move to the end of their
        # sample, so that every task's frames, prefixes included, keep their distances
        shift = (~prompt_mask.bool()).sum(1)
        rolled = bool(shift.any())
        if rolled:
            positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
            forward = (positions + shift[:, None]) % mask.shape[1]
            features, mask = _take(features, forward), _take(mask, forward)
        out = backbone.forward_from_cnn_features(features, mask, None, layer_prefixes, prefix_mask)
        hidden_states, last = list(out.hidden_states), out.last_hidden_state
        if rolled:
            back = (positions - shift[:, None]) % mask.shape[1]
            hidden_states, last = [_take(h, back) for h in hidden_states], _take(last, back)
        return [h[:, num_prompt:] for h in hidden_states], last[:, num_prompt:]
    out = backbone.forward_from_cnn_features(features, frame_mask, prompt, layer_prefixes, prefix_mask)
    return out.hidden_states, out.last_hidden_state


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, i]]`` for x [B, T, ...] and index [B, T]."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], index]


def routable(model: AdaptedSSL) -> bool:
    """Whether a task can share a batch with others through per-sample routing.

    True when every attachment kind of its method can apply itself per block
    (:attr:`elp.core.adapters.Attachment.routable`): E-adapters, per-layer LayerNorms, the
    P-adapter, deep prefixes, LoRA, L-adapters and the weighted sum. Full fine-tuning, whose
    matrices are the task's own, runs its own layers.
    """
    return all(type(attachment).routable for attachment in model.attachments)


def route_key(model: AdaptedSSL) -> tuple:
    """Tasks with one key share a routed batch without padding frames (:class:`RoutedGroup`).

    Returns
    -------
    tuple
        ``(name, value)`` pairs, e.g. ``(("prompt_frames", 10),)`` for a P-adapter of 10 frames;
        ``()`` for a model that adds no frames.
    """
    return tuple(sorted(item for attachment in model.attachments for item in attachment.route_key()))


class RoutedGroup:
    """Several routable tasks in one batch through one backbone view.

    The batch holds every utterance once per task (task-major blocks). Every attachment kind
    present in the group installs its routed form on the view
    (:meth:`elp.core.adapters.Attachment.route`: per-sample LayerNorm affines, E-adapters on
    their task's block, each task's LoRA term on its block of the projections, each task's
    prompt and prefix frames with its block); each task then reads its own rows
    (:meth:`AdaptedSSL.read_hidden_states`). The tasks' own tensors are used as loaded;
    nothing is copied (LayerNorm affines, prompts and prefixes are stacked per call). Tasks
    with fewer (or no) prompt frames or prefix vectors than others get masked padding in their
    place, which changes none of their results; grouping tasks by :func:`route_key` avoids
    that padding.

    Raises
    ------
    RoutingError
        (a ValueError) For a model with an attachment kind that cannot be routed.
    """

    def __init__(self, shared: SSLBackbone, models: list[AdaptedSSL]):
        for model in models:
            blocked = [type(a).kind for a in model.attachments if not type(a).routable]
            if blocked:
                raise RoutingError(f"method {model.method.name!r} cannot be routed: its attachment kind "
                                   f"{blocked[0]!r} has no routing support; run it on its own")
        self.models = models
        self.view = backbone_view(shared).eval()
        self.context = RoutingContext(self.view, len(models))
        kinds = list(dict.fromkeys(type(a) for model in models for a in model.attachments))
        for kind in kinds:
            kind.route([model.attachment(kind) for model in models], self.context)

    @property
    def norms(self) -> list[RoutedLayerNorm]:
        """The view's per-sample LayerNorms (each refers to its tasks' tensors)."""
        return [module for module in self.view.modules() if isinstance(module, RoutedLayerNorm)]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the routed modules refer to (views of the tasks' own tensors)."""
        return list(self.context.tensors)

    def features(self, features: torch.Tensor, frame_mask: torch.Tensor) -> list[torch.Tensor]:
        """Each task's model features [B, F, D'] from one routed pass over CNN features [B, F, C] (mask [B, F])."""
        num_tasks, batch = len(self.models), features.shape[0]
        self.context.start(features)
        inputs = {name: make(batch) for name, make in self.context.inputs.items()}
        hidden_states, last = encoder_from_features(self.view, features.repeat(num_tasks, 1, 1),
                                                    frame_mask.repeat(num_tasks, 1), **inputs)
        outputs = []
        for task, model in enumerate(self.models):
            rows = slice(task * batch, (task + 1) * batch)
            outputs.append(model.read_hidden_states([h[rows] for h in hidden_states], last[rows]))
        return outputs
