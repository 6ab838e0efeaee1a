"""The trials of a protocol, what of them is already on disk, the selection and the cost.

* A **grid trial** trains one (recipe, method, grid point) with the first seed (stage 3 only:
  its validation metric is all the selection reads). A **final run** trains the selected grid
  point with every seed and evaluates it (stages 3-5); the final run of the first seed *is* the
  selected grid trial, so it only adds stages 4-5. Each is one job per fold.
* Tags: ``<protocol>_<method>_lr<k>_s<seed>`` in ``egs/<recipe>/exp/`` (folds in
  ``fold<k>/``), so a protocol never touches ``run_all.sh``'s experiments.
* A trial counts as done only when the hparams its experiment recorded
  (``hparams_record.json``, :mod:`elp.train.experiment`) hold the method, seed, learning
  rates, epochs, backbone and overrides the protocol asks for now, and its ``train_stats.json``
  holds the validation metric of a finished run. A trial whose record differs is retrained
  with ``--restart true`` (the recipe moves the old run aside), so changing one grid value
  retrains only the trials of that value.
* Selection (:func:`select_point`) reads validation metrics only; the test sets are decoded
  for the selected point alone.

Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from protocol_spec import GridPoint, Protocol, ProtocolError, RecipeSpec

STATUS_ABSENT, STATUS_CHANGED, STATUS_UNFINISHED, STATUS_TRAINED, STATUS_EVALUATED = (
    "absent", "changed", "unfinished", "trained", "evaluated")


@dataclass(frozen=True)
class Job:
    """One run of a recipe's stages for one trial and fold.

    ``phase`` is ``grid`` or ``final``; ``fold`` is ``""`` for a recipe without folds.
    """

    phase: str
    recipe: str
    method: str
    point: int
    seed: int
    fold: str

    @property
    def id(self) -> str:
        """``phase:recipe:method:point:seed:fold`` (no spaces: the job slots split on them).

        Examples
        --------
        >>> Job("grid", "iemocap/er", "elp", 1, 1986, "3").id
        'grid:iemocap/er:elp:1:1986:3'
        """
        return f"{self.phase}:{self.recipe}:{self.method}:{self.point}:{self.seed}:{self.fold or '-'}"

    @classmethod
    def parse(cls, job_id: str) -> Job:
        """The job of an :attr:`id`.

        Examples
        --------
        >>> Job.parse("final:slurp/ic:full:0:1987:-").fold
        ''
        """
        parts = job_id.split(":")
        if len(parts) != 6 or parts[0] not in ("grid", "final"):
            raise ProtocolError(f"--job {job_id!r}: expected phase:recipe:method:point:seed:fold")
        phase, recipe, method, point, seed, fold = parts
        return cls(phase, recipe, method, int(point), int(seed), "" if fold == "-" else fold)


def trial_tag(protocol: Protocol, method: str, point: int, seed: int) -> str:
    """The experiment name of a trial.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> trial_tag(SimpleNamespace(name="mini"), "elp", 1, 1986)
    'mini_elp_lr1_s1986'
    """
    return f"{protocol.name}_{method}_lr{point}_s{seed}"


def recipe_dir(root: Path, recipe: str) -> Path:
    """``<root>/egs/<recipe>``."""
    return Path(root) / "egs" / recipe


def exp_dir(root: Path, protocol: Protocol, job: Job) -> Path:
    """The experiment directory of a job's trial and fold."""
    tag = trial_tag(protocol, job.method, job.point, job.seed)
    base = recipe_dir(root, job.recipe) / "exp" / tag
    return base / f"fold{job.fold}" if job.fold else base


def output_dir(root: Path, protocol: Protocol) -> Path:
    """``<root>/exp/protocols/<name>``: logs, the selection and the comparison."""
    return Path(root) / "exp" / "protocols" / protocol.name


# ------------------------------------------------------------------------------ hparams
def backbone_source(protocol: Protocol) -> str | None:
    """The protocol's backbone source as the recipe records it (a directory made absolute)."""
    source = protocol.backbone.get("source")
    if source and (source.startswith((".", "/")) or Path(source).exists()):
        return os.path.realpath(source)
    return source or None


