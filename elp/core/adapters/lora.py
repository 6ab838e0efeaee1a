"""LoRA as a weight reparametrisation (``torch.nn.utils.parametrize``).

HF WavLM reads ``q_proj.weight`` directly inside ``F.multi_head_attention_forward``, so a
LoRA wrapper around the Linear's forward is never called and its parameters get no gradient
(transformers PR #48773, ESPnet issue #5721). A parametrization changes what ``.weight``
returns, so every code path that reads the weight sees ``W + (alpha / r) B A``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from elp.core.adapters.attachment import Attachment, RoutingContext
from elp.core.backbones import ModuleNames


class LoRAParametrization(nn.Module):
    """``W -> W + (alpha / rank) * B @ A`` with A [rank, in] (Kaiming-uniform) and B [out, rank] (zeros).

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
        """The reparametrised weight ``weight + scale * B @ A`` from the frozen one, both [out, in]."""
        return weight + self.scale * (self.lora_b @ self.lora_a).to(weight.dtype)

    def input_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank term on inputs [..., in] -> [..., out]: ``scale * (x A^T) B^T``.

        What the reparametrised Linear adds to the frozen one's output, without forming the
        [out, in] matrix (several tasks' terms on their own samples, :mod:`elp.serve.multitask`).

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
    """Register LoRA on ``linear.weight`` in place (the original weight stays frozen); return the parametrization.

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


class LoRA(Attachment):
    """LoRA on attention projections of every layer: ``(layer index, projection) -> parametrization``.

    The factors live inside the backbone (``...attention.q_proj.parametrizations.weight.0``),
    so this attachment holds references only. Routed, each task's ``scale * x A^T B^T`` is
    added to its block of the projection's output (the shared view computes ``x W^T`` once);
    WavLM's attention then runs through SDPA, whose projections are ordinary Linear calls
    that forward hooks see.

    Examples
    --------
    >>> from elp.core.backbones import SSLBackbone
    >>> from elp.testing import tiny_config
    >>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
    >>> lora = LoRA.attach(backbone, {**LoRA.options, "lora_rank": 2})
    >>> len(lora.factors), lora.factors[0, "q_proj"].lora_a.shape
    (6, torch.Size([2, 32]))
    """

    kind = "lora"
    options: ClassVar[dict[str, object]] = {"lora_rank": 8, "lora_alpha": 16.0, "lora_targets": (ModuleNames().query, ModuleNames().value)}
    backbone_grad = True
    grad_from_input = True
    routable = True

    def __init__(self, factors: dict[tuple[int, str], LoRAParametrization]):
        self.factors = factors

    @staticmethod
    def projection_path(backbone, target: str) -> str:
        """The path (in a layer) of the attention projection ``target``."""
        return f"{backbone.module_names.attention}.{target}"

    @classmethod
    def attach(cls, backbone, options) -> LoRA:
        factors = {}
        for index in range(backbone.num_layers):
            for target in options["lora_targets"]:
                factors[index, target] = add_lora(backbone.layer_part(index, cls.projection_path(backbone, target)),
                                                  options["lora_rank"], options["lora_alpha"])
        return cls(factors)

    def trainable_modules(self) -> list[nn.Module]:
        return list(self.factors.values())

    @classmethod
    def route(cls, members, context: RoutingContext) -> None:
        view = context.view
        keys = list(dict.fromkeys(key for member in members if member is not None for key in member.factors))
        for index, target in keys:
            per_task = [None if member is None else member.factors.get((index, target)) for member in members]
            view.layer_part(index, cls.projection_path(view, target)).register_forward_hook(
                _delta_hook(context, per_task))
        view.set_sdpa_attention(True)


def _delta_hook(context: RoutingContext, per_task: list[LoRAParametrization | None]):
    def hook(module, inputs, output):
        blocks = zip(per_task, context.blocks(inputs[0]), context.blocks(output))
        return torch.cat([out if lora is None else out + lora.input_delta(x) for lora, x, out in blocks], dim=0)

    return hook
