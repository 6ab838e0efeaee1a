"""The comparison of a finished protocol: one table (markdown + JSON) and one plot.

For every recipe and method: the selected learning rates and their validation metric, the
test metric of every seed (mean over folds), its mean and sample standard deviation over the
seeds, the learnable parameters, the training time (per final run and over all the cell's
trials, grid included), a paired bootstrap test against the reference method over the test
items (:mod:`elp.eval.significance`; stage 4's per-item outputs of every seed and fold, paired
by seed), and the published target where the protocol has one.

Per-item outputs read from ``exp/<tag>[/fold<k>]/decode/<test set>/`` (what stage 4 writes):

* ``wer``: ``ref.txt`` and ``hyp.txt`` -> word errors and reference words per utterance;
* ``accuracy`` / ``ua``: ``predictions.txt`` (``<utt> <predicted> <reference>``);
* ``eer``: ``scores.txt`` (``<enroll> <test> <score> target|nontarget``), one item per trial.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from statistics import mean, stdev

import numpy as np

from protocol_spec import Protocol, RecipeSpec, Target
from protocol_trials import Job, exp_dir, format_seconds

from elp.eval.results import format_params, validate_result, write_results_json
from elp.eval.significance import STATISTICS, format_p_value, paired_bootstrap


# ------------------------------------------------------------------------------ per-item outputs
def _rows(path: Path, fields: int) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run stage 4 (inference) of this run first")
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = next((n for n, row in enumerate(rows, 1) if len(row) != fields), None)
    if bad is not None:
        raise ValueError(f"{path}:{bad}: expected {fields} fields; rerun stage 4 (inference)")
    return rows


def item_columns(metric: str, decode_dir: Path) -> tuple[list[str], np.ndarray]:
    """(item ids, per-item columns of ``metric``, see :data:`elp.eval.significance.STATISTICS`)
    from one run's stage-4 outputs of one test set."""
    decode_dir = Path(decode_dir)
    if metric == "wer":
        from elp.eval.scoring import word_error_rate
        from elp.tasks.base import read_pairs

        refs, hyps = read_pairs(decode_dir / "ref.txt"), read_pairs(decode_dir / "hyp.txt")
        ids = sorted(refs)
        columns = []
        for utt in ids:
            counts = word_error_rate([refs[utt]], [hyps.get(utt, "")])
            columns.append((counts["ins"] + counts["del"] + counts["sub"], counts["num_words"]))
        return ids, np.array(columns, dtype=np.float64)
    if metric in ("accuracy", "ua"):
        rows = sorted(_rows(decode_dir / "predictions.txt", 3))
        classes = sorted({row[2] for row in rows})
        correct = [float(row[1] == row[2]) for row in rows]
        columns = np.array(correct)[:, None] if metric == "accuracy" else \
            np.array([(c, classes.index(row[2])) for c, row in zip(correct, rows)], dtype=np.float64)
        return [row[0] for row in rows], columns
    if metric == "eer":
        rows = _rows(decode_dir / "scores.txt", 4)
        return ([f"{r[0]}|{r[1]}" for r in rows],
                np.array([(float(r[2]), 1.0 if r[3] == "target" else 0.0) for r in rows], dtype=np.float64))
    raise ValueError(f"no per-item statistic for metric {metric!r} (known: {', '.join(STATISTICS)})")


# ------------------------------------------------------------------------------ results
def final_result(root: Path, protocol: Protocol, spec: RecipeSpec, method: str, point: int, seed: int) -> dict:
    """The results.json of one final run; for a recipe with folds, the mean over the protocol's
    folds is written first (``recipes/aggregate_folds.py``'s aggregation)."""
    from aggregate_folds import aggregate

    base = exp_dir(root, protocol, Job("final", spec.recipe, method, point, seed, ""))
    if spec.folds:
        folds = []
        for fold in spec.folds:
            path = base / f"fold{fold}" / "fold_results.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: run the protocol's final runs first")
            folds.append({**json.loads(path.read_text()), "fold": fold})
        return write_results_json(base / "results.json", aggregate(folds))
    path = base / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the protocol's final runs first")
    return validate_result(json.loads(path.read_text()), str(path))


