"""The fine-tuning methods: the one place that knows which modules go where and what trains.

Each method is a :class:`MethodSpec`: the attachment kinds it puts on a frozen backbone
(:mod:`elp.core.adapters`), each with its per-method settings; :class:`elp.core.model.AdaptedSSL`
builds a model from one. Adding a method = :func:`register_method` (plus an
:class:`elp.core.adapters.Attachment` subclass when it needs a new kind, which declares its
options and its modules' learning-rate group). The design is written up in docs/DESIGN.md;
``elp params --backbone <name>`` prints each method's learnable-parameter count.

=============== ====================================================================
method          learnable (besides the head)
=============== ====================================================================
full            transformer layers + encoder LayerNorm (CNN, feature projection and
                positional conv frozen)
weighted_sum    softmax weights over all L+1 hidden states
conventional    E-type adapters after MHSA and after FFN, all layers; layer LNs
lora            rank-r A, B on q_proj and v_proj of every layer (r=8)
prefix          K vectors per layer (K=10)
e_only          E-adapters after FFN, all layers; layer LNs
l_only          L-adapters on every layer + their softmax weights
p_only          K pseudo CNN frames (K=10)
el              E-adapters (all layers but the last) + L-adapters + layer LNs
elp             el + K pseudo CNN frames
=============== ====================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from elp.core.adapters import (Attachment, BackboneLayerNorms, EncoderAdapters, LayerAdapters, LayerPrefixes, LoRA,
                               PromptAdapter, TrainedEncoder, WeightedLayerSum)


@dataclass(frozen=True)
class Attach:
    """One attachment kind of a method and the method's settings for it.

    Examples
    --------
    >>> Attach.of(EncoderAdapters, sites=("ffn",)).kwargs
    {'sites': ('ffn',)}
    """

    kind: type[Attachment]
    settings: tuple[tuple[str, object], ...] = ()

    @classmethod
    def of(cls, kind: type[Attachment], **settings) -> Attach:
        """``Attach(kind, settings)`` from keyword settings."""
        return cls(kind, tuple(settings.items()))

    @property
    def kwargs(self) -> dict:
        """The settings as keyword arguments of ``kind.attach``."""
        return dict(self.settings)


@dataclass(frozen=True)
class MethodSpec:
    """What one fine-tuning method adds to a frozen backbone and what it trains.

    Parameters
    ----------
    attachments
        Its attachment kinds, in the order they are built (parameters are created, and the
        random generator is drawn from, in this order).

    Examples
    --------
    >>> spec = MethodSpec("e_ffn", (Attach.of(BackboneLayerNorms), Attach.of(EncoderAdapters, sites=("ffn",))))
    >>> spec.kinds == (BackboneLayerNorms, EncoderAdapters), spec.backbone_needs_grad, spec.head_reads
    (True, True, 'last_layer')
    """

    name: str
    attachments: tuple[Attach, ...] = ()

    @property
    def kinds(self) -> tuple[type[Attachment], ...]:
        """The attachment kinds, in build order."""
        return tuple(use.kind for use in self.attachments)

    @property
    def head_reads(self) -> str:
        """What the head reads: the reading kind's name (``"layer_adapters"``, ``"weighted_sum"``)
        or ``"last_layer"``."""
        return next((kind.kind for kind in self.kinds if kind.reads_hidden_states), "last_layer")

    @property
    def backbone_needs_grad(self) -> bool:
        """Whether gradients must flow through the transformer (else it runs without autograd)."""
        return any(kind.backbone_grad for kind in self.kinds)


E_FFN = Attach.of(EncoderAdapters, sites=("ffn",))
E_FFN_BUT_LAST = Attach.of(EncoderAdapters, sites=("ffn",), skip_last_layer=True)
LN, L, P = Attach.of(BackboneLayerNorms), Attach.of(LayerAdapters), Attach.of(PromptAdapter)

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec("full", (Attach.of(TrainedEncoder),)),
        MethodSpec("weighted_sum", (Attach.of(WeightedLayerSum),)),
        MethodSpec("conventional", (LN, Attach.of(EncoderAdapters, sites=("mhsa", "ffn")))),
        MethodSpec("lora", (Attach.of(LoRA),)),
        MethodSpec("prefix", (Attach.of(LayerPrefixes),)),
        MethodSpec("e_only", (LN, E_FFN)),
        MethodSpec("l_only", (L,)),
        MethodSpec("p_only", (P,)),
        MethodSpec("el", (LN, E_FFN_BUT_LAST, L)),
        MethodSpec("elp", (LN, E_FFN_BUT_LAST, L, P)),
    ]
}

#: Options of every method, whatever its kinds: the adapters' activation (``"gelu"`` for ASR
#: and intent, ``"relu"`` for speaker and emotion) and k, the first layer that gets E-adapters
#: and trainable LayerNorms.
COMMON_OPTIONS: dict[str, object] = {"activation": "gelu", "e_first_layer": 0}

#: Kinds whose options every model accepts and records (one recipe YAML serves every method).
STANDARD_KINDS: tuple[type[Attachment], ...] = (EncoderAdapters, LayerAdapters, PromptAdapter, LayerPrefixes, LoRA)

#: Learning-rate groups of what :class:`elp.core.model.AdaptedSSL` trains inside the backbone (the
#: adapters declare their own group as ``lr_group``; these two are the backbone's own modules).
BACKBONE_GROUPS = {BackboneLayerNorms.lr_group: "the backbone's per-layer LayerNorms",
                   TrainedEncoder.lr_group: "the transformer itself (full)"}


def default_options(method: str | MethodSpec | None = None) -> dict[str, object]:
    """Every option a model of ``method`` takes, with its default (the kinds declare them).

    The options of the standard kinds (:data:`STANDARD_KINDS`) and :data:`COMMON_OPTIONS` for
    every method, plus those of the method's own other kinds.

    Examples
    --------
    >>> default_options()
    {'activation': 'gelu', 'e_dim': 256, 'l_dim': 512, 'prompt_frames': 10, 'prefix_frames': 10, 'lora_rank': 8, 'lora_alpha': 16.0, 'lora_targets': ('q_proj', 'v_proj'), 'e_first_layer': 0}
    """
    spec = get_method(method) if isinstance(method, str) else method
    options = {"activation": COMMON_OPTIONS["activation"]}
    for kind in STANDARD_KINDS:
        options.update(kind.options)
    options["e_first_layer"] = COMMON_OPTIONS["e_first_layer"]
    for kind in spec.kinds if spec is not None else ():
        options.update({name: value for name, value in kind.options.items() if name not in options})
    return options


def resolve_options(method: str | MethodSpec, given: Mapping[str, object],
                    runtime_knobs: tuple[str, ...] = ()) -> dict[str, object]:
    """``given`` on top of :func:`default_options`; an unknown name is refused.

    ``runtime_knobs`` are other names the caller accepts (listed in the error message).

    Raises
    ------
    ValueError
        Naming the unknown option(s) and listing the valid ones.

    Examples
    --------
    >>> resolve_options("el", {"e_dim": 8})["e_dim"]
    8
    >>> resolve_options("el", {"e_dimm": 8})
    Traceback (most recent call last):
    ...
    ValueError: unknown option 'e_dimm' of method 'el'; valid options: activation, e_dim, l_dim, prompt_frames, prefix_frames, lora_rank, lora_alpha, lora_targets, e_first_layer
    """
    spec = get_method(method) if isinstance(method, str) else method
    defaults = default_options(spec)
    unknown = [name for name in given if name not in defaults]
    if unknown:
        knobs = f"; runtime knobs: {', '.join(runtime_knobs)}" if runtime_knobs else ""
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} of "
                         f"method {spec.name!r}; valid options: {', '.join(defaults)}{knobs}")
    return {name: given.get(name, value) for name, value in defaults.items()}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make ``spec`` a method of :data:`METHODS` (so hparams, exports and packages can name it).

    Registering an equal spec again is a no-op; another spec under a taken name is refused.

    Raises
    ------
    ValueError
        If the name is taken by another spec, or the spec has no attachment or two of one kind.

    Examples
    --------
    >>> register_method(METHODS["el"]) is METHODS["el"]
    True
    >>> register_method(MethodSpec("el", (L,)))
    Traceback (most recent call last):
    ...
    ValueError: method 'el' is already registered with other attachments; choose another name
    """
    if spec.name in METHODS:
        if METHODS[spec.name] == spec:
            return METHODS[spec.name]
        raise ValueError(f"method {spec.name!r} is already registered with other attachments; choose another name")
    if not spec.attachments or len(set(spec.kinds)) != len(spec.kinds):
        raise ValueError(f"method {spec.name!r} needs at least one attachment kind and each kind once")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of a method name (a key of :data:`METHODS`).

    Raises
    ------
    ValueError
        If ``name`` is not a method (the message lists them).

    Examples
    --------
    >>> [kind.kind for kind in get_method("elp").kinds]
    ['layer_norms', 'encoder_adapters', 'layer_adapters', 'prompt']
    >>> get_method("adapterz")
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'adapterz'; choose one of: full, weighted_sum, conventional, lora, prefix, e_only, l_only, p_only, el, elp
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
