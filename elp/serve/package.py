"""Model packages: everything inference needs, next to the adapter export.

A package is a directory holding

==============================  ==================================================================
``adapters.safetensors/.json``  the learnable tensors of the model and the head
                                (:func:`elp.core.export.save_adapters`)
``package.json``                task kind and the task options prediction needs (``task_options``:
                                SV windows), head class and constructor options, inventory files,
                                backbone (short name, source, SHA-256 of its frozen weights),
                                ``encoder_sha256`` (what the model changes inside the transformer:
                                packages with equal values share one pass when served together),
                                audio front-end, SV decision threshold, free ``extra`` metadata
``tokens.txt`` / ``bpe.model``  ASR: the tokenizer (character tokens or sentencepiece BPE)
``labels.txt``                  classification: the class names (id = line number)
``calibration.safetensors``     SV: the dev trial scores and labels the threshold came from
``backbone/``                   only for random-weight backbones (``backbone_arch`` runs): the
                                frozen weights as a Hugging Face checkpoint (safetensors)
``head_module/<name>.py``       only for a user's head (a recipe's ``local/`` module): its source,
                                loaded only when the caller trusts it (:mod:`elp.serve.head_registry`)
``manifest.json``               the SHA-256 of every other file, written last (:mod:`elp.serve.integrity`)
==============================  ==================================================================

Loading never unpickles anything (safetensors and JSON only), builds only the head classes of
:data:`elp.serve.head_registry.HEAD_CLASSES` (or a user head the caller trusts by name) with
checked options, verifies the manifest (naming the file that differs) and refuses links that
lead outside the package and non-float32 tensors. :func:`check_package` reports every problem
at once (``elp inspect --check``).

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

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from elp.core.backbones import BACKBONES, SSLBackbone, weights_hash
from elp.core.export import WEIGHTS_FILE, load_adapters, read_export_config, save_adapters
from elp.core.model import AdaptedSSL
from elp.core.routing import encoder_fingerprint
from elp.data.inventory import BPE_MODEL, LABELS_FILE, TOKENS_FILE
from elp.runtime import SAMPLE_RATE, atomic_write_text
from elp.serve.head_registry import (HEAD_CLASSES, HEAD_MODULE_DIR, LEGACY_HEAD_NAMES, HeadSpecError, check_head_spec,
                                     file_sha256, head_class, head_spec_of)
from elp.serve.integrity import MANIFEST_FILE, manifest_problems, write_manifest
from elp.tasks import TASKS as TASK_CLASSES
from elp.tasks import Task, task_class, task_from_package

logger = logging.getLogger(__name__)

PACKAGE_FILE = "package.json"
CALIBRATION_FILE = "calibration.safetensors"
BACKBONE_DIR = "backbone"
PACKAGE_FORMAT_VERSION = 1
TASKS = tuple(TASK_CLASSES)
#: head classes by the dotted names packages of earlier elp releases recorded (before the heads
#: moved to :mod:`elp.core.heads`)
LEGACY_HEAD_CLASSES: dict[str, type[nn.Module]] = {old: HEAD_CLASSES[new][0] for old, new in LEGACY_HEAD_NAMES.items()}
#: float tensors of a package are float32; others are refused (re-export the model in float32)
TENSOR_DTYPE = "F32"
#: the ``package.json`` fields every package has, with their JSON types
CONFIG_SCHEMA: dict[str, tuple[type, ...]] = {
    "format_version": (int,), "task": (str,), "method": (str,), "head": (dict,), "backbone": (dict,),
    "task_options": (dict,), "inventory": (dict, type(None)), "extra": (dict,),
}
#: fields that packages of earlier releases may lack
OPTIONAL_FIELDS = {"task_options", "extra", "inventory", "source", "stored"}
BACKBONE_SCHEMA: dict[str, tuple[type, ...]] = {
    "name": (str,), "weights_sha256": (str,), "source": (str, type(None)), "stored": (str, type(None)),
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
    directory
        Package directory (created; an existing adapter export there is overwritten).
    model
        The trained model (its backbone's ``weights_sha256`` identifies the frozen weights).
    head
        The trained head; with a ``config`` dict (every head of :mod:`elp.core.heads`) unless
        ``head_spec`` is given.
    task
        The recipe's task (its :meth:`~elp.tasks.base.Task.package_options` are recorded), or a
        kind of :data:`elp.tasks.TASKS` (that kind's default options).
    head_spec
        ``{"class": "module.Class", "options": {...}}``; default: from ``head``.
    inventory_dir
        Stage 2's ``data/lang``, read by the task (:meth:`~elp.tasks.base.Task.save_package_inventory`:
        ASR the tokenizer, classification ``labels.txt``). Alternatively pass ``labels`` (class
        names, id = position) or ``tokenizer`` (ASR).
    backbone_source
        Where the backbone's weights come from (local directory or hub id; a short name means
        its hub id); default: the short name's hub id. Needed when the backbone was named by
        a local directory (pass that directory).
    backbone_pretrained
        False for random-weight backbones (``backbone_arch`` runs): their frozen weights are
        stored in ``backbone/`` since no checkpoint holds them.
    sv_trials : (scores, labels)
        Tasks with a decision threshold (speaker verification): dev trial scores [N] and
        labels [N] (1 target, 0 non-target) for :func:`calibrate_threshold`.
    extra
        Free JSON-able metadata (corpus, tag, results...).

    Examples
    --------
    Re-package the model and head of a tiny package (random backbone: stored in ``backbone/``):

    >>> import tempfile
    >>> from elp.testing import make_tiny_package
    >>> source = load_package(make_tiny_package(tempfile.mkdtemp(), task="classify"))
    >>> directory = write_package(Path(tempfile.mkdtemp()) / "package", source.model, source.head,
    ...                           task="classify", labels=source.labels, backbone_pretrained=False)
    >>> sorted(path.name for path in directory.iterdir())
    ['adapters.json', 'adapters.safetensors', 'backbone', 'labels.txt', 'manifest.json', 'package.json']
    >>> load_package(directory).labels
    ['angry', 'happy', 'neutral']
    """
    if not isinstance(task, Task):  # a kind: its default options
        try:
            task = task_class(task)()
        except ValueError:
            raise PackageError(f"task={task!r} is not one of {TASKS}") from None
    directory = Path(directory)
    module_source = None
    if head_spec is None:
        try:
            head_spec, module_source = head_spec_of(head)
        except HeadSpecError as err:
            raise PackageError(str(err)) from None
    elif problems := check_head_spec(head_spec):
        raise PackageError(f"head_spec: {problems[0]}")
    save_adapters(model, directory, head=head)
    for name in (TOKENS_FILE, BPE_MODEL, LABELS_FILE, MANIFEST_FILE):
        (directory / name).unlink(missing_ok=True)
    if (directory / HEAD_MODULE_DIR).exists():
        shutil.rmtree(directory / HEAD_MODULE_DIR)
    if module_source is not None:  # a user's head: its module travels with the package
        (directory / HEAD_MODULE_DIR).mkdir()
        shutil.copyfile(module_source, directory / head_spec["module"]["file"])
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
        # equals weights_sha256 unless the method trains the backbone's own weights (``full``):
        # then the stored weights are trained ones and never serve another package
        backbone_entry["stored_sha256"] = _store_backbone(backbone, directory / BACKBONE_DIR)
        backbone_entry["source"] = None
    elif (directory / BACKBONE_DIR).exists():
        shutil.rmtree(directory / BACKBONE_DIR)
    config = {
        "format_version": PACKAGE_FORMAT_VERSION, "task": task.kind, "task_options": task.package_options(),
        "method": model.method.name, "head": head_spec, "inventory": inventory, "backbone": backbone_entry,
        "encoder_sha256": encoder_fingerprint(model),
        "frontend": {"sample_rate": SAMPLE_RATE, "channels": "mean of all channels",
                     "normalize_waveform": bool(backbone.normalize_waveform)},
        "extra": dict(extra or {}),
    }
    if task.threshold_key is not None:
        config[task.threshold_key] = None  # set by calibrate_threshold
    _write_json(directory / PACKAGE_FILE, config)
    if sv_trials is not None:
        calibrate_threshold(directory, *sv_trials)
    write_manifest(directory)
    return directory


