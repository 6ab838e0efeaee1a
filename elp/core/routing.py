"""Per-sample routing: several tasks' adapted models in one batch through one frozen backbone.

A routed batch is task-major: served, it holds every utterance once per task (equal blocks);
in joint training each utterance once, as a sample of its own task (blocks of any size). Each
task's model is built on a *view* of the shared backbone (:func:`backbone_view`: a structural
copy whose frozen tensors are the shared backbone's), and :class:`RoutedGroup` runs one view
for all of them. The group names no adapter kind: each kind present in the group applies its
members to their own blocks (:meth:`elp.core.adapters.Attachment.route`), and a kind without
routing support is refused, so no model ever runs without its adapters. The routed modules use
the tasks' own tensors, so gradients of a training batch reach each task's tensors from its own
samples only.

Tasks may also share tensors: :func:`share_parameters` ties learning-rate groups of several
task models (e.g. one set of E-adapters for every task). Tasks whose tensors inside the
transformer are the same (:func:`encoder_tensors`, :func:`encoder_fingerprint`) need no routing
at all: one pass of either model serves them all.
"""

from __future__ import annotations

import copy
import hashlib
import json

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

    def features(self, features: torch.Tensor, frame_mask: torch.Tensor,
                 counts: list[int] | None = None) -> list[torch.Tensor]:
        """Each task's model features from one routed pass over CNN features [B, F, C] (mask [B, F]).

        Parameters
        ----------
        counts
            None (serving): every task reads every utterance, and each gets [B, F, D']. T
            numbers (joint training): ``features`` is task-major, ``counts[t]`` samples of task
            t; each task gets the features of its own samples [counts[t], F, D'].

        Examples
        --------
        >>> from elp.testing import tiny_config
        >>> shared = SSLBackbone.from_config("wavlm", tiny_config("wavlm")).eval()
        >>> models = []
        >>> for seed in (0, 1):
        ...     _ = torch.manual_seed(seed)
        ...     models.append(AdaptedSSL(backbone_view(shared), "el", e_dim=4, l_dim=8).eval())
        ...     _ = unshare_learnable(models[-1], shared)
        >>> cnn, mask = shared.extract_cnn_features(torch.randn(3, 8000), torch.tensor([8000, 8000, 6000]))
        >>> [tuple(f.shape) for f in RoutedGroup(shared, models).features(cnn, mask, counts=[1, 2])]
        [(1, 24, 8), (2, 24, 8)]
        """
        num_tasks = len(self.models)
        if counts is None:  # every utterance once per task
            counts = [features.shape[0]] * num_tasks
            features, frame_mask = features.repeat(num_tasks, 1, 1), frame_mask.repeat(num_tasks, 1)
        self.context.start(features, counts)
        number = self.context.count_tensor(features.device)
        inputs = {name: make(number) for name, make in self.context.inputs.items()}
        hidden_states, last = encoder_from_features(self.view, features, frame_mask, **inputs)
        outputs, start = [], 0
        for model, count in zip(self.models, self.context.counts):
            rows = slice(start, start + count)
            outputs.append(model.read_hidden_states([h[rows] for h in hidden_states], last[rows]))
            start += count
        return outputs


def encoder_tensors(model: AdaptedSSL) -> dict[str, torch.Tensor]:
    """The learnable tensors that act inside the transformer (all but the head's reader), by name.

    E-adapters, trained LayerNorms, the P-adapter, prefixes, LoRA factors (or the layers of
    ``full``); empty for methods that train nothing inside (``l_only``, ``weighted_sum``).

    Examples
    --------
    >>> from elp.testing import tiny_config
    >>> model = AdaptedSSL(SSLBackbone.from_config("wavlm", tiny_config("wavlm")), "elp", e_dim=4, l_dim=8)
    >>> sorted({name.split(".")[0] for name in encoder_tensors(model)})
    ['backbone', 'encoder_adapters', 'prompt']
    >>> encoder_tensors(AdaptedSSL(SSLBackbone.from_config("wavlm", tiny_config("wavlm")), "l_only"))
    {}
    """
    reader = model.reader
    prefix = f"{type(reader).attribute}." if reader is not None and type(reader).attribute else None
    return {name: param for name, param in model.learnable_parameters().items()
            if prefix is None or not name.startswith(prefix)}


