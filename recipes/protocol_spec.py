"""Comparison protocols: the YAML file (``protocols/<name>.yaml``), its checks, the grid.

A protocol says which recipes run, on which data, with which methods, backbone, seeds and
epochs; which learning rates each method tries (the same number of grid points for every
method of a recipe: an equal tuning budget); how the winner is chosen (the best validation
metric, never the test set); which metrics are reported and which published numbers they are
held against. docs/PROTOCOLS.md describes every field; :func:`load_protocol` checks them and
names the file and the field of every mistake.

Nothing here imports torch (the plan of a protocol is printed in a fraction of a second).

Examples
--------
>>> import tempfile, textwrap
>>> path = Path(tempfile.mkdtemp()) / "demo.yaml"
>>> _ = path.write_text(textwrap.dedent('''
...     name: demo
...     data: mini
...     methods: [full, elp]
...     seeds: [1, 2]
...     lr_grid:
...       groups: {full: [backbone], elp: [e, l, ln, p]}
...       values: [1.0e-3, 1.0e-4]
...       fixed: {head: 5.0e-3}
...     recipes:
...       slurp/ic: {test_set: test, metrics: [accuracy]}
... '''))
>>> protocol = load_protocol(path)
>>> [point.lr for point in protocol.recipes[0].grid["full"]]
[{'backbone': 0.001, 'head': 0.005}, {'backbone': 0.0001, 'head': 0.005}]
>>> protocol.recipes[0].grid_size, protocol.selection_seed
(2, 1)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from elp.runtime import UserError

#: methods a protocol may name (elp/core/methods.py; checked again by the recipes themselves)
KNOWN_METHODS = ("full", "weighted_sum", "conventional", "lora", "prefix", "e_only", "l_only", "p_only", "el", "elp")
#: metrics the report can test for significance (elp.eval.significance.STATISTICS)
TESTABLE_METRICS = ("wer", "accuracy", "ua", "eer")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
TOP_KEYS = {"name", "description", "data", "backbone", "methods", "seeds", "epochs", "selection",
            "reference_method", "significance", "lr_grid", "recipes", "targets", "target_source"}
RECIPE_KEYS = {"task", "data_root_key", "prep_opts", "overrides", "overrides_files", "folds", "test_set",
               "metrics", "lr_grid", "cost_basis"}
GRID_KEYS = {"groups", "values", "fixed", "points"}
TARGET_KEYS = {"recipe", "method", "metric", "value", "std", "tolerance", "backbone", "protocol", "source"}
COST_KEYS = {"epoch_s", "train_hours", "audio_s_per_s", "job_overhead_s", "source"}


class ProtocolError(UserError, ValueError):
    """A protocol file that does not follow the schema (the message names file and field)."""


@dataclass(frozen=True)
class GridPoint:
    """One learning-rate setting of a method: ``lr`` maps parameter groups to rates.

    ``index`` is its position in the method's grid (the ``lr<index>`` of the trial's tag).
    """

    index: int
    lr: dict

    def as_override(self) -> str:
        """The ``lr`` hparam override (YAML flow mapping; the recipe merges it key by key).

        Examples
        --------
        >>> GridPoint(0, {"head": 0.005, "e": 0.001}).as_override()
        '{e: 0.001, head: 0.005}'
        """
        return "{" + ", ".join(f"{group}: {format_rate(rate)}" for group, rate in sorted(self.lr.items())) + "}"


def format_rate(rate: float) -> str:
    """A learning rate as short YAML text that reads back as the same float.

    Examples
    --------
    >>> format_rate(0.0005), format_rate(1e-05), format_rate(0.003)
    ('0.0005', '1.0e-05', '0.003')
    """
    text = repr(float(rate))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"  # YAML 1.1 reads 1e-05 as a string
    return text


def default_task_name(recipe: str, recipes: dict) -> str:
    """The comparison's name for ``recipe`` (``corpus/task``) when its entry names none: the task
    directory, followed by the corpus when another recipe of the protocol has the same task.

    Examples
    --------
    >>> default_task_name("slurp/ic", {"slurp/ic": {}, "librispeech/asr": {}})
    'ic'
    >>> default_task_name("slurp/ic", {"slurp/ic": {}, "fluent_speech_commands/ic": {}})
    'ic (slurp)'
    """
    corpus, task = recipe.split("/")
    shared = [name for name in recipes if str(name).split("/")[-1] == task]
    return task if len(shared) == 1 else f"{task} ({corpus})"


@dataclass(frozen=True)
class RecipeSpec:
    """One recipe of a protocol (``egs/<recipe>``) and how it runs there."""

    recipe: str
    task: str
    data_root_key: str
    prep_opts: str
    overrides: dict
    overrides_files: tuple[str, ...]
    folds: tuple[str, ...]
    test_set: str
    metrics: tuple[str, ...]
    grid: dict            # method -> list[GridPoint]
    cost_basis: dict

    @property
    def grid_size(self) -> int:
        """Grid points per method (the same for every method)."""
        return len(next(iter(self.grid.values())))

    @property
    def fold_list(self) -> tuple[str, ...]:
        """The folds, or ``("",)`` for a recipe without folds (one unit of work per trial)."""
        return self.folds or ("",)

    def hparam_args(self) -> list[str]:
        """The recipe's hparam overrides as ``--key value`` arguments (after ``--``)."""
        args: list[str] = []
        for path in self.overrides_files:
            args += ["--overrides_file", path]
        for key, value in self.overrides.items():
            args += [f"--{key}", yaml_flow(value)]
        return args


