"""On-disk caches of what a frozen backbone computes: CNN features and hidden states.

Two caches, one safetensors file per utterance, both keyed by the **audio content** (a hash
of the waveform samples as read, :func:`audio_key`) and by a fingerprint of the backbone
weights that compute them:

* :class:`CNNFeatureCache`: the CNN feature encoder never trains in any method, so its output
  [frames, 512] is a fixed function of the waveform. It is computed once per utterance and
  reused across epochs and across methods/runs on the same backbone; random training crops
  become crops of the cached frame sequence.
* :class:`HiddenStateCache`: for methods that train nothing inside the backbone
  (``weighted_sum``, ``l_only``), all hidden states are a fixed function of the audio
  (:func:`cached_forward`).

How training uses the CNN cache (the Brain does this for ``cnn_cache: true``):

1. :func:`fill_cnn_cache` runs before the first epoch: loader workers read every utterance
   whole and hash it on the host; the CNN runs on the ones the cache lacks, in batches of
   whole utterances capped like the training batches (``max_batch_seconds`` of padded
   audio), and stores them. It returns every utterance's key.
2. :class:`CachedCNNDataset` then serves the items: a loader worker reads an utterance's
   cached frames (only the rows of its random crop) and does not decode its audio; an
   utterance the cache does not hold (full, or a write failed) comes as audio (a waveform
   crop, as without the cache). :class:`CNNCacheBatch` pads the frames in the worker.
3. :func:`cnn_cache_forward` runs the model from the batch's frames; the CNN runs only on the
   batch's waveforms, which are crops when training crops, so every batch the CNN sees is
   within the cap the sampler sized it by.

Keying by content (not by utterance id) means a second test set that reuses the ids of
another (a noisy copy) gets its own entries, and fixed audio is recomputed; the utterance
id is stored as metadata only.

The caches are only valid when the waveform the model sees is the audio as read: **no
waveform augmentation** (speed perturbation, noise). For the hidden-state cache also no
random crops and no backbone dropout (:meth:`elp.core.model.AdaptedSSL.hidden_states_cacheable`).

Writing never stops a run: when the cache reaches its size cap (``max_gb``) or a write fails
(a full disk: ``ENOSPC``, or any other ``OSError``), the cache logs one warning and stores
nothing more; what it lacks is computed at every use. :func:`list_caches` and
:func:`prune_caches` (the ``elp cache`` command) show and remove old fingerprints.

Layout (both caches)::

    <directory>/<fingerprint>-<dtype>/info.json           what the fingerprint stands for
    <directory>/<fingerprint>-<dtype>/last_used           touched by every run that opens it
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

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from speechbrain.dataio.batch import PaddedBatch

from elp.core.backbones import SSLBackbone, lengths_to_mask
from elp.data.sampler import EvalBatchSampler, gather_by_utterance
from elp.runtime import SAMPLE_RATE, atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: what a fingerprint directory stands for (written once)
INFO_FILE = "info.json"
#: touched by every run that opens a fingerprint directory (``elp cache list`` shows it)
LAST_USED_FILE = "last_used"


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


def with_audio_keys(dataset) -> None:
    """Add ``audio_key`` (:func:`audio_key` of the item's ``sig``) to a dataset's outputs.

    The loader workers then hash the audio on the host, and the batch carries the keys
    (``batch.audio_key``, a list); the hidden-state cache reads them.

    Examples
    --------
    >>> from speechbrain.dataio.dataset import DynamicItemDataset
    >>> dataset = DynamicItemDataset({"u1": {"wav": torch.ones(800)}})
    >>> dataset.add_dynamic_item(lambda wav: wav, takes="wav", provides="sig")
    >>> dataset.set_output_keys(["id", "sig"])
    >>> with_audio_keys(dataset)
    >>> dataset[0]["audio_key"] == audio_key(torch.ones(800))
    True
    """
    dataset.add_dynamic_item(audio_key, takes="sig", provides="audio_key")
    dataset.set_output_keys(list(dataset.pipeline.output_mapping) + ["audio_key"])


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
    """One tensor per key under ``directory/<fingerprint>-<dtype>``, written atomically (safetensors).

    ``max_gb`` caps the size of the whole ``directory`` (every fingerprint in it); ``writers``
    processes (DDP ranks) share what is left of the cap equally. When the cap is reached or a
    write fails (``OSError``: a full disk, a read-only or removed directory), the store logs
    one warning and stores nothing more (:attr:`writable` False); reading goes on.
    """

    tensor_name = "tensor"
    #: the option that sets ``max_gb`` (named in the warning when the cap is reached)
    cap_option = "max_gb"

    def __init__(self, directory: str | os.PathLike, fingerprint: str, dtype: str, info: dict | None = None,
                 max_gb: float | None = None, writers: int = 1):
        if dtype not in _DTYPES:
            raise ValueError(f"cache dtype {dtype!r} not supported; use one of {sorted(_DTYPES)}")
        if max_gb is not None and not float(max_gb) >= 0:
            raise ValueError(f"{self.cap_option} must be a size in GB >= 0 (null: no cap), got {max_gb!r}")
        if int(writers) < 1:
            raise ValueError(f"writers must be >= 1, got {writers}")
        self.fingerprint = fingerprint
        self.dtype = dtype
        self.directory = Path(directory)
        # the storage dtype is part of the location: a bf16 cache never serves an fp32 request
        self.root = self.directory / f"{fingerprint}-{dtype}"
        self.max_bytes = None if max_gb is None else int(float(max_gb) * 1e9)
        self.writers = int(writers)
        self.writable = True
        self.stored_bytes = 0  # written by this object
        self._budget: int | None = None
        self.hits = 0
        self.misses = 0
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            info_file = self.root / INFO_FILE
            if not info_file.exists():
                atomic_write_text(info_file, json.dumps(
                    {"fingerprint": fingerprint, "dtype": dtype, "kind": type(self).__name__, **(info or {})},
                    indent=2))
            (self.root / LAST_USED_FILE).touch()
        except OSError as err:
            self._stop_writing(f"it cannot be written ({_reason(err)})")

    def _stop_writing(self, reason: str) -> None:
        """Store nothing more, with one warning (the first reason)."""
        if self.writable:
            self.writable = False
            logger.warning("%s %s stores nothing more in this run: %s; what it lacks is computed at every use "
                           "(free space with `elp cache prune %s`, or use another directory)",
                           type(self).__name__, self.root, reason, self.directory)

    def path(self, key: str) -> Path:
        """The file that holds ``key``'s tensor."""
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key {key!r} is not a hex digest (use audio_key)")
        return self.root / key[:2] / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def read(self, key: str, max_rows: int = 0, rng: random.Random | None = None) -> torch.Tensor | None:
        """The stored tensor of ``key`` in the storage dtype, or None when not cached.

        ``max_rows`` > 0 reads only a random window of that many consecutive rows (first
        dimension; the whole tensor when it is shorter), drawn from ``rng`` (default: Python's
        ``random``, which the DataLoader seeds in each worker).

        Raises
        ------
        CacheError
            If the file is unreadable or holds another key.
        """
        path = self.path(key)
        try:
            with safe_open(str(path), framework="pt") as handle:
                stored = (handle.metadata() or {}).get("key")
                rows = handle.get_slice(self.tensor_name)
                total = rows.get_shape()[0]
                if max_rows and total > max_rows:
                    start = (rng or random).randint(0, total - max_rows)
                    tensor = rows[start:start + max_rows]
                else:
                    tensor = handle.get_tensor(self.tensor_name)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (SafetensorError, OSError) as err:
            raise CacheError(f"cache file {path} is unreadable ({err}); delete it to recompute") from err
        if stored != key:
            raise CacheError(f"cache file {path} holds key {stored!r}, not {key!r}; delete it to recompute")
        self.hits += 1
        return tensor

    def get(self, key: str) -> torch.Tensor | None:
        """The stored tensor of ``key`` in float32, or None when not cached."""
        tensor = self.read(key)
        return None if tensor is None else tensor.float()

    def put(self, key: str, tensor: torch.Tensor, utt_id: str | None = None) -> bool:
        """Store an utterance's ``tensor`` (valid frames only, in the cache's dtype) atomically.

        ``key`` is the utterance's :func:`audio_key`; ``utt_id`` is stored as metadata.

        Returns
        -------
        bool
            True when stored; False when the store no longer writes (size cap reached, or a
            write failed: one warning per store, see the class docstring).

        Raises
        ------
        CacheError
            If the tensor holds non-finite values in the cache's dtype.
        """
        path = self.path(key)
        data = tensor.detach().to("cpu", _DTYPES[self.dtype]).contiguous()
        if not torch.isfinite(data).all():
            hint = " (beyond float16's range: use dtype bfloat16 or float32)" if torch.isfinite(tensor).all() else ""
            raise CacheError(f"non-finite values in the {self.tensor_name} of utterance {utt_id!r}{hint}; "
                             "check the audio for NaN/inf samples")
        if not self.writable:
            return False
        if self.max_bytes is not None:
            if self._budget is None:  # what is left of the cap, shared by the writers
                self._budget = max(0, self.max_bytes - directory_bytes(self.directory)) // self.writers
            if self.stored_bytes + data.numel() * data.element_size() > self._budget:
                self._stop_writing(f"{self.directory} reached its size cap of {self.max_bytes / 1e9:g} GB "
                                   f"({self.cap_option})")
                return False
        try:
            path.parent.mkdir(exist_ok=True)
            atomic_write(path, lambda tmp: save_file({self.tensor_name: data}, str(tmp),
                                                     metadata={"key": key, "utt_id": str(utt_id or "")}))
            self.stored_bytes += path.stat().st_size
        except OSError as err:
            self._stop_writing(f"writing {path} failed ({_reason(err)})")
            return False
        return True


def _reason(err: OSError) -> str:
    """``OSError`` -> its message without the file name (``No space left on device``)."""
    return err.strerror or str(err)


def directory_bytes(directory: str | os.PathLike) -> int:
    """Total size in bytes of the files under ``directory`` (0 when it does not exist).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "a").write_bytes(b"12345"); (root / "b").mkdir(); _ = (root / "b" / "c").write_bytes(b"67")
    >>> directory_bytes(root), directory_bytes(root / "missing")
    (7, 0)
    """
    return _walk(Path(directory))[1]


def _walk(directory: Path) -> tuple[int, int, float]:
    """(files, bytes, newest modification time) under ``directory``."""
    files, size, newest = 0, 0, 0.0
    pending = [directory]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    files, size, newest = files + 1, size + stat.st_size, max(newest, stat.st_mtime)
            except FileNotFoundError:  # removed while walking
                continue
    return files, size, newest


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
    max_gb
        Size cap of ``directory`` in GB (None: none); reached, nothing more is stored.
    writers
        Processes writing at the same time (DDP ranks); they share the cap.

    Examples
    --------
    >>> import tempfile
    >>> cache = CNNFeatureCache(tempfile.mkdtemp(), "0123456789abcdef", dtype="float32")
    >>> key = audio_key(torch.ones(800))
    >>> cache.put(key, torch.ones(2, 512)), key in cache, tuple(cache.get(key).shape)
    (True, True, (2, 512))
    """

    tensor_name = "cnn_features"
    cap_option = "cnn_cache_max_gb"

    def __init__(self, directory: str | os.PathLike, fingerprint: str, dtype: str = "float16",
                 info: dict | None = None, max_gb: float | None = None, writers: int = 1):
        super().__init__(directory, fingerprint, dtype, info, max_gb, writers)

    @classmethod
    def for_model(cls, directory: str | os.PathLike, model, dtype: str = "float16", max_gb: float | None = None,
                  writers: int = 1) -> CNNFeatureCache:
        """The cache of ``model``'s backbone (an :class:`elp.core.model.AdaptedSSL` or :class:`SSLBackbone`)."""
        backbone = model.backbone if hasattr(model, "method") else model
        info = {"backbone": backbone.name, "weights_sha256": backbone.weights_sha256,
                "channels": backbone.cnn_channels}
        return cls(directory, cnn_fingerprint(backbone), dtype, info, max_gb, writers)

    def put(self, key: str, features: torch.Tensor, utt_id: str | None = None) -> bool:
        """Store [frames, C] features (valid frames only) of one utterance under its ``key``.

        Returns True when stored (see :meth:`_TensorStore.put`).

        Raises
        ------
        ValueError
            If ``features`` is not 2-D.
        """
        if features.dim() != 2:
            raise ValueError(f"expected CNN features [frames, C] for utterance {utt_id!r}, got {tuple(features.shape)}")
        return super().put(key, features, utt_id)

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
    max_gb, writers
        As in :class:`CNNFeatureCache`.

    Examples
    --------
    >>> import tempfile
    >>> cache = HiddenStateCache(tempfile.mkdtemp(), "0123456789abcdef")
    >>> key = audio_key(torch.zeros(800))
    >>> cache.put(key, torch.zeros(13, 2, 8), utt_id="utt1"), key in cache
    (True, True)
    """

    tensor_name = "hidden_states"

    def __init__(self, directory: str | os.PathLike, fingerprint: str, dtype: str = "float32",
                 info: dict | None = None, max_gb: float | None = None, writers: int = 1):
        super().__init__(directory, fingerprint, dtype, info, max_gb, writers)

    @classmethod
    def for_model(cls, directory: str | os.PathLike, model, dtype: str = "float32") -> HiddenStateCache:
        """The cache of ``model``'s backbone (an :class:`elp.core.model.AdaptedSSL` or :class:`SSLBackbone`)."""
        backbone = model.backbone if hasattr(model, "method") else model
        info = {"backbone": backbone.name, "num_layers": backbone.num_layers, "hidden_size": backbone.hidden_size}
        return cls(directory, backbone_fingerprint(backbone), dtype, info)

    def put(self, key: str, states: torch.Tensor, utt_id: str | None = None) -> bool:
        """Store [num_layers + 1, frames, D] states (valid frames only) of one utterance.

        Returns True when stored (see :meth:`_TensorStore.put`).

        Raises
        ------
        ValueError
            If ``states`` is not 3-D.
        """
        if states.dim() != 3:
            raise ValueError(f"expected states [num_layers + 1, frames, D] for utterance {utt_id!r}, "
                             f"got {tuple(states.shape)}")
        return super().put(key, states, utt_id)

    def put_batch(self, keys: list[str], hidden_states: list[torch.Tensor], frame_mask: torch.Tensor,
                  utt_ids: list[str] | None = None) -> None:
        """Store a batch: ``num_layers + 1`` tensors [B, F, D] with a bool frame_mask [B, F].

        ``keys`` are the utterances' :func:`audio_key`; ``utt_ids`` are stored as metadata.
        """
        if not self.writable:
            return
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
    difference). Use ``backbone.num_frames(max_samples)`` for ``max_frames``. (Training with
    the cache crops in the loader workers instead, reading only the crop's rows:
    :class:`CachedCNNDataset`.)

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


