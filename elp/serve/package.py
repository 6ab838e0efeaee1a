"""Model packages: everything inference needs, next to the adapter export.

A package is a directory holding

==============================  ==================================================================
``adapters.safetensors/.json``  the learnable tensors of the model and the head
                                (:func:`elp.core.export.save_adapters`)
``package.json``                task kind, head class and constructor options, inventory files,
                                backbone (short name, source, SHA-256 of its frozen weights),
                                audio front-end, SV decision threshold, free ``extra`` metadata
``tokens.txt`` / ``bpe.model``  ASR: the tokenizer (character tokens or sentencepiece BPE)
``labels.txt``                  classification: the class names (id = line number)
``calibration.safetensors``     SV: the dev trial scores and labels the threshold came from
``backbone/``                   only for random-weight backbones (``backbone_arch`` runs): the
                                frozen weights as a Hugging Face checkpoint (safetensors)
==============================  ==================================================================

A backbone loaded from a checkpoint is *not* copied: the package names it (short name and
source) and records :attr:`elp.core.backbones.SSLBackbone.weights_sha256`; :func:`load_package`
loads it from the recorded source (or the one the caller passes) and refuses weights whose
hash differs.

Examples
--------
>>> import tempfile
>>> from elp.testing import make_tiny_package
>>> directory = make_tiny_package(tempfile.mkdtemp(), task=CLASSIFY, method="l_only")
>>> package = load_package(directory)
>>> package.task, package.labels, package.model.method.name
('classify', ['angry', 'happy', 'neutral'], 'l_only')
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from elp.core.backbones import BACKBONES, SSLBackbone, weights_hash
from elp.data.inventory import BPE_MODEL, LABELS_FILE, TOKENS_FILE, BPETokenizer, CharTokenizer, load_tokenizer
from elp.core.export import load_adapters, save_adapters
from elp.core.model import AdaptedSSL
from elp.tasks import ASR, CLASSIFY, SV
from elp.tasks import TASKS as TASK_CLASSES

PACKAGE_FILE = "package.json"
CALIBRATION_FILE = "calibration.safetensors"
BACKBONE_DIR = "backbone"
PACKAGE_FORMAT_VERSION = 1
TASKS = tuple(TASK_CLASSES)
SAMPLE_RATE = 16000


class PackageError(ValueError):
    """A model package is incomplete, inconsistent, or does not fit the backbone offered."""


class PackageNotFoundError(FileNotFoundError):
    """A package directory (or its ``package.json``) does not exist."""


class BackboneHashMismatchError(PackageError):
    """The backbone weights found are not the ones the package was trained on."""


# ---------------------------------------------------------------------------------- writing
def write_package(directory: str | os.PathLike, model: AdaptedSSL, head: nn.Module, *, task: str,
                  head_spec: dict | None = None, inventory_dir: str | os.PathLike | None = None,
                  labels: list[str] | None = None, tokenizer=None, backbone_source: str | None = None,
                  backbone_pretrained: bool = True, sv_trials: tuple | None = None,
                  extra: dict | None = None) -> Path:
    """Write a model package (adapter export + ``package.json`` + inventory [+ backbone]).

    Parameters
    ----------
    directory : str | os.PathLike
        Package directory (created; an existing adapter export there is overwritten).
    model : AdaptedSSL
        The trained model (its backbone's ``weights_sha256`` identifies the frozen weights).
    head : torch.nn.Module
        The trained head; with a ``config`` dict (every head of :mod:`elp.core.heads`) unless
        ``head_spec`` is given.
    task : str
        a task kind of :data:`elp.tasks.TASKS`.
    head_spec : dict, optional
        ``{"class": "module.Class", "options": {...}}``; default: from ``head``.
    inventory_dir : str | os.PathLike | None, optional
        Stage 2's ``data/lang``: ASR reads the tokenizer (``bpe.model`` or ``tokens.txt``),
        classification reads ``labels.txt``. Alternatively pass ``labels`` or ``tokenizer``.
    labels : list of str, optional
        Class names (id = position) for ``classify``.
    tokenizer : CharTokenizer or BPETokenizer, optional
        For ``asr``.
    backbone_source : str, optional
        Where the backbone's weights come from (local directory or hub id; a short name means
        its hub id); default: the short name's hub id. Needed when the backbone was named by
        a local directory (pass that directory).
    backbone_pretrained : bool
        False for random-weight backbones (``backbone_arch`` runs): their frozen weights are
        stored in ``backbone/`` since no checkpoint holds them.
    sv_trials : (scores, labels), optional
        SV only: dev trial scores [N] and labels [N] (1 target, 0 non-target); the EER
        threshold computed from them becomes the decision threshold
        (see :func:`calibrate_threshold`).
    extra : dict, optional
        Free JSON-able metadata (corpus, tag, results...).

    Returns
    -------
    pathlib.Path
        The package directory.

    Examples
    --------
    Re-package the model and head of a tiny package (random backbone: stored in ``backbone/``):

    >>> import tempfile
    >>> from elp.testing import make_tiny_package
    >>> source = load_package(make_tiny_package(tempfile.mkdtemp(), task=CLASSIFY))
    >>> directory = write_package(Path(tempfile.mkdtemp()) / "package", source.model, source.head,
    ...                           task=CLASSIFY, labels=source.labels, backbone_pretrained=False)
    >>> sorted(path.name for path in directory.iterdir())
    ['adapters.json', 'adapters.safetensors', 'backbone', 'labels.txt', 'package.json']
    >>> load_package(directory).labels
    ['angry', 'happy', 'neutral']
    """
    if task not in TASKS:
        raise PackageError(f"task={task!r} is not one of {TASKS}")
    directory = Path(directory)
    head_spec = head_spec or _head_spec(head)
    save_adapters(model, directory, head=head)
    inventory = _write_inventory(directory, task, inventory_dir, labels, tokenizer)
    backbone = model.backbone
    if backbone.weights_sha256 is None:
        raise PackageError("the backbone is on the meta device: its weights have no identity to record")
    source = backbone_source or (BACKBONES[backbone.name].hub_id if backbone.name in BACKBONES else None)
    if source in BACKBONES:  # a short name stands for its hub id
        source = BACKBONES[source].hub_id
    backbone_entry = {"name": backbone.name, "source": source, "family": backbone.family,
                      "weights_sha256": backbone.weights_sha256, "pretrained": bool(backbone_pretrained),
                      "stored": None}
    if not backbone_pretrained:
        backbone_entry["stored"] = BACKBONE_DIR
        backbone_entry["stored_sha256"] = _store_backbone(backbone, directory / BACKBONE_DIR)
        backbone_entry["source"] = None
    elif (directory / BACKBONE_DIR).exists():
        shutil.rmtree(directory / BACKBONE_DIR)
    config = {
        "format_version": PACKAGE_FORMAT_VERSION, "task": task, "method": model.method.name,
        "head": head_spec, "inventory": inventory, "backbone": backbone_entry,
        "frontend": {"sample_rate": SAMPLE_RATE, "channels": "mean of all channels",
                     "normalize_waveform": bool(backbone.normalize_waveform)},
        SV: None, "extra": dict(extra or {}),
    }
    _write_json(directory / PACKAGE_FILE, config)
    if sv_trials is not None:
        if task != SV:
            raise PackageError(f"sv_trials given for a {task!r} package; only SV packages have a threshold")
        calibrate_threshold(directory, *sv_trials)
    return directory


def calibrate_threshold(directory: str | os.PathLike, scores, labels, *, source: str = "dev trials") -> dict:
    """Set an SV package's decision threshold to the EER threshold of the given trials.

    The scores and labels are stored in ``calibration.safetensors``; ``package.json`` gets
    ``sv = {"threshold", "eer", "num_trials", "source"}``. A trial is accepted when its
    score is above the threshold (as :func:`elp.eval.scoring.equal_error_rate` counts).

    Parameters
    ----------
    directory : str | os.PathLike
        An SV package.
    scores : Sequence[float] | numpy.ndarray | torch.Tensor
        Cosine scores [N] of dev trials (not the test trials that are reported).
    labels : Sequence[int] | numpy.ndarray | torch.Tensor
        [N], 1 = target, 0 = non-target.
    source : str, optional
        What the trials were (recorded).

    Returns
    -------
    dict
        The ``sv`` entry written.

    Examples
    --------
    >>> import tempfile
    >>> from elp.testing import make_tiny_package
    >>> d = make_tiny_package(tempfile.mkdtemp(), task=SV, method="weighted_sum")
    >>> calibrate_threshold(d, [0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])["threshold"]
    0.3
    """
    from elp.eval.scoring import equal_error_rate

    directory = Path(directory)
    config = read_package_config(directory)
    if config["task"] != SV:
        raise PackageError(f"{directory} is a {config['task']!r} package; only SV packages have a threshold")
    scores_t = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    labels_t = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if scores_t.numel() != labels_t.numel():
        raise PackageError(f"calibration: {scores_t.numel()} scores but {labels_t.numel()} labels")
    eer = equal_error_rate(scores_t.numpy(), labels_t.numpy())
    save_file({"scores": scores_t, "labels": labels_t}, str(directory / CALIBRATION_FILE))
    config[SV] = {"threshold": eer["threshold"], "eer": eer["eer"], "num_trials": int(scores_t.numel()),
                    "source": source, "file": CALIBRATION_FILE}
    _write_json(directory / PACKAGE_FILE, config)
    return config[SV]


def _head_spec(head: nn.Module) -> dict:
    if not isinstance(getattr(head, "config", None), dict):
        raise PackageError(f"head {type(head).__name__} has no `config` dict of its constructor options; "
                           "record one in its __init__ or pass head_spec={'class': ..., 'options': ...}")
    cls = type(head)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "options": dict(head.config)}


def _write_inventory(directory: Path, task: str, inventory_dir, labels, tokenizer) -> dict:
    for name in (TOKENS_FILE, BPE_MODEL, LABELS_FILE):
        (directory / name).unlink(missing_ok=True)
    if task == ASR:
        if tokenizer is None:
            if inventory_dir is None:
                raise PackageError("an ASR package needs inventory_dir= (stage 2's data/lang) or tokenizer=")
            tokenizer = load_tokenizer(inventory_dir)
        if isinstance(tokenizer, BPETokenizer):
            shutil.copyfile(tokenizer.model_path, directory / BPE_MODEL)
            return {"kind": "bpe", "file": BPE_MODEL}
        if isinstance(tokenizer, CharTokenizer):
            tokenizer.save(directory)
            return {"kind": "char", "file": TOKENS_FILE}
        raise PackageError(f"unsupported tokenizer {type(tokenizer).__name__}; expected CharTokenizer or BPETokenizer")
    if task == CLASSIFY:
        if labels is None:
            if inventory_dir is None:
                raise PackageError("a classification package needs inventory_dir= (stage 2's data/lang) or labels=")
            path = Path(inventory_dir) / LABELS_FILE
            if not path.exists():
                raise PackageNotFoundError(f"{path} is missing: run stage 2 (label inventory) first")
            labels = path.read_text().splitlines()
        (directory / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
        return {"kind": "labels", "file": LABELS_FILE}
    return {"kind": None, "file": None}  # SV: embeddings, no inventory


def _clean_backbone_state(backbone: SSLBackbone) -> dict[str, torch.Tensor]:
    """The HF model's state with LoRA parametrizations undone (original frozen weights)."""
    state = {}
    for name, tensor in backbone.model.state_dict().items():
        if ".parametrizations.weight.original" in name and name.endswith(".original"):
            owner = name[: -len(".parametrizations.weight.original")]
            if f"{owner}.parametrizations.weight.0.lora_a" in backbone.model.state_dict():
                name = f"{owner}.weight"
        elif ".parametrizations.weight.0.lora_" in name:
            continue
        state[name] = tensor.detach().cpu().contiguous()
    return state


