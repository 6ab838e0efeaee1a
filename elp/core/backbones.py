"""Self-supervised speech backbones: short names, configs, loading and a padding-safe wrapper.

A backbone is a Hugging Face transformers model of the wav2vec 2.0 family (wav2vec2, HuBERT,
ContentVec, WavLM). :class:`SSLBackbone` runs its pieces itself (CNN feature encoder, feature
projection, positional convolution, transformer layers) so that adapters can be attached at
the places the ELP specification names, without forking the HF code:

* the CNN never receives gradients and runs without autograd;
* the first CNN layer's GroupNorm (Base models) is computed over each utterance's valid
  samples only, so zero-padding in a batch does not change an utterance's output;
* optional pseudo frames (the P-adapter) are inserted before the feature projection and
  optional per-layer prefixes (deep prompt tuning) around every transformer layer; both are
  stripped again, so every returned hidden state has exactly the input's frame count;
* speed (:mod:`elp.core.speed`): WavLM's attention gets a time-major input through a pre-hook
  (``contiguous_attention``, on by default: same values, no slow frozen-weight path);
  the first ``no_grad_layers`` layers can run without autograd, and the others with
  activation checkpointing (``activation_checkpointing``). :class:`elp.core.model.AdaptedSSL`
  sets both from its method and options.

Examples
--------
>>> from elp.core.backbones import backbone_config, SSLBackbone
>>> cfg = backbone_config("wavlm", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
...                       intermediate_size=64, conv_dim=(32, 32, 32), conv_kernel=(10, 8, 8),
...                       conv_stride=(5, 8, 8), num_conv_pos_embeddings=16,
...                       num_conv_pos_embedding_groups=2)
>>> backbone = SSLBackbone.from_config("wavlm", cfg)
>>> out = backbone(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
>>> len(out.hidden_states), tuple(out.hidden_states[-1].shape), out.frame_mask.sum(1).tolist()
(3, (2, 49, 32), [49, 24])
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from elp.core.speed import (add_contiguous_attention_inputs, add_sdpa_attention, cast_frozen_linear_, checkpointed,
                            remove_sdpa_attention)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """What a short backbone name stands for.

    Parameters
    ----------
    family
        HF architecture family: ``"wav2vec2"``, ``"hubert"`` or ``"wavlm"``.
    hub_id
        Default Hugging Face hub id of the pretrained checkpoint.
    size
        ``"base"`` (post-LN, GroupNorm CNN) or ``"large"`` (pre-LN, LayerNorm CNN).
    """

    family: str
    hub_id: str
    size: str


@dataclass(frozen=True)
class ModuleNames:
    """Where the parts adapters attach to live in a family's HF model: the one place that spells them.

    Paths are dotted attribute paths: ``layers`` and ``encoder_norm`` relative to the HF
    ``*Model``, the others relative to one transformer layer (``attention_projections`` relative
    to its attention module).

    Examples
    --------
    >>> names = FAMILY_MODULES["wavlm"]
    >>> names.layers, names.feed_forward, names.layer_norms
    ('encoder.layers', 'feed_forward', ('layer_norm', 'final_layer_norm'))
    """

    #: the ``nn.ModuleList`` of transformer layers
    layers: str = "encoder.layers"
    #: the self-attention block of a layer (its output: a tuple whose first element is [B, F, D])
    attention: str = "attention"
    #: the feed-forward block of a layer ([B, F, D] -> [B, F, D])
    feed_forward: str = "feed_forward"
    #: a layer's two LayerNorms: around the attention block, around the feed-forward block
    layer_norms: tuple[str, str] = ("layer_norm", "final_layer_norm")
    #: the encoder's own LayerNorm (after the positional convolution in post-LN models, after
    #: the last layer in pre-LN models)
    encoder_norm: str = "encoder.layer_norm"
    #: the attention's query, key, value and output projections (``nn.Linear``)
    attention_projections: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "out_proj")
    #: the attention hands a transposed view of its input to ``F.multi_head_attention_forward``
    #: (WavLM): :mod:`elp.core.speed` gives it a time-major input or replaces it with SDPA
    fused_attention: bool = False

    @property
    def query(self) -> str:
        """The query projection's name."""
        return self.attention_projections[0]

    @property
    def value(self) -> str:
        """The value projection's name."""
        return self.attention_projections[2]