def expected_hparams(protocol: Protocol, spec: RecipeSpec, method: str, point: GridPoint, seed: int) -> dict:
    """The flat hparams (``hparams_record.json`` keys) a trial must have recorded to be reused.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> protocol = SimpleNamespace(backbone={"name": "wavlm_plus"}, epochs=2)
    >>> spec = SimpleNamespace(overrides={"train_set": "data/train_10h"})
    >>> sorted(expected_hparams(protocol, spec, "elp", GridPoint(0, {"e": 0.001}), 7).items())
    [('backbone', 'wavlm_plus'), ('backbone_arch', None), ('lr.e', 0.001), ('method', 'elp'), ('number_of_epochs', 2), ('seed', 7), ('train_set', 'data/train_10h')]
    """
    from elp.train.experiment import canonical_hparams

    expected = {"method": method, "seed": seed, "backbone": protocol.backbone["name"],
                "backbone_arch": protocol.backbone.get("arch"),
                **{f"lr.{group}": rate for group, rate in point.lr.items()}}
    if protocol.epochs is not None:
        expected["number_of_epochs"] = protocol.epochs
    if protocol.backbone.get("source"):
        expected["backbone_source"] = backbone_source(protocol)
    if spec.overrides:
        expected.update(canonical_hparams(spec.overrides))
    return expected


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def differences(recorded: dict, expected: dict) -> list[str]:
    """``key recorded -> expected`` for every expected key the record holds otherwise.

    Examples
    --------
    >>> differences({"lr.e": 0.001, "seed": 1}, {"lr.e": 0.003, "seed": 1})
    ['lr.e 0.001 -> 0.003']
    """
    out = []
    for key, value in expected.items():
        old = recorded.get(key, "<absent>")
        same = (isinstance(old, (int, float)) and isinstance(value, (int, float)) and not isinstance(old, bool)
                and math.isclose(old, value, rel_tol=1e-9)) or old == value
        if not same:
            out.append(f"{key} {old} -> {value}")
    return out


def fold_status(exp: Path, expected: dict, results_file: str) -> tuple[str, list[str]]:
    """What a trial's experiment directory (one fold) holds: one of ``absent``, ``changed``
    (recorded with other hparams; the list says which), ``unfinished`` (training not done, or
    done before the validation metric was recorded), ``trained`` (stage 3 done) or
    ``evaluated`` (stages 4-5 done after the training)."""
    record = _read_json(exp / "hparams_record.json")
    if record is None:
        return STATUS_ABSENT, []
    changed = differences(record.get("hparams", {}), expected)
    if changed:
        return STATUS_CHANGED, changed
    stats = _read_json(exp / "train_stats.json")
    epochs = record.get("hparams", {}).get("number_of_epochs")
    if not stats or "valid_metric" not in stats or (epochs is not None and stats.get("epochs") != epochs):
        return STATUS_UNFINISHED, []
    results = exp / results_file
    if results.is_file() and results.stat().st_mtime >= (exp / "train_stats.json").stat().st_mtime:
        return STATUS_EVALUATED, []
    return STATUS_TRAINED, []


def job_status(root: Path, protocol: Protocol, job: Job) -> tuple[str, list[str]]:
    """:func:`fold_status` of a job's experiment directory."""
    spec = protocol.recipe(job.recipe)
    point = spec.grid[job.method][job.point]
    return fold_status(exp_dir(root, protocol, job), expected_hparams(protocol, spec, job.method, point, job.seed),
                       "fold_results.json" if job.fold else "results.json")


# ------------------------------------------------------------------------------ jobs
def grid_jobs(protocol: Protocol) -> list[Job]:
    """Every grid job: recipe x method x grid point x fold, with the selection seed."""
    return [Job("grid", spec.recipe, method, point.index, protocol.selection_seed, fold)
            for spec in protocol.recipes for method in protocol.methods
            for point in spec.grid[method] for fold in spec.fold_list]


def final_jobs(protocol: Protocol, selected: dict[tuple[str, str], int]) -> list[Job]:
    """Every final job: recipe x method x seed x fold at the selected point (``selected`` maps
    (recipe, method) to a point; a missing cell is listed with point -1)."""
    return [Job("final", spec.recipe, method, selected.get((spec.recipe, method), -1), seed, fold)
            for spec in protocol.recipes for method in protocol.methods
            for seed in protocol.seeds for fold in spec.fold_list]


