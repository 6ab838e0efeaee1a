"""E-adapters: bottleneck adapters inside the transformer layers."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from elp.core.adapters.attachment import Attachment, RoutingContext, block_hook
from elp.core.adapters.init import ADAPTER_INIT_STD, activation, init_adapter_linear


class EncoderAdapter(nn.Module):
    """``E(f) = f + LN(W_up act(W_down f))`` applied to a sub-layer's output.

    In ELP the sub-layer is the feed-forward block, so a post-LN layer becomes
    ``y = LN2(h + E(FFN(h)))``; conventional adapters also put one after self-attention.

    Parameters
    ----------
    dim
        Model width d.
    bottleneck
        Inner width (256 in the spec).
    act
        ``"gelu"`` or ``"relu"``.
    init_std
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
        """``x + LN(W_up act(W_down x))``: [..., d] -> [..., d]."""
        return x + self.norm(self.up(self.act(self.down(x))))

    def as_output_hook(self):
        """A forward hook ``hook(module, inputs, output)`` passing the output (or its first element) through self.

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


class EncoderAdapters(nn.ModuleDict, Attachment):
    """The E-adapters of a model: ``site -> layer index -> EncoderAdapter``, attached by hooks.

    A site is a block of every transformer layer whose output the adapters transform:
    ``"ffn"`` (the feed-forward block; ELP) or ``"mhsa"`` (self-attention; conventional
    adapters use both). Adapters go in layers ``e_first_layer`` .. L-1, or .. L-2 with
    ``skip_last_layer`` (ELP's E+L).

    Examples
    --------
    >>> from elp.core.backbones import SSLBackbone
    >>> from elp.testing import tiny_config
    >>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
    >>> adapters = EncoderAdapters.attach(backbone, {"e_dim": 4, "activation": "gelu", "e_first_layer": 0},
    ...                                   sites=("ffn",), skip_last_layer=True)
    >>> {site: sorted(per_layer) for site, per_layer in adapters.items()}
    {'ffn': ['0', '1']}
    """

    kind = "encoder_adapters"
    attribute = "encoder_adapters"
    options: ClassVar[dict[str, object]] = {"e_dim": 256}
    backbone_grad = True
    routable = True

    @staticmethod
    def site_path(backbone, site: str) -> str:
        """The path (in a layer) of the block an adapter at ``site`` follows."""
        names = backbone.module_names
        paths = {"ffn": names.feed_forward, "mhsa": names.attention}
        if site not in paths:
            raise ValueError(f"unknown encoder adapter site {site!r}; expected 'mhsa' or 'ffn'")
        return paths[site]

    @classmethod
    def attach(cls, backbone, options, sites: tuple[str, ...] = ("ffn",), skip_last_layer: bool = False):
        attachment = cls()
        last = backbone.num_layers - 1 if skip_last_layer else backbone.num_layers
        for site in sites:
            path = cls.site_path(backbone, site)
            adapters = nn.ModuleDict()
            for index in range(options["e_first_layer"], last):
                adapter = EncoderAdapter(backbone.hidden_size, options["e_dim"], options["activation"])
                adapters[str(index)] = adapter
                backbone.layer_part(index, path).register_forward_hook(adapter.as_output_hook())
            attachment[site] = adapters
        return attachment

    @classmethod
    def route(cls, members, context: RoutingContext) -> None:
        view = context.view
        sites = list(dict.fromkeys(site for member in members if member is not None for site in member))
        for site in sites:
            path = cls.site_path(view, site)
            for index in range(view.num_layers):
                per_task = [member[site][str(index)] if member is not None and site in member
                            and str(index) in member[site] else None for member in members]
                if any(adapter is not None for adapter in per_task):
                    view.layer_part(index, path).register_forward_hook(block_hook(context, per_task))
