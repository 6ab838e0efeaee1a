"""Learnable pseudo frames: the P-adapter (before the transformer) and deep prefixes (every layer)."""

from __future__ import annotations

import torch
from torch import nn

from elp.core.adapters.init import ADAPTER_INIT_STD


class PromptAdapter(nn.Module):
    """K learnable pseudo CNN frames, concatenated along time to the CNN output.

    Our choice where the paper says only "appends pseudo features to CNN features": the K
    frames go *before* each utterance's frames (same position for every utterance, so
    batching with padding cannot move them), the attention mask counts them as valid, and
    the backbone removes them from every hidden state before a head or L-adapter reads it.

    Parameters
    ----------
    num_frames : int
        K (default 10).
    channels : int
        C, the CNN's output channels (512 for Base and Large models).
    init_std : float
        Std of the frames at initialisation.

    Examples
    --------
    >>> PromptAdapter(10, 512).frames.shape
    torch.Size([10, 512])
    """

    #: learning-rate group of this module's parameters (``lr.p`` in the hparams)
    lr_group = "p"

    def __init__(self, num_frames: int = 10, channels: int = 512, init_std: float = ADAPTER_INIT_STD):
        super().__init__()
        if num_frames < 1:
            raise ValueError("a prompt needs at least one frame")
        self.frames = nn.Parameter(torch.randn(num_frames, channels) * init_std)


class LayerPrefixes(nn.Module):
    """Deep prompt tuning: K learnable vectors prepended to the input of every layer.

    They are dropped at each layer's output, so the next layer gets fresh ones and the hidden
    states keep the input's length.

    Parameters
    ----------
    num_layers : int
        L.
    num_frames : int
        K (default 10).
    dim : int
        Model width d.
    init_std : float
        Std of the vectors at initialisation.

    Examples
    --------
    >>> LayerPrefixes(12, 10, 768).frames.shape
    torch.Size([12, 10, 768])
    """

    #: learning-rate group of this module's parameters (``lr.prefix`` in the hparams)
    lr_group = "prefix"

    def __init__(self, num_layers: int, num_frames: int = 10, dim: int = 768, init_std: float = 0.02):
        super().__init__()
        if num_frames < 1:
            raise ValueError("a prefix needs at least one frame")
        self.frames = nn.Parameter(torch.randn(num_layers, num_frames, dim) * init_std)
