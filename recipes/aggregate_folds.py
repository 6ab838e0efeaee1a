#!/usr/bin/env python3
"""Mean over cross-validation folds (IEMOCAP's leave-one-session-out).

Usage::

    python recipes/aggregate_folds.py --exp exp/elp --folds 1 2 3 4 5 [--results-md RESULTS.md]

Reads ``<exp>/fold<k>/fold_results.json`` and writes ``<exp>/results.json``: the mean metric,
each fold's value in ``extra_metrics``, summed training time, the largest peak memory (accelerator and
host) and the first fold's effective batch.
"""

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

from elp.eval.results import append_results_line, write_results_json


def aggregate(folds: list[dict]) -> dict:
    first = folds[0]
    result = {key: first[key] for key in ("benchmark", "corpus", "backbone", "method", "learnable_params")}
    result.update({key: first[key] for key in ("backbone_params", "seed", "peak_mem_kind") if key in first})
    result["tag"] = first["tag"].rsplit("_fold", 1)[0]
    result["metric"] = {**first["metric"], "value": mean(f["metric"]["value"] for f in folds),
                        "chance": mean(f["metric"]["chance"] for f in folds)}
    result["train_wall_s"] = sum(f["train_wall_s"] for f in folds)
    result["peak_mem_mb"] = max(f["peak_mem_mb"] for f in folds)
    host = [f["peak_host_rss_mb"] for f in folds if f.get("peak_host_rss_mb") is not None]
    if host:
        result["peak_host_rss_mb"] = max(host)
    if first.get("effective_batch") is not None:  # same settings in every fold; its steps per epoch are fold 1's
        result["effective_batch"] = first["effective_batch"]
    extra = {f"{first['metric']['name']}_fold{f['fold']}": f["metric"]["value"] for f in folds}
    for key in first.get("extra_metrics", {}):
        values = [f["extra_metrics"][key] for f in folds if key in f.get("extra_metrics", {})]
        extra[key] = round(mean(values), 4)
    result["extra_metrics"] = extra
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", required=True, type=Path)
    parser.add_argument("--folds", nargs="+", required=True)
    parser.add_argument("--results-md", type=Path)
    args = parser.parse_args(argv)
    folds = []
    for fold in args.folds:
        path = args.exp / f"fold{fold}" / "fold_results.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run stages 3-5 for fold {fold} first")
        folds.append({**json.loads(path.read_text()), "fold": fold})
    result = write_results_json(args.exp / "results.json", aggregate(folds))
    if args.results_md:
        append_results_line(args.results_md, result)
    print(json.dumps(result["metric"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
