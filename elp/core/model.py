"""A frozen backbone plus one fine-tuning method: the model every recipe trains.

Examples
--------
>>> from elp.core.backbones import load_backbone
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

from collections.abc import Mapping

import torch
from torch import nn

from elp.core.adapters import Attachment
from elp.core.backbones import SSLBackbone, lengths_to_mask
from elp.core.methods import METHODS, MethodSpec, get_method, resolve_options

#: Keywords (or entries of the ``options`` mapping) of :class:`AdaptedSSL` that change how the
#: model runs, not what it computes: never recorded in :attr:`AdaptedSSL.options`.
RUNTIME_KNOBS: dict[str, object] = {"backbone_dropout": None, "activation_checkpointing": False,
                                    "frozen_dtype": "fp32", "sdpa_attention": False}


class AdaptedSSL(nn.Module):
    """A :class:`SSLBackbone` with the attachments of one method (:mod:`elp.core.methods`).

    The model iterates over its attachments (:attr:`attachments`, one per kind of the method,
    :class:`elp.core.adapters.Attachment`): they attach themselves to the backbone, say which
    modules train, what the backbone's forward receives (pseudo frames, prefixes) and which of
    them reads the hidden states for the head. Each kind that holds modules of its own is also
    an attribute named by the kind (``encoder_adapters``, ``layer_adapters``, ``weighted_sum``,
    ``prompt``, ``prefix``; None when the method lacks it), the prefix of its state-dict keys.

    Parameters
    ----------
    backbone
        The (pretrained) backbone; its parameters are frozen here, except what the
        method trains.
    method
        A name from :data:`elp.core.methods.METHODS` or a :class:`MethodSpec`.
    options
        Method options (:func:`elp.core.methods.default_options` lists them with their
        defaults) and runtime knobs (below, :data:`RUNTIME_KNOBS`); keyword options
        (``AdaptedSSL(backbone, "elp", l_dim=16, e_dim=8)``) override it. An unknown name is
        refused.
        ``e_first_layer`` = k puts E-adapters only in layers >= k and freezes the per-layer
        LayerNorms of layers < k too; unless the method has pseudo frames, prefixes or LoRA
        (which need gradients through every layer), the backbone then runs layers < k without
        autograd (L-adapters still read their outputs).
    backbone_dropout : bool | None, optional
        Keep HF's dropout inside the frozen backbone (default: off, except for
        ``full`` which trains the backbone and keeps it).
    activation_checkpointing : bool, optional
        Recompute the activations of the backbone layers that run with
        autograd in backward instead of storing them (less memory, about one extra forward of
        those layers). A runtime knob: not part of :attr:`options` (exports do not depend on it).
    frozen_dtype : str, optional
        ``"fp32"`` or ``"bf16"``: the dtype the frozen weights are held in (``"bf16"`` for bf16
        autocast). A runtime knob (no effect on results beyond rounding).
    sdpa_attention : bool, optional
        Run the frozen attention through ``scaled_dot_product_attention``. A runtime knob
        (no effect on results beyond rounding).

    Notes
    -----
    Speed: the CNN always runs without autograd; for methods that train nothing inside
    the backbone (``weighted_sum``, ``l_only``) the whole backbone runs without autograd, and
    its hidden states can be cached on disk (:meth:`forward_from_hidden_states`,
    :class:`elp.train.feature_cache.HiddenStateCache`).

    Examples
    --------
    >>> from elp.testing import tiny_config
    >>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
    >>> model = AdaptedSSL(backbone, "el", {"l_dim": 16, "e_dim": 8}, activation="relu")
    >>> model.options["l_dim"], model.options["activation"], model.output_dim
    (16, 'relu', 16)
    >>> AdaptedSSL(backbone, "el", l_dimm=16)
    Traceback (most recent call last):
    ...
    ValueError: unknown option 'l_dimm' of method 'el'; valid options: activation, e_dim, l_dim, prompt_frames, prefix_frames, lora_rank, lora_alpha, lora_targets, e_first_layer; runtime knobs: backbone_dropout, activation_checkpointing, frozen_dtype, sdpa_attention
    """

    def __init__(self, backbone: SSLBackbone, method: str | MethodSpec = "elp", options: Mapping | None = None,
                 **more_options):
        super().__init__()
        self.method = get_method(method) if isinstance(method, str) else method
        given = {**(options or {}), **more_options}
        knobs = {name: given.pop(name, default) for name, default in RUNTIME_KNOBS.items()}
        backbone_dropout, activation_checkpointing = knobs["backbone_dropout"], knobs["activation_checkpointing"]
        frozen_dtype, sdpa_attention = knobs["frozen_dtype"], knobs["sdpa_attention"]
        resolved = resolve_options(self.method, given, runtime_knobs=tuple(RUNTIME_KNOBS))
        e_first_layer = resolved["e_first_layer"]
        if not 0 <= e_first_layer < backbone.num_layers:
            raise ValueError(f"e_first_layer={e_first_layer} must be in [0, {backbone.num_layers - 1}] "
                             f"for a backbone with {backbone.num_layers} layers")
        if frozen_dtype not in ("fp32", "bf16"):
            raise ValueError(f"frozen_dtype must be fp32 or bf16, got {frozen_dtype!r}")
        #: the method options as recorded in exports and packages (tuples as lists)
        self.options = {name: list(value) if isinstance(value, tuple) else value for name, value in resolved.items()}
        self.backbone = backbone

        # parameters are created (and the random generator drawn from) in the method's kind order
        self.attachments: list[Attachment] = []
        for use in self.method.attachments:
            attachment = use.kind.attach(backbone, resolved, **use.kwargs)
            if use.kind.attribute:
                setattr(self, use.kind.attribute, attachment)
            self.attachments.append(attachment)
        for spec in METHODS.values():  # the attribute of every kind the method lacks reads None
            for kind in spec.kinds:
                if kind.attribute and not hasattr(self, kind.attribute):
                    setattr(self, kind.attribute, None)
        self._set_trainable()

        if backbone_dropout is None:
            backbone_dropout = any(type(a).keeps_backbone_dropout for a in self.attachments)
        if not backbone_dropout:
            _disable_dropout(backbone)
        self.backbone_dropout = backbone_dropout
        needs_grad_everywhere = any(type(a).grad_from_input for a in self.attachments)
        backbone.no_grad_layers = 0 if needs_grad_everywhere else e_first_layer
        backbone.activation_checkpointing = activation_checkpointing
        # runtime knobs (no effect on results beyond rounding): frozen weights held in bf16 for
        # bf16 autocast, frozen attention through scaled_dot_product_attention
        if frozen_dtype == "bf16":
            self.cast_frozen_(torch.bfloat16)
        if sdpa_attention:
            backbone.set_sdpa_attention(True)

    def _set_trainable(self) -> None:
        """The one place that decides what trains: the attachments' trainable modules, nothing else."""
        self.requires_grad_(False)
        for attachment in self.attachments:
            for module in attachment.trainable_modules():
                module.requires_grad_(True)

    def attachment(self, kind: type[Attachment]) -> Attachment | None:
        """This model's attachment of ``kind``, or None.

        Examples
        --------
        >>> from elp.core.adapters import PromptAdapter
        >>> from elp.testing import tiny_config
        >>> model = AdaptedSSL(SSLBackbone.from_config("wavlm", tiny_config("wavlm")), "p_only", prompt_frames=2)
        >>> model.attachment(PromptAdapter) is model.prompt
        True
        """
        return next((a for a in self.attachments if type(a) is kind), None)

    @property
    def reader(self) -> Attachment | None:
        """The attachment that turns the hidden states into the head's input (None: the last layer's)."""
        return next((a for a in self.attachments if a.reads_hidden_states), None)

    def backbone_inputs(self) -> dict[str, torch.Tensor]:
        """What the attachments hand to the backbone's forward (pseudo frames, prefixes)."""
        inputs: dict[str, torch.Tensor] = {}
        for attachment in self.attachments:
            inputs.update(attachment.backbone_inputs())
        return inputs

    @property
    def output_dim(self) -> int:
        """Width of the features the head reads."""
        reader = self.reader
        width = reader.output_dim if reader is not None else None
        return width if width is not None else self.backbone.hidden_size

    def forward(self, wavs: torch.Tensor | None, wav_lens: torch.Tensor | None = None, *,
                cnn_features: tuple[torch.Tensor, torch.Tensor] | None = None,
                hidden_states: tuple[list[torch.Tensor], torch.Tensor] | None = None):
        """[B, T] waveforms at 16 kHz (+ [B] relative lengths) -> feats [B, F, output_dim], frame_mask [B, F].

        Instead of waveforms (``wavs`` None), ``cnn_features=(cnn_feats [B, F, C],
        frame_lens [B])`` starts after the frozen CNN (:meth:`forward_from_cnn_features`) and
        ``hidden_states=(hidden_states, frame_mask)`` after the whole frozen backbone
        (:meth:`forward_from_hidden_states`). Going through ``forward`` matters under
        DistributedDataParallel, which all-reduces gradients only of calls to the wrapper.
        """
        if cnn_features is not None:
            return self.forward_from_cnn_features(*cnn_features)
        if hidden_states is not None:
            return self.forward_from_hidden_states(*hidden_states)
        grad = torch.is_grad_enabled() and self.method.backbone_needs_grad
        with torch.set_grad_enabled(grad):
            out = self.backbone(wavs, wav_lens, **self.backbone_inputs())
        return self.read_hidden_states(out.hidden_states, out.last_hidden_state), out.frame_mask

    def forward_from_cnn_features(self, cnn_feats: torch.Tensor, frame_lens: torch.Tensor):
        """What :meth:`forward` returns, computed from the frozen CNN's output (e.g. cached).

        The CNN never trains in any method, so its features can be computed once per
        utterance (:class:`elp.train.feature_cache.CNNFeatureCache`); everything after it (the
        P-adapter's pseudo frames, prefixes, LoRA, E/L-adapters) runs here as in :meth:`forward`.
        ``cnn_feats`` [B, F, C] (values of padded frames do not matter) and ``frame_lens`` [B]
        (valid frames per utterance) give the same output as the waveforms they were computed from
        (to float rounding).

        Raises
        ------
        ValueError
            If ``cnn_feats`` is not [B, F, C] with the backbone's C.

        Examples
        --------
        >>> from elp.core.backbones import backbone_config
        >>> from elp.testing import TINY_CONFIG
        >>> model = AdaptedSSL(SSLBackbone.from_config("wavlm", backbone_config("wavlm", **TINY_CONFIG)),
        ...                    "elp", l_dim=16, e_dim=8, prompt_frames=4).eval()
        >>> wavs, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])
        >>> cnn, mask = model.backbone.extract_cnn_features(wavs, lengths)
        >>> a, _ = model.forward_from_cnn_features(cnn, mask.sum(1))
        >>> b, _ = model(wavs, lengths / 8000)
        >>> bool(((a - b) * mask[..., None]).abs().max() < 1e-5)
        True
        """
        if cnn_feats.dim() != 3 or cnn_feats.shape[-1] != self.backbone.cnn_channels:
            raise ValueError(f"cnn_feats must be [B, F, {self.backbone.cnn_channels}], got {tuple(cnn_feats.shape)}")
        frame_mask = lengths_to_mask(frame_lens.to(cnn_feats.device), cnn_feats.shape[1])
        grad = torch.is_grad_enabled() and self.method.backbone_needs_grad
        with torch.set_grad_enabled(grad):
            out = self.backbone.forward_from_cnn_features(cnn_feats, frame_mask, **self.backbone_inputs())
        return self.read_hidden_states(out.hidden_states, out.last_hidden_state), out.frame_mask

    def cast_frozen_(self, dtype: torch.dtype = torch.bfloat16) -> list[str]:
        """Hold the frozen transformer Linear weights in ``dtype`` (``SSLBackbone.cast_frozen_``).

        Trainable parameters keep float32; returns the names cast (relative to the HF model).
        """
        return self.backbone.cast_frozen_(dtype)

    def read_hidden_states(self, hidden_states, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """The head's input [B, F, output_dim] from ``num_layers + 1`` hidden states [B, F, D] and the last one.

        The reading attachment's output, else ``last_hidden_state``.
        """
        reader = self.reader
        if reader is not None:
            return reader.read(hidden_states, last_hidden_state)
        return last_hidden_state


    # ------------------------------------------------------------------ cached hidden states
    @property
    def hidden_states_cacheable(self) -> bool:
        """Whether the backbone's hidden states are a fixed function of the audio for this model.

        True for methods that train nothing inside the backbone (``weighted_sum``,
        ``l_only``) when the backbone's dropout is off. The caller must also apply no
        waveform augmentation, or cached states would not match what the model would see.
        """
        return not self.method.backbone_needs_grad and not self.backbone_dropout

    def backbone_hidden_states(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None):
        """The frozen backbone's :class:`elp.core.backbones.BackboneOutput` without autograd (what a cache stores).

        Raises
        ------
        ValueError
            If the method's hidden states cannot be cached (:attr:`hidden_states_cacheable`).
        """
        self._require_cacheable()
        with torch.no_grad():
            return self.backbone(wavs, wav_lens)

    def forward_from_hidden_states(self, hidden_states, frame_mask: torch.Tensor):
        """What :meth:`forward` returns, computed from precomputed backbone hidden states.

        ``hidden_states`` holds ``num_layers + 1`` tensors [B, F, D] (a list, or one tensor
        [num_layers + 1, B, F, D]) as in :class:`elp.core.backbones.BackboneOutput`.

        Examples
        --------
        >>> from elp.testing import tiny_config
        >>> model = AdaptedSSL(SSLBackbone.from_config("wavlm", tiny_config("wavlm")), "weighted_sum").eval()
        >>> wavs, wav_lens = torch.randn(2, 8000), torch.tensor([1.0, 0.75])
        >>> out = model.backbone_hidden_states(wavs, wav_lens)
        >>> feats, mask = model.forward_from_hidden_states(out.hidden_states, out.frame_mask)
        >>> ref, ref_mask = model(wavs, wav_lens)
        >>> torch.equal(mask, ref_mask), bool((feats - ref).abs().max() < 1e-5)
        (True, True)
        """
        self._require_cacheable()
        if len(hidden_states) != self.backbone.num_layers + 1:
            raise ValueError(f"expected {self.backbone.num_layers + 1} hidden states, got {len(hidden_states)}")
        return self.read_hidden_states(hidden_states, self.backbone.encoder_output(hidden_states[-1])), frame_mask

    def _require_cacheable(self) -> None:
        if not self.hidden_states_cacheable:
            raise ValueError(
                f"method {self.method.name!r} (backbone_dropout={self.backbone_dropout}) trains or "
                "randomises the backbone, so its hidden states cannot be precomputed; only "
                "weighted_sum and l_only without backbone dropout can use a hidden-state cache")

    # ------------------------------------------------------------------------ parameters
    def learnable_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> parameter for everything that trains (the head is not part of this model).

        Examples
        --------
        >>> from elp.testing import tiny_config
        >>> model = AdaptedSSL(SSLBackbone.from_config("wavlm", tiny_config("wavlm")), "weighted_sum")
        >>> list(model.learnable_parameters())
        ['weighted_sum.layer_weights']
        """
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Learnable parameters by learning-rate group (e.g. ``{"e": [...], "l": [...], "ln": [...]}``).

        A parameter belongs to the group its nearest enclosing module declares as ``lr_group``
        (each adapter class declares its own; the backbone's trainable LayerNorms are ``ln``,
        the transformer of ``full`` is ``backbone``). A learnable parameter without one is an
        error, so a new adapter kind cannot train silently at a wrong rate.
        """
        owners = {name: module.lr_group for name, module in self.named_modules() if getattr(module, "lr_group", None)}
        groups: dict[str, list[nn.Parameter]] = {}
        for name, param in self.learnable_parameters().items():
            prefix = name
            while prefix and prefix not in owners:
                prefix = prefix.rsplit(".", 1)[0] if "." in prefix else ""
            if not prefix:
                raise ValueError(f"learnable parameter {name!r} has no learning-rate group: give its "
                                 "module an lr_group attribute")
            groups.setdefault(owners[prefix], []).append(param)
        return groups


def _disable_dropout(module: nn.Module) -> None:
    """Set every dropout probability inside ``module`` to 0 (attention dropout included)."""
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = 0.0
        elif hasattr(sub, "dropout") and isinstance(sub.dropout, float):
            sub.dropout = 0.0