# ---------------------------------------------------------------------------- filling before training
@dataclass
class CacheFill:
    """What :func:`fill_cnn_cache` did.

    Attributes
    ----------
    keys
        Utterance id -> :func:`audio_key`, for every utterance of the dataset (all ranks).
    found, stored, left_out
        This rank's utterances the cache held, computed and stored, and left out (the cache
        is full or not writable: they are computed at every use).
    largest_batch_seconds
        The longest padded batch (utterances x longest, in seconds) the CNN ran on.
    """

    keys: dict[str, str]
    found: int
    stored: int
    left_out: int
    largest_batch_seconds: float


class _KeyedAudio(torch.utils.data.Dataset):
    """Item ``i`` of a dataset as (id, audio key, samples), the samples None when cached."""

    def __init__(self, dataset, cache: CNNFeatureCache):
        self.dataset, self.cache = dataset, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with self.dataset.output_keys_as(["id", "sig"]):
            item = self.dataset[index]
        key = audio_key(item["sig"])
        return item["id"], key, None if key in self.cache else item["sig"]


def _collate_keyed_audio(items):
    """(ids, keys, zero-padded samples [M, T] of the M uncached items, their lengths [M], their positions)."""
    missing = [index for index, (_, _, sig) in enumerate(items) if sig is not None]
    lengths = torch.tensor([items[i][2].shape[0] for i in missing], dtype=torch.long)
    wavs = torch.zeros(len(missing), int(lengths.max()) if missing else 0)
    for row, index in enumerate(missing):
        wavs[row, :lengths[row]] = items[index][2]
    return [i for i, _, _ in items], [k for _, k, _ in items], wavs, lengths, missing


