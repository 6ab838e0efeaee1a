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

import difflib
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
            try:
                content = yaml.load(fin) or {}
            except ruamel.yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
                raise ValueError(f"--overrides_file {path}: not valid YAML ({_problem_of(err)}{where})") from None
        if not isinstance(content, dict):
            raise ValueError(f"{path}: an overrides file must be a mapping of hparam: value")
        _deep_update(merged, content)
    if cli_overrides:
        if isinstance(cli_overrides, str):
            cli_overrides = parse_cli_overrides(cli_overrides)
        _deep_update(merged, cli_overrides)
    return merged


#: a line of SpeechBrain's override text that starts an option (``key: value``)
_OPTION_LINE = re.compile(r"^([A-Za-z_][\w.\-]*):(?: |$)")
#: a plain key that swallowed its value because no space follows its colon (``{x:1}`` reads as ``{"x:1": null}``)
_GLUED_KEY = re.compile(r"^[^\s:'\"]+:[^\s/]")


def parse_cli_overrides(text: str) -> dict:
    """Command-line hparam overrides (SpeechBrain's ``key: value`` lines of ``--key value``) as a dict.

    Raises
    ------
    ValueError
        One line naming the option whose value is not valid YAML (the parser's problem, the
        column in the value, and the value with a space after each colon where that makes it
        valid), or whose flow mapping reads a ``key:value`` without a space as one key without
        a value.

    Examples
    --------
    >>> parse_cli_overrides("seed: 3\\ntasks: {er: {mix_weight: 2.0}}")
    {'seed': 3, 'tasks': {'er': {'mix_weight': 2.0}}}
    >>> parse_cli_overrides("tasks: {er:{mix_weight:2.0}}")
    Traceback (most recent call last):
    ...
    ValueError: --tasks {er:{mix_weight:2.0}}: not valid YAML (expected ',' or '}', but got '{' at column 5 of the value); in flow style put a space after each colon: --tasks "{er: {mix_weight: 2.0}}"
    """
    yaml = ruamel.yaml.YAML()
    chunks: list[list[str]] = []
    for line in text.splitlines():
        if _OPTION_LINE.match(line) or not chunks:
            chunks.append([line])
        else:
            chunks[-1].append(line)
    merged: dict = {}
    for chunk in chunks:
        chunk_text = "\n".join(chunk)
        match = _OPTION_LINE.match(chunk_text)
        key = match.group(1) if match else None
        value = chunk_text[match.end():].strip() if match else chunk_text.strip()
        try:
            loaded = yaml.load(chunk_text) or {}
        except ruamel.yaml.YAMLError as err:
            if key is None:
                raise ValueError(f"the hparam overrides are not valid YAML ({_problem_of(err)}): pass them as "
                                 "--key value") from None
            mark = getattr(err, "problem_mark", None)
            column = mark.column - len(key) - 2 if mark is not None and mark.line == 0 else -1
            where = f" at column {column + 1} of the value" if column >= 0 else ""
            raise ValueError(f"--{key} {value}: not valid YAML ({_problem_of(err)}{where}); "
                             f"{_yaml_fix(key, value)}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"the hparam overrides must be --key value pairs (got {chunk_text!r})")
        if key is not None and _glued_key(loaded.get(key)):
            raise ValueError(f"--{key} {value}: reads {_glued_key(loaded[key])!r} as one key without a value; "
                             f"{_yaml_fix(key, value)}")
        merged.update(loaded)
    return merged


def _problem_of(err: Exception) -> str:
    """A ruamel error's short problem text (its first line without the marks)."""
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    return " ".join(str(problem).split())


def _glued_key(node: Any) -> str | None:
    """The first mapping key in ``node`` that holds a ``key:value`` without a space (and no value)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if value is None and isinstance(key, str) and _GLUED_KEY.match(key):
                return key
            found = _glued_key(value)
            if found:
                return found
    elif isinstance(node, list):
        for item in node:
            found = _glued_key(item)
            if found:
                return found
    return None


def _yaml_fix(key: str, value: str) -> str:
    """How to write ``value``: with a space after each colon where that makes it valid YAML."""
    spaced = re.sub(r":(?=[^\s/])", ": ", value)
    if spaced != value:
        try:
            loaded = ruamel.yaml.YAML().load(f"{key}: {spaced}")
        except ruamel.yaml.YAMLError:
            loaded = None
        if isinstance(loaded, dict) and not _glued_key(loaded.get(key)):
            return f'in flow style put a space after each colon: --{key} "{spaced}"'
    return ("write the value as YAML, quoted for the shell; in flow style a space after each colon, "
            f'e.g. --{key} "{{name: {{key: 1.0}}}}"')


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
    known = keys | set(allowed_new)
    unknown = sorted(set(overrides) - known)
    if unknown:
        names = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), sorted(str(k) for k in known), n=1)
            names.append(f"{key} (did you mean {close[0]}?)" if close else str(key))
        raise ValueError(f"{hparams_file}: no hparam named {', '.join(names)}")


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
