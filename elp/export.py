"""Adapter-only checkpoints: the learnable tensors of a model (and its head), nothing frozen.

An export is a directory with ``adapters.safetensors`` and ``adapters.json``. The JSON names the
backbone (short name and an architecture fingerprint), the method and its options, so that
loading onto another backbone or method is refused with a clear error instead of silently
producing garbage.

Example
-------
>>> save_adapters(model, "exp/asr/adapters", head=head)         # doctest: +SKIP
>>> load_adapters(fresh_model, "exp/asr/adapters", head=fresh_head)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from elp.model import AdaptedSSL

WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapters.json"
FORMAT_VERSION = 1


class AdapterMismatchError(ValueError):
    """An adapter export does not fit the model it is loaded onto."""


def architecture_fingerprint(model: AdaptedSSL) -> dict:
    """The backbone facts an export depends on (family, sizes, and a hash of the full config)."""
    config = model.backbone.config
    arch = {key: getattr(config, key) for key in (
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "conv_dim", "conv_kernel", "conv_stride", "do_stable_layer_norm", "feat_extract_norm")}
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}
    arch["sha1"] = hashlib.sha1(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:12]
    return arch


def export_config(model: AdaptedSSL) -> dict:
    """What :func:`save_adapters` writes to ``adapters.json``."""
    return {"format_version": FORMAT_VERSION, "backbone": model.backbone.name,
            "architecture": architecture_fingerprint(model), "method": model.method.name,
            "options": model.options}


def _state(model: AdaptedSSL, head: nn.Module | None) -> dict[str, torch.Tensor]:
    state = {f"model.{name}": p.detach().contiguous().cpu() for name, p in model.learnable_parameters().items()}
    if head is not None:
        state.update({f"head.{name}": t.detach().contiguous().cpu() for name, t in head.state_dict().items()})
    return state


def save_adapters(model: AdaptedSSL, directory: str | os.PathLike, head: nn.Module | None = None) -> Path:
    """Write the learnable tensors of ``model`` (+ the head's state) atomically to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for filename, writer in ((WEIGHTS_FILE, lambda p: save_file(_state(model, head), p)),
                             (CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(export_config(model), indent=2)))):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{filename}.")
        os.close(fd)
        writer(tmp)
        os.replace(tmp, directory / filename)
    return directory


def load_adapters(model: AdaptedSSL, directory: str | os.PathLike, head: nn.Module | None = None) -> dict:
    """Load an export onto ``model`` (and ``head``); returns the export's config.

    Raises
    ------
    AdapterMismatchError: different backbone architecture, method or options, or tensors missing.
    """
    directory = Path(directory)
    saved = json.loads((directory / CONFIG_FILE).read_text())
    wanted = export_config(model)
    if saved["architecture"] != wanted["architecture"]:
        raise AdapterMismatchError(
            f"{directory} was trained on backbone {saved['backbone']!r} "
            f"({_describe(saved['architecture'])}) but the model's backbone is {wanted['backbone']!r} "
            f"({_describe(wanted['architecture'])}); build the model with the export's backbone")
    if saved["method"] != wanted["method"] or saved["options"] != wanted["options"]:
        raise AdapterMismatchError(
            f"{directory} holds method {saved['method']!r} with options {saved['options']} but the model "
            f"uses method {wanted['method']!r} with options {wanted['options']}; build the model with "
            "the export's method and options")
    state = load_file(directory / WEIGHTS_FILE)
    params = model.learnable_parameters()
    expected = {f"model.{name}" for name in params}
    if head is not None:
        expected |= {f"head.{name}" for name in head.state_dict()}
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise AdapterMismatchError(f"{directory}: tensors missing {sorted(missing)[:5]}, "
                                   f"unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[f"model.{name}"])
    if head is not None:
        head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    return saved


def _describe(arch: dict) -> str:
    return (f"{arch['model_type']}, {arch['num_hidden_layers']} layers of {arch['hidden_size']}")