def record_task_options(directory: str | os.PathLike, task: Task) -> dict:
    """Record ``task``'s prediction options in a package and return them (stage 4's settings).

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
    _refuse_damaged(directory)
    if config["task"] != task.kind:  # kinds compared as values: no kind-specific code
        raise PackageError(f"{directory} is a {config['task']!r} package, not a {task.kind!r} one")
    config["task_options"] = task.package_options()
    _write_json(directory / PACKAGE_FILE, config)
    write_manifest(directory)
    return config["task_options"]


def calibrate_threshold(directory: str | os.PathLike, scores, labels, *, source: str = "dev trials") -> dict:
    """Set a package's decision threshold to the EER threshold of the given trials.

    Only kinds with a decision threshold have one (speaker verification). The scores and
    labels are stored in ``calibration.safetensors``; ``package.json`` gets the kind's
    ``threshold_key`` entry, ``sv = {"threshold", "eer", "num_trials", "source"}``, which is
    returned. A trial is accepted when its score is above the threshold (as
    :func:`elp.eval.scoring.equal_error_rate` counts).

    Parameters
    ----------
    scores : Sequence[float] | numpy.ndarray | torch.Tensor
        Cosine scores [N] of dev trials (not the test trials that are reported).
    labels : Sequence[int] | numpy.ndarray | torch.Tensor
        [N], 1 = target, 0 = non-target.
    source
        What the trials were (recorded).

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
    _refuse_damaged(directory)
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
    write_manifest(directory)
    return config[key]


