#!/usr/bin/env python3
"""Stages of a joint recipe (several tasks' adapters trained together on one frozen backbone).

Usage::

    python recipes/train_multitask.py data-dirs conf/joint.yaml [--overrides_file conf/mini.yaml] [--key value ...]
    python recipes/train_multitask.py inventory conf/joint.yaml ...   # stage 2: the tasks' inventories cover their sets
    python recipes/train_multitask.py train conf/joint.yaml --tag elp ...   # stage 3
    python recipes/train_multitask.py infer conf/joint.yaml --tag elp ...   # stage 4
    python recipes/train_multitask.py score conf/joint.yaml --tag elp ...   # stage 5

The YAML names its tasks under ``tasks:`` (:mod:`elp.train.multitask`). ``data-dirs`` prints the
tasks' data sets (``train|valid|test <dir>``, for stage 1). Stage 3 trains them together
(:class:`elp.train.brains.multitask.JointBrain`) into ``<output_folder>`` (checkpoints, log,
``train_stats.json``) and writes one model package per task, from that task's best checkpoint,
in ``<output_folder>/<task>/adapters``. Stages 4 and 5 work per task in ``<output_folder>/<task>``
(``decode/``, ``results.json`` marked ``"joint": [the tasks]``) and write the task set's row in
``<output_folder>/results.json`` when every task reports the same metric (their mean).
"""

import json
import logging
import sys
from pathlib import Path

from elp.eval.plots import plot_training_curves
from elp.eval.results import append_results_line, backbone_label, write_results_json
from elp.runtime import UserError, configure_logging, peak_memory_mb, run_main
from elp.serve.package import calibrate_threshold, record_task_options, write_package
from elp.train.hparams import build_node
from elp.train.multitask import (check_joint_hparams, joint_dataset, joint_loader_kwargs, joint_modules,
                                 task_output_dir)
from elp.train.recipe import load_experiment, loader_kwargs, peek_experiment

logger = logging.getLogger("train_multitask")


def present(test_sets) -> list[str]:
    """The test sets that are prepared (a ``wav.scp``), in order."""
    return [str(t) for t in test_sets if Path(t, "wav.scp").is_file()]


def data_dirs(argv) -> int:
    hparams = peek_experiment(argv)
    listed = []  # tasks on the same data dirs list them once
    for spec in hparams["tasks"].values():
        for line in [f"train {spec['train_set']}", f"valid {spec['valid_set']}",
                     *(f"test {test_dir}" for test_dir in present(spec["test_sets"]))]:
            if line not in listed:
                listed.append(line)
    print("\n".join(listed))
    return 0


DERIVED_INVENTORY = ".built_from_train_set"
"""Marker of an inventory stage 2 of a joint recipe built itself (rebuilt when its training labels change)."""


def inventory(argv) -> int:
    hparams = peek_experiment(argv)
    for name, spec in hparams["tasks"].items():
        task = build_node(spec["task"])
        lang_dir, train_set = Path(spec["lang_dir"]), Path(spec["train_set"])
        marker = lang_dir / DERIVED_INVENTORY
        label_files = [train_set / (getattr(task, "label_file", None) or "utt2label"), train_set / "text"]
        newer = marker.is_file() and any(f.is_file() and f.stat().st_mtime > marker.stat().st_mtime
                                         for f in label_files)
        if not lang_dir.is_dir() or newer:
            if not (train_set / "wav.scp").is_file():
                raise UserError(f"tasks.{name}: {lang_dir} is missing: prepare the task's own recipe "
                                "(its stages 0-2; this recipe's stage 0 does it when its data is missing)")
            # a task of this recipe's own on a member's data (e.g. a second label file of the same
            # audio): its inventory is built here from its training set, as a recipe's stage 2 does
            try:
                task.build_inventory(train_set, lang_dir)
            except FileNotFoundError as error:
                raise UserError(f"tasks.{name}: {error}; prepare {train_set.parent} again (stage 0 of the "
                                "recipe that wrote it)") from None
            marker.touch()
            logger.info("tasks.%s: wrote its inventory %s from %s", name, lang_dir, train_set)
        for data_dir in [spec["valid_set"], *present(spec["test_sets"])]:
            task.check_coverage(spec["lang_dir"], data_dir)
    return 0