def encoder_fingerprint(model: AdaptedSSL) -> str:
    """SHA-256 of what the model computes inside the transformer, beyond the frozen backbone.

    It covers the attachment kinds other than the reader, the method options (except the
    reader's own, e.g. ``l_dim``) and every tensor of :func:`encoder_tensors` (name, shape,
    values). Two models on one backbone with the same fingerprint give the same hidden states,
    so one transformer pass serves both (e.g. tasks trained with shared E-adapters); each then
    reads them with its own L-adapters and head.

    Examples
    --------
    >>> from elp.testing import tiny_config
    >>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
    >>> a = AdaptedSSL(backbone_view(backbone), "el", e_dim=4, l_dim=8)
    >>> b = AdaptedSSL(backbone_view(backbone), "el", e_dim=4, l_dim=16)
    >>> _ = b.encoder_adapters.load_state_dict(a.encoder_adapters.state_dict())
    >>> encoder_fingerprint(a) == encoder_fingerprint(b)
    True
    >>> with torch.no_grad():
    ...     _ = b.encoder_adapters["ffn"]["0"].up.bias.add_(1.0)
    >>> encoder_fingerprint(a) == encoder_fingerprint(b)
    False
    """
    reader = model.reader
    digest = hashlib.sha256()
    kinds = [type(a).kind for a in model.attachments if a is not reader]
    options = encoder_options(model)
    digest.update(json.dumps({"kinds": kinds, "options": options}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder_tensors(model).items()):
        value = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(value.shape)}".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def encoder_options(model: AdaptedSSL) -> dict:
    """The model's method options except those only its reader uses (e.g. ``l_dim``).

    Examples
    --------
    >>> from elp.testing import tiny_config
    >>> model = AdaptedSSL(SSLBackbone.from_config("wavlm", tiny_config("wavlm")), "el", e_dim=4, l_dim=8)
    >>> "e_dim" in encoder_options(model), "l_dim" in encoder_options(model)
    (True, False)
    """
    reader = model.reader
    reader_options = set(type(reader).options) if reader is not None else set()
    return {k: v for k, v in model.options.items() if k not in reader_options}


def named_parameter_groups(model: AdaptedSSL) -> dict[str, dict[str, nn.Parameter]]:
    """:meth:`AdaptedSSL.parameter_groups` with the parameters' names: group -> name -> parameter."""
    group_of = {id(param): group for group, params in model.parameter_groups().items() for param in params}
    named: dict[str, dict[str, nn.Parameter]] = {}
    for name, param in model.learnable_parameters().items():
        named.setdefault(group_of[id(param)], {})[name] = param
    return named


def share_parameters(models: list[AdaptedSSL], groups, names: list[str] | None = None) -> int:
    """Tie the learning-rate ``groups`` of ``models`` to the first model's parameters; return how many were tied.

    After it, every model holds the first one's parameter objects for those groups (e.g.
    ``["e"]``: one set of E-adapters trained by every task), so a routed batch applies the same
    tensors to every task's samples and their gradients add up. Call it before the optimizer is
    built. The models must be of one method with equal options (:func:`encoder_options`);
    ``names`` (default: ``task 0``, ``task 1``, ...) name them in errors.

    Raises
    ------
    ValueError
        A group no model trains, or models whose tensors of a group differ in names or shapes.

    Examples
    --------
    >>> from elp.testing import tiny_config
    >>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
    >>> models = [AdaptedSSL(backbone_view(backbone), "el", e_dim=4, l_dim=8) for _ in range(2)]
    >>> share_parameters(models, ["e"])
    12
    >>> models[1].encoder_adapters["ffn"]["0"].down.weight is models[0].encoder_adapters["ffn"]["0"].down.weight
    True
    >>> models[1].layer_adapters.layer_weights is models[0].layer_adapters.layer_weights
    False
    """
    groups = list(groups)
    if not groups or len(models) < 2:
        return 0
    names = list(names) if names is not None else [f"task {index}" for index in range(len(models))]
    named = [named_parameter_groups(model) for model in models]
    for group in groups:
        if not any(group in n for n in named):
            trained = sorted({g for n in named for g in n})
            raise ValueError(f"shared group {group!r} is trained by no task (method {models[0].method.name!r} "
                             f"trains {', '.join(trained)})")
    reference_options = encoder_options(models[0])
    for name, model in zip(names[1:], models[1:]):
        options = encoder_options(model)
        differ = sorted(k for k in set(options) | set(reference_options) if options.get(k) != reference_options.get(k))
        if model.method.name != models[0].method.name or differ:
            what = f"method {model.method.name!r}" if model.method.name != models[0].method.name else \
                ", ".join(f"{k} {reference_options.get(k)!r} vs {options.get(k)!r}" for k in differ)
            raise ValueError(f"shared groups {groups}: {name} differs from {names[0]} ({what}); tasks that share "
                             "tensors need one method and equal options")
    tied = 0
    for group in groups:
        reference = named[0].get(group, {})
        for name, model, own in zip(names[1:], models[1:], named[1:]):
            theirs = own.get(group, {})
            shapes = {n: tuple(p.shape) for n, p in reference.items()}
            if shapes != {n: tuple(p.shape) for n, p in theirs.items()}:
                raise ValueError(f"shared group {group!r}: {name} has other {group} tensors than {names[0]}; "
                                 "shared groups need one method and equal options")
            for name, param in reference.items():
                owner, _, attribute = name.rpartition(".")
                setattr(model.get_submodule(owner), attribute, param)
                tied += 1
    return tied