def fill_cnn_cache(backbone: SSLBackbone, cache: CNNFeatureCache, dataset, max_batch_seconds: float,
                   max_batch_size: int | None = None, num_workers: int = 0,
                   device: torch.device | str = "cpu") -> CacheFill:
    """Store the CNN features of every utterance of ``dataset`` that ``cache`` lacks; key them all.

    Loader workers read each utterance whole and hash it on the host (:func:`audio_key`); the
    CNN (float32, :func:`cnn_features_for_cache`) runs only on the utterances not cached, in
    length-sorted batches of whole utterances of at most ``max_batch_seconds`` of padded audio
    and ``max_batch_size`` utterances (:class:`elp.data.sampler.EvalBatchSampler`; an
    utterance longer than the cap gets a batch of its own). Under DDP every rank fills its
    share and the keys are gathered. Once the cache stops writing (size cap, failed write), the
    CNN no longer runs; the keys are still collected.

    Parameters
    ----------
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        Items with ``id`` and ``sig`` (the whole utterance; :func:`elp.train.recipe.make_dataset`
        with ``cnn_cache`` on), entries with ``num_samples``.

    Returns
    -------
    CacheFill

    Examples
    --------
    >>> import tempfile
    >>> from speechbrain.dataio.dataset import DynamicItemDataset
    >>> from elp.testing import tiny_config
    >>> backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm")).eval()
    >>> data = {f"u{i}": {"wav": torch.randn(n), "num_samples": n} for i, n in enumerate([8000, 16000, 4000])}
    >>> dataset = DynamicItemDataset(data, output_keys=["id", "sig"])
    >>> dataset.add_dynamic_item(lambda wav: wav, takes="wav", provides="sig")
    >>> cache = CNNFeatureCache.for_model(tempfile.mkdtemp(), backbone)
    >>> fill = fill_cnn_cache(backbone, cache, dataset, max_batch_seconds=1.5)
    >>> fill.stored, fill.found, fill.largest_batch_seconds  # batches [1 s] and [0.5 s, 0.25 s]
    (3, 0, 1.0)
    >>> fill_cnn_cache(backbone, cache, dataset, max_batch_seconds=1.5).found
    3
    """
    lengths = [int(dataset.data[utt]["num_samples"]) for utt in dataset.data_ids]
    sampler = EvalBatchSampler(lengths, max_batch_seconds, max_batch_size)  # this rank's share
    loader = torch.utils.data.DataLoader(_KeyedAudio(dataset, cache), batch_sampler=sampler,
                                         num_workers=num_workers, collate_fn=_collate_keyed_audio,
                                         generator=torch.Generator().manual_seed(0))  # leaves torch's RNG alone
    keys: dict[str, str] = {}
    found = stored = left_out = 0
    largest = 0.0
    started = time.time()
    for ids, batch_keys, wavs, wav_lengths, missing in loader:
        keys.update(zip(ids, batch_keys))
        found += len(ids) - len(missing)
        if not missing:
            continue
        if not cache.writable:
            left_out += len(missing)
            continue
        largest = max(largest, wavs.numel() / SAMPLE_RATE)
        features, _ = cnn_features_for_cache(backbone, wavs.to(device), wav_lengths.to(device))
        features = features.cpu()
        for row, frames in enumerate(backbone.num_frames(wav_lengths).tolist()):
            index = missing[row]
            if cache.put(batch_keys[index], features[row, :frames], ids[index]):
                stored += 1
            else:
                left_out += 1
    logger.info("CNN feature cache %s: %d utterances were cached, %d computed and stored, %d left out "
                "(computed at every use) in %.1f s", cache.root, found, stored, left_out, time.time() - started)
    return CacheFill(gather_by_utterance(keys), found, stored, left_out, largest)


