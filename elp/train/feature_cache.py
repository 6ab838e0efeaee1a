"""On-disk caches of what a frozen backbone computes: CNN features and hidden states.

Two caches, one safetensors file per utterance, both keyed by the **audio content** (a hash
of the waveform samples as read, :func:`audio_key`) and by a fingerprint of the backbone
weights that compute them:

* :class:`CNNFeatureCache`: the CNN feature encoder never trains in any method, so its output
  [frames, 512] is a fixed function of the waveform. It is computed once per utterance and
  reused across epochs and across methods/runs on the same backbone
  (:func:`cached_cnn_forward`); random training crops become crops of the cached frame
  sequence (:func:`crop_frames`).
* :class:`HiddenStateCache`: for methods that train nothing inside the backbone
  (``weighted_sum``, ``l_only``), all hidden states are a fixed function of the audio
  (:func:`cached_forward`).

Keying by content (not by utterance id) means a second test set that reuses the ids of
another (a noisy copy) gets its own entries, and fixed audio is recomputed; the utterance
id is stored as metadata only.

The caches are only valid when the waveform the model sees is the audio as read: **no
waveform augmentation** (speed perturbation, noise). For the hidden-state cache also no
random crops and no backbone dropout (:meth:`elp.core.model.AdaptedSSL.hidden_states_cacheable`).

Layout (both caches)::

    <directory>/<fingerprint>-<dtype>/info.json           what the fingerprint stands for
    <directory>/<fingerprint>-<dtype>/<ab>/<audio key>.safetensors
        one tensor (valid frames only), metadata {"key": ..., "utt_id": ...}

Disk sizes per hour of audio: docs/SCALING.md section 6; the storage dtypes' precision and
the cost of hashing: docs/SPEED.md.

Examples
--------
>>> import tempfile
>>> from elp.core.model import AdaptedSSL
>>> from elp.testing import tiny_config
>>> model = AdaptedSSL(SSLBackbone.from_config("wavlm", tiny_config("wavlm")), "weighted_sum").eval()
>>> wavs, wav_lens = torch.randn(2, 8000), torch.tensor([1.0, 0.5])
>>> live, live_mask = model(wavs, wav_lens)
>>> cache = CNNFeatureCache.for_model(tempfile.mkdtemp(), model, dtype="float32")
>>> feats, mask = cached_cnn_forward(model, cache, ["utt1", "utt2"], wavs, wav_lens)  # fills
>>> feats, mask = cached_cnn_forward(model, cache, ["utt1", "utt2"], wavs, wav_lens)  # reads
>>> torch.equal(mask, live_mask), bool(((feats - live) * mask[..., None]).abs().max() < 1e-5)
(True, True)
>>> cache = HiddenStateCache.for_model(tempfile.mkdtemp(), model)
>>> feats, mask = cached_forward(model, cache, ["utt1", "utt2"], wavs, wav_lens)
>>> bool(((feats - live[:, :feats.shape[1]]) * mask[..., None]).abs().max() < 1e-5)
True
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from elp.core.backbones import SSLBackbone, lengths_to_mask
from elp.runtime import atomic_write, atomic_write_text

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CacheError(ValueError):
    """A cache file that cannot be used (clash, wrong shape, unreadable)."""


# ---------------------------------------------------------------------------- audio keys
def audio_key(samples: torch.Tensor) -> str:
    """A 32-hex-digit key of a waveform's content: SHA-256 of its float32 samples.

    ``samples`` [T] are the utterance's valid samples as read and fed to the model. The key is
    equal for bit-identical samples (whatever the file, id or split), different otherwise.

    Examples
    --------
    >>> wav = torch.ones(16000)
    >>> audio_key(wav) == audio_key(wav.clone()), audio_key(wav) == audio_key(wav[:-1])
    (True, False)
    """
    samples = samples.detach().to("cpu", torch.float32).contiguous().reshape(-1)
    digest = hashlib.sha256(f"f32|{samples.numel()}|".encode())
    digest.update(samples.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def batch_audio_keys(wavs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """:func:`audio_key` of each utterance of a padded batch; padding does not change a key.

    Parameters
    ----------
    wavs
        [B, T] padded waveforms.
    lengths
        [B] integer valid samples (:meth:`elp.core.backbones.SSLBackbone.sample_lengths`).

    Examples
    --------
    >>> wavs = torch.randn(2, 100)
    >>> batch_audio_keys(wavs, torch.tensor([100, 60]))[1] == audio_key(wavs[1, :60])
    True
    """
    cpu = wavs.detach().to("cpu", torch.float32)
    return [audio_key(cpu[index, :int(length)]) for index, length in enumerate(lengths.tolist())]


def _with_hash_of(digest, module: torch.nn.Module) -> None:
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())


# ---------------------------------------------------------------------------- fingerprints
def backbone_fingerprint(backbone: SSLBackbone) -> str:
    """A 16-hex-digit hash of a backbone's architecture, input normalisation and weights.

    Hashes every tensor of the backbone's current state, so random and pretrained weights of
    one architecture differ, and weights held in bfloat16
    (:meth:`elp.core.backbones.SSLBackbone.cast_frozen_`) differ from float32 ones.

    Examples
    --------
    >>> from elp.testing import tiny_config
    >>> a = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))
    >>> b = SSLBackbone.from_config("wavlm", tiny_config("wavlm"))  # other random weights
    >>> len(backbone_fingerprint(a)), backbone_fingerprint(a) == backbone_fingerprint(b)
    (16, False)
    """
    digest = hashlib.sha1()
    digest.update(backbone.config.to_json_string(use_diff=False).encode())
    digest.update(f"normalize_waveform={backbone.normalize_waveform}".encode())
    digest.update(f"frozen_dtype={backbone.frozen_dtype}".encode())
    _with_hash_of(digest, backbone.model)
    return digest.hexdigest()[:16]


def cnn_fingerprint(backbone: SSLBackbone) -> str:
    """A 16-hex-digit hash of everything the CNN features depend on.

    The backbone's ``weights_sha256`` (its weights as loaded), the CNN's geometry and
    normalisation, waveform normalisation, and the CNN's current weights. The transformer part
    does not enter, except through ``weights_sha256``: a cache is shared by every method and
    run on the same loaded backbone.

    Examples
    --------
    >>> from elp.core.backbones import backbone_config
    >>> from elp.testing import TINY_CONFIG
    >>> a = SSLBackbone.from_config("wavlm", backbone_config("wavlm", **TINY_CONFIG))
    >>> len(cnn_fingerprint(a))
    16
    """
    config = backbone.config
    digest = hashlib.sha1()
    geometry = dict(conv_dim=list(config.conv_dim), conv_kernel=list(config.conv_kernel),
                    conv_stride=list(config.conv_stride), conv_bias=config.conv_bias,
                    feat_extract_norm=config.feat_extract_norm,
                    feat_extract_activation=config.feat_extract_activation)
    digest.update(json.dumps(geometry, sort_keys=True).encode())
    digest.update(f"weights_sha256={backbone.weights_sha256}|normalize_waveform={backbone.normalize_waveform}"
                  .encode())
    _with_hash_of(digest, backbone.model.feature_extractor)
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------- the store
class _TensorStore:
    """One tensor per key under ``directory/<fingerprint>``, written atomically (safetensors)."""

    tensor_name = "tensor"

    def __init__(self, directory: str | os.PathLike, fingerprint: str, dtype: str, info: dict | None = None):
        if dtype not in _DTYPES:
            raise ValueError(f"cache dtype {dtype!r} not supported; use one of {sorted(_DTYPES)}")
        self.fingerprint = fingerprint
        self.dtype = dtype
        # the storage dtype is part of the location: a bf16 cache never serves an fp32 request
        self.root = Path(directory) / f"{fingerprint}-{dtype}"
        self.root.mkdir(parents=True, exist_ok=True)
        info_file = self.root / "info.json"
        if not info_file.exists():
            atomic_write_text(info_file, json.dumps(
                {"fingerprint": fingerprint, "dtype": dtype, "kind": type(self).__name__, **(info or {})}, indent=2))
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        """The file that holds ``key``'s tensor."""
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key {key!r} is not a hex digest (use audio_key)")
        return self.root / key[:2] / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def get(self, key: str) -> torch.Tensor | None:
        """The stored tensor of ``key`` in float32, or None when not cached."""
        path = self.path(key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                stored = (handle.metadata() or {}).get("key")
                tensor = handle.get_tensor(self.tensor_name)
        except (SafetensorError, OSError) as err:
            raise CacheError(f"cache file {path} is unreadable ({err}); delete it to recompute") from err
        if stored != key:
            raise CacheError(f"cache file {path} holds key {stored!r}, not {key!r}; delete it to recompute")
        self.hits += 1
        return tensor.float()

    def put(self, key: str, tensor: torch.Tensor, utt_id: str | None = None) -> None:
        """Store an utterance's ``tensor`` (valid frames only, in the cache's dtype) atomically.

        ``key`` is the utterance's :func:`audio_key`; ``utt_id`` is stored as metadata.

        Raises
        ------
        CacheError
            If the tensor holds non-finite values in the cache's dtype.
        """
        path = self.path(key)
        path.parent.mkdir(exist_ok=True)
        data = tensor.detach().to("cpu", _DTYPES[self.dtype]).contiguous()
        if not torch.isfinite(data).all():
            hint = " (beyond float16's range: use dtype bfloat16 or float32)" if torch.isfinite(tensor).all() else ""
            raise CacheError(f"non-finite values in the {self.tensor_name} of utterance {utt_id!r}{hint}; "
                             "check the audio for NaN/inf samples")
        atomic_write(path, lambda tmp: save_file({self.tensor_name: data}, str(tmp),
                                                 metadata={"key": key, "utt_id": str(utt_id or "")}))


class CNNFeatureCache(_TensorStore):
    """CNN features of one backbone, one file per utterance (valid frames only).

    Parameters
    ----------
    directory
        Root folder (e.g. ``<exp root>/cnn_cache``; share it between runs on one backbone).
    fingerprint
        :func:`cnn_fingerprint` of the backbone.
    dtype
        Storage precision: ``"float16"`` (default: half the disk of float32, closer to it than
        bfloat16; a feature beyond fp16's range is an error naming the utterance),
        ``"bfloat16"`` or ``"float32"`` (exact). Features come back in float32.
    info
        Written to ``info.json`` beside the entries.

    Examples
    --------
    >>> import tempfile
    >>> cache = CNNFeatureCache(tempfile.mkdtemp(), "0123456789abcdef", dtype="float32")
    >>> key = audio_key(torch.ones(800))
    >>> cache.put(key, torch.ones(2, 512)); key in cache, tuple(cache.get(key).shape)
    (True, (2, 512))
    """

    tensor_name = "cnn_features"

    def __init__(self, directory: str | os.PathLike, fingerprint: str, dtype: str = "float16",
                 info: dict | None = None):
        super().__init__(directory, fingerprint, dtype, info)

    @classmethod
    def for_model(cls, directory: str | os.PathLike, model, dtype: str = "float16") -> CNNFeatureCache:
        """The cache of ``model``'s backbone (an :class:`elp.core.model.AdaptedSSL` or :class:`SSLBackbone`)."""
        backbone = model.backbone if hasattr(model, "method") else model
        info = {"backbone": backbone.name, "weights_sha256": backbone.weights_sha256,
                "channels": backbone.cnn_channels}
        return cls(directory, cnn_fingerprint(backbone), dtype, info)

    def put(self, key: str, features: torch.Tensor, utt_id: str | None = None) -> None:
        """Store [frames, C] features (valid frames only) of one utterance under its ``key``.

        Raises
        ------
        ValueError
            If ``features`` is not 2-D.
        """
        if features.dim() != 2:
            raise ValueError(f"expected CNN features [frames, C] for utterance {utt_id!r}, got {tuple(features.shape)}")
        super().put(key, features, utt_id)

    def get_batch(self, keys: list[str], device: torch.device | str = "cpu", num_frames: int | None = None):
        """Zero-padded features of a batch, or None if any utterance is missing.

        Parameters
        ----------
        keys
            :func:`audio_key` of each utterance.
        num_frames
            Padded length F (default: the longest utterance's frames).

        Returns
        -------
        tuple[torch.Tensor, torch.Tensor] | None
            (features [B, F, C] float32, frame_lens [B] long), or None.
        """
        items = []
        for key in keys:
            item = self.get(key)
            if item is None:
                return None
            items.append(item)
        return _pad(items, device, num_frames)


class HiddenStateCache(_TensorStore):
    """Hidden states of one frozen backbone, one file per utterance (valid frames only).

    Parameters
    ----------
    directory
        Root folder of the cache (e.g. ``<exp dir>/hidden_state_cache``); created.
    fingerprint
        :func:`backbone_fingerprint` of the backbone that makes the states.
    dtype
        Storage precision, ``"float32"`` (exact) or ``"float16"`` / ``"bfloat16"`` (half the
        disk, rounded). Read states come back in float32.
    info
        Written to ``info.json`` beside the entries.

    Examples
    --------
    >>> import tempfile
    >>> cache = HiddenStateCache(tempfile.mkdtemp(), "0123456789abcdef")
    >>> key = audio_key(torch.zeros(800))
    >>> cache.put(key, torch.zeros(13, 2, 8), utt_id="utt1"); key in cache
    True
    """

    tensor_name = "hidden_states"

    def __init__(self, directory: str | os.PathLike, fingerprint: str, dtype: str = "float32",
                 info: dict | None = None):
        super().__init__(directory, fingerprint, dtype, info)

    @classmethod
    def for_model(cls, directory: str | os.PathLike, model, dtype: str = "float32") -> HiddenStateCache:
        """The cache of ``model``'s backbone (an :class:`elp.core.model.AdaptedSSL` or :class:`SSLBackbone`)."""
        backbone = model.backbone if hasattr(model, "method") else model
        info = {"backbone": backbone.name, "num_layers": backbone.num_layers, "hidden_size": backbone.hidden_size}
        return cls(directory, backbone_fingerprint(backbone), dtype, info)

    def put(self, key: str, states: torch.Tensor, utt_id: str | None = None) -> None:
        """Store [num_layers + 1, frames, D] states (valid frames only) of one utterance.

        Raises
        ------
        ValueError
            If ``states`` is not 3-D.
        """
        if states.dim() != 3:
            raise ValueError(f"expected states [num_layers + 1, frames, D] for utterance {utt_id!r}, "
                             f"got {tuple(states.shape)}")
        super().put(key, states, utt_id)

    def put_batch(self, keys: list[str], hidden_states: list[torch.Tensor], frame_mask: torch.Tensor,
                  utt_ids: list[str] | None = None) -> None:
        """Store a batch: ``num_layers + 1`` tensors [B, F, D] with a bool frame_mask [B, F].

        ``keys`` are the utterances' :func:`audio_key`; ``utt_ids`` are stored as metadata.
        """
        stacked = torch.stack([h.detach() for h in hidden_states])  # [L+1, B, F, D]
        for index, key in enumerate(keys):
            frames = int(frame_mask[index].sum())
            self.put(key, stacked[:, index, :frames], utt_ids[index] if utt_ids else None)

    def get_batch(self, keys: list[str], device: torch.device | str = "cpu"):
        """Padded states of a batch (``keys``: :func:`audio_key` of each utterance), or None if any
        utterance is missing.

        Returns
        -------
        tuple[torch.Tensor, torch.Tensor] | None
            (hidden_states, frame_mask): ``num_layers + 1`` tensors [B, F, D] (F = longest
            utterance, zero padded) and [B, F] bool; or None.
        """
        items = []
        for key in keys:
            states = self.get(key)
            if states is None:
                return None
            items.append(states.transpose(0, 1))  # [frames, L+1, D]
        padded, frames = _pad(items, device)  # [B, F, L+1, D]
        frame_mask = lengths_to_mask(frames.to(padded.device), padded.shape[1])
        return list(padded.permute(2, 0, 1, 3).unbind(0)), frame_mask


def _pad(items: list[torch.Tensor], device, num_frames: int | None = None):
    """[frames_i, ...] tensors -> zero-padded [B, F, ...] on ``device`` and [B] frame counts."""
    frames = torch.tensor([item.shape[0] for item in items])
    total = int(frames.max()) if num_frames is None else num_frames
    if total < int(frames.max()):
        raise ValueError(f"num_frames={total} is shorter than a cached utterance ({int(frames.max())} frames)")
    padded = items[0].new_zeros(len(items), total, *items[0].shape[1:])
    for index, item in enumerate(items):
        padded[index, :item.shape[0]] = item
    return padded.to(device), frames.to(device)


# ---------------------------------------------------------------------------- crops
def crop_frames(features: torch.Tensor, frame_lens: torch.Tensor, max_frames: int,
                generator: torch.Generator | None = None):
    """Random crops of at most ``max_frames`` frames from each utterance's valid frames.

    The frame-level version of cropping ``max_samples`` samples from the waveform at a random
    offset (SV's 3 s training crops): frame ``i`` of the CNN output covers samples
    ``[320 i, 320 i + 400)``, so frames ``[s, s + n)`` are what a waveform crop starting at
    sample ``320 s`` makes, up to the per-utterance normalisation (docs/SPEED.md gives the
    difference). Use ``backbone.num_frames(max_samples)`` for ``max_frames``.

    Parameters
    ----------
    features
        [B, F, C] features, zero-padded.
    frame_lens
        [B] valid frames.
    max_frames
        Crop length; utterances with fewer frames are kept whole.
    generator
        Source of the random offsets (default: torch's global generator).

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor, torch.Tensor]
        features [B, min(max_frames, F), C], frame_lens [B] and the start frame of each crop [B].

    Examples
    --------
    >>> feats = torch.arange(10.0)[None, :, None].expand(2, 10, 1)
    >>> out, lens, starts = crop_frames(feats, torch.tensor([10, 3]), 4, torch.Generator().manual_seed(0))
    >>> lens.tolist(), out[0, :, 0].tolist() == list(range(int(starts[0]), int(starts[0]) + 4)), starts[1].item()
    ([4, 3], True, 0)
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    lens = frame_lens.to("cpu").long()
    spare = (lens - max_frames).clamp_min(0)
    draws = torch.rand(len(lens), generator=generator)
    starts = torch.minimum((draws * (spare + 1)).long(), spare)
    width = min(max_frames, features.shape[1])
    index = (starts[:, None] + torch.arange(width)[None, :]).clamp(max=features.shape[1] - 1)
    index = index.to(features.device)
    cropped = torch.gather(features, 1, index[..., None].expand(-1, -1, features.shape[2]))
    new_lens = lens.clamp(max=max_frames)
    valid = lengths_to_mask(new_lens, width)
    cropped = cropped * valid[..., None].to(features.device, features.dtype)
    return cropped, new_lens.to(frame_lens.device), starts.to(frame_lens.device)


# ---------------------------------------------------------------------------- forward paths
def cnn_features_for_cache(backbone: SSLBackbone, wavs: torch.Tensor, lengths: torch.Tensor):
    """The CNN's output as the cache stores it: float32 (autocast off), no autograd.

    ``wavs`` [B, T] are waveforms, ``lengths`` [B] their valid samples.

    Returns
    -------
    features : torch.Tensor
        [B, F, C] float32 CNN output.
    frame_mask : torch.Tensor
        [B, F] bool.
    """
    with torch.autocast(wavs.device.type, enabled=False):
        return backbone.extract_cnn_features(wavs.float(), lengths)


def cached_cnn_forward(model, cache: CNNFeatureCache, utt_ids: list[str] | None, wavs: torch.Tensor,
                       wav_lens: torch.Tensor | None = None, max_frames: int = 0,
                       generator: torch.Generator | None = None):
    """``model(wavs, wav_lens)`` with the frozen CNN's output read from (or written to) the cache.

    When any utterance of the batch is missing, the CNN runs on the batch (float32, no
    autograd) and the missing ones are stored; either way the transformer part then runs
    from the features as stored (rounded to the cache's dtype), so every epoch sees the same
    inputs.

    Parameters
    ----------
    model : elp.core.model.AdaptedSSL
        Any method (the CNN never trains); may be wrapped in DistributedDataParallel (the
        forward goes through the wrapper, so gradients are all-reduced).
    cache
        :meth:`CNNFeatureCache.for_model` of the model's backbone.
    utt_ids
        The batch's utterance ids (stored as metadata; the key is the audio content).
    wavs
        [B, T] waveforms of the batch, as read (no augmentation, no crop).
    wav_lens
        [B] relative lengths (None: all full).
    max_frames
        0: whole utterances (output padded to ``num_frames(T)``, as the waveform path).
        > 0: a random crop of at most this many frames per utterance (:func:`crop_frames`;
        SV's 3 s crops are ``backbone.num_frames(48000)`` = 149 frames).
    generator
        Random source of the crops.

    Returns
    -------
    feats : torch.Tensor
        [B, F, output_dim], as ``model(wavs, wav_lens)``.
    frame_mask : torch.Tensor
        [B, F] bool.

    Raises
    ------
    ValueError
        If ``utt_ids`` and ``wavs`` disagree on the batch size.
    """
    if utt_ids is not None and len(utt_ids) != wavs.shape[0]:
        raise ValueError(f"{len(utt_ids)} utterance ids for a batch of {wavs.shape[0]} waveforms")
    backbone = _unwrap(model).backbone
    lengths = backbone.sample_lengths(wavs, wav_lens)
    keys = batch_audio_keys(wavs, lengths)
    total = int(backbone.num_frames(torch.tensor(wavs.shape[1])))
    cached = cache.get_batch(keys, device=wavs.device, num_frames=total)
    if cached is None:
        features, frame_mask = cnn_features_for_cache(backbone, wavs, lengths)
        frame_lens = frame_mask.sum(1)
        for index, key in enumerate(keys):
            if key not in cache:
                cache.put(key, features[index, :int(frame_lens[index])], utt_ids[index] if utt_ids else None)
        features = features.to(_DTYPES[cache.dtype]).float() * frame_mask[..., None]
    else:
        features, frame_lens = cached
    if max_frames:
        features, frame_lens, _ = crop_frames(features, frame_lens, max_frames, generator)
    return model(None, cnn_features=(features, frame_lens))


def cached_forward(model, cache: HiddenStateCache, utt_ids: list[str] | None, wavs: torch.Tensor,
                   wav_lens: torch.Tensor | None = None):
    """``model(wavs, wav_lens)`` through the hidden-state cache: read the batch's states, or
    compute and store them.

    Arguments as in :func:`cached_cnn_forward`; ``model`` must have
    ``hidden_states_cacheable`` True.

    Returns
    -------
    feats : torch.Tensor
        [B, F, output_dim] (F may be shorter than the live path's when no utterance fills the
        padded length; padded frames are masked either way).
    frame_mask : torch.Tensor
        [B, F] bool.

    Raises
    ------
    ValueError
        If ``utt_ids`` and ``wavs`` disagree on the batch size.
    """
    if utt_ids is not None and len(utt_ids) != wavs.shape[0]:
        raise ValueError(f"{len(utt_ids)} utterance ids for a batch of {wavs.shape[0]} waveforms")
    inner = _unwrap(model)
    lengths = inner.backbone.sample_lengths(wavs, wav_lens)
    keys = batch_audio_keys(wavs, lengths)
    cached = cache.get_batch(keys, device=wavs.device)
    if cached is None:
        out = inner.backbone_hidden_states(wavs, wav_lens)
        cache.put_batch(keys, out.hidden_states, out.frame_mask, utt_ids)
        hidden_states, frame_mask = out.hidden_states, out.frame_mask
    else:
        hidden_states, frame_mask = cached
    return model(None, hidden_states=(hidden_states, frame_mask))


def _unwrap(model):
    """The module inside a DDP/DP wrapper (or the model itself)."""
    return getattr(model, "module", model)
