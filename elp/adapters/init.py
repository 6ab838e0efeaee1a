"""Initialisation shared by the adapter modules."""

from __future__ import annotations

from torch import nn

#: Standard deviation of adapter weights at initialisation (the authors' code: N(0, 1e-3)).
ADAPTER_INIT_STD = 1e-3


def init_adapter_linear(linear: nn.Linear, std: float = ADAPTER_INIT_STD) -> nn.Linear:
    """Weights ~ N(0, std), bias 0, in place; returns the layer."""
    nn.init.normal_(linear.weight, mean=0.0, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


def activation(name: str) -> nn.Module:
    """``"gelu"`` or ``"relu"`` (the spec: GELU for ASR/intent, ReLU for speaker/emotion)."""
    table = {"gelu": nn.GELU, "relu": nn.ReLU}
    if name not in table:
        raise ValueError(f"unknown adapter activation {name!r}; expected one of {sorted(table)}")
    return table[name]()
