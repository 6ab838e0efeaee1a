"""Model packages: everything inference needs, next to the adapter export.

A package is a directory holding

==============================  ==================================================================
``adapters.safetensors/.json``  the learnable tensors of the model and the head
                                (:func:`elp.core.export.save_adapters`)
``package.json``                task kind and the task options prediction needs (``task_options``:
                                SV windows), head class and constructor options, inventory files,
                                backbone (short name, source, SHA-256 of its frozen weights),
                                audio front-end, SV decision threshold, free ``extra`` metadata
``tokens.txt`` / ``bpe.model``  ASR: the tokenizer (character tokens or sentencepiece BPE)
``labels.txt``                  classification: the class names (id = line number)
``calibration.safetensors``     SV: the dev trial scores and labels the threshold came from
``backbone/``                   only for random-weight backbones (``backbone_arch`` runs): the
                                frozen weights as a Hugging Face checkpoint (safetensors)
==============================  ==================================================================

What depends on the task kind (inventory files, ``task_options``, a decision threshold) is
written and read by the task (:class:`elp.tasks.base.Task`); this module never branches on it.

A backbone loaded from a checkpoint is *not* copied: the package names it (short name and
source) and records :attr:`elp.core.backbones.SSLBackbone.weights_sha256`; :func:`load_package`
loads it from the recorded source (or the one the caller passes) and refuses weights whose
hash differs.

Examples
--------
>>> import tempfile
>>> from elp.testing import make_tiny_package
>>> directory = make_tiny_package(tempfile.mkdtemp(), task="classify", method="l_only")
>>> package = load_package(directory)
>>> package.kind, package.labels, package.model.method.name
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
from safetensors.torch import save_file
from torch import nn

from elp.core.backbones import BACKBONES, SSLBackbone, weights_hash
from elp.core.export import load_adapters, save_adapters
from elp.core.heads import CTCHead, PooledClassifier, SpeakerEmbeddingHead
from elp.core.model import AdaptedSSL
from elp.data.inventory import BPE_MODEL, LABELS_FILE, TOKENS_FILE
from elp.tasks import TASKS as TASK_CLASSES
from elp.tasks import Task, task_class, task_from_package

PACKAGE_FILE = "package.json"
CALIBRATION_FILE = "calibration.safetensors"
BACKBONE_DIR = "backbone"
PACKAGE_FORMAT_VERSION = 1
TASKS = tuple(TASK_CLASSES)
SAMPLE_RATE = 16000
#: head classes by the dotted names packages of earlier elp releases recorded (before the heads
#: moved to :mod:`elp.core.heads`)
LEGACY_HEAD_CLASSES: dict[str, type[nn.Module]] = {
    "elp.heads.CTCHead": CTCHead,
    "elp.heads.PooledClassifier": PooledClassifier,
    "elp.heads.SpeakerEmbeddingHead": SpeakerEmbeddingHead,
}


class PackageError(ValueError):
    """A model package is incomplete, inconsistent, or does not fit the backbone offered."""


class PackageNotFoundError(FileNotFoundError):
    """A package directory (or its ``package.json``) does not exist."""


class BackboneHashMismatchError(PackageError):
    """The backbone weights found are not the ones the package was trained on."""


# ---------------------------------------------------------------------------------- writing
def write_package(directory: str | os.PathLike, model: AdaptedSSL, head: nn.Module, *, task: str | Task,
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
    task : str | Task
        The recipe's task (its :meth:`~elp.tasks.base.Task.package_options` are recorded), or a
        kind of :data:`elp.tasks.TASKS` (that kind's default options).
    head_spec : dict, optional
        ``{"class": "module.Class", "options": {...}}``; default: from ``head``.
    inventory_dir : str | os.PathLike | None, optional
        Stage 2's ``data/lang``, read by the task (:meth:`~elp.tasks.base.Task.save_package_inventory`:
        ASR the tokenizer, classification ``labels.txt``). Alternatively pass ``labels`` or ``tokenizer``.
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
        Tasks with a decision threshold (speaker verification): dev trial scores [N] and
        labels [N] (1 target, 0 non-target); the EER threshold computed from them becomes the
        decision threshold (see :func:`calibrate_threshold`).
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
    >>> source = load_package(make_tiny_package(tempfile.mkdtemp(), task="classify"))
    >>> directory = write_package(Path(tempfile.mkdtemp()) / "package", source.model, source.head,
    ...                           task="classify", labels=source.labels, backbone_pretrained=False)
    >>> sorted(path.name for path in directory.iterdir())
    ['adapters.json', 'adapters.safetensors', 'backbone', 'labels.txt', 'package.json']
    >>> load_package(directory).labels
    ['angry', 'happy', 'neutral']
    """
    if not isinstance(task, Task):  # a kind: its default options
        try:
            task = task_class(task)()
        except ValueError:
            raise PackageError(f"task={task!r} is not one of {TASKS}") from None
    directory = Path(directory)
    head_spec = head_spec or _head_spec(head)
    save_adapters(model, directory, head=head)
    for name in (TOKENS_FILE, BPE_MODEL, LABELS_FILE):
        (directory / name).unlink(missing_ok=True)
    try:
        inventory = task.save_package_inventory(directory, inventory_dir=inventory_dir, labels=labels,
                                                tokenizer=tokenizer)
    except ValueError as err:
        raise PackageError(str(err)) from err
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
        "format_version": PACKAGE_FORMAT_VERSION, "task": task.kind, "task_options": task.package_options(),
        "method": model.method.name, "head": head_spec, "inventory": inventory, "backbone": backbone_entry,
        "frontend": {"sample_rate": SAMPLE_RATE, "channels": "mean of all channels",
                     "normalize_waveform": bool(backbone.normalize_waveform)},
        "extra": dict(extra or {}),
    }
    if task.threshold_key is not None:
        config[task.threshold_key] = None  # set by calibrate_threshold
    _write_json(directory / PACKAGE_FILE, config)
    if sv_trials is not None:
        calibrate_threshold(directory, *sv_trials)
    return directory