def metric_value(result: dict, metric: str) -> float:
    """``metric`` of a result: its primary metric or one of its extra metrics."""
    if result["metric"]["name"] == metric:
        return float(result["metric"]["value"])
    if metric in result.get("extra_metrics", {}):
        return float(result["extra_metrics"][metric])
    raise ValueError(f"{result.get('exp_dir') or result.get('tag')}: no metric {metric!r} in results.json "
                     f"(it has {result['metric']['name']}, {', '.join(result.get('extra_metrics', {})) or 'no extras'})")


def higher_is_better(result: dict, metric: str) -> bool:
    """Whether a larger ``metric`` is better (the primary metric says; error rates are not)."""
    if result["metric"]["name"] == metric:
        return bool(result["metric"]["higher_is_better"])
    return metric not in ("wer", "cer", "eer", "min_dcf", "error")


def decode_dirs(root: Path, protocol: Protocol, spec: RecipeSpec, method: str, point: int) -> dict[str, Path]:
    """Stratum (``s<seed>`` or ``s<seed>/fold<k>``) -> the decode dir of the reported test set."""
    out = {}
    for seed in protocol.seeds:
        for fold in spec.fold_list:
            job = Job("final", spec.recipe, method, point, seed, fold)
            out[f"s{seed}" + (f"/fold{fold}" if fold else "")] = exp_dir(root, protocol, job) / "decode" / spec.test_set
    return out


def significance_test(root: Path, protocol: Protocol, spec: RecipeSpec, metric: str, method: str, point: int,
                      reference_point: int) -> dict:
    """Paired bootstrap of ``method`` against the reference method on every seed's (and fold's)
    test items, one stratum per seed and fold."""
    items = {"a": [], "b": []}
    strata = []
    reference_dirs = decode_dirs(root, protocol, spec, protocol.reference_method, reference_point)
    for stratum, directory in decode_dirs(root, protocol, spec, method, point).items():
        ids_b, columns_b = item_columns(metric, directory)
        ids_a, columns_a = item_columns(metric, reference_dirs[stratum])
        if ids_a != ids_b:
            raise ValueError(f"{directory} and {reference_dirs[stratum]} hold different test items "
                             f"({len(ids_b)} and {len(ids_a)}): rerun stage 4 of both")
        items["a"].append(columns_a)
        items["b"].append(columns_b)
        strata += [stratum] * len(ids_a)
    settings = protocol.significance
    test = paired_bootstrap(np.concatenate(items["a"]), np.concatenate(items["b"]), metric, strata=strata,
                            resamples=int(settings["resamples"]), seed=int(settings["seed"]),
                            confidence=float(settings["confidence"]))
    return {**test.as_dict(), "reference": protocol.reference_method, "description": test.describe()}


def target_check(target: Target, protocol: Protocol, mean_value: float | None) -> dict:
    """The target with this protocol's value and whether it lies within the target's tolerance.

    A target is only comparable on its backbone with pretrained weights (not a random
    ``arch`` and not the mini stand-in).
    """
    comparable = (not protocol.mini and not protocol.backbone.get("arch")
                  and protocol.backbone["name"] == target.backbone)
    within = None
    if comparable and mean_value is not None:
        within = abs(mean_value - target.value) <= target.tolerance
    return {**target.__dict__, "comparable": comparable, "this_protocol": mean_value, "within_tolerance": within,
            "reason": None if comparable else f"this run's backbone is not {target.backbone} with its pretrained weights"}