def build(argv, stage: str):
    hparams, run_opts = load_experiment(argv, stage=stage)
    check_joint_hparams(hparams)
    brain = hparams["brain_class"](modules=joint_modules(hparams), opt_class=hparams["opt_class"], hparams=hparams,
                                   run_opts=run_opts, checkpointer=hparams["checkpointer"])
    return hparams, brain


def best_of_each_task(brain):
    """Yield each task's name after loading its best checkpoint (one load when the tasks share groups)."""
    loaded = None
    for name in brain.task_names:
        key = brain.selection(name)
        if key != loaded:
            brain.recover_best(name)
            loaded = key
        yield name


def train(argv) -> int:
    hparams, brain = build(argv, "train")
    train_set, valid_set = joint_dataset(hparams, "train"), joint_dataset(hparams, "valid")
    train_kwargs = joint_loader_kwargs(hparams, train_set, train=True)
    brain.fit(brain.hparams.epoch_counter, train_set, valid_set, train_loader_kwargs=train_kwargs,
              valid_loader_kwargs=joint_loader_kwargs(hparams, valid_set, train=False))
    output = Path(hparams["output_folder"])
    stats_file = output / "train_stats.json"
    previous = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    mixer = train_kwargs["batch_sampler"]
    epochs = brain.hparams.epoch_counter.current
    stats = {
        "tasks": brain.task_names, "shared": list(brain.joint.shared), "plan": brain.joint.plan(),
        "learnable_params": brain.learnable_parameter_count(),
        "backbone_params": sum(p.numel() for p in brain.joint.backbone.parameters()),
        "train_wall_s": round(brain.train_wall_s, 2),
        "train_utterances": epochs * mixer.epoch_size,
        "utterances_per_epoch": dict(zip(brain.task_names, mixer.task_counts)),
        # units of the last epoch's draw: what the backbone read (tasks on one recording share it)
        "recordings_per_epoch": len(mixer.units(mixer.draw())),
        "peak_mem_mb": round(max(previous.get("peak_mem_mb", 0.0), peak_memory_mb(brain.device)), 1),
        "peak_mem_kind": "cuda max_memory_allocated" if str(brain.device).startswith("cuda") else "cpu peak RSS",
        "epochs": epochs,
        "final_train_loss": (float(brain.train_stats["loss"]) if hasattr(brain, "train_stats")
                             else previous.get("final_train_loss")),
        "per_task": {},
    }
    stats["train_s_per_utterance"] = round(stats["train_wall_s"] / max(1, stats["train_utterances"]), 5)
    source = hparams["backbone_source"]
    if source is None and Path(hparams["backbone"]).is_dir():
        source = hparams["backbone"]
    for name in best_of_each_task(brain):
        spec = hparams["tasks"][name]
        stats["per_task"][name] = {"learnable_params": brain.task_learnable_count(name),
                                   "best_epoch": brain.hparams.epoch_counter.current}
        write_package(task_output_dir(hparams, name) / "adapters", brain.joint.models[name],
                      spec["modules"]["head"], task=spec["task"], backbone_source=source,
                      backbone_pretrained=not hparams["backbone_arch"],
                      extra={"corpus": spec["corpus"], "benchmark": spec["benchmark"], "tag": hparams["tag"],
                             "joint": brain.task_names, "shared": list(brain.joint.shared)},
                      **spec["task"].package_fields(spec["inventory"]))
    stats_file.write_text(json.dumps(stats, indent=2))
    return 0


def infer(argv) -> int:
    hparams, brain = build(argv, "eval")
    for name in best_of_each_task(brain):
        spec = hparams["tasks"][name]
        task, task_dir = spec["task"], task_output_dir(hparams, name)
        test_dirs = present(spec["test_sets"])
        if hasattr(task, "check_inference_inputs"):
            task.check_inference_inputs(test_dirs)
        task_brain = brain.task_brains[name]
        task_hparams = {**hparams, "task": task}

        def kwargs_of(data, task_hparams=task_hparams):
            return loader_kwargs(task_hparams, data, train=False)

        package_dir = task_dir / "adapters"
        if (package_dir / "package.json").exists():
            record_task_options(package_dir, task)
            trials = task.calibration_trials(task_brain, kwargs_of)
            if trials is not None:
                calibrate_threshold(package_dir, **trials)
        for test_dir in test_dirs:
            dataset = task.dataset(test_dir, "test", spec["inventory"],
                                   allow_shell_pipes=bool(hparams.get("allow_shell_pipes", False)))
            task.write_outputs(task_brain, dataset, test_dir, task_dir / "decode" / Path(test_dir).name, kwargs_of,
                               task_dir)
    return 0