def record_task_options(directory: str | os.PathLike, task: Task) -> dict:
    """Record ``task``'s prediction options in a package (stage 4: the settings it predicted with).

    Parameters
    ----------
    directory : str | os.PathLike
        A package of ``task``'s kind.
    task : Task
        The recipe's task.

    Returns
    -------
    dict
        The ``task_options`` written.

    Raises
    ------
    PackageError
        If the package is of another kind.

    Examples
    --------
    >>> import tempfile
    >>> from elp.testing import make_tiny_package
    >>> from elp.tasks import SpeakerVerification
    >>> d = make_tiny_package(tempfile.mkdtemp(), task="sv", method="weighted_sum")
    >>> record_task_options(d, SpeakerVerification(window_seconds=3.0))
    {'window_seconds': 3.0, 'window_overlap_seconds': 1.5}
    """
    directory = Path(directory)
    config = read_package_config(directory)
    if config["task"] != task.kind:  # kinds compared as values: no kind-specific code
        raise PackageError(f"{directory} is a {config['task']!r} package, not a {task.kind!r} one")
    config["task_options"] = task.package_options()
    _write_json(directory / PACKAGE_FILE, config)
    return config["task_options"]


def calibrate_threshold(directory: str | os.PathLike, scores, labels, *, source: str = "dev trials") -> dict:
    """Set a package's decision threshold to the EER threshold of the given trials.

    Only kinds with a decision threshold have one (speaker verification). The scores and
    labels are stored in ``calibration.safetensors``; ``package.json`` gets the kind's
    ``threshold_key`` entry, ``sv = {"threshold", "eer", "num_trials", "source"}``. A trial is accepted when its
    score is above the threshold (as :func:`elp.eval.scoring.equal_error_rate` counts).

    Parameters
    ----------
    directory : str | os.PathLike
        A package of a kind with a decision threshold (speaker verification).
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
    >>> d = make_tiny_package(tempfile.mkdtemp(), task="sv", method="weighted_sum")
    >>> calibrate_threshold(d, [0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])["threshold"]
    0.3
    """
    from elp.eval.scoring import equal_error_rate

    directory = Path(directory)
    config = read_package_config(directory)
    key = package_task(config, directory).threshold_key
    if key is None:
        with_threshold = " or ".join(kind for kind, cls in TASK_CLASSES.items() if cls.threshold_key)
        raise PackageError(f"{directory} is a {config['task']!r} package; only {with_threshold} packages have "
                           "a decision threshold")
    scores_t = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    labels_t = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if scores_t.numel() != labels_t.numel():
        raise PackageError(f"calibration: {scores_t.numel()} scores but {labels_t.numel()} labels")
    eer = equal_error_rate(scores_t.numpy(), labels_t.numpy())
    save_file({"scores": scores_t, "labels": labels_t}, str(directory / CALIBRATION_FILE))
    config[key] = {"threshold": eer["threshold"], "eer": eer["eer"], "num_trials": int(scores_t.numel()),
                   "source": source, "file": CALIBRATION_FILE}
    _write_json(directory / PACKAGE_FILE, config)
    return config[key]


