"""Which head classes a model package may name, and with which options.

A package never names arbitrary code: ``package.json``'s ``head.class`` must be a key of
:data:`HEAD_CLASSES` (the project's own heads, with each constructor option's type and range),
or a user's head whose module file the package holds (``head.module``: the file, copied into
the package, and its SHA-256). Loading a user head requires the caller to name its module
(``trust_head_module="local.my_head"``, ``--trust-head-module local.my_head``), in the spirit
of Hugging Face's ``trust_remote_code``; a module file whose hash differs is refused.

Every check runs before any object is built, and a head is first built on the meta device so
that its tensor shapes can be compared with the stored ones before memory is allocated.

Examples
--------
>>> check_head_spec({"class": "elp.core.heads.CTCHead", "options": {"in_dim": 4, "vocab_size": 5}})
[]
>>> check_head_spec({"class": "elp.serve.package.save_file", "options": {"filename": "/etc/passwd"}})
["head.class 'elp.serve.package.save_file' is not a head elp knows (elp.core.heads.AAMSoftmaxClassifier, elp.core.heads.CTCHead, elp.core.heads.PooledClassifier, elp.core.heads.SpeakerEmbeddingHead) and the package holds no head module"]
>>> check_head_spec({"class": "elp.core.heads.CTCHead", "options": {"in_dim": 4, "vocab_size": 10**9}})
['head.options.vocab_size = 1000000000 is outside 1..65536']
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from elp.core.heads import AAMSoftmaxClassifier, CTCHead, PooledClassifier, SpeakerEmbeddingHead

#: the largest dimension a package may ask a head for
MAX_DIM = 65536
#: where a user head's module file is copied inside a package
HEAD_MODULE_DIR = "head_module"


@dataclass(frozen=True)
class Option:
    """One constructor option: its type (``int``, ``float``, ``bool`` or ``str``) and allowed values."""

    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    required: bool = True

    def problem(self, value) -> str | None:
        """Return why ``value`` is refused (None when it is fine)."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not self.kind:
            return f"must be {self.kind.__name__}, got {type(value).__name__}"
        if self.kind is float and not math.isfinite(value):
            return "is not finite"
        if self.low is not None and not self.low <= value <= self.high:
            return f"is outside {self.low:g}..{self.high:g}"
        if self.choices is not None and value not in self.choices:
            return f"is not one of {', '.join(self.choices)}"
        return None


DIM = Option(int, 1, MAX_DIM)


def _optional(option: Option) -> Option:
    return Option(option.kind, option.low, option.high, option.choices, required=False)


#: dotted name -> (class, constructor options); the only classes a package builds without opt-in
HEAD_CLASSES: dict[str, tuple[type[nn.Module], dict[str, Option]]] = {
    "elp.core.heads.CTCHead": (CTCHead, {"in_dim": DIM, "vocab_size": DIM}),
    "elp.core.heads.PooledClassifier": (PooledClassifier, {"in_dim": DIM, "num_classes": DIM,
                                                           "hidden_dim": _optional(DIM)}),
    "elp.core.heads.SpeakerEmbeddingHead": (SpeakerEmbeddingHead, {
        "in_dim": DIM, "embed_dim": _optional(DIM),
        "pooling": Option(str, choices=("mean", "attentive"), required=False)}),
    "elp.core.heads.AAMSoftmaxClassifier": (AAMSoftmaxClassifier, {
        "embed_dim": DIM, "num_speakers": DIM, "margin": Option(float, 0.0, 1.0, required=False),
        "scale": Option(float, 1.0, 1000.0, required=False)}),
}
#: head class names that packages of earlier elp releases recorded -> their current name
LEGACY_HEAD_NAMES = {"elp.heads.CTCHead": "elp.core.heads.CTCHead",
                     "elp.heads.PooledClassifier": "elp.core.heads.PooledClassifier",
                     "elp.heads.SpeakerEmbeddingHead": "elp.core.heads.SpeakerEmbeddingHead"}


class HeadSpecError(ValueError):
    """``package.json``'s ``head`` names a class or options a package may not use."""