@dataclass(frozen=True)
class Target:
    """A published number and the protocol it was measured with."""

    recipe: str
    method: str
    metric: str
    value: float
    std: float | None
    tolerance: float
    backbone: str
    protocol: str
    source: str


@dataclass(frozen=True)
class Protocol:
    """A whole protocol file, checked (see the module docstring)."""

    path: Path
    name: str
    description: str
    mini: bool
    backbone: dict
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int | None
    reference_method: str | None
    significance: dict
    recipes: tuple[RecipeSpec, ...]
    targets: tuple[Target, ...] = field(default=())

    @property
    def selection_seed(self) -> int:
        """The seed of the grid trials (the first seed)."""
        return self.seeds[0]

    def recipe(self, name: str) -> RecipeSpec:
        """The recipe ``name`` (``corpus/task``)."""
        for spec in self.recipes:
            if spec.recipe == name:
                return spec
        raise ProtocolError(f"{self.path}: no recipe {name!r} in this protocol "
                            f"(it has {', '.join(r.recipe for r in self.recipes)})")

    def only(self, recipes: list[str]) -> Protocol:
        """The same protocol restricted to ``recipes`` (``--recipes``); unknown names are an error."""
        if not recipes:
            return self
        chosen = tuple(self.recipe(name) for name in recipes)
        return Protocol(**{**self.__dict__, "recipes": chosen})