def pending(root: Path, protocol: Protocol, jobs: list[Job]) -> list[tuple[Job, str, list[str]]]:
    """The jobs that still have work, with their status: grid jobs not yet trained, final jobs
    not yet evaluated."""
    out = []
    for job in jobs:
        status, changed = job_status(root, protocol, job)
        done = status in (STATUS_TRAINED, STATUS_EVALUATED) if job.phase == "grid" else status == STATUS_EVALUATED
        if not done:
            out.append((job, status, changed))
    return out


def job_stages(root: Path, protocol: Protocol, job: Job) -> tuple[int, int, bool]:
    """(first stage, last stage, restart) a job runs now: grid 3-3; final 3-5, or 4-5 when its
    training is done; restart when the experiment recorded other hparams."""
    status, _ = job_status(root, protocol, job)
    last = 3 if job.phase == "grid" else 5
    first = 4 if job.phase == "final" and status in (STATUS_TRAINED, STATUS_EVALUATED) else 3
    return first, last, status == STATUS_CHANGED


def recipe_command(root: Path, protocol: Protocol, spec: RecipeSpec, data_roots: dict[str, str],
                   stages: tuple[int, int]) -> list[str]:
    """``egs/<recipe>/run.sh`` with the protocol's data, backbone and hparam overrides (no trial
    options): the stage 0-2 command of data preparation, and the base of every job."""
    command = [str(recipe_dir(root, spec.recipe) / "run.sh"), "--stage", str(stages[0]), "--stop_stage", str(stages[1]),
               "--backbone", protocol.backbone["name"]]
    if protocol.backbone.get("arch"):
        command += ["--backbone_arch", protocol.backbone["arch"]]
    if protocol.backbone.get("source"):
        command += ["--backbone_source", backbone_source(protocol)]
    if not protocol.mini:
        if spec.data_root_key not in data_roots:
            raise ProtocolError(f"{protocol.path}: {spec.recipe} needs its corpus: pass --data_roots "
                                f"'{spec.data_root_key}=DIR' (the corpus layout its local/data_prep.py reads)")
        command += ["--data_root", os.path.realpath(data_roots[spec.data_root_key])]
    if spec.folds:
        command += ["--folds", " ".join(spec.folds)]
    return command


def prep_command(root: Path, protocol: Protocol, spec: RecipeSpec, data_roots: dict[str, str]) -> list[str]:
    """Stages 0-2 of a recipe as the protocol prepares it (once per recipe and options)."""
    command = recipe_command(root, protocol, spec, data_roots, (0, 2))
    if spec.prep_opts:
        command += ["--prep_opts", spec.prep_opts]
    return command + ["--", *spec.hparam_args()]


def job_command(root: Path, protocol: Protocol, job: Job, data_roots: dict[str, str], ngpu: int = 0,
                master_port: int | None = None) -> list[str]:
    """The ``run.sh`` command of a job (its stages as :func:`job_stages` says)."""
    spec = protocol.recipe(job.recipe)
    first, last, restart = job_stages(root, protocol, job)
    command = recipe_command(root, protocol, spec, data_roots, (first, last))
    if job.fold:
        command[command.index("--folds") + 1] = job.fold
    command += ["--method", job.method, "--tag", trial_tag(protocol, job.method, job.point, job.seed),
                "--seed", str(job.seed)]
    if ngpu:
        command += ["--ngpu", str(ngpu)]
    if master_port:
        command += ["--master_port", str(master_port)]
    if restart:
        command += ["--restart", "true"]
    command += ["--", *spec.hparam_args(), "--lr", spec.grid[job.method][job.point].as_override()]
    if protocol.epochs is not None:
        command += ["--number_of_epochs", str(protocol.epochs)]
    return command


def prepared(data_dir: Path, command: list[str]) -> bool:
    """Whether ``data_dir`` was prepared by exactly this command (its ``.protocol_prep.json``)."""
    stamp = _read_json(data_dir / ".protocol_prep.json")
    return bool(stamp) and stamp.get("command") == command


def mark_prepared(data_dir: Path, command: list[str]) -> None:
    """Record that ``data_dir`` holds what ``command`` prepared."""
    (data_dir / ".protocol_prep.json").write_text(json.dumps({"command": command}, indent=1) + "\n")