def registered_name(cls: type) -> str | None:
    """Return the :data:`HEAD_CLASSES` name of a class (None for a user's head).

    Examples
    --------
    >>> registered_name(CTCHead), registered_name(nn.Linear)
    ('elp.core.heads.CTCHead', None)
    """
    return next((name for name, (known, _) in HEAD_CLASSES.items() if known is cls), None)


def user_option_problem(value) -> str | None:
    """Return why a user head's option value is refused (None when it is fine).

    Allowed: int (|x| <= 65536), finite float, bool, None and short strings that are not paths.

    Examples
    --------
    >>> user_option_problem(64), user_option_problem("../../home/me/.ssh/id_rsa")
    (None, 'looks like a path (options of a packaged head are never paths)')
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_DIM else f"is outside -{MAX_DIM}..{MAX_DIM}"
    if isinstance(value, float):
        return None if math.isfinite(value) else "is not finite"
    if isinstance(value, str):
        if len(value) > 64:
            return "is a string longer than 64 characters"
        if any(ch in value for ch in "/\\~\x00") or value.startswith(".") or ":" in value:
            return "looks like a path (options of a packaged head are never paths)"
        return None
    return f"must be int, float, bool, str or null, got {type(value).__name__}"


def check_head_spec(spec) -> list[str]:
    """Return every problem of a ``head`` entry of ``package.json``, one line each (empty: it may be built).

    ``spec`` is ``{"class": dotted name, "options": {...}}``, plus ``module`` for a user head.
    """
    if not isinstance(spec, dict):
        return [f"head must be an object, got {type(spec).__name__}"]
    name, options = spec.get("class"), spec.get("options")
    problems = []
    if not isinstance(name, str):
        problems.append("head.class is missing or not a string")
    if not isinstance(options, dict):
        problems.append("head.options is missing or not an object")
    if problems:
        return problems
    name = LEGACY_HEAD_NAMES.get(name, name)
    if name in HEAD_CLASSES:
        declared = HEAD_CLASSES[name][1]
        for key, value in options.items():
            if key not in declared:
                problems.append(f"head.options.{key} is not an option of {name} (it takes {', '.join(declared)})")
            elif (why := declared[key].problem(value)) is not None:
                problems.append(f"head.options.{key} = {value!r} {why}")
        problems += [f"head.options.{key} is missing" for key, option in declared.items()
                     if option.required and key not in options]
        return problems
    module = spec.get("module")
    if not isinstance(module, dict):
        known = ", ".join(sorted(HEAD_CLASSES))
        return [f"head.class {name!r} is not a head elp knows ({known}) and the package holds no head module"]
    problems += module_entry_problems(name, module)
    for key, value in options.items():
        if (why := user_option_problem(value)) is not None:
            problems.append(f"head.options.{key} = {value!r} {why}")
    return problems


def module_entry_problems(name: str, module: dict) -> list[str]:
    """Return the problems of a user head's ``head.module`` entry (``name``, ``file``, ``sha256``)."""
    problems = []
    module_name, file, digest = module.get("name"), module.get("file"), module.get("sha256")
    if not isinstance(module_name, str) or not module_name or not name.startswith(module_name + "."):
        problems.append(f"head.module.name {module_name!r} is not the module of head.class {name!r}")
    elif module_name.split(".")[0] == "elp":
        problems.append(f"head.module.name {module_name!r}: elp's own modules are never loaded from a package")
    if not isinstance(file, str) or Path(file).parts[:1] != (HEAD_MODULE_DIR,) or len(Path(file).parts) != 2 \
            or not file.endswith(".py"):
        problems.append(f"head.module.file {file!r} must be {HEAD_MODULE_DIR}/<name>.py")
    if not isinstance(digest, str) or len(digest) != 64:
        problems.append("head.module.sha256 is missing or not a SHA-256 hex digest")
    return problems


