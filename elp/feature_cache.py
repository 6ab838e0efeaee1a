"""An on-disk cache of a frozen backbone's hidden states, one safetensors file per utterance.

For methods that train nothing inside the backbone (``weighted_sum``, ``l_only``) the
backbone's hidden states are a fixed function of the audio, so after the first epoch a step
only needs to read them back and run the small trainable part. The cache is keyed by
utterance id and by a fingerprint of the backbone (architecture, waveform normalisation and a
hash of every weight), so a different checkpoint never reads another one's states.

It is only valid when the waveform the model sees is the same every epoch: **no waveform
augmentation** (speed perturbation, noise, random crops) and no backbone dropout.
:meth:`elp.model.AdaptedSSL.hidden_states_cacheable` tells whether a model qualifies.

Layout::

    <directory>/<fingerprint>/info.json                  what the fingerprint stands for
    <directory>/<fingerprint>/<ab>/<sha1(utt)[:20]>.safetensors
        tensor "hidden_states" [num_layers + 1, frames, D] (valid frames only),
        metadata {"utt_id": ...}

Size: (num_layers + 1) x D x 50 frames/s x bytes per value, e.g. WavLM Base+ in float16:
13 x 768 x 50 x 2 = 1.0 MB per second of audio (3.6 GB per hour).

Example
-------
>>> cache = HiddenStateCache.for_model(tmp_dir, model)                          # doctest: +SKIP
>>> feats, mask = cached_forward(model, cache, ["utt1", "utt2"], wavs, wav_lens)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from elp.backbones import SSLBackbone

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def backbone_fingerprint(backbone: SSLBackbone) -> str:
    """A 16-hex-digit hash of a backbone's architecture, input normalisation and weights.

    Hashes every tensor of the backbone's state (a few hundred MB for Base models: well
    under a second), so random and pretrained weights of one architecture differ.
    """
    digest = hashlib.sha1()
    digest.update(backbone.config.to_json_string(use_diff=False).encode())
    digest.update(f"normalize_waveform={backbone.normalize_waveform}".encode())
    for name, tensor in sorted(backbone.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class HiddenStateCache:
    """Hidden states of one backbone, stored per utterance under ``directory/<fingerprint>``.

    Arguments
    ---------
    directory: root folder of the cache (e.g. ``<exp dir>/hidden_state_cache``); created.
    fingerprint: :func:`backbone_fingerprint` of the backbone that makes the states.
    dtype: storage precision, ``"float32"`` (exact) or ``"float16"`` / ``"bfloat16"`` (half the
        disk, rounding ~1e-3 relative). Read states come back in float32.

    Example
    -------
    >>> cache = HiddenStateCache(tmp_dir, "0123456789abcdef")                 # doctest: +SKIP
    >>> cache.put("utt1", torch.zeros(13, 150, 768)); "utt1" in cache         # doctest: +SKIP
    True
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: str, dtype: str = "float32",
                 info: dict | None = None):
        if dtype not in _DTYPES:
            raise ValueError(f"cache dtype {dtype!r} not supported; use one of {sorted(_DTYPES)}")
        self.root = Path(directory) / fingerprint
        self.root.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.dtype = dtype
        info_file = self.root / "info.json"
        if not info_file.exists():
            _atomic_write_text(info_file, json.dumps({"fingerprint": fingerprint, "dtype": dtype, **(info or {})},
                                                     indent=2))
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_model(cls, directory: str | os.PathLike, model, dtype: str = "float32") -> "HiddenStateCache":
        """The cache of ``model``'s backbone (an :class:`elp.model.AdaptedSSL` or :class:`SSLBackbone`)."""
        backbone = model.backbone if hasattr(model, "method") else model
        info = {"backbone": backbone.name, "num_layers": backbone.num_layers, "hidden_size": backbone.hidden_size}
        return cls(directory, backbone_fingerprint(backbone), dtype, info)

    def path(self, utt_id: str) -> Path:
        """The file that holds ``utt_id``'s states."""
        key = hashlib.sha1(utt_id.encode()).hexdigest()[:20]
        return self.root / key[:2] / f"{key}.safetensors"

    def __contains__(self, utt_id: str) -> bool:
        return self.path(utt_id).exists()

    def get(self, utt_id: str) -> torch.Tensor | None:
        """[num_layers + 1, frames, D] float32 states of ``utt_id``, or None when not cached."""
        path = self.path(utt_id)
        if not path.exists():
            self.misses += 1
            return None
        with safe_open(str(path), framework="pt") as handle:
            stored_id = (handle.metadata() or {}).get("utt_id")
            if stored_id != utt_id:
                raise RuntimeError(f"{path} holds utterance {stored_id!r}, not {utt_id!r} (hash clash); "
                                   "delete that file")
            states = handle.get_tensor("hidden_states")
        self.hits += 1
        return states.float()

    def put(self, utt_id: str, states: torch.Tensor) -> None:
        """Store [num_layers + 1, frames, D] states of ``utt_id`` (valid frames only), atomically."""
        if states.dim() != 3:
            raise ValueError(f"expected states [num_layers + 1, frames, D] for {utt_id!r}, got {tuple(states.shape)}")
        path = self.path(utt_id)
        path.parent.mkdir(exist_ok=True)
        tensor = states.detach().to("cpu", _DTYPES[self.dtype]).contiguous()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp.", suffix=".safetensors")
        os.close(fd)
        try:
            save_file({"hidden_states": tensor}, tmp, metadata={"utt_id": utt_id})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_batch(self, utt_ids: list[str], hidden_states: list[torch.Tensor], frame_mask: torch.Tensor) -> None:
        """Store a batch: ``num_layers + 1`` tensors [B, F, D] and frame_mask [B, F]."""
        stacked = torch.stack([h.detach() for h in hidden_states])  # [L+1, B, F, D]
        for index, utt_id in enumerate(utt_ids):
            frames = int(frame_mask[index].sum())
            self.put(utt_id, stacked[:, index, :frames])

    def get_batch(self, utt_ids: list[str], device: torch.device | str = "cpu"):
        """Padded states of a batch, or None if any utterance is missing.

        Returns
        -------
        (hidden_states, frame_mask): ``num_layers + 1`` tensors [B, F, D] (F = longest
        utterance, zero padded) and [B, F] bool; or None.
        """
        items = []
        for utt_id in utt_ids:
            states = self.get(utt_id)
            if states is None:
                return None
            items.append(states)
        num_states, _, dim = items[0].shape
        frames = torch.tensor([item.shape[1] for item in items])
        padded = items[0].new_zeros(num_states, len(items), int(frames.max()), dim)
        for index, item in enumerate(items):
            padded[:, index, :item.shape[1]] = item
        frame_mask = torch.arange(int(frames.max()))[None, :] < frames[:, None]
        padded = padded.to(device)
        return list(padded.unbind(0)), frame_mask.to(device)


