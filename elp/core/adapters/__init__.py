"""Adapter modules and the attachment kinds built from them: one kind per file.

* :mod:`elp.core.adapters.attachment`: what every attachment kind provides (attach, train,
  read, route) and the routing context.
* :mod:`elp.core.adapters.encoder`: E-adapters (bottleneck inside a transformer layer).
* :mod:`elp.core.adapters.layer`: L-adapters (a path from every layer to the head) and the
  weighted layer sum.
* :mod:`elp.core.adapters.prompt`: the P-adapter (pseudo CNN frames) and deep prefixes.
* :mod:`elp.core.adapters.lora`: LoRA as a weight reparametrisation.
* :mod:`elp.core.adapters.backbone_parts`: the backbone's own LayerNorms or encoder, trained.

Every adapter module names its learning-rate group (``lr.<group>`` in the hparams):

Examples
--------
>>> [m.lr_group for m in (EncoderAdapter, LayerAdapters, WeightedLayerSum, LoRAParametrization,
...                       LayerPrefixes, PromptAdapter, BackboneLayerNorms, TrainedEncoder)]
['e', 'l', 'l', 'lora', 'prefix', 'p', 'ln', 'backbone']
"""

from __future__ import annotations

from elp.core.adapters.attachment import Attachment, RoutingContext, RoutingError, block_hook
from elp.core.adapters.backbone_parts import BackboneLayerNorms, RoutedLayerNorm, TrainedEncoder
from elp.core.adapters.encoder import EncoderAdapter, EncoderAdapters
from elp.core.adapters.layer import LayerAdapters, WeightedLayerSum
from elp.core.adapters.lora import LoRA, LoRAParametrization, add_lora
from elp.core.adapters.prompt import LayerPrefixes, PromptAdapter

__all__ = ["Attachment", "RoutingContext", "RoutingError", "block_hook", "BackboneLayerNorms", "RoutedLayerNorm",
           "TrainedEncoder", "EncoderAdapter", "EncoderAdapters", "LayerAdapters", "WeightedLayerSum", "LoRA",
           "LoRAParametrization", "add_lora", "LayerPrefixes", "PromptAdapter"]