def score(argv) -> int:
    hparams = peek_experiment(argv)
    output = Path(hparams["output_folder"])
    stats_file = output / "train_stats.json"
    if not stats_file.exists():
        raise FileNotFoundError(f"{stats_file} is missing: run stage 3 (training) first")
    stats = json.loads(stats_file.read_text())
    names = list(hparams["tasks"])
    if (output / "train_log.txt").exists():
        plot_training_curves(output / "train_log.txt", output / "training_curves.png")
    common = {"backbone": backbone_label(hparams), "method": hparams["method"], "tag": hparams["tag"],
              "backbone_params": stats.get("backbone_params"), "train_wall_s": stats["train_wall_s"],
              "peak_mem_mb": stats["peak_mem_mb"], "peak_mem_kind": stats.get("peak_mem_kind"),
              "seed": hparams["seed"], "joint": names, "shared": stats.get("shared", [])}
    rows = []
    for name, spec in hparams["tasks"].items():
        task, task_dir = build_node(spec["task"]), task_output_dir(hparams, name)
        metric, extra = None, {}
        for index, test_dir in enumerate(present(spec["test_sets"])):
            set_name = Path(test_dir).name
            set_metric, set_extra = task.score(test_dir, task_dir / "decode" / set_name)
            labels = Path(spec["lang_dir"]) / "labels.txt"
            task.plot(test_dir, task_dir / "decode" / set_name, task_dir,
                      labels.read_text().split() if labels.exists() else None)
            if index == 0:
                metric, extra = set_metric, dict(set_extra)
            else:
                extra[f"{set_metric['name']}_{set_name}"] = set_metric["value"]
        if metric is None:
            raise FileNotFoundError(f"tasks.{name}: none of its test sets {spec['test_sets']} is prepared")
        result = {**common, "benchmark": spec["benchmark"], "corpus": spec["corpus"], "metric": metric,
                  "learnable_params": stats["per_task"][name]["learnable_params"],
                  "extra_metrics": {k: round(float(v), 4) for k, v in extra.items()}, "exp_dir": str(task_dir)}
        rows.append(write_results_json(task_dir / hparams["results_file"], result))
        if hparams["results_md"]:
            append_results_line(hparams["results_md"], rows[-1])
        print(json.dumps({name: rows[-1]["metric"]}))
    metrics = {(r["metric"]["name"], r["metric"]["higher_is_better"]) for r in rows}
    if len(metrics) == 1:  # the task set's row: the mean of one metric over the tasks
        first = rows[0]["metric"]
        chances = [r["metric"]["chance"] for r in rows]
        result = {**common, "benchmark": "+".join(names), "corpus": hparams["corpus"],
                  "metric": {**first, "value": sum(r["metric"]["value"] for r in rows) / len(rows),
                             "chance": None if None in chances else sum(chances) / len(chances)},
                  "learnable_params": stats["learnable_params"],
                  "extra_metrics": {f"{first['name']}_{r['benchmark']}": r["metric"]["value"] for r in rows},
                  "exp_dir": str(output)}
        result = write_results_json(output / hparams["results_file"], result)
        if hparams["results_md"]:
            append_results_line(hparams["results_md"], result)
    return 0


ACTIONS = {"data-dirs": data_dirs, "inventory": inventory, "train": train, "infer": infer, "score": score}


def main(argv) -> int:
    if not argv or argv[0] not in ACTIONS:
        raise ValueError(f"first argument: one of {', '.join(ACTIONS)} (got {argv[0] if argv else 'nothing'})")
    if argv[0] != "data-dirs":
        configure_logging()
    return ACTIONS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
