"""Architecture presets of randomly initialised backbones (``backbone_arch`` in hparams).

``tiny`` keeps the real structure (CNN with the real first-layer kernel/stride, GroupNorm or
LayerNorm CNN, post-LN or pre-LN transformer, WavLM's relative position bias) at ~50 frames
per second, with widths small enough that a forward pass takes milliseconds: unit tests and
examples. ``small`` is the stand-in backbone of the CPU end-to-end runs.
"""

from __future__ import annotations

from elp.core.backbones import backbone_config

#: Config fields of the tiny architecture (the CNN keeps kernel 10 / stride 5 first, then two
#: stride-8 layers: 320 samples per frame like the real 7-layer CNN).
TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                   conv_dim=(32, 32, 32), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8),
                   num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def tiny_config(name: str, **overrides):
    """The tiny config (:data:`TINY_CONFIG`, then ``overrides``) of the family of short backbone name ``name``.

    Examples
    --------
    >>> cfg = tiny_config("hubert", num_hidden_layers=2)
    >>> cfg.hidden_size, cfg.num_hidden_layers
    (32, 2)
    """
    return backbone_config(name, **{**TINY_CONFIG, **overrides})


#: Named architectures for randomly initialised backbones (``backbone_arch`` in hparams):
#: ``tiny`` for unit tests, ``small`` for the CPU end-to-end runs of ``run_all.sh``.
ARCH_PRESETS = {
    "tiny": TINY_CONFIG,
    "small": dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, intermediate_size=192,
                  conv_dim=(96, 96, 96), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8),
                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
}


def arch_overrides(arch: str | None) -> dict:
    """A copy of the config fields of preset ``arch`` (a key of :data:`ARCH_PRESETS`; None or ``""``: {}).

    Raises
    ------
    ValueError
        If ``arch`` is not a preset name.

    Examples
    --------
    >>> arch_overrides(None), arch_overrides("small")["hidden_size"]
    ({}, 96)
    """
    if not arch:
        return {}
    if arch not in ARCH_PRESETS:
        raise ValueError(f"backbone_arch {arch!r} is not one of {', '.join(ARCH_PRESETS)}")
    return dict(ARCH_PRESETS[arch])


def is_pretrained(arch: str | None) -> bool:
    """Whether hparams with this ``backbone_arch`` load pretrained weights (only without one).

    Examples
    --------
    >>> is_pretrained(None), is_pretrained("tiny")
    (True, False)
    """
    return not arch