class _StateHolder:
    """Duck-typed module for :func:`weights_hash` over a plain state dict."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _store_backbone(backbone: SSLBackbone, target: Path) -> str:
    """Save the frozen backbone as a HF checkpoint (config.json + model.safetensors)."""
    state = _clean_backbone_state(backbone)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    backbone.config.to_json_file(str(target / "config.json"))
    # shared storage (tied tensors) is not expected in these models; clone to be safe
    save_file({k: v.clone() for k, v in state.items()}, str(target / "model.safetensors"),
              metadata={"format": "pt"})
    return weights_hash(_StateHolder(state))


# ---------------------------------------------------------------------------------- reading
@dataclass
class Package:
    """A loaded model package.

    Attributes
    ----------
    directory : pathlib.Path
    config : dict
        ``package.json``.
    model : AdaptedSSL
        In eval mode.
    head : torch.nn.Module
        In eval mode.
    tokenizer : CharTokenizer | BPETokenizer | None
        ASR only.
    labels : list of str | None
        Classification only.
    """

    directory: Path
    config: dict
    model: AdaptedSSL
    head: nn.Module
    tokenizer: object = None
    labels: list[str] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def threshold(self) -> float | None:
        """SV decision threshold (None when not calibrated)."""
        sv = self.config.get(SV)
        return None if not sv else float(sv["threshold"])

    @property
    def name(self) -> str:
        """A short label for printing (the package directory's name, or its parent's for ``adapters``)."""
        name = self.directory.name
        return self.directory.parent.name if name in ("adapters", "package") and self.directory.parent.name else name

    def to(self, device) -> "Package":
        self.model.to(device)
        self.head.to(device)
        return self


def read_package_config(directory: str | os.PathLike) -> dict:
    """``package.json`` of a package directory, with a clear error when it is not one.

    Examples
    --------
    >>> read_package_config("/nonexistent")
    Traceback (most recent call last):
    ...
    elp.serve.package.PackageNotFoundError: /nonexistent: no such model package directory; pass the directory stage 3 wrote (exp/<tag>/adapters)
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PackageNotFoundError(f"{directory}: no such model package directory; pass the directory "
                                   "stage 3 wrote (exp/<tag>/adapters)")
    path = directory / PACKAGE_FILE
    if not path.exists():
        raise PackageNotFoundError(f"{path} is missing: {directory} is an adapter export without a package; "
                                   "rerun stage 3 (or call elp.serve.package.write_package) to write it")
    config = json.loads(path.read_text())
    if config.get("format_version") != PACKAGE_FORMAT_VERSION:
        raise PackageError(f"{path}: format_version {config.get('format_version')} is not supported "
                           f"(this elp reads {PACKAGE_FORMAT_VERSION})")
    return config


