"""L-adapters and the weighted layer sum: ways for a head to read every layer."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from elp.core.adapters.attachment import Attachment
from elp.core.adapters.init import ADAPTER_INIT_STD, activation, init_adapter_linear


class WeightedLayerSum(nn.Module, Attachment):
    """``sum_i softmax(w)_i h_i`` over ``num_layers`` hidden states (SUPERB "weight tuning").

    Examples
    --------
    >>> pool = WeightedLayerSum(3)
    >>> pool([torch.ones(2, 5, 4) * i for i in range(3)])[0, 0, 0].item()
    1.0
    """

    #: learning-rate group of this module's parameters (``lr.l`` in the hparams)
    lr_group = "l"
    kind = "weighted_sum"
    attribute = "weighted_sum"
    reads_hidden_states = True
    routable = True

    def __init__(self, num_layers: int):
        super().__init__()
        self.layer_weights = nn.Parameter(torch.full((num_layers,), 1.0 / num_layers))

    def forward(self, hidden_states: list[torch.Tensor]) -> torch.Tensor:
        """Softmax-weighted sum of ``num_layers`` tensors [B, F, D] -> [B, F, D].

        Raises
        ------
        ValueError
            If the number of tensors is not ``num_layers``.
        """
        if len(hidden_states) != self.layer_weights.numel():
            raise ValueError(f"expected {self.layer_weights.numel()} hidden states, got {len(hidden_states)}")
        weights = torch.softmax(self.layer_weights, dim=0)
        return sum(w * h for w, h in zip(weights, hidden_states))

    @classmethod
    def attach(cls, backbone, options) -> WeightedLayerSum:
        """Weights over the backbone's ``num_layers + 1`` hidden states."""
        return cls(backbone.num_layers + 1)

    def read(self, hidden_states, last_hidden_state):
        """Every hidden state (the transformer's input included) -> their weighted sum."""
        return self(list(hidden_states))

    @classmethod
    def route(cls, members, context) -> None:
        """Nothing to do inside the backbone: each task reads its own rows."""


class LayerAdapter(nn.Module):
    """One L-adapter: ``z_i = LN(act(W_i h_i))``, d -> out_dim; no up-projection, no residual.

    Examples
    --------
    >>> LayerAdapter(8, 4)(torch.zeros(2, 3, 8)).shape
    torch.Size([2, 3, 4])
    """

    def __init__(self, dim: int, out_dim: int = 512, act: str = "relu",
                 init_std: float = ADAPTER_INIT_STD):
        super().__init__()
        self.proj = init_adapter_linear(nn.Linear(dim, out_dim), init_std)
        self.act = activation(act)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``LN(act(W h))``: one layer's output [B, F, d] -> [B, F, out_dim]."""
        return self.norm(self.act(self.proj(hidden)))


class LayerAdapters(nn.Module, Attachment):
    """One L-adapter per transformer layer (``num_layers`` = L), combined by softmax weights (init 1/L).

    ``out_dim`` is the width of z (512 in the spec); the CNN's output is not read.

    Examples
    --------
    >>> adapters = LayerAdapters(12, 768, 512)
    >>> adapters([torch.zeros(2, 50, 768)] * 12).shape
    torch.Size([2, 50, 512])
    >>> sum(p.numel() for p in adapters.parameters())
    4737036
    """

    #: learning-rate group of this module's parameters (``lr.l`` in the hparams)
    lr_group = "l"
    kind = "layer_adapters"
    attribute = "layer_adapters"
    options: ClassVar[dict[str, object]] = {"l_dim": 512}
    reads_hidden_states = True
    routable = True

    def __init__(self, num_layers: int, dim: int, out_dim: int = 512, act: str = "relu",
                 init_std: float = ADAPTER_INIT_STD):
        super().__init__()
        self.out_dim = out_dim
        self.adapters = nn.ModuleList(LayerAdapter(dim, out_dim, act, init_std) for _ in range(num_layers))
        self.layer_weights = nn.Parameter(torch.full((num_layers,), 1.0 / num_layers))

    def forward(self, layer_outputs: list[torch.Tensor]) -> torch.Tensor:
        """Adapt every layer's output (L tensors [B, F, d], first layer first) and combine them: z [B, F, out_dim].

        Raises
        ------
        ValueError
            If the number of tensors is not L.
        """
        if len(layer_outputs) != len(self.adapters):
            raise ValueError(f"expected {len(self.adapters)} layer outputs, got {len(layer_outputs)}")
        weights = torch.softmax(self.layer_weights, dim=0)
        return sum(w * adapter(h) for w, adapter, h in zip(weights, self.adapters, layer_outputs))

    @classmethod
    def attach(cls, backbone, options) -> LayerAdapters:
        """One L-adapter per layer of ``backbone``, ``l_dim`` wide."""
        return cls(backbone.num_layers, backbone.hidden_size, options["l_dim"], options["activation"])

    def read(self, hidden_states, last_hidden_state):
        """The layers' outputs (``hidden_states[1:]``) -> z [B, F, l_dim]."""
        return self(list(hidden_states[1:]))

    @property
    def output_dim(self) -> int:
        return self.out_dim

    @classmethod
    def route(cls, members, context) -> None:
        """Nothing to do inside the backbone: each task reads its own rows."""
