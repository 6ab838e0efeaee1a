"""Small, non-forking fixes that make frozen-backbone training cheap.

Everything here works through PyTorch hooks or wrappers around HF modules, so the HF model
code stays stock:

* :func:`add_contiguous_attention_inputs`: HF WavLM's attention hands
  ``hidden_states.transpose(0, 1)`` (a non-contiguous view) to
  ``F.multi_head_attention_forward``. With frozen q/k/v weights PyTorch then takes a slow
  path (docs/SPEED.md). A forward pre-hook hands the attention a tensor with the same values whose
  ``transpose(0, 1)`` is contiguous (``x.transpose(0, 1).contiguous().transpose(0, 1)``).
  wav2vec2 and HuBERT project q/k/v with ordinary ``nn.Linear`` calls on a contiguous input
  (eager or SDPA attention interface) and need nothing.
* :func:`add_sdpa_attention`: WavLM's attention computed with
  ``torch.nn.functional.scaled_dot_product_attention`` (its gated relative-position bias and
  the key padding mask become one additive float mask) instead of HF's
  ``F.multi_head_attention_forward(need_weights=True)``, which materialises and averages the
  attention weights. The q/k/v/out projections are the HF module's own ``nn.Linear`` calls, so
  LoRA parametrizations and hooks keep working. wav2vec2 and HuBERT already use SDPA in
  transformers 5 (``config._attn_implementation == "sdpa"``).
* :func:`cast_frozen_linear_`: frozen ``nn.Linear`` weights held in bfloat16 once, so that
  autocast does not re-cast them on every call (autocast caches casts only of weights that
  require grad).
* :func:`checkpointed`: activation checkpointing of one layer call
  (``torch.utils.checkpoint``, non-reentrant, so forward hooks such as E-adapters inside the
  layer are recomputed and receive gradients).

Which attention modules these apply to, and the names of their projections, come from the
backbone's family table (:data:`elp.core.backbones.FAMILY_MODULES`); this module names none.

Examples
--------
>>> from elp.core.backbones import backbone_config, SSLBackbone
>>> from elp.testing import TINY_CONFIG
>>> backbone = SSLBackbone.from_config("wavlm", backbone_config("wavlm", **TINY_CONFIG))
>>> len(backbone._speed_hooks) == len(backbone.fused_attention_modules()) == backbone.num_layers
True
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


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


def add_contiguous_attention_inputs(modules: Iterable[nn.Module]) -> list[torch.utils.hooks.RemovableHandle]:
    """Register the time-major-input pre-hook on each attention module of ``modules``.

    Parameters
    ----------
    modules
        Attention modules that hand a transposed view of their input to
        ``F.multi_head_attention_forward`` (WavLM's; :meth:`elp.core.backbones.SSLBackbone.fused_attention_modules`).

    Returns
    -------
    list[torch.utils.hooks.RemovableHandle]
        The hook handles (``handle.remove()`` restores the stock behaviour).

    Examples
    --------
    >>> attention = nn.Identity()
    >>> handles = add_contiguous_attention_inputs([attention])
    >>> attention(torch.zeros(2, 3, 4)).transpose(0, 1).is_contiguous()
    True
    """
    return [module.register_forward_pre_hook(_contiguous_input_pre_hook, with_kwargs=True) for module in modules]


def checkpointed(function: Callable, *args, **kwargs):
    """``function(*args, **kwargs)`` with its activations recomputed in backward.

    Non-reentrant checkpointing (``use_reentrant=False``): works when no input requires grad
    but parameters inside do, keeps forward hooks, and restores the RNG state so that dropout
    (if on) draws the same masks when recomputing.

    Examples
    --------
    >>> layer = nn.Linear(4, 4)
    >>> checkpointed(layer, torch.randn(2, 4)).shape
    torch.Size([2, 4])
    """
    return checkpoint(function, *args, use_reentrant=False, **kwargs)


# ----------------------------------------------------------------------- SDPA attention
def _sdpa_self_attention(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                         gated_position_bias: torch.Tensor, projections: tuple[str, str, str, str] = ()):
    """Drop-in for ``WavLMAttention.torch_multi_head_self_attention`` (bound to the module).

    Same inputs and the same first output as HF's method ([B, T, D]); the second output
    (attention weights, which no caller in the encoder reads) is None.
    """
    batch, frames, _ = hidden_states.shape
    heads, head_dim = self.num_heads, self.head_dim

    def split(projection: nn.Linear) -> torch.Tensor:
        return projection(hidden_states).view(batch, frames, heads, head_dim).transpose(1, 2)

    query_proj, key_proj, value_proj, out_proj = (getattr(self, name) for name in projections)
    query, key, value = split(query_proj), split(key_proj), split(value_proj)
    bias = gated_position_bias.view(batch, heads, frames, frames)
    if attention_mask is not None:
        padded = attention_mask.ne(1)[:, None, None, :]
        bias = bias.masked_fill(padded, float("-inf"))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype),
                                         dropout_p=self.dropout if self.training else 0.0)
    out = out.transpose(1, 2).reshape(batch, frames, heads * head_dim)
    return out_proj(out), None


def add_sdpa_attention(modules: Iterable[nn.Module], projections: tuple[str, str, str, str]) -> list[nn.Module]:
    """Compute each WavLM attention of ``modules`` with ``scaled_dot_product_attention``.

    Sets an instance attribute ``torch_multi_head_self_attention`` on each module (the HF class
    is untouched; :func:`remove_sdpa_attention` deletes the attribute again). Equal to HF's
    attention to float rounding (fp32: < 1e-5 on hidden states, tested), for every method:
    LoRA reparametrises the projections' weights (read through the modules here), prefixes are
    extra frames of the input, E-adapters hook the attention's output.

    Parameters
    ----------
    modules
        WavLM attention modules (:meth:`elp.core.backbones.SSLBackbone.fused_attention_modules`).
    projections
        Attribute names of their query, key, value and output projections
        (:attr:`elp.core.backbones.ModuleNames.attention_projections`).

    Examples
    --------
    >>> add_sdpa_attention([], ("q", "k", "v", "o"))
    []
    """
    changed = []
    for module in modules:
        module.torch_multi_head_self_attention = types.MethodType(
            functools.partial(_sdpa_self_attention, projections=tuple(projections)), module)
        changed.append(module)
    return changed


def remove_sdpa_attention(modules: list[nn.Module]) -> None:
    """Undo :func:`add_sdpa_attention` on the modules it returned."""
    for module in modules:
        module.__dict__.pop("torch_multi_head_self_attention", None)


# ------------------------------------------------------------------- frozen weights in bf16
def cast_frozen_linear_(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """Cast the frozen ``nn.Linear`` weights and biases inside ``module`` to ``dtype``, in place.

    Only parameters with ``requires_grad=False`` that belong directly to an ``nn.Linear``
    change; trainable parameters, LayerNorms, embeddings, convolutions and buffers keep their
    dtype. A parametrized weight (LoRA) is left in its dtype: its low-rank update is added to
    the frozen original on every call, and adding it to a bfloat16 original would round small
    updates away before autocast sees them.

    Parameters
    ----------
    dtype
        Target dtype (``torch.bfloat16`` or ``torch.float16``).

    Returns
    -------
    list[str]
        Names (relative to ``module``) of the parameters cast.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 2))
    >>> net[2].requires_grad_(False) and None
    >>> net[0].requires_grad_(True) and None
    >>> cast_frozen_linear_(net)
    ['2.weight', '2.bias']
    >>> net[2].weight.dtype, net[0].weight.dtype, net[1].weight.dtype
    (torch.bfloat16, torch.float32, torch.float32)
    """
    cast = []
    for prefix, sub in module.named_modules():
        if not isinstance(sub, nn.Linear):
            continue
        parametrized = getattr(sub, "parametrizations", {})
        for name in ("weight", "bias"):
            param = sub._parameters.get(name)
            if name in parametrized or param is None or param.requires_grad or param.dtype == dtype:
                continue
            param.data = param.data.to(dtype)
            cast.append(f"{prefix}.{name}".lstrip("."))
    return cast