def build_comparison(root: Path, protocol: Protocol, selection_data: dict, with_significance: bool = True) -> dict:
    """The comparison of a protocol whose final runs are done (see the module docstring)."""
    selected = {(c["recipe"], c["method"]): c for c in selection_data["cells"]}
    rows = []
    for spec in protocol.recipes:
        for method in protocol.methods:
            cell = selected[(spec.recipe, method)]
            point = cell["selected"]
            results = {seed: final_result(root, protocol, spec, method, point, seed) for seed in protocol.seeds}
            first = results[protocol.seeds[0]]
            trial = next(t for t in cell["trials"] if t["point"] == point)
            per_run = [r["train_wall_s"] for r in results.values()]
            extra_seed_runs = sum(r["train_wall_s"] for s, r in results.items() if s != protocol.selection_seed)
            for metric in spec.metrics:
                values = {seed: metric_value(r, metric) for seed, r in results.items()}
                row = {"recipe": spec.recipe, "task": spec.task, "benchmark": first["benchmark"], "metric": metric,
                       "higher_is_better": higher_is_better(first, metric), "method": method,
                       "values": {str(s): v for s, v in values.items()}, "n": len(values),
                       "mean": mean(values.values()), "std": stdev(values.values()) if len(values) > 1 else None,
                       "learnable_params": first["learnable_params"], "backbone_params": first.get("backbone_params"),
                       "backbone": first["backbone"], "selected_point": point, "lr": trial["lr"],
                       "valid": {"name": trial["valid_name"], "value": trial["valid"]},
                       "test_set": spec.test_set, "folds": list(spec.folds),
                       "train_wall_s_per_run": mean(per_run),
                       "train_wall_s_all_trials": sum(t["train_wall_s"] for t in cell["trials"]) + extra_seed_runs,
                       "significance": None, "target": None}
                if with_significance and protocol.reference_method and method != protocol.reference_method \
                        and metric in STATISTICS:
                    reference_point = selected[(spec.recipe, protocol.reference_method)]["selected"]
                    row["significance"] = significance_test(root, protocol, spec, metric, method, point,
                                                            reference_point)
                target = next((t for t in protocol.targets if (t.recipe, t.method, t.metric) ==
                               (spec.recipe, method, metric)), None)
                if target is not None:
                    row["target"] = target_check(target, protocol, row["mean"])
                rows.append(row)
    return {"protocol": protocol.name, "file": str(protocol.path), "description": protocol.description,
            "generated": datetime.datetime.now().isoformat(timespec="seconds"),
            "backbone": protocol.backbone, "seeds": list(protocol.seeds), "selection_seed": protocol.selection_seed,
            "reference_method": protocol.reference_method, "significance_settings": protocol.significance,
            "selection_rule": selection_data["rule"], "rows": rows}


# ------------------------------------------------------------------------------ writing
def mean_std_text(row: dict) -> str:
    """``mean ± std`` with two decimals (``mean`` alone for one seed).

    Examples
    --------
    >>> mean_std_text({"mean": 74.4, "std": 1.234}), mean_std_text({"mean": 3.0, "std": None})
    ('74.40 ± 1.23', '3.00')
    """
    return f"{row['mean']:.2f}" + (f" ± {row['std']:.2f}" if row["std"] is not None else "")


