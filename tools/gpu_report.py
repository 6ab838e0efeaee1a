#!/usr/bin/env python3
"""Table of what each recipe's GPU run did (``tools/gpu_check.sh`` part 4).

For every ``egs/<corpus>/<task>/exp/<tag>`` (folds: ``exp/<tag>/fold*``) it reads
``train_stats.json`` (training wall time of the epochs, peak CUDA memory), the training set's
``utt2num_samples`` and the stage-5 ``results.json``, and prints one markdown row per recipe:
utterances and audio hours trained, utterances and audio seconds per wall second of training
(audio counted as trained: SV's random crops at their cropped length, read from the run's
hparams record), peak memory and the
metric (a random backbone on synthetic audio: a check that scoring ran, not a result).

Usage::

    python tools/gpu_report.py --root . --tag gpu_elp
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from elp.data.kaldi_dir import read_utt2num_samples

SAMPLE_RATE = 16000


def crop_seconds(recorded: dict) -> float | None:
    """The run's training crop (the task's ``max_train_seconds``, as its hparams record holds it), if any.

    Examples
    --------
    >>> crop_seconds({"task.!new:elp.tasks.SpeakerVerification.max_train_seconds": 3.0, "seed": 1})
    3.0
    """
    crops = [v for k, v in recorded.items() if k.startswith("task.") and k.endswith(".max_train_seconds")]
    return float(crops[0]) if crops and crops[0] else None


def recipe_row(recipe: Path, exp: Path) -> str:
    """One markdown row for the run in ``exp``."""
    stats = json.loads((exp / "train_stats.json").read_text())
    recorded = json.loads((exp / "hparams_record.json").read_text())["hparams"]
    train_dir = recorded["train_set"]
    lengths = [n / SAMPLE_RATE for n in read_utt2num_samples(Path(recipe, train_dir) / "utt2num_samples").values()]
    crop = crop_seconds(recorded)
    trained = sum(min(s, crop) if crop else s for s in lengths) * stats["epochs"]
    wall = stats["train_wall_s"]
    metric = ""
    for name in ("results.json", "fold_results.json"):
        if (exp / name).exists():
            record = json.loads((exp / name).read_text())["metric"]
            metric = f"{record['name']} {record['value']:.3g} (chance {record.get('chance', float('nan')):.3g})"
    return (f"| {recipe.parent.name}/{recipe.name} | {len(lengths) * stats['epochs']} | {trained / 3600:.2f} | "
            f"{wall:.1f} | {len(lengths) * stats['epochs'] / wall:.1f} | {trained / wall:.0f} | "
            f"{stats['peak_mem_mb'] / 1024:.2f} | {metric.strip()} |")


def main(argv: list[str]) -> int:
    """Print the table for every recipe that has a run tagged ``--tag``; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", type=Path)
    parser.add_argument("--tag", required=True)
    args = parser.parse_args(argv)
    print("| recipe | utterances trained | audio h trained | train wall s | utt/s | audio s/s | "
          "peak GiB | metric (random backbone) |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe in sorted(p.parent for p in args.root.glob("egs/*/*/run.sh")):
        exp = recipe / "exp" / args.tag
        runs = [exp] if (exp / "train_stats.json").exists() else sorted(p.parent for p in exp.glob("fold*/train_stats.json"))
        for run in runs:
            try:
                print(recipe_row(recipe, run))
            except (OSError, KeyError, ValueError) as err:
                print(f"| {recipe.parent.name}/{recipe.name} | failed to read {run}: {err} |||||||")
        if not runs:
            print(f"| {recipe.parent.name}/{recipe.name} | no finished run in {exp} |||||||")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