def cached_forward(model, cache: HiddenStateCache, utt_ids: list[str], wavs: torch.Tensor,
                   wav_lens: torch.Tensor | None = None):
    """``model(wavs, wav_lens)`` through the cache: read the batch's states, or compute and store them.

    Arguments
    ---------
    model: an :class:`elp.model.AdaptedSSL` whose ``hidden_states_cacheable`` is True.
    cache: the model backbone's :class:`HiddenStateCache`.
    utt_ids: the batch's utterance ids (B of them, in batch order).
    wavs, wav_lens: the batch ([B, T] and [B]); not read when every utterance is cached.

    Returns
    -------
    feats [B, F, output_dim] and frame_mask [B, F] (F may be shorter than the live path's when
    no utterance fills the padded length; padded frames are masked either way).
    """
    if len(utt_ids) != wavs.shape[0]:
        raise ValueError(f"{len(utt_ids)} utterance ids for a batch of {wavs.shape[0]} waveforms")
    cached = cache.get_batch(utt_ids, device=wavs.device)
    if cached is None:
        out = model.backbone_hidden_states(wavs, wav_lens)
        cache.put_batch(utt_ids, out.hidden_states, out.frame_mask)
        hidden_states, frame_mask = out.hidden_states, out.frame_mask
    else:
        hidden_states, frame_mask = cached
    return model.forward_from_hidden_states(hidden_states, frame_mask)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