def _refuse_damaged(directory: Path) -> None:
    """Refuse to change a package that is not intact: a rewritten manifest must not seal a damaged file."""
    problems = manifest_problems(directory)
    if problems:
        raise PackageError(f"{problems[0]}; not changing a damaged package")


def package_task(config: dict, directory: str | os.PathLike = "") -> Task:
    """Return the task of a package (:func:`elp.tasks.task_from_package`), with a package error.

    Raises
    ------
    PackageError
        For an unknown kind or options the task does not take (naming ``directory``'s ``package.json``).
    """
    try:
        return task_from_package(config)
    except (ValueError, TypeError) as err:
        raise PackageError(f"{Path(directory) / PACKAGE_FILE}: {err}") from err


def _clean_backbone_state(backbone: SSLBackbone) -> dict[str, torch.Tensor]:
    """Return the HF model's state with LoRA parametrizations undone (original frozen weights)."""
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
    config : dict
        ``package.json``.
    model, head
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
        """Return the task kind (a key of :data:`elp.tasks.TASKS`)."""
        return self.task.kind

    @property
    def threshold(self) -> float | None:
        """Return the calibrated decision threshold (None when the kind has none or it is not calibrated)."""
        key = self.task.threshold_key
        entry = self.config.get(key) if key else None
        return None if not entry else float(entry["threshold"])

    @property
    def name(self) -> str:
        """Return a short label for printing (the directory's name, or its parent's for ``adapters``)."""
        name = self.directory.name
        return self.directory.parent.name if name in ("adapters", "package") and self.directory.parent.name else name

    def to(self, device) -> Package:
        self.model.to(device)
        self.head.to(device)
        return self


def read_package_config(directory: str | os.PathLike) -> dict:
    """Read ``package.json`` of a package directory, checked field by field (one-line errors).

    Examples
    --------
    >>> read_package_config("/nonexistent")
    Traceback (most recent call last):
    ...
    elp.serve.package.PackageNotFoundError: /nonexistent: no such model package directory; pass the directory stage 3 wrote (exp/<tag>/adapters, or exp/<tag>/<task>/adapters for each task of a joint run)
    """
    config, problems = _parse_config(_package_file(directory))
    if problems:
        raise PackageError(problems[0])
    return config


#: where stage 3 writes packages, in the hint for a directory that is not one
PACKAGE_LAYOUTS = "exp/<tag>/adapters, or exp/<tag>/<task>/adapters for each task of a joint run"
#: packages named at most in one listing (:func:`packages_below`)
LISTED_PACKAGES = 8


