"""Reading a recipe's HyperPyYAML file: the full object graph, or a peek at its values.

A recipe's ``conf/train.yaml`` *is* the recipe: it instantiates the backbone, the adapted
model, the head, the loss, the optimizer class, the learning-rate scheduler, the checkpointer
and names the Brain class (SpeechBrain's convention). Two ways to read it:

* :func:`load_hparams` builds every object (training, inference);
* :func:`peek_hparams` resolves ``!ref``/``!include:`` and overrides but builds nothing:
  tagged nodes (``!new:``, ``!name:``, ``!apply:``) come back as :class:`Tagged`. Stages that
  need only values (the inventory of stage 2, scoring in stage 5, the shell stages asking which
  data sets exist) use it, so they never load a backbone. :func:`build_node` then builds one
  chosen node (e.g. the ``task`` object) on its own.

Overrides are applied in order: override files (e.g. a recipe's ``conf/mini.yaml``) first,
then ``--key value`` pairs from the command line.

Examples
--------
>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> path = os.path.join(d, "hp.yaml")
>>> _ = open(path, "w").write("n: 3\\nlin: !new:torch.nn.Linear [!ref <n>, 2]\\n")
>>> peek_hparams(path, {"n": 4})["lin"]
Tagged(tag='!new:torch.nn.Linear', value=[4, 2])
>>> load_hparams(path, {"n": 4})["lin"].in_features
4
>>> build_node(peek_hparams(path)["lin"]).in_features
3
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references


@dataclass(frozen=True)
class Tagged:
    """A node of a peeked hparams file that would build an object.

    ``tag`` is the HyperPyYAML tag (``"!new:elp.tasks.classify.UtteranceClassification"``);
    ``value`` holds its arguments: a dict (keyword), a list (positional) or a scalar.
    """

    tag: str
    value: Any

    @property
    def target(self) -> str:
        """The dotted path after the tag's colon (``elp.tasks...``)."""
        return self.tag.split(":", 1)[1] if ":" in self.tag else ""


def read_overrides(overrides_files: list[str | os.PathLike] | None = None,
                   cli_overrides: dict | str | None = None) -> dict:
    """Merge override files and command-line overrides into one dict.

    ``overrides_files`` are YAML mappings (values may use ``!ref``), applied in order;
    ``cli_overrides`` are SpeechBrain's parsed ``--key value`` pairs (YAML text or a dict),
    applied last. Nested mappings merge key by key: a later source changes only the keys it
    names.

    Examples
    --------
    >>> read_overrides(None, "lr: {head: 0.1}")
    {'lr': {'head': 0.1}}
    """
    merged: dict = {}
    yaml = ruamel.yaml.YAML()
    for path in overrides_files or []:
        with open(path, encoding="utf-8") as fin:
            content = yaml.load(fin) or {}
        if not isinstance(content, dict):
            raise ValueError(f"{path}: an overrides file must be a mapping of hparam: value")
        _deep_update(merged, content)
    if cli_overrides:
        if isinstance(cli_overrides, str):
            cli_overrides = yaml.load(cli_overrides) or {}
        _deep_update(merged, cli_overrides)
    return merged


def _tag_of(node: Any) -> str | None:
    """The explicit YAML tag of a ruamel node (``None`` for plain values)."""
    return getattr(getattr(node, "tag", None), "value", None)