# ---------------------------------------------------------------------------- reading in the loader
class CachedCNNDataset(torch.utils.data.Dataset):
    """The items of a dataset with the CNN's cached frames in place of the audio.

    ``dataset[i]`` as it is, except ``sig``: when the cache holds the utterance, the item
    carries ``cnn_frames`` [frames, C] (storage dtype; a random crop of ``max_frames`` rows,
    only those rows read) and its audio is not read; otherwise it carries ``sig`` (a random
    crop of ``max_samples`` samples, or the whole utterance) and the CNN runs on it
    (:func:`cnn_cache_forward`). Both are what the waveform path would compute from the same
    crop, up to the per-utterance normalisation of a frame crop (docs/SPEED.md). Use
    :class:`CNNCacheBatch` as the loader's ``collate_fn``. Reading happens in the loader
    workers.

    Parameters
    ----------
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        Items with ``sig`` (whole utterances).
    cache
        The cache to read.
    keys
        Utterance id -> :func:`audio_key` (:func:`fill_cnn_cache`). None: every item's audio is
        read and hashed, and items keep their ``sig`` (evaluation, where prediction needs it).
    max_frames, max_samples
        The training crop in frames (``backbone.num_frames(max_samples)``) and in samples (0:
        whole utterances).

    Examples
    --------
    >>> import tempfile
    >>> from speechbrain.dataio.dataset import DynamicItemDataset
    >>> data = {"u1": {"wav": torch.ones(48000), "label": 3}, "u2": {"wav": torch.zeros(48000), "label": 4}}
    >>> dataset = DynamicItemDataset(data, output_keys=["id", "sig", "label"])
    >>> dataset.add_dynamic_item(lambda wav: wav, takes="wav", provides="sig")
    >>> cache = CNNFeatureCache(tempfile.mkdtemp(), "0" * 16)
    >>> keys = {"u1": audio_key(torch.ones(48000)), "u2": audio_key(torch.zeros(48000))}
    >>> _ = cache.put(keys["u1"], torch.randn(149, 512))
    >>> items = CachedCNNDataset(dataset, cache, keys, max_frames=49, max_samples=16000)
    >>> [(item["id"], item["label"], item["sig"] is None, None if item["cnn_frames"] is None
    ...   else tuple(item["cnn_frames"].shape)) for item in items]
    [('u1', 3, True, (49, 512)), ('u2', 4, False, None)]
    >>> items[1]["sig"].shape[0]  # a crop of the uncached utterance's audio
    16000
    >>> batch = CNNCacheBatch([items[0], items[1]])
    >>> batch.label, batch.cnn_inputs.cached.tolist(), tuple(batch.cnn_inputs.frames.shape)
    (tensor([3, 4]), [True, False], (2, 49, 512))
    """

    def __init__(self, dataset, cache: CNNFeatureCache, keys: dict[str, str] | None = None,
                 max_frames: int = 0, max_samples: int = 0):
        outputs = list(dataset.pipeline.output_mapping)
        if "sig" not in outputs:
            raise ValueError(f"CachedCNNDataset needs a dataset whose items hold 'sig', not only {outputs}")
        self.dataset, self.cache, self.keys = dataset, cache, keys
        self.max_frames, self.max_samples = int(max_frames), int(max_samples)
        self.other_outputs = [key for key in outputs if key not in ("sig", "audio_key")]

    @property
    def data(self) -> dict:
        """The dataset's entries by utterance id."""
        return self.dataset.data

    @property
    def data_ids(self) -> list[str]:
        """The dataset's utterance ids (index order)."""
        return self.dataset.data_ids

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        utt = self.dataset.data_ids[index]
        key = None if self.keys is None else self.keys.get(utt)
        frames = None if key is None else self.cache.read(key, self.max_frames)
        keep_audio = self.keys is None
        with self.dataset.output_keys_as(self.other_outputs + (["sig"] if frames is None or keep_audio else [])):
            item = dict(self.dataset[index])
        sig = item.pop("sig", None)
        if key is None:  # hash the audio here, in the worker
            key = audio_key(sig)
            frames = self.cache.read(key, self.max_frames)
        if frames is not None and not keep_audio:
            sig = None
        elif sig is not None and self.max_samples and sig.shape[0] > self.max_samples:
            start = random.randint(0, sig.shape[0] - self.max_samples)  # as the waveform path crops
            sig = sig[start:start + self.max_samples]
        item.update(audio_key=key, cnn_frames=frames, sig=sig)
        return item