def load_package_backbone(directory: str | os.PathLike, backbone_source: str | None = None,
                          config: dict | None = None) -> SSLBackbone:
    """The frozen backbone a package was trained on, checked against its weights hash.

    Parameters
    ----------
    directory : str | os.PathLike
        The package.
    backbone_source : str, optional
        Local checkpoint directory or hub id; default: the package's stored backbone, else
        the recorded source.

    Raises
    ------
    BackboneHashMismatchError
        The weights found are not the ones the package was trained on.
    """
    directory = Path(directory)
    config = config or read_package_config(directory)
    entry = config["backbone"]
    stored = entry.get("stored")
    if backbone_source is None and stored:
        source, expected = str(directory / stored), entry.get("stored_sha256", entry["weights_sha256"])
    else:
        source, expected = backbone_source or entry.get("source"), entry["weights_sha256"]
    if source is None:
        raise PackageError(f"{directory}: the package records no backbone source; pass backbone_source= "
                           f"(the checkpoint directory of {entry['name']!r})")
    name = entry["name"] if entry["name"] in BACKBONES else source
    backbone = SSLBackbone.from_pretrained(name, source=source)
    backbone.name = entry["name"]
    if backbone.weights_sha256 != expected:
        raise BackboneHashMismatchError(
            f"backbone weights from {source} (sha256 {backbone.weights_sha256[:12]}...) are not the ones "
            f"{directory} was trained on (sha256 {expected[:12]}...); pass backbone_source= the "
            f"checkpoint of {entry['name']!r} used in training")
    backbone.weights_sha256 = entry["weights_sha256"]  # identity of the frozen weights (as trained)
    return backbone


