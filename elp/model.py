"""A frozen backbone plus one fine-tuning method: the model every recipe trains.

Example
-------
>>> from elp.backbones import load_backbone
>>> backbone = load_backbone("wavlm", pretrained=False, config_overrides=dict(
...     hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
...     conv_dim=(32, 32, 32), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8),
...     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2))
>>> model = AdaptedSSL(backbone, "elp", l_dim=16, e_dim=8, prompt_frames=4)
>>> feats, frame_mask = model(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
>>> tuple(feats.shape), model.output_dim
((2, 49, 16), 16)
>>> sorted(model.parameter_groups())
['e', 'l', 'ln', 'p']
"""

from __future__ import annotations

import torch
from torch import nn

from elp.adapters import EncoderAdapter, LayerAdapters, LayerPrefixes, PromptAdapter, WeightedLayerSum, add_lora
from elp.backbones import SSLBackbone
from elp.methods import MethodSpec, get_method


class AdaptedSSL(nn.Module):
    """A :class:`SSLBackbone` with the modules of one method attached.

    Arguments
    ---------
    backbone: the (pretrained) backbone; its parameters are frozen here, except what the
        method trains.
    method: a name from :data:`elp.methods.METHODS` or a :class:`MethodSpec`.
    activation: adapter activation, ``"gelu"`` (ASR, intent) or ``"relu"`` (speaker, emotion).
    e_dim: E-adapter bottleneck width (256).
    l_dim: L-adapter output width = the head's input width (512).
    prompt_frames: K pseudo CNN frames of the P-adapter (10).
    prefix_frames: K vectors per layer for ``prefix`` (10).
    lora_rank, lora_alpha, lora_targets: LoRA rank r, scale alpha / r, and the attention
        projections it reparametrises.
    e_first_layer: put E-adapters only in layers >= this index (0 = the spec).
    backbone_dropout: keep HF's dropout inside the frozen backbone (default: off, except for
        ``full`` which trains the backbone and keeps it).

    Returns (forward)
    -----------------
    feats [B, F, output_dim] and frame_mask [B, F] bool.
    """

    def __init__(self, backbone: SSLBackbone, method: str | MethodSpec = "elp", activation: str = "gelu",
                 e_dim: int = 256, l_dim: int = 512, prompt_frames: int = 10, prefix_frames: int = 10,
                 lora_rank: int = 8, lora_alpha: float = 16.0,
                 lora_targets: tuple[str, ...] = ("q_proj", "v_proj"), e_first_layer: int = 0,
                 backbone_dropout: bool | None = None):
        super().__init__()
        self.method = get_method(method) if isinstance(method, str) else method
        self.options = dict(activation=activation, e_dim=e_dim, l_dim=l_dim, prompt_frames=prompt_frames,
                            prefix_frames=prefix_frames, lora_rank=lora_rank, lora_alpha=lora_alpha,
                            lora_targets=list(lora_targets), e_first_layer=e_first_layer)
        self.backbone = backbone
        spec, dim, num_layers = self.method, backbone.hidden_size, backbone.num_layers

        backbone.requires_grad_(False)
        if spec.train_encoder:
            backbone.layers.requires_grad_(True)
            backbone.model.encoder.layer_norm.requires_grad_(True)
        if spec.train_layer_norms:
            for layer in backbone.layers:
                layer.layer_norm.requires_grad_(True)
                layer.final_layer_norm.requires_grad_(True)
        if backbone_dropout is None:
            backbone_dropout = spec.train_encoder
        if not backbone_dropout:
            _disable_dropout(backbone)

        self.encoder_adapters = nn.ModuleDict()
        self._hook_handles = []
        last = num_layers - 1 if spec.skip_last_layer else num_layers
        for site in spec.encoder_adapter_sites:
            adapters = nn.ModuleDict()
            for index in range(e_first_layer, last):
                adapter = EncoderAdapter(dim, e_dim, activation)
                adapters[str(index)] = adapter
                sublayer = _sublayer(backbone.layers[index], site)
                self._hook_handles.append(sublayer.register_forward_hook(adapter.as_output_hook()))
            self.encoder_adapters[site] = adapters

        self.layer_adapters = LayerAdapters(num_layers, dim, l_dim, activation) if spec.layer_adapters else None
        self.weighted_sum = WeightedLayerSum(num_layers + 1) if spec.weighted_sum else None
        self.prompt = PromptAdapter(prompt_frames, backbone.cnn_channels) if spec.prompt else None
        self.prefix = LayerPrefixes(num_layers, prefix_frames, dim) if spec.prefix else None
        if spec.lora:
            for layer in backbone.layers:
                for target in lora_targets:
                    add_lora(getattr(layer.attention, target), lora_rank, lora_alpha)

    @property
    def output_dim(self) -> int:
        """Width of the features the head reads."""
        return self.options["l_dim"] if self.layer_adapters is not None else self.backbone.hidden_size

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None):
        """[B, T] waveforms (+ [B] relative lengths) -> feats [B, F, output_dim], frame_mask [B, F]."""
        grad = torch.is_grad_enabled() and self.method.backbone_needs_grad
        with torch.set_grad_enabled(grad):
            out = self.backbone(
                wavs, wav_lens,
                prompt=self.prompt.frames if self.prompt is not None else None,
                layer_prefixes=self.prefix.frames if self.prefix is not None else None)
        if self.layer_adapters is not None:
            feats = self.layer_adapters(out.hidden_states[1:])
        elif self.weighted_sum is not None:
            feats = self.weighted_sum(out.hidden_states)
        else:
            feats = out.last_hidden_state
        return feats, out.frame_mask

    # ------------------------------------------------------------------------ parameters
    def learnable_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> parameter for everything that trains (the head is not part of this model)."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Learnable parameters by group (``e``, ``l``, ``p``, ``ln``, ``lora``, ``prefix``, ``backbone``)."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name, param in self.learnable_parameters().items():
            groups.setdefault(parameter_group(name), []).append(param)
        return groups


def parameter_group(name: str) -> str:
    """The learning-rate group of a parameter of :class:`AdaptedSSL`, from its name."""
    top = name.split(".", 1)[0]
    if top == "encoder_adapters":
        return "e"
    if top in ("layer_adapters", "weighted_sum"):
        return "l"
    if top == "prompt":
        return "p"
    if top == "prefix":
        return "prefix"
    if ".parametrizations." in name and name.rsplit(".", 1)[-1].startswith("lora_"):
        return "lora"
    if name.endswith(("layer_norm.weight", "layer_norm.bias")) and ".layers." in name:
        return "ln"
    return "backbone"


def _sublayer(layer: nn.Module, site: str) -> nn.Module:
    if site == "ffn":
        return layer.feed_forward
    if site == "mhsa":
        return layer.attention
    raise ValueError(f"unknown encoder adapter site {site!r}; expected 'mhsa' or 'ffn'")


def _disable_dropout(module: nn.Module) -> None:
    """Set every dropout probability inside ``module`` to 0 (attention dropout included)."""
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = 0.0
        elif hasattr(sub, "dropout") and isinstance(sub.dropout, float):
            sub.dropout = 0.0
