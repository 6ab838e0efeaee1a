"""LoRA as a weight reparametrisation (``torch.nn.utils.parametrize``).

HF WavLM reads ``q_proj.weight`` directly inside ``F.multi_head_attention_forward``, so a
LoRA wrapper around the Linear's forward is never called and its parameters get no gradient
(transformers PR 48773, ESPnet issue 5721). A parametrization changes what ``.weight``
returns, so every code path that reads the weight sees ``W + (alpha / r) B A``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize


class LoRAParametrization(nn.Module):
    """``W -> W + scale * B @ A`` with A [r, in] (Kaiming-uniform) and B [out, r] (zeros).

    Parameters
    ----------
    in_features, out_features : int
        The Linear's shape.
    rank : int
        r (>= 1).
    alpha : float
        Scale = alpha / r.

    Examples
    --------
    >>> linear = nn.Linear(8, 8)
    >>> add_lora(linear, rank=2).lora_a.shape
    torch.Size([2, 8])
    """

    #: learning-rate group of this module's parameters (``lr.lora`` in the hparams)
    lr_group = "lora"

    def __init__(self, in_features: int, out_features: int, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        if rank < 1:
            raise ValueError("LoRA rank must be >= 1")
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The reparametrised weight.

        Parameters
        ----------
        weight : torch.Tensor
            [out, in] original (frozen) weight.

        Returns
        -------
        torch.Tensor
            [out, in] ``weight + scale * B @ A``.
        """
        return weight + self.scale * (self.lora_b @ self.lora_a).to(weight.dtype)

    def input_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank term on inputs: ``x @ (scale * B @ A)^T`` computed as ``scale * (x A^T) B^T``.

        What the reparametrised Linear adds to the frozen one's output, without forming the
        [out, in] matrix (several tasks' terms on their own samples, :mod:`elp.serve.multitask`).

        Parameters
        ----------
        x : torch.Tensor
            [..., in] inputs of the Linear.

        Returns
        -------
        torch.Tensor
            [..., out].

        Examples
        --------
        >>> linear = nn.Linear(4, 3)
        >>> frozen = linear.weight.detach().clone()
        >>> lora = add_lora(linear, rank=2)
        >>> _ = nn.init.normal_(lora.lora_b)
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(linear(x), x @ frozen.T + linear.bias + lora.input_delta(x), atol=1e-6)
        True
        """
        return self.scale * (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype)


def add_lora(linear: nn.Linear, rank: int = 8, alpha: float = 16.0) -> LoRAParametrization:
    """Register LoRA on ``linear.weight`` in place (the original weight stays frozen).

    Parameters
    ----------
    linear : torch.nn.Linear
        The layer to reparametrise.
    rank : int
        r.
    alpha : float
        Scale = alpha / r.

    Returns
    -------
    LoRAParametrization
        The registered parametrization (holds ``lora_a`` and ``lora_b``).

    Examples
    --------
    >>> linear = nn.Linear(4, 3)
    >>> before = linear.weight.detach().clone()
    >>> lora = add_lora(linear, rank=2)
    >>> torch.equal(linear.weight, before)  # B starts at zero
    True
    >>> linear.parametrizations.weight.original.requires_grad
    False
    """
    lora = LoRAParametrization(linear.in_features, linear.out_features, rank, alpha)
    lora.to(device=linear.weight.device)
    parametrize.register_parametrization(linear, "weight", lora)
    linear.parametrizations.weight.original.requires_grad_(False)
    return lora
