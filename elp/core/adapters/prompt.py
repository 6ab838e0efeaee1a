"""Learnable pseudo frames: the P-adapter (before the transformer) and deep prefixes (every layer)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from elp.core.adapters.attachment import Attachment, RoutingContext
from elp.core.adapters.init import ADAPTER_INIT_STD


class PromptAdapter(nn.Module, Attachment):
    """K = ``num_frames`` learnable pseudo CNN frames of C = ``channels`` (CNN width) put before the CNN output.

    Our choice where the paper says only "appends pseudo features to CNN features": the K
    frames go *before* each utterance's frames (same position for every utterance, so
    batching with padding cannot move them), the attention mask counts them as valid, and
    the backbone removes them from every hidden state before a head or L-adapter reads it.

    Examples
    --------
    >>> PromptAdapter(10, 512).frames.shape
    torch.Size([10, 512])
    """

    #: learning-rate group of this module's parameters (``lr.p`` in the hparams)
    lr_group = "p"
    kind = "prompt"
    attribute = "prompt"
    options: ClassVar[dict[str, object]] = {"prompt_frames": 10}
    backbone_grad = True
    grad_from_input = True
    routable = True

    def __init__(self, num_frames: int = 10, channels: int = 512, init_std: float = ADAPTER_INIT_STD):
        super().__init__()
        if num_frames < 1:
            raise ValueError("a prompt needs at least one frame")
        self.frames = nn.Parameter(torch.randn(num_frames, channels) * init_std)

    @classmethod
    def attach(cls, backbone, options) -> PromptAdapter:
        """``prompt_frames`` frames of the backbone's CNN width."""
        return cls(options["prompt_frames"], backbone.cnn_channels)

    def backbone_inputs(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.frames}

    def route_key(self) -> tuple:
        return (("prompt_frames", self.frames.shape[0]),)

    @classmethod
    def route(cls, members, context: RoutingContext) -> None:
        """Each task's frames before its own block's CNN frames ([sum(counts), K, C] per call).

        Tasks with fewer frames (or none) get masked zero frames before theirs, so every task's
        frames stay next to its CNN frames, as when it runs alone.
        """
        frames, mask = _padded_frames(members, lambda m: m.frames, context, time_dim=0)
        context.add_input("prompt", lambda counts: torch.stack(frames).repeat_interleave(counts, dim=0))
        context.add_input("prompt_mask", lambda counts: mask.repeat_interleave(counts, dim=0))


class LayerPrefixes(nn.Module, Attachment):
    """Deep prompt tuning: K = ``num_frames`` learnable vectors prepended to the input of every layer.

    They are dropped at each layer's output, so the next layer gets fresh ones and the hidden
    states keep the input's length.

    Examples
    --------
    >>> LayerPrefixes(12, 10, 768).frames.shape
    torch.Size([12, 10, 768])
    """

    #: learning-rate group of this module's parameters (``lr.prefix`` in the hparams)
    lr_group = "prefix"
    kind = "prefix"
    attribute = "prefix"
    options: ClassVar[dict[str, object]] = {"prefix_frames": 10}
    backbone_grad = True
    grad_from_input = True
    routable = True

    def __init__(self, num_layers: int, num_frames: int = 10, dim: int = 768, init_std: float = 0.02):
        super().__init__()
        if num_frames < 1:
            raise ValueError("a prefix needs at least one frame")
        self.frames = nn.Parameter(torch.randn(num_layers, num_frames, dim) * init_std)

    @classmethod
    def attach(cls, backbone, options) -> LayerPrefixes:
        """``prefix_frames`` vectors per layer of the backbone."""
        return cls(backbone.num_layers, options["prefix_frames"], backbone.hidden_size)

    def backbone_inputs(self) -> dict[str, torch.Tensor]:
        return {"layer_prefixes": self.frames}

    def route_key(self) -> tuple:
        return (("prefix_frames", self.frames.shape[1]),)

    @classmethod
    def route(cls, members, context: RoutingContext) -> None:
        """Each task's prefixes with its own block ([L, sum(counts), K, D] per call); tasks with fewer
        (or none) get masked zero vectors before theirs."""
        frames, mask = _padded_frames(members, lambda m: m.frames, context, time_dim=1)
        context.add_input("layer_prefixes",
                          lambda counts: torch.stack(frames, dim=1).repeat_interleave(counts, dim=1))
        context.add_input("prefix_mask", lambda counts: mask.repeat_interleave(counts, dim=0))


def _padded_frames(members, frames_of, context: RoutingContext, time_dim: int):
    """Each member's frames (its tensor itself, or zeros for none) padded in front along
    ``time_dim`` to the group's largest count, and the [T, K] mask of the real ones.

    A padded member's frames are a copy made here (for serving); members with the largest
    count use their tensor as it is, so gradients reach it (joint training routes only tasks
    of equal counts)."""
    present = [frames_of(m) for m in members if m is not None]
    longest = max(f.shape[time_dim] for f in present)
    template = present[0]
    padded, mask = [], torch.zeros(len(members), longest, dtype=torch.bool, device=template.device)
    for task, member in enumerate(members):
        own = frames_of(member) if member is not None else template.detach().narrow(time_dim, 0, 0)
        count = own.shape[time_dim]
        if count < longest:
            shape = list(own.shape)
            shape[time_dim] = longest - count
            own = torch.cat([own.new_zeros(shape), own.detach()], dim=time_dim)
        padded.append(own)
        mask[task, longest - count:] = True
    context.tensors += present
    return padded, mask
