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

Examples
--------
>>> from elp.core.backbones import backbone_config, SSLBackbone
>>> from elp.testing import TINY_CONFIG
>>> backbone = SSLBackbone.from_config("wavlm", backbone_config("wavlm", **TINY_CONFIG))
>>> len(attention_modules_needing_contiguous_input(backbone.model)) == backbone.num_layers
True
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Attention classes (by class name) that transpose their input into a non-contiguous view
#: before ``F.multi_head_attention_forward``.
_NON_CONTIGUOUS_ATTENTION = ("WavLMAttention",)


def attention_modules_needing_contiguous_input(model: nn.Module) -> list[nn.Module]:
    """The sub-modules of ``model`` whose attention input should be re-laid out.

    Parameters
    ----------
    model : nn.Module
        A HF model or any module containing attention modules.

    Returns
    -------
    list[nn.Module]
        Its WavLM attention modules (empty for wav2vec2 and HuBERT).

    Examples
    --------
    >>> from elp.core.backbones import SSLBackbone
    >>> from elp.testing import tiny_config
    >>> wavlm = SSLBackbone.from_config("wavlm", tiny_config("wavlm")).model
    >>> hubert = SSLBackbone.from_config("hubert", tiny_config("hubert")).model
    >>> len(attention_modules_needing_contiguous_input(wavlm)), len(attention_modules_needing_contiguous_input(hubert))
    (3, 0)
    """
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

    Parameters
    ----------
    model : nn.Module
        A HF model (or any module containing ``WavLMAttention`` modules).

    Returns
    -------
    list[torch.utils.hooks.RemovableHandle]
        The hook handles (``handle.remove()`` restores the stock behaviour). Empty for wav2vec2
        and HuBERT.

    Examples
    --------
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

    Parameters
    ----------
    function : Callable
        The computation (e.g. a transformer layer).
    *args, **kwargs
        Its arguments.

    Returns
    -------
    object
        What ``function`` returns.

    Examples
    --------
    >>> layer = nn.Linear(4, 4)
    >>> checkpointed(layer, torch.randn(2, 4)).shape
    torch.Size([2, 4])
    """
    return checkpoint(function, *args, use_reentrant=False, **kwargs)


# ----------------------------------------------------------------------- SDPA attention
#: Attention classes (by class name) whose attention computation :func:`add_sdpa_attention` replaces.
_SDPA_REPLACEABLE = ("WavLMAttention",)


def _sdpa_self_attention(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                         gated_position_bias: torch.Tensor):
    """Drop-in for ``WavLMAttention.torch_multi_head_self_attention`` (bound to the module).

    Same inputs and the same first output as HF's method ([B, T, D]); the second output
    (attention weights, which no caller in the encoder reads) is None.
    """
    batch, frames, _ = hidden_states.shape
    heads, head_dim = self.num_heads, self.head_dim

    def split(projection: nn.Linear) -> torch.Tensor:
        return projection(hidden_states).view(batch, frames, heads, head_dim).transpose(1, 2)

    query, key, value = split(self.q_proj), split(self.k_proj), split(self.v_proj)
    bias = gated_position_bias.view(batch, heads, frames, frames)
    if attention_mask is not None:
        padded = attention_mask.ne(1)[:, None, None, :]
        bias = bias.masked_fill(padded, float("-inf"))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype),
                                         dropout_p=self.dropout if self.training else 0.0)
    out = out.transpose(1, 2).reshape(batch, frames, heads * head_dim)
    return self.out_proj(out), None


def add_sdpa_attention(model: nn.Module) -> list[nn.Module]:
    """Compute every WavLM attention of ``model`` with ``scaled_dot_product_attention``.

    Sets an instance attribute ``torch_multi_head_self_attention`` on each ``WavLMAttention``
    (the HF class is untouched; :func:`remove_sdpa_attention` deletes the attribute again).
    Equal to HF's attention to float rounding (fp32: < 1e-5 on hidden states, tested), for
    every method: LoRA reparametrises the projections' weights (read through the modules
    here), prefixes are extra frames of the input, E-adapters hook the attention's output.

    Parameters
    ----------
    model : torch.nn.Module
        A HF model (or any module containing ``WavLMAttention`` modules).

    Returns
    -------
    list[torch.nn.Module]
        The attention modules changed (empty for wav2vec2/HuBERT, which use SDPA already).

    Examples
    --------
    >>> add_sdpa_attention(nn.Linear(2, 2))
    []
    """
    changed = []
    for module in model.modules():
        if type(module).__name__ in _SDPA_REPLACEABLE:
            module.torch_multi_head_self_attention = types.MethodType(_sdpa_self_attention, module)
            changed.append(module)
    return changed


def remove_sdpa_attention(modules: list[nn.Module]) -> None:
    """Undo :func:`add_sdpa_attention` on the modules it returned.

    Parameters
    ----------
    modules : list[nn.Module]
        The attention modules :func:`add_sdpa_attention` changed.
    """
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
    module : torch.nn.Module
        The module to change (e.g. a backbone's transformer encoder).
    dtype : torch.dtype
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