@dataclass
class CNNInputs:
    """What the CNN cache gives one batch (:class:`CNNCacheBatch`).

    Attributes
    ----------
    keys
        [B] :func:`audio_key` of each utterance.
    frames
        [B, F, C] cached frames (storage dtype), zero-padded; rows of uncached utterances are
        zero ([B, 0, 0] when none is cached).
    frame_lens
        [B] long: valid frames (0 for an uncached utterance).
    cached
        [B] bool.
    wavs
        [M, T] float32 waveforms of the M uncached utterances, in batch order, zero-padded.
    wav_lengths
        [M] long valid samples.
    """

    keys: list[str]
    frames: torch.Tensor
    frame_lens: torch.Tensor
    cached: torch.Tensor
    wavs: torch.Tensor
    wav_lengths: torch.Tensor

    @classmethod
    def collate(cls, keys: list[str], frames: list, sigs: list) -> CNNInputs:
        """From per-utterance frames (None: not cached) and samples (needed where not cached)."""
        cached = torch.tensor([f is not None for f in frames], dtype=torch.bool)
        frame_lens = torch.tensor([0 if f is None else f.shape[0] for f in frames], dtype=torch.long)
        present = [f for f in frames if f is not None]
        padded = (present[0].new_zeros(len(frames), int(frame_lens.max()), present[0].shape[1]) if present
                  else torch.zeros(len(frames), 0, 0))
        for row, item in enumerate(frames):
            if item is not None:
                padded[row, :item.shape[0]] = item
        audio = [sig for sig, item in zip(sigs, frames) if item is None]
        wav_lengths = torch.tensor([sig.shape[0] for sig in audio], dtype=torch.long)
        wavs = torch.zeros(len(audio), int(wav_lengths.max()) if audio else 0)
        for row, sig in enumerate(audio):
            wavs[row, :sig.shape[0]] = sig
        return cls(keys, padded, frame_lens, cached, wavs, wav_lengths)

    def pin_memory(self) -> CNNInputs:
        """A copy in pinned memory (the DataLoader calls it with ``pin_memory=True``)."""
        return dataclasses.replace(self, frames=self.frames.pin_memory(), frame_lens=self.frame_lens.pin_memory(),
                                   wavs=self.wavs.pin_memory(), wav_lengths=self.wav_lengths.pin_memory())