def build_model(config: dict, backbone: SSLBackbone, directory: str | os.PathLike) -> AdaptedSSL:
    """The package's :class:`AdaptedSSL` on ``backbone`` (method and options of its export).

    Parameters
    ----------
    config : dict
        The package's ``package.json`` (:func:`read_package_config`).
    backbone : SSLBackbone
        The loaded frozen backbone.
    directory : str | os.PathLike
        The package directory (its ``adapters.json``).

    Returns
    -------
    AdaptedSSL
        The model, untrained (see :func:`load_weights`).
    """
    export = json.loads((Path(directory) / "adapters.json").read_text())
    options = dict(export["options"])
    options["lora_targets"] = tuple(options.get("lora_targets", ("q_proj", "v_proj")))
    return AdaptedSSL(backbone, export["method"], **options)


def build_head(config: dict) -> nn.Module:
    """The package's head class called with its recorded options (untrained).

    Parameters
    ----------
    config : dict
        The package's ``package.json``.

    Returns
    -------
    torch.nn.Module
        The head.

    Raises
    ------
    PackageError
        If the recorded class is outside ``elp`` (packages never import other code).
    """
    spec = config["head"]
    module_name, _, class_name = spec["class"].rpartition(".")
    if not module_name.startswith("elp."):
        raise PackageError(f"head class {spec['class']!r} is outside elp; packages only name elp heads")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**spec["options"])