def _deep_update(target: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and not _tag_of(value) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _check_keys(hparams_file: str | os.PathLike, overrides: dict, allowed_new=()) -> None:
    """Unknown top-level override keys are a user error (a typo would be silently ignored)."""
    yaml = ruamel.yaml.YAML()
    with open(hparams_file, encoding="utf-8") as fin:
        keys = set(yaml.load(fin) or {})
    unknown = sorted(set(overrides) - keys - set(allowed_new))
    if unknown:
        raise ValueError(f"{hparams_file}: no hparam named {', '.join(unknown)} "
                         f"(the file defines: {', '.join(sorted(keys))})")


def _with_overrides(hparams_file: str | os.PathLike, overrides: dict | None, allowed_new) -> io.StringIO:
    """The file's YAML with ``overrides`` applied, as a stream named like the file (so that
    ``!include:`` paths stay relative to it).

    Unlike HyperPyYAML's own merge, an override that is an object (a tagged node, e.g.
    ``head: !new:my.Head``) *replaces* the node instead of merging keys into the old object;
    a plain mapping is merged key by key (``lr: {head: 0.1}`` changes one learning rate,
    ``head: {hidden_dim: 64}`` one argument of the head).
    """
    overrides = dict(overrides or {})
    _check_keys(hparams_file, overrides, allowed_new)
    yaml = ruamel.yaml.YAML()
    with open(hparams_file, encoding="utf-8") as fin:
        tree = yaml.load(fin)
    _deep_update(tree, overrides)
    stream = io.StringIO()
    yaml.dump(tree, stream)
    stream.seek(0)
    stream.name = str(Path(hparams_file).resolve())
    return stream


def load_hparams(hparams_file: str | os.PathLike, overrides: dict | None = None, allowed_new=()) -> dict:
    """Build the whole object graph of ``hparams_file`` with ``overrides`` applied.

    Parameters
    ----------
    hparams_file
        A recipe's HyperPyYAML file; ``!include:`` paths are relative to it.
    overrides
        From :func:`read_overrides`.
    allowed_new : Iterable[str]
        Top-level keys an override may add although the file does not define them (run
        options).

    Raises
    ------
    ValueError
        For an override key that the file does not define and ``allowed_new`` does not name, or
        a ``!PLACEHOLDER`` value left without one (the message names the option to pass).
    """
    try:
        return load_hyperpyyaml(_with_overrides(hparams_file, overrides, allowed_new))
    except ValueError as err:
        match = re.match(r"'(\w+)' is a !PLACEHOLDER", str(err))
        if match is None:
            raise
        key = match.group(1)
        raise ValueError(f"{hparams_file}: '{key}' has no value (!PLACEHOLDER): pass --{key} VALUE on the command "
                         f"line (./run.sh sets --{key} itself)") from None


def resolved_text(hparams_file: str | os.PathLike, overrides: dict | None = None, allowed_new=()) -> str:
    """The file with overrides, ``!ref`` and ``!include:`` resolved, as YAML text (nothing built).

    This is what an experiment's identity is hashed from (:mod:`elp.train.experiment`).
    Arguments and errors as in :func:`load_hparams`.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "train.yaml"
    >>> _ = path.write_text("seed: 1\\nfolder: !ref results/<seed>\\n")
    >>> print(resolved_text(path, {"seed": 7}), end="")
    seed: 7
    folder: results/7
    """
    return resolve_references(_with_overrides(hparams_file, overrides, allowed_new)).getvalue()


def peek_hparams(hparams_file: str | os.PathLike, overrides: dict | None = None, allowed_new=()) -> dict:
    """Values of ``hparams_file`` without building objects (see the module docstring).

    Nodes that would build objects come back as :class:`Tagged`. Arguments and errors as in
    :func:`load_hparams`.
    """
    yaml = ruamel.yaml.YAML()
    tree = yaml.load(io.StringIO(resolved_text(hparams_file, overrides, allowed_new)))
    return _plain(tree)


def _plain(node: Any) -> Any:
    tag = _tag_of(node)
    if isinstance(node, dict):
        value = {str(k): _plain(v) for k, v in node.items()}
    elif isinstance(node, list):
        value = [_plain(v) for v in node]
    elif hasattr(node, "value") and tag:  # tagged scalar
        value = node.value
    else:
        value = node
    if tag and tag.startswith("!") and tag not in ("!!map", "!!seq", "!!str"):
        return Tagged(tag, value)
    return value


def build_node(node: Any) -> Any:
    """Build one peeked node: a :class:`Tagged`, or a dict/list holding them.

    ``!new:`` and ``!apply:`` call their target with the node's arguments, ``!name:`` returns
    the target (with keyword arguments bound, as HyperPyYAML does). Dicts and lists are built
    element-wise; plain values come back unchanged.

    Raises
    ------
    ValueError
        For a tag other than ``!new:``, ``!name:`` or ``!apply:``.
    ImportError
        If the target does not exist.

    Examples
    --------
    >>> build_node(Tagged("!new:datetime.timedelta", {"seconds": 90}))
    datetime.timedelta(seconds=90)
    """
    if isinstance(node, dict):
        return {k: build_node(v) for k, v in node.items()}
    if isinstance(node, list):
        return [build_node(v) for v in node]
    if not isinstance(node, Tagged):
        return node
    kind = node.tag.split(":", 1)[0]
    if kind not in ("!new", "!name", "!apply"):
        raise ValueError(f"cannot build a {node.tag} node on its own")
    module_name, _, attribute = node.target.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        if isinstance(error, ImportError) and getattr(error, "name", None) not in (module_name, None):
            raise  # the module exists but fails to import: show why
        raise ImportError(f"{node.tag}: no such class or function {node.target!r}") from error
    value = build_node(node.value)
    args, kwargs = ([], value) if isinstance(value, dict) else (
        (value if isinstance(value, list) else ([] if value in (None, "") else [value])), {})
    if kind == "!name":
        return functools.partial(target, *args, **kwargs) if (args or kwargs) else target
    return target(*args, **kwargs)


def recipe_root(hparams_file: str | os.PathLike) -> Path:
    """The absolute recipe directory ``egs/<corpus>/<task>`` of a file in its ``conf/``.

    Examples
    --------
    >>> recipe_root("/egs/iemocap/er/conf/train.yaml")
    PosixPath('/egs/iemocap/er')
    """
    return Path(hparams_file).resolve().parent.parent
