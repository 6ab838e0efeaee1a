"""Initialisation shared by the adapter modules."""

from __future__ import annotations

from torch import nn

#: Standard deviation of adapter weights at initialisation (the authors' code: N(0, 1e-3)).
ADAPTER_INIT_STD = 1e-3


def init_adapter_linear(linear: nn.Linear, std: float = ADAPTER_INIT_STD) -> nn.Linear:
    """Initialise ``linear`` in place (weights ~ N(0, std), bias 0) and return it.

    Examples
    --------
    >>> layer = init_adapter_linear(nn.Linear(4, 2), std=0.0)
    >>> layer.weight.abs().sum().item(), layer.bias.abs().sum().item()
    (0.0, 0.0)
    """
    nn.init.normal_(linear.weight, mean=0.0, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


def activation(name: str) -> nn.Module:
    """A new ``"gelu"`` or ``"relu"`` module (the spec: GELU for ASR/intent, ReLU for speaker/emotion).

    Raises
    ------
    ValueError
        For any other name.

    Examples
    --------
    >>> activation("relu")
    ReLU()
    """
    table = {"gelu": nn.GELU, "relu": nn.ReLU}
    if name not in table:
        raise ValueError(f"unknown adapter activation {name!r}; expected one of {sorted(table)}")
    return table[name]()
