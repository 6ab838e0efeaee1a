"""The fine-tuning methods: the one place that knows which modules go where and what trains.

Each method is a :class:`MethodSpec`; :class:`elp.core.model.AdaptedSSL` builds a model from one.
Adding a method = adding an entry to :data:`METHODS` (plus a module in ``elp/adapters`` when it
needs a new kind, which declares its learning-rate group as ``lr_group``). The design is written
up in docs/DESIGN.md; the counts below are for WavLM Base+ (d=768, 12 layers) without the head.

=============== ==================================================================== ===========
method          learnable (besides the head)                                         WavLM Base+
=============== ==================================================================== ===========
full            transformer layers + encoder LayerNorm (CNN, feature projection and  85,066,224
                positional conv frozen; WavLM adds 10,224 relative-position params
                to the 85,056,000 of wav2vec2 and HuBERT Base)
weighted_sum    softmax weights over all L+1 hidden states                          13
conventional    E-type adapters after MHSA and after FFN, all layers; layer LNs     9,535,488
lora            rank-r A, B on q_proj and v_proj of every layer (r=8)                294,912
prefix          K vectors per layer (K=10)                                           92,160
e_only          E-adapters after FFN, all layers; layer LNs                          4,786,176
l_only          L-adapters on every layer + their softmax weights                    4,737,036
p_only          K pseudo CNN frames (K=10)                                           5,120
el              E-adapters (all layers but the last) + L-adapters + layer LNs        9,127,436
elp             el + K pseudo CNN frames                                             9,132,556
=============== ==================================================================== ===========
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    """What one fine-tuning method adds to a frozen backbone and what it trains.

    Parameters
    ----------
    name : str
        The method's name in hparams.
    encoder_adapter_sites : tuple[str, ...], optional
        Where E-type adapters go inside each layer: ``"mhsa"`` (after
        self-attention) and/or ``"ffn"`` (after the feed-forward block).
    skip_last_layer : bool, optional
        E-adapters in every layer but the last (ELP's E+L).
    layer_adapters : bool, optional
        L-adapters from every layer's output to the head.
    weighted_sum : bool, optional
        Softmax-weighted sum of all hidden states to the head.
    prompt : bool, optional
        The P-adapter (pseudo CNN frames).
    prefix : bool, optional
        Deep prefixes in every layer.
    lora : bool, optional
        LoRA on attention projections.
    train_layer_norms : bool, optional
        The backbone's per-layer LayerNorms (LN1, LN2) train.
    train_encoder : bool, optional
        The whole transformer encoder trains (full fine-tuning).
    """

    name: str
    encoder_adapter_sites: tuple[str, ...] = ()
    skip_last_layer: bool = False
    layer_adapters: bool = False
    weighted_sum: bool = False
    prompt: bool = False
    prefix: bool = False
    lora: bool = False
    train_layer_norms: bool = False
    train_encoder: bool = False

    @property
    def head_reads(self) -> str:
        """What the head reads: ``"layer_adapters"``, ``"weighted_sum"`` or ``"last_layer"``."""
        if self.layer_adapters:
            return "layer_adapters"
        if self.weighted_sum:
            return "weighted_sum"
        return "last_layer"

    @property
    def backbone_needs_grad(self) -> bool:
        """Whether gradients must flow through the transformer (else it runs without autograd)."""
        return bool(self.encoder_adapter_sites or self.prompt or self.prefix or self.lora
                    or self.train_layer_norms or self.train_encoder)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec("full", train_encoder=True),
        MethodSpec("weighted_sum", weighted_sum=True),
        MethodSpec("conventional", encoder_adapter_sites=("mhsa", "ffn"), train_layer_norms=True),
        MethodSpec("lora", lora=True),
        MethodSpec("prefix", prefix=True),
        MethodSpec("e_only", encoder_adapter_sites=("ffn",), train_layer_norms=True),
        MethodSpec("l_only", layer_adapters=True),
        MethodSpec("p_only", prompt=True),
        MethodSpec("el", encoder_adapter_sites=("ffn",), skip_last_layer=True, layer_adapters=True,
                   train_layer_norms=True),
        MethodSpec("elp", encoder_adapter_sites=("ffn",), skip_last_layer=True, layer_adapters=True,
                   train_layer_norms=True, prompt=True),
    ]
}

#: Learning-rate groups of what :class:`elp.core.model.AdaptedSSL` trains inside the backbone (the
#: adapters declare their own group as ``lr_group``; these two are the backbone's own modules).
BACKBONE_GROUPS = {"ln": "the backbone's per-layer LayerNorms", "backbone": "the transformer itself (full)"}


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of a method name, with a clear error otherwise.

    Parameters
    ----------
    name : str
        A key of :data:`METHODS`.

    Returns
    -------
    MethodSpec

    Raises
    ------
    ValueError
        If ``name`` is not a method (the message lists them).

    Examples
    --------
    >>> spec = get_method("elp")
    >>> spec.encoder_adapter_sites, spec.skip_last_layer, spec.layer_adapters, spec.prompt
    (('ffn',), True, True, True)
    >>> get_method("adapterz")
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'adapterz'; choose one of: full, weighted_sum, conventional, lora, prefix, e_only, l_only, p_only, el, elp
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
