"""Parts of the backbone itself that a method trains: the per-layer LayerNorms, the whole encoder."""

from __future__ import annotations

import torch
from torch import nn

from elp.core.adapters.attachment import Attachment, RoutingContext


class BackboneLayerNorms(Attachment):
    """The two LayerNorms of every layer from ``e_first_layer`` on train (learning-rate group ``ln``).

    Routed, every sample is normalised with its task's affine parameters
    (:class:`RoutedLayerNorm`); tasks that do not train them use the shared backbone's.

    Examples
    --------
    >>> from elp.core.backbones import SSLBackbone
    >>> from elp.testing import tiny_config
    >>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
    >>> norms = BackboneLayerNorms.attach(backbone, {"e_first_layer": 2})
    >>> sorted(norms.norms), norms.norms[2, "layer_norm"].lr_group
    ([(2, 'final_layer_norm'), (2, 'layer_norm')], 'ln')
    """

    kind = "layer_norms"
    #: learning-rate group of the LayerNorms (``lr.ln`` in the hparams)
    lr_group = "ln"
    backbone_grad = True
    routable = True

    def __init__(self, norms: dict[tuple[int, str], nn.Module]):
        self.norms = norms

    @classmethod
    def attach(cls, backbone, options) -> BackboneLayerNorms:
        norms = {}
        for index in range(options["e_first_layer"], backbone.num_layers):
            for path in backbone.module_names.layer_norms:
                norm = backbone.layer_part(index, path)
                norm.lr_group = cls.lr_group
                norms[index, path] = norm
        return cls(norms)

    def trainable_modules(self) -> list[nn.Module]:
        return list(self.norms.values())

    @classmethod
    def route(cls, members, context: RoutingContext) -> None:
        view = context.view
        for index in range(view.num_layers):
            for path in view.module_names.layer_norms:
                base = view.layer_part(index, path)
                sources = [member.norms.get((index, path), base) if member is not None else base
                           for member in members]
                routed = RoutedLayerNorm(base, [n.weight for n in sources], [n.bias for n in sources], context)
                context.tensors += routed.task_weights + routed.task_biases
                view.set_layer_part(index, path, routed)


class RoutedLayerNorm(nn.Module):
    """A LayerNorm whose affine parameters are each sample's task's (``context.route``).

    It refers to the tasks' own tensors (no copies; stacked per call, [T, D]), so in joint
    training each task's affine parameters get the gradient of its own samples.

    Examples
    --------
    >>> from elp.core.adapters.attachment import RoutingContext
    >>> context = RoutingContext(None, 2)
    >>> context.start(torch.zeros(1, 3, 4))
    >>> base = nn.LayerNorm(4)
    >>> routed = RoutedLayerNorm(base, [torch.ones(4), 2 * torch.ones(4)], [torch.zeros(4), torch.ones(4)], context)
    >>> x = torch.randn(2, 3, 4)
    >>> torch.allclose(routed(x)[1], 2 * base(x[1]) + 1, atol=1e-6)
    True
    """

    def __init__(self, base: nn.LayerNorm, weights: list[torch.Tensor], biases: list[torch.Tensor],
                 context: RoutingContext):
        super().__init__()
        self.normalized_shape, self.eps = base.normalized_shape, base.eps
        self.task_weights = list(weights)  # the tasks' tensors themselves, not copies
        self.task_biases = list(biases)
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.layer_norm(x, self.normalized_shape, None, None, self.eps)
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        route = self.context.route
        weights, biases = torch.stack(self.task_weights), torch.stack(self.task_biases)
        return y * weights[route].view(shape) + biases[route].view(shape)


class TrainedEncoder(Attachment):
    """The transformer layers and the encoder's LayerNorm train (full fine-tuning, group ``backbone``).

    The task's matrices are its own, so its model runs its own layers: not routable.

    Examples
    --------
    >>> from elp.core.backbones import SSLBackbone
    >>> from elp.testing import tiny_config
    >>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
    >>> [m.lr_group for m in TrainedEncoder.attach(backbone, {}).trainable_modules()]
    ['backbone', 'backbone']
    """

    kind = "encoder"
    #: learning-rate group of the encoder (``lr.backbone`` in the hparams)
    lr_group = "backbone"
    backbone_grad = True
    grad_from_input = True
    keeps_backbone_dropout = True

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules

    @classmethod
    def attach(cls, backbone, options) -> TrainedEncoder:
        modules = [backbone.layers, backbone.encoder_norm]
        for module in modules:
            module.lr_group = cls.lr_group
        return cls(modules)

    def trainable_modules(self) -> list[nn.Module]:
        return list(self.modules)
