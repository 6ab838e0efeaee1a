"""Small, non-forking fixes that make frozen-backbone training cheap.

Everything here works through PyTorch hooks or wrappers around HF modules, so the HF model
code stays stock:

* :func:`add_contiguous_attention_inputs`: HF WavLM's attention hands
  ``hidden_states.transpose(0, 1)`` (a non-contiguous view) to
  ``F.multi_head_attention_forward``. With frozen q/k/v weights PyTorch then takes a slow
  path (measured on a WavLM Base+ layer, 2 CPU threads: 12x slower in fp32, 30x under bf16
  autocast). A forward pre-hook hands the attention a tensor with the same values whose
  ``transpose(0, 1)`` is contiguous (``x.transpose(0, 1).contiguous().transpose(0, 1)``).
  wav2vec2 and HuBERT project q/k/v with ordinary ``nn.Linear`` calls on a contiguous input
  (eager or SDPA attention interface) and need nothing.
* :func:`checkpointed`: activation checkpointing of one layer call
  (``torch.utils.checkpoint``, non-reentrant, so forward hooks such as E-adapters inside the
  layer are recomputed and receive gradients).

Example
-------
>>> from elp.backbones import backbone_config, SSLBackbone
>>> from elp.testing import TINY_CONFIG
>>> backbone = SSLBackbone.from_config("wavlm", backbone_config("wavlm", **TINY_CONFIG))
>>> len(attention_modules_needing_contiguous_input(backbone.model)) == backbone.num_layers
True
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Attention classes (by class name) that transpose their input into a non-contiguous view
#: before ``F.multi_head_attention_forward``.
_NON_CONTIGUOUS_ATTENTION = ("WavLMAttention",)


def attention_modules_needing_contiguous_input(model: nn.Module) -> list[nn.Module]:
    """The sub-modules of ``model`` whose attention input should be re-laid out."""
    return [m for m in model.modules() if type(m).__name__ in _NON_CONTIGUOUS_ATTENTION]


def _time_major_layout(x: torch.Tensor) -> torch.Tensor:
    """[B, T, D] with the same values, stored time-major so that ``x.transpose(0, 1)`` is contiguous."""
    if x.dim() != 3 or x.transpose(0, 1).is_contiguous():
        return x
    return x.transpose(0, 1).contiguous().transpose(0, 1)


def _contiguous_input_pre_hook(module: nn.Module, args: tuple, kwargs: dict):
    if args:
        return (_time_major_layout(args[0]),) + tuple(args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": _time_major_layout(kwargs["hidden_states"])}
    return None


def add_contiguous_attention_inputs(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Register the time-major-input pre-hook on every attention that needs it.

    Arguments
    ---------
    model: a HF model (or any module containing ``WavLMAttention`` modules).

    Returns
    -------
    The hook handles (``handle.remove()`` restores the stock behaviour). Empty for wav2vec2
    and HuBERT.

    Example
    -------
    >>> handles = add_contiguous_attention_inputs(nn.Linear(2, 2))
    >>> handles
    []
    """
    return [module.register_forward_pre_hook(_contiguous_input_pre_hook, with_kwargs=True)
            for module in attention_modules_needing_contiguous_input(model)]


def checkpointed(function: Callable, *args, **kwargs):
    """``function(*args, **kwargs)`` with its activations recomputed in backward.

    Non-reentrant checkpointing (``use_reentrant=False``): works when no input requires grad
    but parameters inside do, keeps forward hooks, and restores the RNG state so that dropout
    (if on) draws the same masks when recomputing.

    Example
    -------
    >>> layer = nn.Linear(4, 4)
    >>> checkpointed(layer, torch.randn(2, 4)).shape
    torch.Size([2, 4])
    """
    return checkpoint(function, *args, use_reentrant=False, **kwargs)