def package_task(config: dict, directory: str | os.PathLike = "") -> Task:
    """The task of a package (:func:`elp.tasks.task_from_package`), with a package error.

    Parameters
    ----------
    config : dict
        ``package.json``.
    directory : str | os.PathLike, optional
        The package (named in the error).

    Returns
    -------
    Task
        The task with its recorded prediction options.

    Raises
    ------
    PackageError
        For an unknown kind or options the task does not take.
    """
    try:
        return task_from_package(config)
    except (ValueError, TypeError) as err:
        raise PackageError(f"{Path(directory) / PACKAGE_FILE}: {err}") from err


def _head_spec(head: nn.Module) -> dict:
    if not isinstance(getattr(head, "config", None), dict):
        raise PackageError(f"head {type(head).__name__} has no `config` dict of its constructor options; "
                           "record one in its __init__ or pass head_spec={'class': ..., 'options': ...}")
    cls = type(head)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "options": dict(head.config)}


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
    task : Task
        The task of ``config`` (its kind and recorded prediction options).
    """

    directory: Path
    config: dict
    model: AdaptedSSL
    head: nn.Module
    tokenizer: object = None
    labels: list[str] | None = None
    extra: dict = field(default_factory=dict)
    task: Task = field(init=False)

    def __post_init__(self):
        self.task = package_task(self.config, self.directory)

    @property
    def kind(self) -> str:
        """The task kind (a key of :data:`elp.tasks.TASKS`)."""
        return self.task.kind

    @property
    def threshold(self) -> float | None:
        """The calibrated decision threshold (None when the kind has none or it is not calibrated)."""
        key = self.task.threshold_key
        entry = self.config.get(key) if key else None
        return None if not entry else float(entry["threshold"])

    @property
    def name(self) -> str:
        """A short label for printing (the package directory's name, or its parent's for ``adapters``)."""
        name = self.directory.name
        return self.directory.parent.name if name in ("adapters", "package") and self.directory.parent.name else name

    def to(self, device) -> Package:
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
        If the recorded class is outside ``elp`` (packages never import other code) or no
        longer exists (one line naming its current name to write into ``package.json``).

    Examples
    --------
    Packages of earlier releases name the heads by their former module (:data:`LEGACY_HEAD_CLASSES`):

    >>> build_head({"head": {"class": "elp.heads.CTCHead", "options": {"in_dim": 4, "vocab_size": 5}}})
    CTCHead(
      (proj): Linear(in_features=4, out_features=5, bias=True)
    )
    """
    spec = config["head"]
    name = spec["class"]
    if name in LEGACY_HEAD_CLASSES:
        return LEGACY_HEAD_CLASSES[name](**spec["options"])
    module_name, _, class_name = name.rpartition(".")
    if not module_name.startswith("elp."):
        raise PackageError(f"head class {name!r} is outside elp; packages only name elp heads")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise PackageError(f"head class {name!r} does not exist in this elp: set head.class in {PACKAGE_FILE} to "
                           f"the class's current dotted name (e.g. elp.core.heads.{class_name})") from None
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
    """The tokenizer and labels of the package, read by its task.

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
    return package_task(config, directory).load_package_inventory(Path(directory), config["inventory"])


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
    package_task(config, directory)  # an unknown kind fails before the backbone loads
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
