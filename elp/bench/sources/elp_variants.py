"""Benchmark rows of elp's methods: a method name with optional ``+`` flags.

* ``+ckpt``: activation checkpointing of the backbone layers that run with autograd;
* ``+k<N>``: ``e_first_layer=N`` (E-adapters and trainable LNs from layer N up, layers
  below N without autograd);
* ``+cache``: (``weighted_sum``/``l_only`` only) the step reads the backbone's hidden states
  from a :class:`elp.train.feature_cache.HiddenStateCache` filled beforehand, i.e. the cost of
  every epoch after the first;
* ``+cnncache``: (any method) the step reads the frozen CNN's features from a
  :class:`elp.train.feature_cache.CNNFeatureCache` filled beforehand (recipes: ``cnn_cache: true``);
* ``+sdpa``: WavLM's attention through ``scaled_dot_product_attention`` (recipes:
  ``method_options: {sdpa_attention: true}``; wav2vec2 and HuBERT use SDPA already);
* ``+bf16w``: (with ``precision="bf16"``) frozen transformer Linear weights held in bfloat16
  once (recipes: ``method_options: {frozen_dtype: bf16}``).

The backbone has random weights built from ``settings.backbone``'s config, or the weights of
the checkpoint ``settings.source``; :class:`elp.core.model.AdaptedSSL` adds the method.

Examples
--------
>>> [c.key for c in candidates(["el", "l_only+cache"], "fp32", full_first=True)]
['full', 'el', 'l_only+cache']
>>> candidates(["el"], "fp32", prefix="elp ")[0].label
'elp el'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from elp.bench.harness import BenchSettings, BuiltModel, Candidate
from elp.core.methods import METHODS

#: Variants run when none are named: every method, plus the cached-hidden-state step of the two
#: methods whose backbone is frozen and un-adapted.
DEFAULT_VARIANTS = [*METHODS, "weighted_sum+cache", "l_only+cache"]

#: Variant flags that switch on a recipe speed option -> Variant field.
_SPEED_FLAGS = {"cnncache": "cnn_cache", "sdpa": "sdpa", "bf16w": "bf16_weights"}


@dataclass(frozen=True)
class Variant:
    """A method plus runtime options (see the module docstring for the ``+`` syntax)."""

    label: str
    method: str
    activation_checkpointing: bool = False
    e_first_layer: int = 0
    cache: bool = False
    cnn_cache: bool = False
    sdpa: bool = False
    bf16_weights: bool = False


def parse_variant(label: str) -> Variant:
    """Parse a variant label: a method name and ``+`` flags, such as ``"el+ckpt+k4"`` (module docstring).

    Raises
    ------
    ValueError
        For an unknown method or flag, ``+cache`` on a method whose backbone needs
        gradients, or ``+cache`` with ``+cnncache``.

    Examples
    --------
    >>> parse_variant("l_only+cache").cache
    True
    >>> parse_variant("el+ckpt+k4").e_first_layer
    4
    >>> v = parse_variant("el+sdpa+cnncache+bf16w")
    >>> v.sdpa, v.cnn_cache, v.bf16_weights
    (True, True, True)
    """
    method, *flags = label.split("+")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} in bench variant {label!r}; choose from {', '.join(METHODS)}")
    options = {}
    for flag in flags:
        if flag == "ckpt":
            options["activation_checkpointing"] = True
        elif flag == "cache":
            if METHODS[method].backbone_needs_grad:
                raise ValueError(f"{label!r}: only methods with a frozen, un-adapted backbone "
                                 "(weighted_sum, l_only) can use the hidden-state cache")
            options["cache"] = True
        elif flag in _SPEED_FLAGS:
            options[_SPEED_FLAGS[flag]] = True
        elif flag.startswith("k") and flag[1:].isdigit():
            options["e_first_layer"] = int(flag[1:])
        else:
            raise ValueError(f"unknown flag {flag!r} in bench variant {label!r}; "
                             "use +ckpt, +k<N>, +cache, +cnncache, +sdpa or +bf16w")
    if options.get("cache") and options.get("cnn_cache"):
        raise ValueError(f"{label!r}: +cache (hidden states) already skips the CNN; drop +cnncache")
    return Variant(label, method, **options)


def _check_precision(variant: Variant, precision: str) -> None:
    if variant.bf16_weights and precision != "bf16":
        raise ValueError(f"bench variant {variant.label!r}: +bf16w holds frozen weights in bfloat16 and "
                         "needs --precision bf16")


def candidates(labels: list[str] | None, precision: str, full_first: bool = False,
               prefix: str = "") -> list[Candidate]:
    """The rows of elp variants keyed by their labels, checked before anything is measured.

    Parameters
    ----------
    labels
        Variant labels (:func:`parse_variant`); None: :data:`DEFAULT_VARIANTS`.
    full_first
        Put ``full`` first (added if missing): the reference of every ratio.
    prefix
        Put before each label in the table (``"elp "`` next to other toolkits' rows).

    Raises
    ------
    ValueError
        For a bad label, or ``+bf16w`` without bf16.
    """
    labels = list(DEFAULT_VARIANTS if labels is None else labels)
    for label in labels:
        _check_precision(parse_variant(label), precision)
    if full_first:
        labels = ["full"] + [label for label in labels if label != "full"]
    return [Candidate(label, prefix + label, __name__) for label in labels]


def build_variant_model(variant: Variant, backbone, precision: str):
    """The adapted model of a variant, with its speed options applied, in train mode.

    Parameters
    ----------
    backbone : elp.core.backbones.SSLBackbone
        A freshly loaded backbone (the model takes it over).

    Returns
    -------
    elp.core.model.AdaptedSSL
        On the backbone's device, in train mode.

    Raises
    ------
    ValueError
        For ``+bf16w`` without bf16 precision.

    Examples
    --------
    >>> from elp.core.backbones import load_backbone
    >>> from elp.core.presets import TINY_CONFIG
    >>> backbone = load_backbone("wavlm", pretrained=False, config_overrides=TINY_CONFIG)
    >>> model = build_variant_model(parse_variant("el+bf16w"), backbone, "bf16")
    >>> model.backbone.model.encoder.layers[0].feed_forward.output_dense.weight.dtype
    torch.bfloat16
    """
    from elp.core.model import AdaptedSSL

    _check_precision(variant, precision)
    return AdaptedSSL(backbone, variant.method, e_first_layer=variant.e_first_layer,
                      activation_checkpointing=variant.activation_checkpointing,
                      sdpa_attention=variant.sdpa, frozen_dtype="bf16" if variant.bf16_weights else "fp32").train()


def variant_forward(variant: Variant, model, cache_dir: str | os.PathLike | None = None):
    """The forward a variant's step calls: ``(wavs [B, T], wav_lens [B]) -> (feats [B, F, D], frame_mask [B, F])``.

    Parameters
    ----------
    model : elp.core.model.AdaptedSSL
        Its model (:func:`build_variant_model`).
    cache_dir
        Where ``+cache`` / ``+cnncache`` keep their cache (needed for those flags). The
        first call for a batch fills the cache; later calls read it.

    Raises
    ------
    ValueError
        For a caching variant without ``cache_dir``.

    Examples
    --------
    >>> import tempfile, torch
    >>> from elp.core.backbones import load_backbone
    >>> from elp.core.presets import TINY_CONFIG
    >>> variant = parse_variant("el+cnncache")
    >>> model = build_variant_model(variant, load_backbone("wavlm", pretrained=False,
    ...                             config_overrides=TINY_CONFIG), "fp32").eval()
    >>> forward = variant_forward(variant, model, tempfile.mkdtemp())
    >>> wavs = torch.randn(2, 8000)
    >>> first, _ = forward(wavs, torch.ones(2))   # fills the cache
    >>> again, _ = forward(wavs, torch.ones(2))   # reads it
    >>> torch.equal(first, again)
    True
    """
    from elp.train.feature_cache import (
        CNNFeatureCache,
        HiddenStateCache,
        cached_cnn_forward,
        cached_forward,
    )

    if variant.cache or variant.cnn_cache:
        if cache_dir is None:
            raise ValueError(f"bench variant {variant.label!r} needs a cache directory")
        if variant.cache:
            cache = HiddenStateCache(cache_dir, "bench")
            return lambda wavs, wav_lens: cached_forward(model, cache, None, wavs, wav_lens)
        cnn_cache = CNNFeatureCache.for_model(cache_dir, model)
        return lambda wavs, wav_lens: cached_cnn_forward(model, cnn_cache, None, wavs, wav_lens)
    return lambda wavs, wav_lens: model(wavs, wav_lens)


def build(key: str, settings: BenchSettings, work_dir: Path) -> BuiltModel:
    """The model of the variant ``key`` (the harness's build hook).

    Parameters
    ----------
    work_dir
        Where a caching variant keeps its cache.

    Returns
    -------
    BuiltModel
        With ``fill_cache`` for ``+cache`` / ``+cnncache``.
    """
    from elp.core.backbones import load_backbone

    variant = parse_variant(key)
    if settings.source:
        backbone = load_backbone(settings.backbone, source=str(settings.source))
    else:
        backbone = load_backbone(settings.backbone, pretrained=False, config_overrides=settings.config_overrides)
    model = build_variant_model(variant, backbone, settings.precision)
    caching = variant.cache or variant.cnn_cache
    forward = variant_forward(variant, model, work_dir / "cache" if caching else None)
    learnable = model.learnable_parameters()
    lora = {name: p for name, p in learnable.items() if ".lora_a" in name or ".lora_b" in name}
    return BuiltModel([model], forward, list(learnable.values()), model.output_dim, lora,
                      fill_cache=forward if caching else None)
