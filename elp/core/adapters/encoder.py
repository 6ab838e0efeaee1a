"""E-adapters: bottleneck adapters inside the transformer layers."""

from __future__ import annotations

import torch
from torch import nn

from elp.core.adapters.init import ADAPTER_INIT_STD, activation, init_adapter_linear


class EncoderAdapter(nn.Module):
    """``E(f) = f + LN(W_up act(W_down f))`` applied to a sub-layer's output.

    In ELP the sub-layer is the feed-forward block, so a post-LN layer becomes
    ``y = LN2(h + E(FFN(h)))``; conventional adapters also put one after self-attention.

    Parameters
    ----------
    dim : int
        Model width d.
    bottleneck : int
        Inner width (256 in the spec).
    act : str
        ``"gelu"`` or ``"relu"``.
    init_std : float
        Std of the Linear weights at initialisation.

    Examples
    --------
    >>> adapter = EncoderAdapter(768, 256)
    >>> adapter(torch.zeros(2, 50, 768)).shape
    torch.Size([2, 50, 768])
    >>> sum(p.numel() for p in adapter.parameters())
    395776
    """

    #: learning-rate group of this module's parameters (``lr.e`` in the hparams)
    lr_group = "e"

    def __init__(self, dim: int, bottleneck: int = 256, act: str = "gelu",
                 init_std: float = ADAPTER_INIT_STD):
        super().__init__()
        self.down = init_adapter_linear(nn.Linear(dim, bottleneck), init_std)
        self.act = activation(act)
        self.up = init_adapter_linear(nn.Linear(bottleneck, dim), init_std)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the adapter's output to its input.

        Parameters
        ----------
        x : torch.Tensor
            [..., d] sub-layer outputs.

        Returns
        -------
        torch.Tensor
            [..., d] ``x + LN(W_up act(W_down x))``.
        """
        return x + self.norm(self.up(self.act(self.down(x))))

    def as_output_hook(self):
        """A forward hook that passes a module's output (or its first element) through self.

        Returns
        -------
        Callable
            ``hook(module, inputs, output)`` for :meth:`torch.nn.Module.register_forward_hook`.

        Examples
        --------
        >>> adapter = EncoderAdapter(4, 2)
        >>> ffn = nn.Linear(4, 4)
        >>> handle = ffn.register_forward_hook(adapter.as_output_hook())
        >>> x = torch.randn(3, 4)
        >>> torch.equal(ffn(x), adapter(x @ ffn.weight.T + ffn.bias))
        True
        """

        def hook(module, inputs, output):
            if isinstance(output, tuple):
                return (self(output[0]),) + tuple(output[1:])
            return self(output)

        return hook