class CNNCacheBatch(PaddedBatch):
    """``collate_fn`` of :class:`CachedCNNDataset`: SpeechBrain's ``PaddedBatch`` of the items'
    other keys, plus ``cnn_inputs`` (:class:`CNNInputs`); ``sig`` when every item has its audio.

    Examples
    --------
    See :class:`CachedCNNDataset`.
    """

    def __init__(self, examples: list[dict]):
        examples = [dict(example) for example in examples]
        keys = [example.pop("audio_key") for example in examples]
        frames = [example.pop("cnn_frames") for example in examples]
        sigs = [example.pop("sig") for example in examples]
        if all(sig is not None for sig in sigs):  # evaluation: prediction reads batch.sig
            for example, sig in zip(examples, sigs):
                example["sig"] = sig
        super().__init__(examples)
        self.cnn_inputs = CNNInputs.collate(keys, frames, sigs)

    def pin_memory(self):
        super().pin_memory()
        self.cnn_inputs = self.cnn_inputs.pin_memory()
        return self


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


def cnn_cache_forward(model, cache: CNNFeatureCache, inputs: CNNInputs, device: torch.device | str,
                      utt_ids: list[str] | None = None, store: bool = False):
    """``model`` on a batch of :class:`CNNInputs`: from the cached frames, the CNN only where not cached.

    The CNN (float32, no autograd) runs on the waveforms of the uncached utterances only; with
    ``store`` (whole utterances, not training crops) they are stored and used as stored
    (rounded to the cache's dtype), so later passes see the same inputs.

    Parameters
    ----------
    model : elp.core.model.AdaptedSSL
        Any method; may be wrapped in DistributedDataParallel (called as a module).
    utt_ids
        Stored as metadata.

    Returns
    -------
    feats : torch.Tensor
        [B, F, output_dim].
    frame_mask : torch.Tensor
        [B, F] bool.

    Examples
    --------
    >>> import tempfile
    >>> from elp.core.model import AdaptedSSL
    >>> from elp.testing import tiny_config
    >>> model = AdaptedSSL(SSLBackbone.from_config("wavlm", tiny_config("wavlm")), "el").eval()
    >>> cache = CNNFeatureCache.for_model(tempfile.mkdtemp(), model, dtype="float32")
    >>> wavs = torch.randn(2, 8000)
    >>> keys = batch_audio_keys(wavs, torch.tensor([8000, 6000]))
    >>> inputs = CNNInputs.collate(keys, [None, None], [wavs[0], wavs[1, :6000]])
    >>> feats, mask = cnn_cache_forward(model, cache, inputs, "cpu", store=True)  # computes, stores
    >>> inputs = CNNInputs.collate(keys, [cache.read(k) for k in keys], [None, None])
    >>> again, _ = cnn_cache_forward(model, cache, inputs, "cpu")  # reads
    >>> live, live_mask = model(wavs, torch.tensor([1.0, 0.75]))
    >>> torch.equal(mask, live_mask), bool(((again - live) * mask[..., None]).abs().max() < 1e-5)
    (True, True)
    """
    backbone = _unwrap(model).backbone
    features = inputs.frames.to(device, non_blocking=True).float()
    frame_lens = inputs.frame_lens.to(device, non_blocking=True)
    if not bool(inputs.cached.all()):  # a CPU tensor: no device synchronisation
        rows = (~inputs.cached).nonzero().flatten()
        live, live_mask = cnn_features_for_cache(backbone, inputs.wavs.to(device, non_blocking=True),
                                                 inputs.wav_lengths.to(device, non_blocking=True))
        if store:
            host = live.cpu()
            for row, (index, frames) in enumerate(zip(rows.tolist(), backbone.num_frames(inputs.wav_lengths).tolist())):
                cache.put(inputs.keys[index], host[row, :frames], utt_ids[index] if utt_ids else None)
            live = live.to(_DTYPES[cache.dtype]).float()  # what later passes read
        merged = live.new_zeros(len(inputs.keys), max(features.shape[1], live.shape[1]), live.shape[2])
        if features.shape[1]:
            merged[:, :features.shape[1]] = features
        rows = rows.to(device)
        merged[rows, :live.shape[1]] = live * live_mask[..., None]
        frame_lens = frame_lens.clone()
        frame_lens[rows] = live_mask.sum(1)
        features = merged
    return model(None, cnn_features=(features, frame_lens))


