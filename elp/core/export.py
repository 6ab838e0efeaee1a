"""Adapter-only exports: the learnable tensors of a model (and its head), nothing frozen.

An export is a directory holding exactly ``adapters.safetensors`` and ``adapters.json``. The
JSON names the backbone (short name, SHA-256 of its frozen weights as loaded, and an
architecture fingerprint), the method and its options. Loading checks, before touching the
model, that

* the JSON parses and has the expected fields and types,
* the architecture, the frozen weights (two pretrained checkpoints of one architecture, e.g.
  ``wavlm`` and ``wavlm_plus``, or another ``backbone_source``, have different hashes), the
  method and its options are the model's,
* every tensor the model and head need is there, with the right shape, finite, and nothing
  else is,

and refuses with one line (:class:`AdapterMismatchError` / :class:`AdapterFileError`, both
``ValueError``; :class:`AdapterNotFoundError`, a ``FileNotFoundError``) naming the file and the
fix otherwise. A refused load leaves the model and head untouched.

The directory is written next to its final place and renamed into it (a crash leaves the old
export or the new one, never a mix), with files readable like any other output (0644 under
the usual umask).

Examples
--------
>>> import tempfile, torch
>>> from elp.core.backbones import load_backbone
>>> from elp.core.model import AdaptedSSL
>>> from elp.testing import TINY_CONFIG
>>> model = AdaptedSSL(load_backbone("wavlm", pretrained=False, config_overrides=TINY_CONFIG), "el", l_dim=16, e_dim=8)
>>> out = save_adapters(model, Path(tempfile.mkdtemp()) / "adapters")
>>> sorted(p.name for p in out.iterdir())
['adapters.json', 'adapters.safetensors']
>>> load_adapters(model, out)["method"]
'el'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from elp.core.model import AdaptedSSL

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapters.json"
#: 2: adds ``weights_sha256`` (the frozen backbone's identity). Version 1 exports still load
#: (their backbone is then checked by name only, with a warning).
FORMAT_VERSION = 2

#: field -> accepted types of ``adapters.json``
SCHEMA = {"format_version": (int,), "backbone": (str,), "architecture": (dict,), "method": (str,),
          "options": (dict,), "weights_sha256": (str, type(None))}


class AdapterMismatchError(ValueError):
    """An adapter export does not fit the model it is loaded onto."""


class AdapterFileError(ValueError):
    """An adapter export is malformed (bad JSON, missing fields, unreadable tensors)."""


class AdapterNotFoundError(FileNotFoundError):
    """An adapter export directory or one of its files does not exist."""


def architecture_fingerprint(model: AdaptedSSL) -> dict:
    """The backbone facts an export depends on: ``model_type``, the size fields and ``sha1`` (of them).

    Examples
    --------
    >>> from elp.core.backbones import load_backbone
    >>> from elp.testing import TINY_CONFIG
    >>> model = AdaptedSSL(load_backbone("hubert", pretrained=False, config_overrides=TINY_CONFIG), "lora")
    >>> arch = architecture_fingerprint(model)
    >>> arch["model_type"], arch["hidden_size"], arch["conv_stride"], len(arch["sha1"])
    ('hubert', 32, [5, 8, 8], 12)
    """
    config = model.backbone.config
    arch = {key: getattr(config, key) for key in (
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "conv_dim", "conv_kernel", "conv_stride", "do_stable_layer_norm", "feat_extract_norm")}
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}
    arch["sha1"] = hashlib.sha1(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:12]
    return arch


def export_config(model: AdaptedSSL) -> dict:
    """What :func:`save_adapters` writes to ``adapters.json`` (the fields of :data:`SCHEMA`)."""
    return {"format_version": FORMAT_VERSION, "backbone": model.backbone.name,
            "weights_sha256": getattr(model.backbone, "weights_sha256", None),
            "architecture": architecture_fingerprint(model), "method": model.method.name,
            "options": model.options}


def _state(model: AdaptedSSL, head: nn.Module | None) -> dict[str, torch.Tensor]:
    state = {f"model.{name}": p.detach().contiguous().cpu() for name, p in model.learnable_parameters().items()}
    if head is not None:
        state.update({f"head.{name}": t.detach().contiguous().cpu() for name, t in head.state_dict().items()})
    return state


def _expected_shapes(model: AdaptedSSL, head: nn.Module | None) -> dict[str, tuple[int, ...]]:
    shapes = {f"model.{name}": tuple(p.shape) for name, p in model.learnable_parameters().items()}
    if head is not None:
        shapes.update({f"head.{name}": tuple(t.shape) for name, t in head.state_dict().items()})
    return shapes


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_adapters(model: AdaptedSSL, directory: str | os.PathLike, head: nn.Module | None = None) -> Path:
    """Write the learnable tensors of ``model`` (+ the head's state) to ``directory``; return it.

    Parameters
    ----------
    directory
        Created or replaced as a whole (it holds exactly the two export files).
    head
        Saved under ``head.*`` (its whole ``state_dict``).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    config = export_config(model)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    mode = _file_mode()
    save_file(_state(model, head), str(tmp / WEIGHTS_FILE), metadata={"elp_export": json.dumps(config, sort_keys=True)})
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        os.chmod(tmp / name, mode)
        with open(tmp / name, "rb") as handle:
            os.fsync(handle.fileno())
    if directory.exists():
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
    return directory


def read_export_config(directory: str | os.PathLike) -> dict:
    """Read and validate ``adapters.json`` of an export directory (:func:`save_adapters`).

    Raises
    ------
    AdapterNotFoundError
        The directory or a file of it is missing.
    AdapterFileError
        Not JSON, not an object, a field missing or of the wrong type, a newer format.
    """
    directory = Path(directory)
    path = directory / CONFIG_FILE
    for needed in (path, directory / WEIGHTS_FILE):
        if not needed.is_file():
            raise AdapterNotFoundError(
                f"{needed} not found; an export is a directory with {CONFIG_FILE} and {WEIGHTS_FILE} "
                "written by stage 3 (recipes/train.py): check the path or rerun stage 3")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise AdapterFileError(f"{path} is not UTF-8 text; the export is damaged: re-export it (rerun stage 3)") from None
    except json.JSONDecodeError as error:
        raise AdapterFileError(f"{path} is not valid JSON ({error.msg} at line {error.lineno} column "
                               f"{error.colno}); the export is damaged: re-export it (rerun stage 3)") from None
    if not isinstance(config, dict):
        raise AdapterFileError(f"{path} holds a JSON {type(config).__name__}, not an object; re-export it")
    version = config.get("format_version")
    required = dict(SCHEMA)
    if version == 1:
        required.pop("weights_sha256")
    for key, types in required.items():
        if key not in config:
            raise AdapterFileError(f"{path} lacks the field {key!r}; the export is damaged or not an elp "
                                   "export: re-export it (rerun stage 3)")
        if not isinstance(config[key], types) or isinstance(config[key], bool) and bool not in types:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise AdapterFileError(f"{path}: field {key!r} must be {names}, got {type(config[key]).__name__}; "
                                   "re-export it (rerun stage 3)")
    if version not in (1, FORMAT_VERSION):
        raise AdapterFileError(f"{path} has format_version {version}; this elp reads 1 and {FORMAT_VERSION}: "
                               "use the elp version that wrote it, or re-export")
    return config


def load_adapters(model: AdaptedSSL, directory: str | os.PathLike, head: nn.Module | None = None) -> dict:
    """Load an export onto ``model`` (and ``head``); returns the export's config.

    Everything is checked before the first tensor is copied: a refused load leaves ``model``
    and ``head`` unchanged.

    Parameters
    ----------
    head
        Must be given exactly when the export holds a head.

    Raises
    ------
    AdapterNotFoundError, AdapterFileError
        Missing or malformed export.
    AdapterMismatchError
        Another backbone architecture or weights, method or options; tensors missing,
        unexpected, of another shape, or non-finite.
    """
    directory = Path(directory)
    saved = read_export_config(directory)
    wanted = export_config(model)
    if saved["architecture"] != wanted["architecture"]:
        raise AdapterMismatchError(
            f"{directory} was trained on backbone {saved['backbone']!r} "
            f"({_describe(saved['architecture'])}) but the model's backbone is {wanted['backbone']!r} "
            f"({_describe(wanted['architecture'])}); build the model with the export's backbone")
    saved_sha, wanted_sha = saved.get("weights_sha256"), wanted["weights_sha256"]
    if saved_sha and wanted_sha:
        if saved_sha != wanted_sha:
            raise AdapterMismatchError(
                f"{directory} was trained on backbone {saved['backbone']!r} with weights sha256 {saved_sha[:12]} "
                f"but the model's backbone {wanted['backbone']!r} has weights {wanted_sha[:12]}; load the "
                "pretrained checkpoint the export was trained on (backbone / backbone_source) or retrain")
    elif saved["backbone"] != wanted["backbone"]:
        raise AdapterMismatchError(
            f"{directory} was trained on backbone {saved['backbone']!r} but the model's backbone is "
            f"{wanted['backbone']!r}; build the model with the export's backbone")
    else:
        logger.warning("%s: the frozen weights cannot be verified (%s); checked the backbone name only",
                       directory, "export format 1 has no weights hash" if not saved_sha else "model has no hash")
    if saved["method"] != wanted["method"] or saved["options"] != wanted["options"]:
        raise AdapterMismatchError(
            f"{directory} holds method {saved['method']!r} with options {saved['options']} but the model "
            f"uses method {wanted['method']!r} with options {wanted['options']}; build the model with "
            "the export's method and options")
    weights = directory / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AdapterFileError(f"{weights} is not a readable safetensors file ({reason}); the export is "
                               "damaged: re-export it (rerun stage 3)") from None
    expected = _expected_shapes(model, head)
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        advice = "pass the task's head" if head is None and any(k.startswith("head.") for k in unexpected) else \
            "the export was made for another model or head: build those, or re-export"
        raise AdapterMismatchError(
            f"{weights}: tensors missing {_names(missing)}, unexpected {_names(unexpected)}; {advice}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise AdapterMismatchError(
                f"{weights}: tensor {name!r} has shape {tuple(state[name].shape)} but the model needs {shape}; "
                "the export was made for another model or head configuration: build that, or re-export")
        if state[name].is_floating_point() and not torch.isfinite(state[name]).all():
            raise AdapterMismatchError(
                f"{weights}: tensor {name!r} holds NaN/inf values (a diverged run); retrain with a lower "
                "learning rate or check the training audio")
    params = model.learnable_parameters()
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[f"model.{name}"])
    if head is not None:
        head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    return saved


def _names(names: list[str]) -> str:
    return "[" + ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "") + "]"


def _describe(arch: dict) -> str:
    return f"{arch.get('model_type')}, {arch.get('num_hidden_layers')} layers of {arch.get('hidden_size')}"