#: :class:`ModuleNames` of each architecture family (transformers 4.x and 5.x spell them alike).
FAMILY_MODULES: dict[str, ModuleNames] = {
    "wav2vec2": ModuleNames(),
    "hubert": ModuleNames(),
    "wavlm": ModuleNames(fused_attention=True),
}


#: Short names accepted everywhere a backbone is named (hparams, CLI, adapter exports).
#: ContentVec uses the HuBERT architecture; its hub id is a HF-format conversion
#: (any local directory holding such a checkpoint works the same way).
BACKBONES: dict[str, BackboneSpec] = {
    "wav2vec2": BackboneSpec("wav2vec2", "facebook/wav2vec2-base", "base"),
    "wav2vec2_large": BackboneSpec("wav2vec2", "facebook/wav2vec2-large-lv60", "large"),
    "hubert": BackboneSpec("hubert", "facebook/hubert-base-ls960", "base"),
    "hubert_large": BackboneSpec("hubert", "facebook/hubert-large-ll60k", "large"),
    "contentvec": BackboneSpec("hubert", "lengyue233/content-vec-best", "base"),
    "wavlm": BackboneSpec("wavlm", "microsoft/wavlm-base", "base"),
    "wavlm_plus": BackboneSpec("wavlm", "microsoft/wavlm-base-plus", "base"),
    "wavlm_large": BackboneSpec("wavlm", "microsoft/wavlm-large", "large"),
}

# Architecture of the published checkpoints (their config.json files), so that parameter
# counts need no download. Base: 12 post-LN layers of 768; Large: 24 pre-LN layers of 1024.
_SIZE_PRESETS = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, feat_extract_norm="group", do_stable_layer_norm=False,
                 conv_bias=False),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
                  conv_bias=True),
}

# Regularisers that must be off for ELP training: HF layerdrop skips layers (and so the
# adapters inside them; under DDP it raises "Expected to have finished reduction"), and HF's
# SpecAugment-style masking lives in HF's forward, which this wrapper does not call.
_TRAINING_OVERRIDES = dict(layerdrop=0.0, mask_time_prob=0.0, mask_feature_prob=0.0)


def _family_classes(family: str):
    import transformers

    classes = {
        "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
        "hubert": (transformers.HubertConfig, transformers.HubertModel),
        "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
    }
    if family not in classes:
        raise ValueError(f"unknown backbone family {family!r}; expected one of {sorted(classes)}")
    return classes[family]