def packages_below(directory: str | os.PathLike) -> list[str]:
    """Return the packages stage 3 wrote below a run directory, relative to it, sorted.

    ``adapters`` (a single-task run, ``exp/<tag>``) and ``<name>/adapters`` (a joint run's
    tasks, ``exp/<tag>/<task>``, or a recipe's folds, ``exp/<tag>/fold<k>``): the directories
    among them that hold a ``package.json``.

    Examples
    --------
    >>> import tempfile
    >>> from elp.testing import make_tiny_package
    >>> run = Path(tempfile.mkdtemp())
    >>> _ = [make_tiny_package(run / task / "adapters", task="classify") for task in ("ic", "er")]
    >>> packages_below(run), packages_below(run / "ic"), packages_below(run / "none")
    (['er/adapters', 'ic/adapters'], ['adapters'], [])
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [Path("adapters")] if (directory / "adapters" / PACKAGE_FILE).is_file() else []
    try:
        found += sorted(child.relative_to(directory) / "adapters" for child in directory.iterdir()
                        if (child / "adapters" / PACKAGE_FILE).is_file())
    except OSError:  # an unreadable directory lists nothing
        pass
    return [path.as_posix() for path in found]


def _run_listing(directory: Path, packages: list[str], subject: str | None = None) -> str:
    """One-line clause naming the packages below ``directory``, the layout they show, and how to pass one.

    ``subject`` names ``directory`` in the clause (default: its path).
    """
    shown = ", ".join(packages[:LISTED_PACKAGES])
    if len(packages) > LISTED_PACKAGES:
        shown += f" and {len(packages) - LISTED_PACKAGES} more"
    noun = "package" if len(packages) == 1 else "packages"
    below = [name.split("/")[0] for name in packages if name != "adapters"]  # task or fold directories
    layout = ""
    if below and all(re.fullmatch(r"fold\d+", name) for name in below):
        layout = " (one package per fold)"
    elif below:
        layout = " (a joint run: one package per task)"
    advice = f"pass it: {directory / packages[0]}" if len(packages) == 1 else \
        f"pass one of them, e.g. {directory / packages[0]}"
    return f"{subject or directory} holds the {noun} {shown}{layout}; {advice}"


def _missing_package_message(directory: Path) -> str:
    """The one-line message for ``directory`` that is not there: the packages beside it, or where packages are."""
    packages = packages_below(directory.parent) if directory.parent != directory else []
    if packages:
        return f"{directory}: no such model package directory; {_run_listing(directory.parent, packages)}"
    return f"{directory}: no such model package directory; pass the directory stage 3 wrote ({PACKAGE_LAYOUTS})"


def _run_directory_message(directory: Path) -> str | None:
    """The one-line message for ``directory`` without a package of its own but with packages below
    it (a run directory, ``exp/<tag>``), or None when it is not one."""
    if (directory / PACKAGE_FILE).exists():
        return None
    packages = packages_below(directory)
    if not packages:
        return None
    return f"{directory} is a run directory, not a model package: {_run_listing(directory, packages, 'it')}"


def _package_file(directory: str | os.PathLike) -> Path:
    """``<directory>/package.json``; a missing directory or file is a :class:`PackageNotFoundError`.

    A run directory (``exp/<tag>``) or a missing directory beside packages gets the packages
    listed (:func:`packages_below`), so the caller can pass one of them.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PackageNotFoundError(_missing_package_message(directory))
    path = directory / PACKAGE_FILE
    if not path.exists():
        if (message := _run_directory_message(directory)) is not None:
            raise PackageNotFoundError(message)
        raise PackageNotFoundError(f"{path} is missing: {directory} is an adapter export without a package; "
                                   "rerun stage 3 (or call elp.serve.package.write_package) to write it")
    return path


def _parse_config(path: Path) -> tuple[dict | None, list[str]]:
    """Return ``package.json`` and every problem of its fields (one line each, naming file and field)."""
    if path.is_symlink():
        return None, [f"{path}: is a link; a package holds only its own files"]
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return None, [f"{path}: not UTF-8 text; the package is damaged: repackage the model (stage 3)"]
    except json.JSONDecodeError as err:
        return None, [f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); the package "
                      "is damaged: repackage the model (stage 3)"]
    if not isinstance(config, dict):
        return None, [f"{path}: holds a JSON {type(config).__name__}, not an object"]
    if config.get("format_version") != PACKAGE_FORMAT_VERSION:
        return None, [f"{path}: format_version {config.get('format_version')!r} is not supported "
                      f"(this elp reads {PACKAGE_FORMAT_VERSION})"]
    problems = _field_problems(path, config, CONFIG_SCHEMA, "")
    if isinstance(config.get("backbone"), dict):
        problems += _field_problems(path, config["backbone"], BACKBONE_SCHEMA, "backbone.")
        stored = config["backbone"].get("stored")
        if isinstance(stored, str) and not _is_plain_name(stored):
            problems.append(f"{path}: field 'backbone.stored' = {stored!r} must name a folder inside the package")
    if isinstance(config.get("head"), dict) or "head" not in config:
        problems += [f"{path}: {problem}" for problem in check_head_spec(config.get("head"))]
    for key, entry in config.items():  # calibration files (the threshold entries) stay inside
        if isinstance(entry, dict) and entry.get("file") is not None and not _is_plain_name(entry["file"]):
            problems.append(f"{path}: field '{key}.file' = {entry['file']!r} must name a file inside the package")
    if isinstance(config.get("inventory"), dict):
        for key, value in config["inventory"].items():
            if isinstance(value, str) and not _is_plain_name(value):
                problems.append(f"{path}: field 'inventory.{key}' = {value!r} must name a file inside the package")
    if not problems and isinstance(config.get("task"), str):
        try:
            task_from_package(config)
        except (ValueError, TypeError) as err:
            problems.append(f"{path}: {err}")
    return (config if not problems else None), problems