def run_logged(command: list[str], log_file: Path, env: dict | None = None) -> int:
    """Run ``command`` with stdout and stderr appended to ``log_file``; its exit status."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"# {' '.join(command)}\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode


def recipe_folds(root: Path, recipe: str) -> list[str]:
    """The folds the recipe declares (``./run.sh --show_folds true``)."""
    out = subprocess.run([str(recipe_dir(root, recipe) / "run.sh"), "--show_folds", "true"], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise ProtocolError(f"{recipe_dir(root, recipe)}/run.sh --show_folds true failed: {out.stderr.strip()[-300:]}")
    return out.stdout.split()


def top_level_values(root: Path, spec: RecipeSpec, key: str, configs: list[str]) -> list[str]:
    """The values of the top-level ``key:`` lines of a recipe's YAML files ``configs`` (relative to
    its directory, in the order given; files that are not there are skipped), comments cut."""
    values = []
    for config in configs:
        path = recipe_dir(root, spec.recipe) / config
        if path.is_file():
            values += [line.split(":", 1)[1].split("#")[0].strip()
                       for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(f"{key}:")]
    return values


def valid_set_name(root: Path, spec: RecipeSpec) -> str | None:
    """The name of the data dir a recipe validates on (the last ``valid_set`` of conf/train.yaml,
    its overrides files and the protocol's overrides), e.g. ``dev_other``; None if none says."""
    values = top_level_values(root, spec, "valid_set", ["conf/train.yaml", *spec.overrides_files])
    if isinstance(spec.overrides.get("valid_set"), str):
        values.append(spec.overrides["valid_set"])
    return values[-1].rstrip("/").rsplit("/", 1)[-1] if values else None


def task_class(root: Path, spec: RecipeSpec):
    """The Task class a recipe's ``conf/train.yaml`` builds (``task: !new:elp.tasks.<Name>``), or
    None when it names none of :mod:`elp.tasks`."""
    import elp.tasks

    names = [value.split("!new:elp.tasks.", 1)[1].split()[0]
             for value in top_level_values(root, spec, "task", ["conf/train.yaml"]) if "!new:elp.tasks." in value]
    return getattr(elp.tasks, names[0], None) if names else None


def check_recipes(root: Path, protocol: Protocol) -> None:
    """Every recipe exists, the protocol's folds are folds of it, its metrics are ones its task
    writes to results.json, and it does not validate on the test set it reports (the
    validation metric chooses the learning rates).

    Raises
    ------
    ProtocolError
        Naming the recipe and the fix.
    """
    if not (Path(root) / "recipes" / "run_task.sh").is_file():
        raise ProtocolError(f"{protocol.path}: --root {root} has no recipes/run_task.sh: the root is a directory "
                            "like this repository, with egs/<corpus>/<task>/ and the shared recipes/ beside egs/")
    for spec in protocol.recipes:
        run_sh = recipe_dir(root, spec.recipe) / "run.sh"
        if not os.access(run_sh, os.X_OK):
            raise ProtocolError(f"{protocol.path}: {run_sh} not found: this checkout has no recipe {spec.recipe} "
                                "(run the others with --recipes)")
        declared = recipe_folds(root, spec.recipe)
        extra = [f for f in spec.folds if f not in declared]
        if extra or (declared and not spec.folds):
            raise ProtocolError(f"{protocol.path}: recipes.{spec.recipe}.folds must be folds of the recipe "
                                f"({' '.join(declared) or 'none'}), got {' '.join(spec.folds) or 'none'}")
        task = task_class(root, spec)
        if task is not None:
            written = (task.metric_name, *task.extra_metric_names)
            unknown = [m for m in spec.metrics if m not in written]
            if unknown:
                raise ProtocolError(f"{protocol.path}: recipes.{spec.recipe}.metrics: {', '.join(unknown)} is not a "
                                    f"metric of its task ({task.__name__} writes {', '.join(written)})")
        if valid_set_name(root, spec) == spec.test_set:
            raise ProtocolError(f"{protocol.path}: {spec.recipe} validates on {spec.test_set}, the test set it reports: "
                                "the selection would choose on the test set; set another valid_set (overrides or "
                                "an overrides file) or report another test_set")


# ------------------------------------------------------------------------------ selection
def select_point(trials: list[dict]) -> int:
    """The grid point with the best validation metric (ties: the earlier point).

    Parameters
    ----------
    trials
        One dict per grid point: ``point`` (its index), ``valid`` (the validation metric, mean
        over folds) and ``higher_is_better``. Any other field (a test metric, say) is ignored:
        the test set never chooses.

    Examples
    --------
    >>> select_point([{"point": 0, "valid": 70.0, "test": 80.0, "higher_is_better": True},
    ...               {"point": 1, "valid": 75.0, "test": 60.0, "higher_is_better": True}])
    1
    >>> select_point([{"point": 0, "valid": 9.5, "higher_is_better": False},
    ...               {"point": 1, "valid": 9.5, "higher_is_better": False}])
    0
    """
    if not trials:
        raise ProtocolError("no grid trial to select from")
    missing = [t["point"] for t in trials if t.get("valid") is None]
    if missing:
        raise ProtocolError(f"grid point(s) {missing} have no validation metric: run their training first")
    sign = 1.0 if trials[0]["higher_is_better"] else -1.0
    best = max(trials, key=lambda t: (sign * t["valid"], -t["point"]))
    return int(best["point"])


def valid_metric(exp: Path) -> dict | None:
    """The validation metric of a trained experiment's best checkpoint (``train_stats.json``)."""
    stats = _read_json(exp / "train_stats.json")
    return (stats or {}).get("valid_metric")


def selection(root: Path, protocol: Protocol) -> dict:
    """The selection of every (recipe, method): each grid point's validation metric (mean over
    folds) and the chosen point.

    Raises
    ------
    ProtocolError
        When a grid trial is not trained with the protocol's hparams yet.
    """
    unfinished = [job.id for job, _, _ in pending(root, protocol, grid_jobs(protocol))]
    if unfinished:
        raise ProtocolError(f"{len(unfinished)} grid trial(s) not trained yet (e.g. {unfinished[0]}): "
                            "run the protocol (./run_protocol.sh) first")
    cells = []
    for spec in protocol.recipes:
        for method in protocol.methods:
            trials = []
            for point in spec.grid[method]:
                exps = {fold or "-": exp_dir(root, protocol, Job("grid", spec.recipe, method, point.index,
                                                                 protocol.selection_seed, fold))
                        for fold in spec.fold_list}
                metrics = {fold: valid_metric(exp) for fold, exp in exps.items()}
                first = next(iter(metrics.values()))
                trials.append({"point": point.index, "lr": point.lr,
                               "tag": trial_tag(protocol, method, point.index, protocol.selection_seed),
                               "valid_name": first["name"], "higher_is_better": first["higher_is_better"],
                               "valid": mean(m["value"] for m in metrics.values()),
                               "valid_folds": {f: m["value"] for f, m in metrics.items()} if spec.folds else None,
                               "train_wall_s": sum(_train_wall(exp) for exp in exps.values())})
            cells.append({"recipe": spec.recipe, "method": method, "seed": protocol.selection_seed,
                          "selected": select_point(trials), "trials": trials})
    return {"protocol": protocol.name, "rule": "best validation metric of the best checkpoint (mean over folds); "
            "ties: the earlier grid point; test sets not read", "cells": cells}


def _train_wall(exp: Path) -> float:
    return float((_read_json(exp / "train_stats.json") or {}).get("train_wall_s", 0.0))


def selected_points(selection_data: dict) -> dict[tuple[str, str], int]:
    """(recipe, method) -> selected point of a :func:`selection` result."""
    return {(c["recipe"], c["method"]): c["selected"] for c in selection_data["cells"]}


# ------------------------------------------------------------------------------ cost
def measured_epoch_seconds(root: Path, protocol: Protocol, spec: RecipeSpec, method: str) -> tuple[float, str] | None:
    """Training seconds per epoch of finished runs of this recipe and method on the same backbone
    (this protocol's trials first, then any other experiment of the recipe); None if there is none."""
    exp_root = recipe_dir(root, spec.recipe) / "exp"
    if not exp_root.is_dir():
        return None
    own, other = [], []
    for stats_file in sorted(exp_root.glob("*/train_stats.json")) + sorted(exp_root.glob("*/fold*/train_stats.json")):
        stats = _read_json(stats_file)
        record = (_read_json(stats_file.parent / "hparams_record.json") or {}).get("hparams", {})
        if not stats or not stats.get("epochs") or record.get("method") != method \
                or record.get("backbone") != protocol.backbone["name"] \
                or record.get("backbone_arch") != protocol.backbone.get("arch"):
            continue
        tag = stats_file.parent.name if not stats_file.parent.name.startswith("fold") else stats_file.parent.parent.name
        (own if tag.startswith(f"{protocol.name}_") else other).append(stats["train_wall_s"] / stats["epochs"])
    runs = own or other
    if not runs:
        return None
    where = "this protocol's" if own else "other"
    return mean(runs), f"measured: {len(runs)} {where} finished run(s) of {spec.recipe} {method}"


def epoch_estimate(root: Path, protocol: Protocol, spec: RecipeSpec, method: str) -> tuple[float | None, str]:
    """(seconds of training per epoch, how it was estimated) for one recipe and method.

    In order: finished runs on disk (:func:`measured_epoch_seconds`); the protocol's
    ``cost_basis.epoch_s``; ``cost_basis.train_hours`` of training audio over
    ``cost_basis.audio_s_per_s``; else unknown.
    """
    measured = measured_epoch_seconds(root, protocol, spec, method)
    if measured:
        return measured
    basis = spec.cost_basis
    source = basis.get("source", "the protocol's cost_basis")
    epoch_s = basis.get("epoch_s")
    if isinstance(epoch_s, dict):
        epoch_s = epoch_s.get(method)
    if epoch_s:
        return float(epoch_s), f"cost_basis.epoch_s ({source})"
    if basis.get("audio_s_per_s") and basis.get("train_hours"):
        return (3600.0 * float(basis["train_hours"]) / float(basis["audio_s_per_s"]),
                f"{basis['train_hours']} h of training audio per job at {basis['audio_s_per_s']} audio s/s ({source})")
    return None, "unknown: no finished run on disk and no cost_basis in the protocol"


def recipe_epochs(root: Path, protocol: Protocol, spec: RecipeSpec) -> int | None:
    """The epochs a trial of ``spec`` trains: the protocol's, else the recipe YAML's (mini mode:
    conf/mini.yaml over conf/train.yaml); None if neither says."""
    if protocol.epochs is not None:
        return protocol.epochs
    epochs = None
    configs = ["conf/train.yaml", *(["conf/mini.yaml"] if protocol.mini else []), *spec.overrides_files]
    for value in top_level_values(root, spec, "number_of_epochs", configs):
        try:
            epochs = int(value)
        except ValueError:
            pass
    return epochs


def format_seconds(seconds: float | None) -> str:
    """Seconds as ``42 s``, ``12.5 min`` or ``3.2 h`` (``?`` when unknown).

    Examples
    --------
    >>> format_seconds(42), format_seconds(750), format_seconds(11520), format_seconds(None)
    ('42 s', '12.5 min', '3.2 h', '?')
    """
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plan_text(root: Path, protocol: Protocol, data_roots: dict[str, str]) -> str:
    """The dry run: every job of the protocol (one line per trial and fold), what of it is done,
    and an estimate of its training time with the basis of the estimate."""
    lines = [f"protocol {protocol.name} ({protocol.path}): {len(protocol.recipes)} recipe(s) x "
             f"{len(protocol.methods)} method(s) ({' '.join(protocol.methods)}); backbone "
             f"{protocol.backbone['name']}{'[' + protocol.backbone['arch'] + ']' if protocol.backbone.get('arch') else ''}"
             f"; seeds {' '.join(map(str, protocol.seeds))}; grid trials use seed {protocol.selection_seed}",
             "data preparation (stages 0-2, once per recipe and options):"]
    for spec in protocol.recipes:
        where = "the synthetic mini corpus" if protocol.mini else (
            f"--data_root {data_roots[spec.data_root_key]}" if spec.data_root_key in data_roots
            else f"--data_roots {spec.data_root_key}=DIR needed")
        present = (recipe_dir(root, spec.recipe) / "run.sh").is_file()
        lines.append(f"  prep   {spec.recipe:<28} {where}; prep_opts '{spec.prep_opts}'; overrides "
                     f"{' '.join(spec.hparam_args()) or '-'}{'' if present else '  [recipe not in this checkout]'}")
    selected: dict[tuple[str, str], int] = {}
    grid = grid_jobs(protocol)
    grid_pending = {job for job, _, _ in pending(root, protocol, grid)}
    if not grid_pending:
        try:
            selected = selected_points(selection(root, protocol))
        except (ProtocolError, KeyError, TypeError):
            selected = {}
    estimates = {(s.recipe, m): epoch_estimate(root, protocol, s, m) for s in protocol.recipes for m in protocol.methods}
    epochs = {s.recipe: recipe_epochs(root, protocol, s) for s in protocol.recipes}
    total = {"grid": [0.0, 0, 0], "final": [0.0, 0, 0]}   # seconds to train, jobs to run, jobs with an unknown cost

    def cost(spec: RecipeSpec, method: str, trains: bool) -> float | None:
        per_epoch, _ = estimates[(spec.recipe, method)]
        if not trains:
            return 0.0
        if per_epoch is None or epochs[spec.recipe] is None:
            return None
        return per_epoch * epochs[spec.recipe] + float(spec.cost_basis.get("job_overhead_s", 0.0))

    lines.append("grid trials (stage 3 only; the validation metric of the best checkpoint is all the selection reads):")
    for job in grid:
        spec = protocol.recipe(job.recipe)
        todo = job in grid_pending
        seconds = cost(spec, job.method, todo)
        total["grid"][1] += todo
        if seconds is None:
            total["grid"][2] += 1
        else:
            total["grid"][0] += seconds
        lines.append(f"  grid   {job.recipe:<28} {job.method:<13} lr{job.point} "
                     f"{spec.grid[job.method][job.point].as_override():<44} seed {job.seed} fold {job.fold or '-'}  "
                     f"{'to train' if todo else 'done'}  ~{format_seconds(seconds)}")
    lines.append("final runs (the selected grid point with every seed, stages 3-5; the first seed's run is the "
                 "grid trial itself: stages 4-5):")
    for job in final_jobs(protocol, selected):
        spec = protocol.recipe(job.recipe)
        reuse = job.seed == protocol.selection_seed
        if job.point < 0:
            todo, trains, point = True, not reuse, "lr<selected>"
        else:
            status, _ = job_status(root, protocol, job)
            todo, trains, point = status != STATUS_EVALUATED, status not in (STATUS_TRAINED, STATUS_EVALUATED), f"lr{job.point}"
        seconds = cost(spec, job.method, todo and trains)
        total["final"][1] += todo
        if seconds is None:
            total["final"][2] += 1
        else:
            total["final"][0] += seconds
        what = "stages 4-5 of the grid trial" if reuse else "stages 3-5"
        lines.append(f"  final  {job.recipe:<28} {job.method:<13} {point:<5} seed {job.seed} fold {job.fold or '-'}  "
                     f"{what}; {'to run' if todo else 'done'}  ~{format_seconds(seconds)}")
    grid_count = len(grid)
    final_count = sum(len(protocol.seeds) * len(protocol.methods) * len(s.fold_list) for s in protocol.recipes)
    lines.append(f"jobs: {grid_count} grid + {final_count} final = {grid_count + final_count} "
                 f"(recipes x methods x (grid points + seeds) x folds); to run now: "
                 f"{total['grid'][1]} grid + {total['final'][1]} final")

    def phase_cost(phase: str) -> str:
        seconds, count, unknown = total[phase]
        if unknown and unknown == count:
            return f"{phase} unknown (no cost basis for its {count} job(s))"
        if unknown and not seconds:  # the others cost nothing to train (they reuse a grid trial)
            return f"{phase} unknown (no cost basis for {unknown} of its {count} job(s))"
        if unknown:
            return f"{phase} at least {format_seconds(seconds)} ({unknown} of its {count} job(s) of unknown cost)"
        return f"{phase} {format_seconds(seconds)}"

    lines.append("estimated training time (stage 3 only, one job at a time; divide by the parallel jobs): "
                 f"{phase_cost('grid')}, {phase_cost('final')}")
    lines.append("basis of the estimates (training seconds per epoch and job x epochs + cost_basis.job_overhead_s):")
    for spec in protocol.recipes:
        per_method = ", ".join(f"{m} {'?' if estimates[(spec.recipe, m)][0] is None else f'{estimates[(spec.recipe, m)][0]:.1f}'}"
                               for m in protocol.methods)
        bases = "; ".join(dict.fromkeys(estimates[(spec.recipe, m)][1] for m in protocol.methods))
        lines.append(f"  {spec.recipe}: {epochs[spec.recipe] or '?'} epochs; s/epoch {per_method}; "
                     f"overhead {float(spec.cost_basis.get('job_overhead_s', 0.0)):.0f} s/job; {bases}")
    return "\n".join(lines) + "\n"