def resolve_backbone_name(name: str) -> BackboneSpec:
    """Return the :class:`BackboneSpec` of a short name (a key of :data:`BACKBONES`).

    Raises
    ------
    ValueError
        If ``name`` is not a known short name (the message lists them).

    Examples
    --------
    >>> resolve_backbone_name("wavlm_large")
    BackboneSpec(family='wavlm', hub_id='microsoft/wavlm-large', size='large')
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def backbone_config(name: str, **overrides):
    """The HF config (``Wav2Vec2Config``, ``HubertConfig`` or ``WavLMConfig``) of a short name's architecture.

    Built without downloading anything; ``overrides`` change config fields (e.g. a tiny test
    architecture).

    Examples
    --------
    >>> backbone_config("wavlm_plus").hidden_size
    768
    """
    spec = resolve_backbone_name(name)
    config_cls, _ = _family_classes(spec.family)
    fields = {**_SIZE_PRESETS[spec.size], **_TRAINING_OVERRIDES, **overrides}
    return config_cls(**fields)


def family_of_config(config) -> str:
    """The architecture family (``wav2vec2`` | ``hubert`` | ``wavlm``) of a HF config (its ``model_type``).

    Raises
    ------
    ValueError
        For any other ``model_type`` (e.g. ``data2vec-audio``).

    Examples
    --------
    >>> family_of_config(backbone_config("contentvec"))
    'hubert'
    """
    family = getattr(config, "model_type", None)
    if family == "data2vec-audio" or family not in ("wav2vec2", "hubert", "wavlm"):
        raise ValueError(f"unsupported model_type {family!r}: elp supports wav2vec2, hubert, wavlm")
    return family


@dataclass
class BackboneOutput:
    """Output of :class:`SSLBackbone`.

    Parameters
    ----------
    hidden_states
        ``num_layers + 1`` tensors [B, F, D]; entry 0 is the input of the first
        transformer layer, entry i the output of layer i-1 (the HF convention).
    last_hidden_state
        [B, F, D], the last layer's output after the encoder's final LayerNorm
        (equal to ``hidden_states[-1]`` for post-LN Base models).
    frame_mask
        [B, F] bool, True where a frame comes from real (unpadded) audio.
    """

    hidden_states: list[torch.Tensor]
    last_hidden_state: torch.Tensor
    frame_mask: torch.Tensor


def masked_group_norm(x: torch.Tensor, mask: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one group per channel, statistics over valid frames only.

    The statistics (mean, variance) are always computed in float32 and the result is cast
    back to ``x``'s dtype: in float16 the sum of squares over a few thousand frames overflows
    (65504 is fp16's largest value) and every channel would become 0 without an error.

    Parameters
    ----------
    x
        [B, C, T] CNN activations (any float dtype).
    mask
        [B, T] bool, True for valid frames.
    norm
        The module whose eps and affine parameters are used (``num_groups == num_channels``,
        as in wav2vec2/HuBERT/WavLM Base).

    Returns
    -------
    torch.Tensor
        [B, C, T] in ``x.dtype``; padded frames are set to 0.

    Examples
    --------
    >>> norm = nn.GroupNorm(4, 4)
    >>> x = 300 * torch.randn(1, 4, 3000)
    >>> mask = torch.ones(1, 3000, dtype=torch.bool)
    >>> half = masked_group_norm(x.half(), mask, norm)
    >>> (half.float() - masked_group_norm(x, mask, norm)).abs().max().item() < 1e-2
    True
    """
    if norm.num_groups != norm.num_channels:
        raise ValueError("masked_group_norm supports one group per channel only")
    dtype = x.dtype
    x = x.float()
    m = mask[:, None, :].float()
    count = m.sum(-1, keepdim=True).clamp_min(1.0)
    weight = bias = None
    if norm.affine:
        weight, bias = norm.weight.float()[None, :, None], norm.bias.float()[None, :, None]
    if not (torch.is_grad_enabled() and (x.requires_grad or (norm.affine and norm.weight.requires_grad))):
        # Without autograd: one [B, C, T] temporary instead of five (the first CNN layer's
        # output is the largest activation of the model: 512 x 16000/5 per second of audio).
        y = x * m
        mean = y.sum(-1, keepdim=True) / count
        y = torch.sub(x, mean, out=y).mul_(m)
        var = torch.einsum("bct,bct->bc", y, y)[..., None] / count
        y.mul_(torch.rsqrt(var + norm.eps))
        if norm.affine:
            y.mul_(weight).add_(bias)
        return y.mul_(m).to(dtype)
    mean = (x * m).sum(-1, keepdim=True) / count
    var = (((x - mean) * m) ** 2).sum(-1, keepdim=True) / count
    y = (x - mean) / torch.sqrt(var + norm.eps)
    if norm.affine:
        y = y * weight + bias
    return (y * m).to(dtype)


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] integer lengths -> [B, max_len] bool mask (True = valid).

    Examples
    --------
    >>> lengths_to_mask(torch.tensor([3, 1]), 4).int().tolist()
    [[1, 1, 1, 0], [1, 0, 0, 0]]
    """
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class SSLBackbone(nn.Module):
    """A HF wav2vec2/HuBERT/WavLM model run piece by piece, padding-safe, adapter-ready.

    Parameters
    ----------
    name
        Short name (:data:`BACKBONES`) or a free label for a local checkpoint.
    model
        The HF ``*Model`` (not ``*ForCTC``).
    normalize_waveform
        Zero-mean/unit-variance per utterance over its valid samples (what the
        Large checkpoints were pre-trained with; Base checkpoints were not: fairseq's
        ``task.normalize``, also followed by s3prl).
    contiguous_attention
        Give WavLM's attention a time-major input
        (:func:`elp.core.speed.add_contiguous_attention_inputs`; outputs equal the stock ones to
        float rounding). No effect on wav2vec2/HuBERT.
    sdpa_attention
        Compute WavLM's attention with ``scaled_dot_product_attention``
        (:func:`elp.core.speed.add_sdpa_attention`; equal to HF's to float rounding, serves every
        method). Replaces ``contiguous_attention``. No effect on wav2vec2/HuBERT (HF already
        uses SDPA for them).

    Attributes
    ----------
    no_grad_layers : int
        Runtime knob, no effect on results: the first this-many transformer layers (and
        everything before them) run under ``torch.no_grad`` (only valid when nothing in them
        trains and no pseudo frames need gradients; :class:`elp.core.model.AdaptedSSL` decides).
    activation_checkpointing : bool
        Runtime knob, no effect on results: recompute each remaining layer's activations in
        backward instead of storing them (less memory, about one more forward of those layers).
    """

    def __init__(self, name: str, model: nn.Module, normalize_waveform: bool | None = None,
                 contiguous_attention: bool = True, sdpa_attention: bool = False):
        super().__init__()
        self.name = name
        self.model = model
        self.family = family_of_config(model.config)
        if normalize_waveform is None:
            normalize_waveform = bool(model.config.do_stable_layer_norm)
        self.normalize_waveform = normalize_waveform
        model.feature_extractor.requires_grad_(False)
        # Adapters attach to HF sub-modules with forward hooks (see elp.core.model).
        self._contiguous_attention = contiguous_attention
        self._sdpa_modules, self._speed_hooks = [], []
        self.set_sdpa_attention(sdpa_attention)
        #: dtype the frozen transformer weights are held in (None = as loaded); see cast_frozen_.
        self.frozen_dtype: torch.dtype | None = None
        self.no_grad_layers = 0
        self.activation_checkpointing = False
        # Identity of the frozen weights as loaded (before any training changes them): exports,
        # checkpoints and model packages reference the backbone by it instead of copying it.
        self.weights_sha256 = weights_hash(model)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_config(cls, name: str, config, **kwargs) -> SSLBackbone:
        """A randomly initialised backbone of ``config``'s architecture (tests, counting).

        ``config`` is e.g. :func:`backbone_config` (training overrides are applied to it in place);
        ``kwargs`` are those of :class:`SSLBackbone`.
        """
        _, model_cls = _family_classes(family_of_config(config))
        for key, value in _TRAINING_OVERRIDES.items():
            setattr(config, key, value)
        return cls(name, model_cls(config), **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str, source: str | None = None, **kwargs) -> SSLBackbone:
        """Load pretrained weights.

        Parameters
        ----------
        name_or_path
            A short name (:data:`BACKBONES`) or a local checkpoint directory.
        source
            Where the weights are: a local directory or a hub id (default: the short
            name's hub id). Offline machines pass a directory.

        Raises
        ------
        FileNotFoundError
            If ``name_or_path`` is neither a short name nor a directory with a ``config.json``.
        OSError
            If the weights cannot be loaded (the message says how to work offline).

        Examples
        --------
        >>> import tempfile
        >>> from elp.testing import save_tiny_checkpoint
        >>> path = save_tiny_checkpoint("hubert", tempfile.mkdtemp())
        >>> backbone = SSLBackbone.from_pretrained(str(path))
        >>> backbone.family, backbone.num_layers, backbone.hidden_size
        ('hubert', 3, 32)
        """
        if name_or_path in BACKBONES:
            name, source = name_or_path, source or BACKBONES[name_or_path].hub_id
        else:
            name, source = Path(name_or_path).name, source or name_or_path
        config_file = Path(source) / "config.json"
        if config_file.exists():
            family = family_of_config(_ConfigStub(json.loads(config_file.read_text())))
        elif name in BACKBONES:
            family = BACKBONES[name].family
        else:
            raise FileNotFoundError(
                f"{source!r} is neither a known backbone name ({', '.join(BACKBONES)}) nor a "
                "directory with a config.json")
        _, model_cls = _family_classes(family)
        try:
            model = model_cls.from_pretrained(source, **_TRAINING_OVERRIDES)
        except OSError as err:
            raise OSError(
                f"could not load backbone weights from {source!r}: {err}\n"
                "Without internet access, download the checkpoint elsewhere and pass its local "
                "directory (backbone_source: /path/to/dir in the hparams).") from err
        return cls(name, model, **kwargs)

    # ---------------------------------------------------------------------------- geometry
    @property
    def config(self):
        """The HF model's config."""
        return self.model.config

    @property
    def module_names(self) -> ModuleNames:
        """Where adapters attach in this family's HF model (:data:`FAMILY_MODULES`)."""
        return FAMILY_MODULES[self.family]

    @property
    def layers(self) -> nn.ModuleList:
        """The transformer layers (``model.encoder.layers``)."""
        return self.model.get_submodule(self.module_names.layers)

    def layer_part(self, index: int, path: str) -> nn.Module:
        """A sub-module of transformer layer ``index``, by a path of :attr:`module_names`.

        Examples
        --------
        >>> from elp.testing import tiny_config
        >>> backbone = SSLBackbone.from_config("hubert", tiny_config("hubert"))
        >>> names = backbone.module_names
        >>> type(backbone.layer_part(1, names.feed_forward)).__name__
        'HubertFeedForward'
        """
        return self.layers[index].get_submodule(path)

    def set_layer_part(self, index: int, path: str, module: nn.Module) -> None:
        """Replace a sub-module of transformer layer ``index`` (a path of :attr:`module_names`)."""
        owner, _, attr = path.rpartition(".")
        setattr(self.layers[index].get_submodule(owner) if owner else self.layers[index], attr, module)

    def fused_attention_modules(self) -> list[nn.Module]:
        """The layers' attention modules when the family's attention is fused
        (:attr:`ModuleNames.fused_attention`; WavLM), else none."""
        names = self.module_names
        return [self.layer_part(i, names.attention) for i in range(self.num_layers)] if names.fused_attention else []

    @property
    def encoder_norm(self) -> nn.Module:
        """The encoder's own LayerNorm (trained by ``full``)."""
        return self.model.get_submodule(self.module_names.encoder_norm)

    def encoder_output(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last layer's output [B, F, D] -> ``last_hidden_state`` (pre-LN models apply the
        encoder's LayerNorm last; post-LN models return ``hidden`` itself)."""
        return self.encoder_norm(hidden) if self.config.do_stable_layer_norm else hidden

    @property
    def num_layers(self) -> int:
        """Number of transformer layers L."""
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        """Model width d."""
        return self.config.hidden_size

    @property
    def cnn_channels(self) -> int:
        """Channels C of the CNN's output."""
        return self.config.conv_dim[-1]

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames the CNN makes from ``num_samples`` samples (any integer tensor shape)."""
        return self.model._get_feat_extract_output_lengths(num_samples)

    @property
    def receptive_field(self) -> int:
        """Samples needed for one output frame (400 = 25 ms at 16 kHz for the standard CNN)."""
        field = 1
        for kernel, stride in reversed(list(zip(self.config.conv_kernel, self.config.conv_stride))):
            field = (field - 1) * stride + kernel
        return field

    # ----------------------------------------------------------------------------- forward
    def sample_lengths(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None) -> torch.Tensor:
        """Relative lengths [B] in [0, 1] (SpeechBrain convention; None: all full) -> sample counts [B] (long).

        Raises
        ------
        ValueError
            If an utterance is shorter than :attr:`receptive_field`.
        """
        total = wavs.shape[1]
        if wav_lens is None:
            return torch.full((wavs.shape[0],), total, dtype=torch.long, device=wavs.device)
        lengths = torch.round(wav_lens.to(wavs.device).float() * total).long().clamp(max=total)
        too_short = lengths < self.receptive_field
        if lengths.is_cuda:  # no host synchronisation per step: a device-side assertion instead
            torch._assert_async(~too_short.any(), "an utterance is shorter than the CNN's receptive field")
        elif too_short.any():
            bad = too_short.nonzero().flatten().tolist()
            raise ValueError(
                f"utterance(s) at batch positions {bad} have {lengths[too_short].tolist()} samples, "
                f"fewer than the CNN's receptive field ({self.receptive_field} samples); remove "
                "them from the data dir (stage 1 validation rejects them)")
        return lengths

    @torch.no_grad()
    def extract_cnn_features(self, wavs: torch.Tensor, lengths: torch.Tensor):
        """Run the frozen CNN on ``wavs`` [B, T] (16 kHz) with ``lengths`` [B] valid samples.

        Returns
        -------
        features : torch.Tensor
            [B, F, C] CNN output.
        frame_mask : torch.Tensor
            [B, F] bool, True on valid frames.
        """
        sample_mask = lengths_to_mask(lengths, wavs.shape[1])
        x = wavs * sample_mask
        if self.normalize_waveform:
            count = lengths[:, None].to(x.dtype)
            mean = x.sum(1, keepdim=True) / count
            var = (((x - mean) * sample_mask) ** 2).sum(1, keepdim=True) / count
            x = (x - mean) / torch.sqrt(var + 1e-7) * sample_mask
        x = x[:, None, :]
        conv_layers = self.model.feature_extractor.conv_layers
        for index, conv_layer in enumerate(conv_layers):
            if index == 0 and isinstance(getattr(conv_layer, "layer_norm", None), nn.GroupNorm):
                x = conv_layer.conv(x)
                valid = self.num_frames_after(lengths, 1)
                x = masked_group_norm(x, lengths_to_mask(valid, x.shape[-1]), conv_layer.layer_norm)
                x = conv_layer.activation(x)
            else:
                x = conv_layer(x)
        frames = self.num_frames(lengths)
        return x.transpose(1, 2), lengths_to_mask(frames, x.shape[-1])

    def num_frames_after(self, lengths: torch.Tensor, num_conv_layers: int) -> torch.Tensor:
        """Valid frames after the first ``num_conv_layers`` CNN layers (``lengths``: sample counts, any shape)."""
        for kernel, stride in list(zip(self.config.conv_kernel, self.config.conv_stride))[:num_conv_layers]:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def forward(
        self,
        wavs: torch.Tensor,
        wav_lens: torch.Tensor | None = None,
        prompt: torch.Tensor | None = None,
        layer_prefixes: torch.Tensor | None = None,
    ) -> BackboneOutput:
        """Hidden states of every layer.

        Parameters
        ----------
        wavs
            [B, T] float waveforms at 16 kHz.
        wav_lens
            [B] relative lengths in [0, 1] (SpeechBrain convention); None = all full.
        prompt
            Optional [K, C] pseudo CNN frames (P-adapter) put before each utterance's frames.
        layer_prefixes
            Optional [L, K', D] vectors prepended to the input of every layer and
            dropped from its output (deep prompt tuning); [L, B, K', D]: one set per
            utterance (several tasks' prefixes in one batch, :mod:`elp.serve.multitask`).

        Returns
        -------
        BackboneOutput
            Hidden states and frame mask (prompt and prefix frames removed).
        """
        lengths = self.sample_lengths(wavs, wav_lens)
        features, frame_mask = self.extract_cnn_features(wavs, lengths)
        return self.forward_from_cnn_features(features, frame_mask, prompt, layer_prefixes)

    def forward_from_cnn_features(
        self,
        features: torch.Tensor,
        frame_mask: torch.Tensor,
        prompt: torch.Tensor | None = None,
        layer_prefixes: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
    ) -> BackboneOutput:
        """Hidden states of every layer, from the CNN's output (e.g. read from a cache).

        ``forward(wavs, wav_lens)`` is ``extract_cnn_features`` followed by this; the values of
        padded frames of ``features`` do not matter (they are masked before the positional
        convolution and in attention).

        Parameters
        ----------
        features
            [B, F, C] CNN features (:meth:`extract_cnn_features`).
        frame_mask
            [B, F] bool, True for valid frames.
        prompt, layer_prefixes
            As in :meth:`forward`.
        prefix_mask
            [B, K'] bool: which prefix vectors of each utterance are attended to (default:
            all); a routed batch pads tasks with fewer prefix vectors with masked ones.

        Returns
        -------
        BackboneOutput
            As :meth:`forward` returns.

        Examples
        --------
        >>> from elp.testing import TINY_CONFIG
        >>> backbone = SSLBackbone.from_config("wavlm", backbone_config("wavlm", **TINY_CONFIG)).eval()
        >>> wavs, lengths = torch.randn(2, 8000), torch.tensor([8000, 5000])
        >>> feats, mask = backbone.extract_cnn_features(wavs, lengths)
        >>> a = backbone.forward_from_cnn_features(feats, mask).last_hidden_state
        >>> b = backbone(wavs, lengths / 8000).last_hidden_state
        >>> bool(((a - b) * mask[..., None]).abs().max() < 1e-5)
        True
        """
        with self._frozen_precision(features.device.type) as own_autocast:
            num_prompt = 0
            mask = frame_mask
            if prompt is not None:
                num_prompt = prompt.shape[0]
                batch = features.shape[0]
                features = torch.cat([prompt.to(features.dtype).expand(batch, -1, -1), features], dim=1)
                mask = torch.cat([frame_mask.new_ones(batch, num_prompt), frame_mask], dim=1)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.no_grad_layers):
                hidden = self.model.feature_projection(features)
            if isinstance(hidden, tuple):  # wav2vec2/WavLM also return the normalised CNN features
                hidden = hidden[0]
            hidden_states, last = self._run_encoder(hidden, mask, layer_prefixes, prefix_mask)
        if num_prompt:
            hidden_states = [h[:, num_prompt:] for h in hidden_states]
            last = last[:, num_prompt:]
        if own_autocast:  # called without autocast: hand back float32 as the caller expects
            hidden_states, last = [h.float() for h in hidden_states], last.float()
        return BackboneOutput(hidden_states, last, frame_mask)

    def set_sdpa_attention(self, enabled: bool) -> None:
        """Switch WavLM's attention between SDPA (:func:`elp.core.speed.add_sdpa_attention`) and HF's.

        With SDPA off, the ``contiguous_attention`` pre-hooks (if asked for) are in place; with
        it on they are removed (SDPA projects q/k/v with ordinary Linear calls). wav2vec2 and
        HuBERT are unaffected (HF already uses SDPA for them).

        Parameters
        ----------
        enabled
            True: SDPA; False: HF's ``F.multi_head_attention_forward``.

        Examples
        --------
        >>> from elp.testing import TINY_CONFIG
        >>> backbone = SSLBackbone.from_config("wavlm", backbone_config("wavlm", **TINY_CONFIG))
        >>> backbone.set_sdpa_attention(True); backbone.sdpa_attention, len(backbone._speed_hooks)
        (True, 0)
        """
        remove_sdpa_attention(self._sdpa_modules)
        for handle in self._speed_hooks:
            handle.remove()
        modules = self.fused_attention_modules()
        self._sdpa_modules = add_sdpa_attention(modules, self.module_names.attention_projections) if enabled else []
        #: whether WavLM attention runs through SDPA (always False for wav2vec2/HuBERT)
        self.sdpa_attention = bool(self._sdpa_modules)
        use_hooks = self._contiguous_attention and not self._sdpa_modules
        self._speed_hooks = add_contiguous_attention_inputs(modules) if use_hooks else []

    # ------------------------------------------------------------------- frozen precision
    def cast_frozen_(self, dtype: torch.dtype | None = torch.bfloat16) -> list[str]:
        """Hold the frozen ``nn.Linear`` weights of the transformer part in ``dtype``, in place.

        Under ``torch.autocast(dtype=bfloat16)`` every frozen float32 weight is cast again at
        every call (autocast caches casts only for weights that require grad); holding them in
        bfloat16 once removes that work. Changed: frozen Linear weights/biases of the feature
        projection and the transformer layers (q/k/v/out, WavLM's gate, feed-forward).
        Unchanged: every trainable parameter, all LayerNorms, the positional convolution,
        WavLM's relative-position embedding, LoRA-parametrized weights and the whole CNN
        (whose GroupNorm statistics are float32 anyway, :func:`masked_group_norm`).

        Call it after the method has set ``requires_grad`` (e.g. through
        :meth:`elp.core.model.AdaptedSSL.cast_frozen_`). Afterwards the backbone always runs its
        transformer part under autocast to ``dtype``; when the caller has no autocast active
        it opens one itself and returns float32 hidden states. ``dtype``: ``torch.bfloat16`` (or
        ``torch.float16`` on GPUs). Returns the names of the parameters cast (relative to
        ``self.model``).

        Examples
        --------
        >>> from elp.testing import TINY_CONFIG
        >>> backbone = SSLBackbone.from_config("wavlm", backbone_config("wavlm", **TINY_CONFIG))
        >>> _ = backbone.requires_grad_(False)
        >>> names = backbone.cast_frozen_(torch.bfloat16)
        >>> "encoder.layers.0.attention.q_proj.weight" in names, backbone.layers[0].layer_norm.weight.dtype
        (True, torch.float32)
        >>> backbone(torch.randn(1, 8000)).last_hidden_state.dtype
        torch.float32
        """
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"cast_frozen_ holds frozen weights in bfloat16 or float16, not {dtype}")
        names = [f"feature_projection.{n}" for n in cast_frozen_linear_(self.model.feature_projection, dtype)]
        names += [f"encoder.{n}" for n in cast_frozen_linear_(self.model.encoder, dtype)]
        self.frozen_dtype = dtype
        return names

    def _frozen_precision(self, device_type: str):
        """Autocast to ``frozen_dtype`` when weights are held in it and no autocast is active."""
        if self.frozen_dtype is None or torch.is_autocast_enabled(device_type):
            return nullcontext(False)
        return _AutocastFlag(device_type, self.frozen_dtype)

    def _attention_mask(self, hidden: torch.Tensor, mask: torch.Tensor):
        """The attention mask in the form the family's layers expect."""
        if self.family == "wavlm":
            return mask.long()
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask)

    def _run_layer(self, layer: nn.Module, hidden, attention_mask, position_bias, index: int):
        if self.family == "wavlm":
            if self.config.do_stable_layer_norm:
                return layer(hidden, attention_mask=attention_mask, position_bias=position_bias)
            return layer(hidden, attention_mask=attention_mask, position_bias=position_bias, index=index)
        return layer(hidden, attention_mask=attention_mask), None

    def _run_encoder(self, hidden: torch.Tensor, mask: torch.Tensor, layer_prefixes, prefix_mask=None):
        encoder = self.model.encoder
        grad_enabled = torch.is_grad_enabled()
        stable = self.config.do_stable_layer_norm
        with torch.set_grad_enabled(grad_enabled and not self.no_grad_layers):
            hidden = hidden * mask[..., None].to(hidden.dtype)  # padded frames are 0 before pos_conv
            hidden = hidden + encoder.pos_conv_embed(hidden)
            if not stable:
                hidden = self.encoder_norm(hidden)
            hidden = encoder.dropout(hidden)

        num_prefix = 0 if layer_prefixes is None else layer_prefixes.shape[-2]

        def prefix_of(index: int) -> torch.Tensor:  # [B, K', D]: shared ([L, K', D]) or per utterance
            prefix = layer_prefixes[index].to(hidden.dtype)
            return prefix if prefix.dim() == 3 else prefix.expand(hidden.shape[0], -1, -1)

        if num_prefix:
            prefix_mask = mask.new_ones(mask.shape[0], num_prefix) if prefix_mask is None else prefix_mask
            mask = torch.cat([prefix_mask.to(mask.dtype), mask], dim=1)
            probe = torch.cat([prefix_of(0), hidden], dim=1)
        else:
            probe = hidden
        attention_mask = self._attention_mask(probe, mask)

        hidden_states = [hidden]
        position_bias = None
        for index, layer in enumerate(self.layers):
            if num_prefix:
                hidden = torch.cat([prefix_of(index), hidden], dim=1)
            with torch.set_grad_enabled(grad_enabled and index >= self.no_grad_layers):
                if self.activation_checkpointing and torch.is_grad_enabled():
                    hidden, position_bias = checkpointed(
                        self._run_layer, layer, hidden, attention_mask, position_bias, index)
                else:
                    hidden, position_bias = self._run_layer(layer, hidden, attention_mask, position_bias, index)
            if num_prefix:
                hidden = hidden[:, num_prefix:]
            hidden_states.append(hidden)
        return hidden_states, self.encoder_output(hidden)


def weights_hash(module: nn.Module | dict) -> str | None:
    """SHA-256 over a module's parameters and buffers (names, dtypes, shapes and bytes).

    Two backbones have the same hash exactly when their weights are bit-identical, whatever
    directory or hub id they came from. ``module`` is a module (its ``state_dict``) or a
    name -> tensor dict, read sorted by name. Returns 64 hex digits, or None for a module on the
    meta device.

    Examples
    --------
    >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> weights_hash(a) == weights_hash(b)
    True
    >>> with torch.no_grad():
    ...     _ = b.weight.add_(1e-6)
    >>> weights_hash(a) == weights_hash(b)
    False
    """
    digest = hashlib.sha256()
    state = module if isinstance(module, dict) else module.state_dict()
    for name, tensor in sorted(state.items()):
        if tensor.is_meta:
            return None
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _AutocastFlag(torch.autocast):
    """``torch.autocast`` whose ``__enter__`` returns True (the backbone opened it itself)."""

    def __init__(self, device_type: str, dtype: torch.dtype):
        super().__init__(device_type=device_type, dtype=dtype)

    def __enter__(self):
        super().__enter__()
        return True


class _ConfigStub:
    """Just enough of a config to read ``model_type`` from a config.json dict."""

    def __init__(self, fields: dict):
        self.model_type = fields.get("model_type")


def load_backbone(name: str, source: str | None = None, pretrained: bool = True,
                  config_overrides: dict | None = None, **kwargs) -> SSLBackbone:
    """Build a backbone from hparams.

    Parameters
    ----------
    name
        Short name (:data:`BACKBONES`) or a local checkpoint directory.
    source
        Local directory or hub id with the weights (default: the name's hub id).
    pretrained
        False builds random weights from the architecture config (no download).
    config_overrides
        Config fields to change when ``pretrained`` is False.
    **kwargs
        Of :class:`SSLBackbone`.

    Examples
    --------
    >>> load_backbone("wav2vec2", pretrained=False, config_overrides=dict(num_hidden_layers=1)).num_layers
    1
    """
    if pretrained:
        return SSLBackbone.from_pretrained(name, source, **kwargs)
    return SSLBackbone.from_config(name, backbone_config(name, **(config_overrides or {})), **kwargs)