def yaml_flow(value) -> str:
    """A value as one line of YAML (how an hparam override is passed on the command line).

    Examples
    --------
    >>> yaml_flow("data/train_10h"), yaml_flow(["data/dev_clean"]), yaml_flow(3), yaml_flow(1e-4)
    ('data/train_10h', '[data/dev_clean]', '3', '0.0001')
    """
    if isinstance(value, float):
        return format_rate(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _fail(path, where: str, message: str) -> ProtocolError:
    return ProtocolError(f"{path}: {where}: {message} (docs/PROTOCOLS.md lists the fields)")


def _unknown(path, where: str, given: dict, allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise _fail(path, where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _rate(path, where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _fail(path, where, f"a learning rate must be a positive number, got {value!r}")
    return float(value)


def expand_grid(path, where: str, grid: dict, methods: tuple[str, ...]) -> dict:
    """``lr_grid`` -> method -> list of :class:`GridPoint`, every method with as many points.

    ``points`` (method -> list of group -> rate) lists a method's settings one by one; the other
    methods take one point per entry of ``values`` (a list, or method -> list), each setting
    every group of ``groups[method]`` to that rate. ``fixed`` (group -> rate) is added to every
    point of every method.

    Raises
    ------
    ProtocolError
        Naming the file and the method when a method has no grid, a rate is not a positive
        number, or two methods get different numbers of points (an unequal tuning budget).
    """
    _unknown(path, where, grid, GRID_KEYS)
    fixed = {str(g): _rate(path, f"{where}.fixed.{g}", r) for g, r in (grid.get("fixed") or {}).items()}
    groups, values, points = grid.get("groups") or {}, grid.get("values"), grid.get("points") or {}
    out = {}
    for method in methods:
        if method in points:
            entries = points[method]
            if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) and e for e in entries):
                raise _fail(path, f"{where}.points.{method}", "must be a non-empty list of {group: rate} mappings")
            lrs = [{str(g): _rate(path, f"{where}.points.{method}[{k}].{g}", r) for g, r in e.items()}
                   for k, e in enumerate(entries)]
        else:
            method_groups = groups.get(method)
            if not isinstance(method_groups, list) or not method_groups:
                raise _fail(path, f"{where}.groups.{method}", "missing: name the parameter groups a grid value sets "
                            "for this method (or list its settings under lr_grid.points)")
            method_values = values.get(method) if isinstance(values, dict) else values
            if not isinstance(method_values, list) or not method_values:
                raise _fail(path, f"{where}.values", f"no list of rates for method {method}")
            lrs = [{str(g): _rate(path, f"{where}.values[{k}]", v) for g in method_groups}
                   for k, v in enumerate(method_values)]
        out[method] = [GridPoint(k, {**lr, **{g: r for g, r in fixed.items() if g not in lr}})
                       for k, lr in enumerate(lrs)]
    sizes = {method: len(grid_points) for method, grid_points in out.items()}
    if len(set(sizes.values())) > 1:
        raise _fail(path, where, "every method must get the same number of grid points (an equal tuning budget), got "
                    + ", ".join(f"{m} {n}" for m, n in sizes.items()))
    return out


def _string_list(path, where: str, value, allow_empty: bool = True) -> tuple[str, ...]:
    if value is None:
        value = []
    if not isinstance(value, list) or (not allow_empty and not value):
        raise _fail(path, where, f"must be a{'' if allow_empty else ' non-empty'} list, got {value!r}")
    return tuple(str(v) for v in value)


def load_protocol(path: str | Path) -> Protocol:
    """Read and check a protocol file.

    Raises
    ------
    ProtocolError
        One line naming the file, the field and the fix.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--protocol {path}: no such file (the shipped ones are protocols/*.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ProtocolError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict):
        raise _fail(path, "top level", "must be a mapping")
    _unknown(path, "top level", data, TOP_KEYS)
    name = str(data.get("name") or "")
    if not NAME.match(name):
        raise _fail(path, "name", f"must be letters, digits and _ (it names tags and exp/protocols/<name>), got {name!r}")
    if data.get("data") not in ("mini", "real"):
        raise _fail(path, "data", f"must be mini (the synthetic mini corpora) or real (--data_roots), got {data.get('data')!r}")
    backbone = dict(data.get("backbone") or {})
    _unknown(path, "backbone", backbone, {"name", "source", "arch"})
    backbone.setdefault("name", "wavlm_plus")
    methods = _string_list(path, "methods", data.get("methods"), allow_empty=False)
    unknown = [m for m in methods if m not in KNOWN_METHODS]
    if unknown or len(set(methods)) != len(methods):
        raise _fail(path, "methods", f"unknown or repeated method(s) {unknown or list(methods)}; known: {', '.join(KNOWN_METHODS)}")
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise _fail(path, "seeds", f"must be a non-empty list of distinct integers, got {seeds!r}")
    epochs = data.get("epochs")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
        raise _fail(path, "epochs", f"must be a positive integer or null (the recipes' own), got {epochs!r}")
    if data.get("selection", "best_validation") != "best_validation":
        raise _fail(path, "selection", "the only rule is best_validation (the test set never chooses)")
    reference = data.get("reference_method")
    if reference is not None and reference not in methods:
        raise _fail(path, "reference_method", f"{reference!r} is not one of the protocol's methods")
    significance = {"resamples": 10000, "seed": 0, "confidence": 0.95, **(data.get("significance") or {})}
    _unknown(path, "significance", significance, {"resamples", "seed", "confidence"})
    recipes_data = data.get("recipes")
    if not isinstance(recipes_data, dict) or not recipes_data:
        raise _fail(path, "recipes", "must map egs/<corpus>/<task> names (e.g. slurp/ic) to their settings")
    grid_data = data.get("lr_grid") or {}
    recipes = []
    for recipe, entry in recipes_data.items():
        where = f"recipes.{recipe}"
        if not re.match(r"^[A-Za-z0-9_]+/[A-Za-z0-9_]+$", str(recipe)):
            raise _fail(path, where, "a recipe is named <corpus>/<task> (egs/<corpus>/<task>/run.sh)")
        entry = dict(entry or {})
        _unknown(path, where, entry, RECIPE_KEYS)
        if not entry.get("test_set"):
            raise _fail(path, f"{where}.test_set", "missing: the test set whose numbers are reported (a data dir name)")
        metrics = _string_list(path, f"{where}.metrics", entry.get("metrics"), allow_empty=False)
        overrides = entry.get("overrides") or {}
        if not isinstance(overrides, dict) or {"lr", "seed", "method", "number_of_epochs"} & set(overrides):
            raise _fail(path, f"{where}.overrides", "must be a mapping of hparams; lr, seed, method and "
                        "number_of_epochs come from lr_grid, seeds, methods and epochs")
        cost = dict(entry.get("cost_basis") or {})
        _unknown(path, f"{where}.cost_basis", cost, COST_KEYS)
        recipe_grid = {**grid_data, **(entry.get("lr_grid") or {})}
        recipes.append(RecipeSpec(
            recipe=str(recipe), task=str(entry.get("task") or default_task_name(str(recipe), recipes_data)),
            data_root_key=str(entry.get("data_root_key") or str(recipe).split("/")[0]),
            prep_opts=str(entry.get("prep_opts") or ""), overrides=dict(overrides),
            overrides_files=_string_list(path, f"{where}.overrides_files", entry.get("overrides_files")),
            folds=_string_list(path, f"{where}.folds", entry.get("folds")),
            test_set=str(entry["test_set"]), metrics=metrics,
            grid=expand_grid(path, f"{where}.lr_grid" if entry.get("lr_grid") else "lr_grid", recipe_grid, methods),
            cost_basis=cost))
    names = [spec.task for spec in recipes]
    for spec in recipes:
        if names.count(spec.task) > 1:
            others = [r.recipe for r in recipes if r.task == spec.task]
            raise _fail(path, f"recipes.{spec.recipe}.task", f"{spec.task!r} names {' and '.join(others)}: the "
                        "comparison's rows and columns are keyed by it; give each a task name of its own")
    targets = []
    for k, entry in enumerate(data.get("targets") or []):
        where = f"targets[{k}]"
        if not isinstance(entry, dict):
            raise _fail(path, where, "must be a mapping")
        _unknown(path, where, entry, TARGET_KEYS)
        missing = [key for key in ("recipe", "method", "metric", "value", "tolerance", "protocol") if key not in entry]
        if missing:
            raise _fail(path, where, f"missing {', '.join(missing)}")
        if entry["recipe"] not in recipes_data or entry["method"] not in methods:
            raise _fail(path, where, f"{entry['recipe']} / {entry['method']} is not a recipe and method of this protocol")
        targets.append(Target(recipe=str(entry["recipe"]), method=str(entry["method"]), metric=str(entry["metric"]),
                              value=float(entry["value"]), std=None if entry.get("std") is None else float(entry["std"]),
                              tolerance=float(entry["tolerance"]), backbone=str(entry.get("backbone") or backbone["name"]),
                              protocol=str(entry["protocol"]),
                              source=str(entry.get("source") or data.get("target_source") or "")))
    return Protocol(path=path, name=name, description=" ".join(str(data.get("description") or "").split()),
                    mini=data["data"] == "mini", backbone=backbone, methods=methods, seeds=tuple(seeds), epochs=epochs,
                    reference_method=reference, significance=significance, recipes=tuple(recipes),
                    targets=tuple(targets))
