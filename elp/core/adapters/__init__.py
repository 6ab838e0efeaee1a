"""Adapter modules: one kind per file.

* :mod:`elp.core.adapters.encoder`: E-adapters (bottleneck inside a transformer layer).
* :mod:`elp.core.adapters.layer`: L-adapters (a path from every layer to the head) and the
  weighted layer sum.
* :mod:`elp.core.adapters.prompt`: the P-adapter (pseudo CNN frames) and deep prefixes.
* :mod:`elp.core.adapters.lora`: LoRA as a weight reparametrisation.

Every adapter module names its learning-rate group (``lr.<group>`` in the hparams):

Examples
--------
>>> [m.lr_group for m in (EncoderAdapter, LayerAdapters, WeightedLayerSum, LoRAParametrization,
...                       LayerPrefixes, PromptAdapter)]
['e', 'l', 'l', 'lora', 'prefix', 'p']
"""

from __future__ import annotations

from elp.core.adapters.encoder import EncoderAdapter
from elp.core.adapters.layer import LayerAdapters, WeightedLayerSum
from elp.core.adapters.lora import LoRAParametrization, add_lora
from elp.core.adapters.prompt import LayerPrefixes, PromptAdapter

__all__ = ["EncoderAdapter", "LayerAdapters", "WeightedLayerSum", "LoRAParametrization",
           "add_lora", "LayerPrefixes", "PromptAdapter"]