def cached_cnn_forward(model, cache: CNNFeatureCache, utt_ids: list[str] | None, wavs: torch.Tensor,
                       wav_lens: torch.Tensor | None = None, max_frames: int = 0,
                       generator: torch.Generator | None = None, keys: list[str] | None = None):
    """``model(wavs, wav_lens)`` with the frozen CNN's output read from (or written to) the cache.

    The one-call form for a batch of waveforms already in hand (benchmarks, tests); training
    reads the cache in the loader workers instead (:class:`CachedCNNDataset`). When any
    utterance of the batch is missing, the CNN runs on the batch (float32, no autograd) and
    the missing ones are stored; either way the transformer part then runs from the features
    as stored (rounded to the cache's dtype), so every epoch sees the same inputs.

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
    keys
        The utterances' :func:`audio_key` when already known (e.g. hashed on the host by the
        loader); None: hashed here from ``wavs``.

    Returns
    -------
    feats : torch.Tensor
        [B, F, output_dim], as ``model(wavs, wav_lens)``.
    frame_mask : torch.Tensor
        [B, F] bool.

    Raises
    ------
    ValueError
        If ``utt_ids`` (or ``keys``) and ``wavs`` disagree on the batch size.
    """
    _check_batch_size(utt_ids, keys, wavs)
    backbone = _unwrap(model).backbone
    lengths = backbone.sample_lengths(wavs, wav_lens)
    keys = batch_audio_keys(wavs, lengths) if keys is None else list(keys)
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
                   wav_lens: torch.Tensor | None = None, keys: list[str] | None = None):
    """``model(wavs, wav_lens)`` through the hidden-state cache: read the batch's states, or
    compute and store them.

    Arguments as in :func:`cached_cnn_forward` (``keys``: hashed on the host by the loader,
    :func:`with_audio_keys`; None: hashed here); ``model`` must have
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
        If ``utt_ids`` (or ``keys``) and ``wavs`` disagree on the batch size.
    """
    _check_batch_size(utt_ids, keys, wavs)
    inner = _unwrap(model)
    if keys is None:
        keys = batch_audio_keys(wavs, inner.backbone.sample_lengths(wavs, wav_lens))
    cached = cache.get_batch(list(keys), device=wavs.device)
    if cached is None:
        out = inner.backbone_hidden_states(wavs, wav_lens)
        cache.put_batch(list(keys), out.hidden_states, out.frame_mask, utt_ids)
        hidden_states, frame_mask = out.hidden_states, out.frame_mask
    else:
        hidden_states, frame_mask = cached
    return model(None, hidden_states=(hidden_states, frame_mask))


