#!/usr/bin/env python3
"""Stage 5: score stage 4's outputs; write results.json and the recipe's RESULTS.md row.

Usage::

    python recipes/score.py conf/train.yaml --tag elp [--overrides_file conf/mini.yaml]

The recipe's task computes the metric of every test set (the first one is the primary metric,
the others go to ``extra_metrics`` as ``<metric>_<set>``); only the decode files and the test
sets' data dirs are read (no model). A decode file that does not hold each utterance (SV:
trial) of its test set exactly once, as the data dir lists them (``text``, ``utt2label``,
``trials``), is a one-line error naming the file, the counts and the first ids, and saying
to rerun stage 4 (:func:`elp.eval.scoring.check_decode_coverage`).
"""

import json
import sys
from pathlib import Path

from elp.train.hparams import build_node
from elp.eval.plots import plot_training_curves
from elp.train.recipe import peek_experiment, present_test_sets
from elp.eval.results import append_results_line, backbone_label, training_record, write_results_json
from elp.runtime import configure_logging, run_main


def main(argv) -> int:
    configure_logging()
    hparams = peek_experiment(argv)
    task = build_node(hparams["task"])
    output = Path(hparams["output_folder"])
    metric, extra = None, {}
    for index, test_dir in enumerate(present_test_sets(hparams)):
        name = Path(test_dir).name
        set_metric, set_extra = task.score(test_dir, output / "decode" / name)
        labels = (Path(hparams["lang_dir"]) / "labels.txt")
        task.plot(test_dir, output / "decode" / name, output,
                  labels.read_text().split() if labels.exists() else None)
        if index == 0:
            metric, extra = set_metric, dict(set_extra)
        else:
            extra[f"{set_metric['name']}_{name}"] = set_metric["value"]
    if (output / "train_log.txt").exists():
        plot_training_curves(output / "train_log.txt", output / "training_curves.png")
    stats_file = output / "train_stats.json"
    if not stats_file.exists():
        raise FileNotFoundError(f"{stats_file} is missing: run stage 3 (training) first")
    train_stats = json.loads(stats_file.read_text())
    result = {
        "benchmark": hparams["benchmark"], "corpus": hparams["corpus"], "backbone": backbone_label(hparams),
        "method": hparams["method"], "tag": hparams["tag"], "metric": metric,
        "learnable_params": train_stats["learnable_params"],
        "backbone_params": train_stats.get("backbone_params"),
        "train_wall_s": train_stats["train_wall_s"], "peak_mem_mb": train_stats["peak_mem_mb"],
        "peak_mem_kind": train_stats.get("peak_mem_kind"), **training_record(train_stats),
        "seed": hparams["seed"],
        "extra_metrics": {k: round(float(v), 4) for k, v in extra.items()}, "exp_dir": str(output),
    }
    result = write_results_json(output / hparams["results_file"], result)
    if hparams["results_md"]:
        append_results_line(hparams["results_md"], result)
    print(json.dumps(result["metric"]))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