def file_sha256(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def head_class(spec: dict, directory: Path, trust_head_module: str | None = None) -> type[nn.Module]:
    """Return the class a checked ``head`` entry names: a registered head, or a trusted user head.

    ``directory`` is the package (it holds a user head's module file); ``trust_head_module`` the
    user module the caller trusts (``head.module.name``).

    Raises
    ------
    HeadSpecError
        A user head without the opt-in, or whose module file is missing or changed.
    """
    name = LEGACY_HEAD_NAMES.get(spec["class"], spec["class"])
    if name in HEAD_CLASSES:
        return HEAD_CLASSES[name][0]
    module = spec["module"]
    if trust_head_module != module["name"]:
        raise HeadSpecError(
            f"{directory}: the head {name} runs code from the package's {module['file']}; if you trust it, pass "
            f"trust_head_module={module['name']!r} (elp infer/verify: --trust-head-module {module['name']})")
    path = directory / module["file"]
    if path.is_symlink() or not path.is_file():
        raise HeadSpecError(f"{path}: the head module file is missing (or a link); repackage the model (stage 3)")
    if file_sha256(path) != module["sha256"]:
        raise HeadSpecError(f"{path}: the head module file changed since packaging (SHA-256 differs from "
                            "head.module.sha256); repackage the model (stage 3)")
    unique = f"_elp_package_head_{module['sha256'][:16]}"
    loaded = sys.modules.get(unique)
    if loaded is None:
        loader = importlib.util.spec_from_file_location(unique, path)
        loaded = importlib.util.module_from_spec(loader)
        sys.modules[unique] = loaded
        try:
            loader.loader.exec_module(loaded)
        except Exception as err:
            del sys.modules[unique]
            raise HeadSpecError(f"{path}: importing the head module failed ({type(err).__name__}: {err})") from None
    cls = getattr(loaded, name[len(module["name"]) + 1:], None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise HeadSpecError(f"{path} defines no nn.Module {name[len(module['name']) + 1:]!r} (head.class)")
    return cls


def head_options(head: nn.Module) -> dict:
    """Return the constructor options of a head: its ``config`` dict, else the ``__init__`` arguments
    read back from attributes of the same name.

    Raises
    ------
    HeadSpecError
        When an argument cannot be found on the head.

    Examples
    --------
    >>> class Small(nn.Module):
    ...     def __init__(self, in_dim, hidden=4):
    ...         super().__init__()
    ...         self.in_dim, self.hidden = in_dim, hidden
    >>> head_options(Small(8))
    {'in_dim': 8, 'hidden': 4}
    """
    config = getattr(head, "config", None)
    if isinstance(config, dict):
        return dict(config)
    options = {}
    for parameter in list(inspect.signature(type(head).__init__).parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if not hasattr(head, parameter.name):
            raise HeadSpecError(
                f"head {type(head).__name__}: cannot record its constructor argument {parameter.name!r}; keep it "
                f"as an attribute (self.{parameter.name} = {parameter.name}) or record self.config = "
                "dict(...) of all arguments in __init__")
        options[parameter.name] = getattr(head, parameter.name)
    return options


def head_spec_of(head: nn.Module) -> tuple[dict, Path | None]:
    """Return the ``head`` entry of a package for ``head`` and, for a user head, its module file to copy.

    Raises
    ------
    HeadSpecError
        For an option a package cannot hold, an elp class that is no registered head, or a
        class without a module file.
    """
    cls = type(head)
    name = registered_name(cls)
    source = None
    if name is None:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if cls.__module__.split(".")[0] == "elp" or "." in cls.__qualname__:
            raise HeadSpecError(f"head class {name} cannot be packaged: use a class of elp.core.heads or a "
                                "top-level class of your recipe's local/ module")
        module = sys.modules.get(cls.__module__)
        source = Path((inspect.getsourcefile(module) if module is not None else None) or "")
        installed = any(part in ("site-packages", "dist-packages") for part in source.parts) or \
            source.is_relative_to(Path(sys.base_prefix)) or source.is_relative_to(Path(sys.prefix))
        if not source.is_file() or installed:
            raise HeadSpecError(f"head class {name} cannot be packaged: use a class of elp.core.heads, or define "
                                "your head in your recipe's local/<module>.py")
    spec = {"class": name, "options": head_options(head)}
    if source is not None:
        spec["module"] = {"name": cls.__module__, "file": f"{HEAD_MODULE_DIR}/{source.name}",
                          "sha256": file_sha256(source)}
    problems = check_head_spec(spec)
    if problems:
        raise HeadSpecError(f"head {name}: {problems[0]}")
    return spec, source