def _field_problems(path: Path, data: dict, schema: dict, prefix: str) -> list[str]:
    problems = []
    for key, types in schema.items():
        if key not in data and key in OPTIONAL_FIELDS:
            continue
        if key not in data:
            problems.append(f"{path}: field '{prefix}{key}' is missing; the package is damaged or from another "
                            "tool: repackage the model (stage 3)")
        elif not isinstance(data[key], types) or (isinstance(data[key], bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            problems.append(f"{path}: field '{prefix}{key}' must be {names}, got {type(data[key]).__name__}")
    return problems


def _is_plain_name(name) -> bool:
    """Return whether ``name`` is a relative path inside the package: no absolute path, ``..``, home or drive."""
    if not isinstance(name, str) or not name or "\\" in name or ":" in name or "\x00" in name:
        return False
    parts = Path(name).parts
    return not Path(name).is_absolute() and ".." not in parts and not name.startswith("~")


def load_package_backbone(directory: str | os.PathLike, backbone_source: str | None = None,
                          config: dict | None = None) -> SSLBackbone:
    """Load the frozen backbone a package was trained on, checked against its weights hash.

    ``backbone_source`` is a local checkpoint directory or hub id; default: the package's
    stored backbone, else the recorded source.

    Raises
    ------
    BackboneHashMismatchError
        The weights found are not the ones the package was trained on.
    PackageError
        No backbone at the source (naming where it looked and how to pass another).
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
                           f"(--backbone-source) the checkpoint directory of {entry['name']!r}")
    name = entry["name"] if entry["name"] in BACKBONES else source
    try:
        backbone = SSLBackbone.from_pretrained(name, source=source)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PackageError(
            f"{directory}: no backbone {entry['name']!r} at {source} ({first[:160]}); pass the checkpoint it was "
            "trained on: backbone_source=DIR_OR_HUB_ID (elp infer/verify: --backbone-source DIR_OR_HUB_ID)") from None
    backbone.name = entry["name"]
    if backbone.weights_sha256 != expected:
        raise BackboneHashMismatchError(
            f"backbone weights from {source} (sha256 {backbone.weights_sha256[:12]}...) are not the ones "
            f"{directory} was trained on (sha256 {expected[:12]}...); pass backbone_source= the "
            f"checkpoint of {entry['name']!r} used in training")
    backbone.weights_sha256 = entry["weights_sha256"]  # identity of the frozen weights (as trained)
    return backbone


def stores_frozen_backbone(config: dict) -> bool:
    """Return whether the package can lend its backbone to others.

    True when it names a source, or the weights it stores are the frozen ones it was trained on
    (not those ``full`` fine-tuning changed).

    Examples
    --------
    >>> stores_frozen_backbone({"backbone": {"stored": "backbone", "weights_sha256": "a", "stored_sha256": "b"}})
    False
    """
    entry = config["backbone"]
    return not entry.get("stored") or entry.get("stored_sha256", entry["weights_sha256"]) == entry["weights_sha256"]


def build_model(config: dict, backbone: SSLBackbone, directory: str | os.PathLike) -> AdaptedSSL:
    """Build the package's untrained :class:`AdaptedSSL` on ``backbone`` (method, options: ``adapters.json``)."""
    export = json.loads((Path(directory) / "adapters.json").read_text())
    options = dict(export["options"])
    options["lora_targets"] = tuple(options.get("lora_targets", ("q_proj", "v_proj")))
    return AdaptedSSL(backbone, export["method"], **options)


def build_head(config: dict, directory: str | os.PathLike = ".", trust_head_module: str | None = None) -> nn.Module:
    """Build the package's head class with its recorded options (untrained).

    Only the heads of :data:`elp.serve.head_registry.HEAD_CLASSES` (with checked options), or a
    user head whose module the caller trusts by name (``trust_head_module``: ``head.module.name``),
    are built; the head is built on the meta device first and its tensor shapes compared with
    ``adapters.safetensors`` (when there is one) before memory is allocated.

    Raises
    ------
    PackageError
        An unknown class or option, an untrusted or changed user module, shapes that differ.

    Examples
    --------
    Packages of earlier releases name the heads by their former module (:data:`LEGACY_HEAD_CLASSES`):

    >>> build_head({"head": {"class": "elp.heads.CTCHead", "options": {"in_dim": 4, "vocab_size": 5}}})
    CTCHead(
      (proj): Linear(in_features=4, out_features=5, bias=True)
    )
    """
    directory = Path(directory)
    spec = config.get("head")
    problems = check_head_spec(spec)
    if problems:
        raise PackageError(f"{directory / PACKAGE_FILE}: {problems[0]}")
    try:
        cls = head_class(spec, directory, trust_head_module)
        with torch.device("meta"):
            skeleton = cls(**spec["options"])
    except HeadSpecError as err:
        raise PackageError(str(err)) from None
    except (TypeError, ValueError) as err:
        raise PackageError(f"{directory / PACKAGE_FILE}: head.options do not fit {spec['class']} ({err})") from None
    stored = _stored_shapes(directory)
    if stored is not None:
        wanted = {f"head.{k}": tuple(v.shape) for k, v in skeleton.state_dict().items()}
        held = {k: v for k, v in stored.items() if k.startswith("head.")}
        for key in sorted(wanted.keys() | held.keys()):
            if wanted.get(key) != held.get(key):
                raise PackageError(
                    f"{directory / WEIGHTS_FILE}: head tensor {key!r} is {held.get(key)} but head.options of "
                    f"{PACKAGE_FILE} make it {wanted.get(key)}; the package is inconsistent: repackage the model")
    return cls(**spec["options"])


def _stored_shapes(directory: Path) -> dict[str, tuple[int, ...]] | None:
    """Return the tensor shapes of ``adapters.safetensors`` from its header (None: no such file)."""
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        return None
    shapes, _ = _tensor_header(path)
    return shapes


def _tensor_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Return (shapes, dtypes) of a safetensors file, from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}
            return ({key: tuple(piece.get_shape()) for key, piece in slices.items()},
                    {key: piece.get_dtype() for key, piece in slices.items()})
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PackageError(f"{path}: not a readable safetensors file ({first[:160]}); repackage the model") from None


def dtype_problems(directory: str | os.PathLike) -> list[str]:
    """Return the float tensors of ``adapters.safetensors`` that are not float32 (one line each).

    A package holds float32 tensors (what training keeps); another float type is refused
    rather than silently converted.
    """
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        return []
    _, dtypes = _tensor_header(path)
    return [f"{path}: tensor {key!r} is {dtype}, not float32; re-export the model in float32 "
            "(e.g. load it, call .float() and write_package)"
            for key, dtype in sorted(dtypes.items()) if dtype in ("F16", "BF16", "F64", "F8_E4M3", "F8_E5M2")]


def check_integrity(directory: str | os.PathLike) -> None:
    """Refuse a package whose files differ from its manifest or that links outside itself.

    A package without a manifest (earlier releases) loads with a one-line warning naming the
    command that adds one.

    Raises
    ------
    PackageError
        Naming the first file that differs (and how many problems there are in all).
    """
    directory = Path(directory)
    problems = manifest_problems(directory)
    if problems:
        more = f" ({len(problems) - 1} more problems: elp inspect --check --package {directory})" \
            if len(problems) > 1 else ""
        raise PackageError(problems[0] + more)
    if not (directory / MANIFEST_FILE).exists():
        logger.warning("%s has no %s (written by an earlier elp): its integrity cannot be checked; add one with "
                       "elp inspect --check --write-manifest --package %s", directory, MANIFEST_FILE, directory)


def check_package(directory: str | os.PathLike) -> list[str]:
    """Return every problem of a package, one line each, without loading its backbone.

    Integrity (:func:`elp.serve.integrity.manifest_problems`), ``package.json`` fields and head,
    ``adapters.json``, tensor types, the inventory files, and where the backbone is.

    Examples
    --------
    >>> import tempfile
    >>> from elp.testing import make_tiny_package
    >>> check_package(make_tiny_package(tempfile.mkdtemp(), task="asr"))
    []
    """
    directory = Path(directory)
    if not directory.is_dir():
        return [_missing_package_message(directory)]
    if (message := _run_directory_message(directory)) is not None:
        return [message]
    problems = manifest_problems(directory)
    if not (directory / MANIFEST_FILE).exists():
        problems.append(f"{directory / MANIFEST_FILE}: missing (package of an earlier elp); add it with "
                        f"elp inspect --check --write-manifest --package {directory}")
    path = directory / PACKAGE_FILE
    if not path.is_file():
        return problems + [f"{path}: missing; rerun stage 3 to write the package"]
    config, config_problems = _parse_config(path)
    problems += config_problems
    try:
        read_export_config(directory)
    except (OSError, ValueError) as err:
        problems.append(str(err))
    try:
        problems += dtype_problems(directory)
    except PackageError as err:
        problems.append(str(err))
    if config is None:
        return problems
    module = config["head"].get("module")
    if module is None:
        try:
            build_head(config, directory)
        except PackageError as err:
            problems.append(str(err))
    elif (directory / module["file"]).is_file() and file_sha256(directory / module["file"]) != module["sha256"]:
        problems.append(f"{directory / module['file']}: the head module file changed since packaging (SHA-256 "
                        "differs from head.module.sha256)")
    try:
        load_inventory(directory, config)
    except (OSError, ValueError, KeyError, IndexError, TypeError, RuntimeError) as err:
        problems.append(f"{directory}: inventory unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
    entry = config["backbone"]
    if entry.get("stored"):
        stored = directory / entry["stored"]
        for name in ("config.json", "model.safetensors"):
            if not (stored / name).is_file():
                problems.append(f"{stored / name}: missing (the package stores its backbone there)")
    elif isinstance(entry.get("source"), str) and entry["source"].startswith(("/", ".")) \
            and not Path(entry["source"]).is_dir():
        problems.append(f"{path}: backbone.source {entry['source']} does not exist; pass the checkpoint with "
                        "--backbone-source DIR (backbone_source= in Python)")
    return problems


def load_weights(directory: str | os.PathLike, model: AdaptedSSL, head: nn.Module) -> None:
    """Load the package's learnable tensors onto ``model`` and ``head`` (both set to eval mode)."""
    load_adapters(model, directory, head=head)
    model.eval()
    head.eval()


def load_inventory(directory: str | os.PathLike, config: dict):
    """Return (tokenizer or None, class names or None) of the package, read by its task."""
    return package_task(config, directory).load_package_inventory(Path(directory), config["inventory"])


def load_package(directory: str | os.PathLike, backbone_source: str | None = None,
                 device: str | torch.device = "cpu", trust_head_module: str | None = None) -> Package:
    """Rebuild a trained model and head from a package.

    Everything is checked before anything is built: the manifest, ``package.json``, the head
    class and options, tensor types.

    Parameters
    ----------
    backbone_source
        Local checkpoint directory or hub id of the backbone (default: the stored one or the
        recorded source); its weights must hash to the recorded ``weights_sha256``.
    trust_head_module
        The module of a user head the package holds (``head.module.name``, e.g.
        ``"local.my_head"``): its code runs only when named here.
    """
    directory = Path(directory)
    config = check_loadable(directory)
    build_head(config, directory, trust_head_module)  # an untrusted head fails before the backbone loads
    backbone = load_package_backbone(directory, backbone_source, config)
    model = build_model(config, backbone, directory)
    head = build_head(config, directory, trust_head_module)
    load_weights(directory, model, head)
    tokenizer, labels = load_inventory(directory, config)
    return Package(directory, config, model, head, tokenizer, labels, config.get("extra", {})).to(device)


def check_loadable(directory: str | os.PathLike) -> dict:
    """Run the checks every load runs first (integrity, ``package.json``, tensor types); return ``package.json``."""
    directory = Path(directory)
    _package_file(directory)  # a missing directory or file: its own error
    check_integrity(directory)  # before any file is parsed: a damaged file is named as such
    config = read_package_config(directory)
    problems = dtype_problems(directory)
    if problems:
        raise PackageError(problems[0])
    return config


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