def comparison_markdown(comparison: dict) -> str:
    """The comparison as markdown: the method x task summary, the detail table, the targets."""
    rows = comparison["rows"]
    reference = comparison["reference_method"]
    lines = [f"# Protocol {comparison['protocol']}: comparison", "",
             comparison["description"], "",
             f"Backbone {comparison['backbone']['name']}"
             + (f"[{comparison['backbone']['arch']}]" if comparison["backbone"].get("arch") else "")
             + f"; seeds {', '.join(map(str, comparison['seeds']))}. Selection: per task and method, the grid "
             f"trials of seed {comparison['selection_seed']} are compared by the {comparison['selection_rule']}; "
             "the selected point is trained with every seed and only it is evaluated on the test set. "
             "Values: mean ± sample standard deviation over the seeds (with folds: each seed's mean over them).", ""]
    cells = sorted({(r["task"], r["metric"]) for r in rows}, key=lambda k: [(r["task"], r["metric"]) for r in rows].index(k))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines += ["| method | " + " | ".join(f"{task} {metric} {'↑' if next(r for r in rows if (r['task'], r['metric']) == (task, metric))['higher_is_better'] else '↓'}"
                                        for task, metric in cells) + " |",
              "|---|" + "---|" * len(cells)]
    for method in methods:
        values = []
        for task, metric in cells:
            row = next((r for r in rows if (r["task"], r["metric"], r["method"]) == (task, metric, method)), None)
            text = "-" if row is None else mean_std_text(row)
            if row is not None and row["significance"] is not None and row["significance"]["p_value"] < 0.05:
                text += " *"
            values.append(text)
        lines.append(f"| {method} | " + " | ".join(values) + " |")
    if any(r["significance"] and r["significance"]["p_value"] < 0.05 for r in rows):
        lines += ["", f"\\* differs from {reference} at p < 0.05 (paired bootstrap over the test items, below)."]
    lines += ["", "| task | metric | method | mean ± std | seeds | Δ vs " + (reference or "-") + " | p (paired bootstrap) "
              "| learnable | selected lr (validation) | train time per run | train time, all trials |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        test = row["significance"]
        lr = ", ".join(f"{g} {v:g}" for g, v in sorted(row["lr"].items()))
        lines.append("| " + " | ".join([
            row["task"], f"{row['metric']} {'↑' if row['higher_is_better'] else '↓'}", row["method"],
            mean_std_text(row), " / ".join(f"{float(v):.2f}" for v in row["values"].values()),
            "-" if test is None else f"{test['difference']:+.2f} [{test['ci_low']:+.2f}, {test['ci_high']:+.2f}]",
            "-" if test is None else format_p_value(test["p_value"]),
            format_params(row["learnable_params"]), f"lr{row['selected_point']}: {lr} ({row['valid']['name']} "
            f"{row['valid']['value']:.2f})", format_seconds(row["train_wall_s_per_run"]),
            format_seconds(row["train_wall_s_all_trials"])]) + " |")
    tests = [r for r in rows if r["significance"]]
    if tests:
        settings = comparison["significance_settings"]
        lines += ["", f"Significance: a paired bootstrap test of each method against {reference} on the same test "
                  "items, drawn with replacement within each seed (and fold) with the same draw for both systems, "
                  f"{settings['resamples']:,} draws (seed {settings['seed']}); Δ = method − {reference} of the mean "
                  f"over seeds, its {settings['confidence']:.0%} percentile interval, and the two-sided p-value of "
                  "the shifted bootstrap. WER and accuracy are resampled over utterances, EER over trials."]
        for row in tests:
            lines.append(f"- {row['task']} {row['metric']} {row['method']}: {row['significance']['description']}")
    targets = [r for r in rows if r["target"]]
    if targets:
        lines += ["", "## Published targets", "", "| task | method | metric | target | tolerance | this protocol "
                  "| within tolerance | protocol of the target | source |", "|---|---|---|---|---|---|---|---|---|"]
        for row in targets:
            target = row["target"]
            published = f"{target['value']:.2f}" + (f" ± {target['std']:.2f}" if target["std"] is not None else "")
            within = ("yes" if target["within_tolerance"] else "no") if target["comparable"] \
                else f"not comparable: {target['reason']}"
            lines.append("| " + " | ".join([row["task"], row["method"], target["metric"], published,
                                           f"± {target['tolerance']:.2f}", mean_std_text(row), within,
                                           target["protocol"], target["source"]]) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(out_dir: Path, comparison: dict) -> list[Path]:
    """``comparison.md``, ``comparison.json`` and ``comparison.png`` in ``out_dir``."""
    from elp.eval.plots import plot_metric_vs_params

    out_dir.mkdir(parents=True, exist_ok=True)
    md, js, png = out_dir / "comparison.md", out_dir / "comparison.json", out_dir / "comparison.png"
    md.write_text(comparison_markdown(comparison), encoding="utf-8")
    js.write_text(json.dumps(comparison, indent=2) + "\n", encoding="utf-8")
    plot_metric_vs_params([{**r, "label": f"{r['task']} ({r['test_set']})"} for r in comparison["rows"]], png,
                          title=f"protocol {comparison['protocol']}: mean ± std over {len(comparison['seeds'])} seed(s)")
    return [md, js, png]


def trial_summary(root: Path, protocol: Protocol, selection_data: dict) -> str:
    """One line per grid trial: its learning rates and validation metric, the selected marked."""
    lines = []
    for cell in selection_data["cells"]:
        for trial in cell["trials"]:
            mark = "<- selected" if trial["point"] == cell["selected"] else ""
            lr = ", ".join(f"{g} {v:g}" for g, v in sorted(trial["lr"].items()))
            lines.append(f"{cell['recipe']:<28} {cell['method']:<13} lr{trial['point']} ({lr}): "
                         f"valid {trial['valid_name']} {trial['valid']:.2f} {mark}".rstrip())
    return "\n".join(lines) + "\n"