def _check_batch_size(utt_ids, keys, wavs: torch.Tensor) -> None:
    for name, values in (("utterance ids", utt_ids), ("audio keys", keys)):
        if values is not None and len(values) != wavs.shape[0]:
            raise ValueError(f"{len(values)} {name} for a batch of {wavs.shape[0]} waveforms")


def _unwrap(model):
    """The module inside a DDP/DP wrapper (or the model itself)."""
    return getattr(model, "module", model)


# ---------------------------------------------------------------------------- housekeeping
@dataclass
class FingerprintDir:
    """One ``<fingerprint>-<dtype>`` directory of a cache (:func:`list_caches`).

    Attributes
    ----------
    path
        The directory.
    info
        Its ``info.json`` (``kind``, ``backbone``, ...).
    files, size_bytes
        Files under it and their total size.
    created, last_used
        Seconds since the epoch: when ``info.json`` was written; when a run last opened it
        (the ``last_used`` file; without one, its newest file).
    """

    path: Path
    info: dict
    files: int
    size_bytes: int
    created: float
    last_used: float


_CACHE_KINDS = ("CNNFeatureCache", "HiddenStateCache")


def list_caches(directory: str | os.PathLike) -> list[FingerprintDir]:
    """The fingerprint directories of a cache directory, most recently used first.

    Only directories whose ``info.json`` names a cache kind count; anything else is left alone.

    Raises
    ------
    FileNotFoundError
        If ``directory`` is not a directory.

    Examples
    --------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> cache = CNNFeatureCache(root, "0123456789abcdef", dtype="float32")
    >>> _ = cache.put(audio_key(torch.ones(800)), torch.ones(2, 512))
    >>> [(d.path.name, d.info["kind"], d.files) for d in list_caches(root)]
    [('0123456789abcdef-float32', 'CNNFeatureCache', 3)]
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: give the cache directory (e.g. exp/cnn_cache)")
    found = []
    for child in sorted(root.iterdir()):
        info_file = child / INFO_FILE
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict) or info.get("kind") not in _CACHE_KINDS:
            continue
        files, size, newest = _walk(child)
        marker = child / LAST_USED_FILE
        last_used = marker.stat().st_mtime if marker.exists() else newest
        found.append(FingerprintDir(child, info, files, size, info_file.stat().st_mtime, last_used))
    return sorted(found, key=lambda d: (-d.last_used, d.path.name))


def prune_caches(directory: str | os.PathLike, keep_latest: int | None = None,
                 older_than_days: float | None = None, dry_run: bool = False,
                 now: float | None = None) -> list[FingerprintDir]:
    """Remove the fingerprint directories of a cache directory that every given rule selects.

    Parameters
    ----------
    keep_latest
        Select all but the ``keep_latest`` most recently used.
    older_than_days
        Select those last used more than this many days ago.
    dry_run
        Remove nothing; return what would be removed.
    now
        The present, in seconds since the epoch (default: the clock).

    Returns
    -------
    list[FingerprintDir]
        The directories removed (or, with ``dry_run``, to remove), most recently used first.

    Raises
    ------
    ValueError
        If no rule is given, or a rule is negative.
    FileNotFoundError
        As :func:`list_caches`.

    Examples
    --------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> for fingerprint in ("a" * 16, "b" * 16):
    ...     _ = CNNFeatureCache(root, fingerprint)
    >>> os.utime(Path(root) / f"{'a' * 16}-float16" / LAST_USED_FILE, (0, 0))  # used in 1970
    >>> [d.path.name for d in prune_caches(root, keep_latest=1, dry_run=True)]
    ['aaaaaaaaaaaaaaaa-float16']
    >>> [d.path.name for d in prune_caches(root, older_than_days=30)], len(list_caches(root))
    (['aaaaaaaaaaaaaaaa-float16'], 1)
    """
    if keep_latest is None and older_than_days is None:
        raise ValueError("say what to remove: keep the N latest (keep_latest) and/or those older than D days "
                         "(older_than_days)")
    for name, value in (("keep_latest", keep_latest), ("older_than_days", older_than_days)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    now = time.time() if now is None else now
    chosen = [d for position, d in enumerate(list_caches(directory))
              if (keep_latest is None or position >= keep_latest)
              and (older_than_days is None or now - d.last_used > older_than_days * 86400)]
    if not dry_run:
        for fingerprint_dir in chosen:
            shutil.rmtree(fingerprint_dir.path)
    return chosen