def load_weights(directory: str | os.PathLike, model: AdaptedSSL, head: nn.Module) -> None:
    """Load the package's learnable tensors onto ``model`` and ``head`` (both set to eval mode).

    Parameters
    ----------
    directory : str | os.PathLike
        The package directory.
    model : AdaptedSSL
        From :func:`build_model`.
    head : torch.nn.Module
        From :func:`build_head`.
    """
    load_adapters(model, directory, head=head)
    model.eval()
    head.eval()


def load_inventory(directory: str | os.PathLike, config: dict):
    """The tokenizer and labels of the package.

    Parameters
    ----------
    directory : str | os.PathLike
        The package directory.
    config : dict
        The package's ``package.json``.

    Returns
    -------
    tuple
        (tokenizer, labels): a :class:`CharTokenizer` / :class:`BPETokenizer` or None, and a
        list of class names or None.
    """
    directory = Path(directory)
    kind = config["inventory"]["kind"]
    if kind == "bpe":
        return BPETokenizer(directory / BPE_MODEL), None
    if kind == "char":
        return CharTokenizer((directory / TOKENS_FILE).read_text().splitlines()), None
    if kind == "labels":
        return None, (directory / LABELS_FILE).read_text().splitlines()
    return None, None


def load_package(directory: str | os.PathLike, backbone_source: str | None = None,
                 device: str | torch.device = "cpu") -> Package:
    """Rebuild a trained model and head from a package.

    Parameters
    ----------
    directory : str | os.PathLike
        The package directory.
    backbone_source : str, optional
        Local checkpoint directory or hub id of the backbone (default: the stored one or the
        recorded source); its weights must hash to the recorded ``weights_sha256``.
    device : str or torch.device

    Returns
    -------
    Package
    """
    directory = Path(directory)
    config = read_package_config(directory)
    backbone = load_package_backbone(directory, backbone_source, config)
    model = build_model(config, backbone, directory)
    head = build_head(config)
    load_weights(directory, model, head)
    tokenizer, labels = load_inventory(directory, config)
    return Package(directory, config, model, head, tokenizer, labels, config.get("extra", {})).to(device)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
