#!/usr/bin/env python3
"""Stage 5: score stage 4's outputs with SpeechBrain's metrics; write results.json and RESULTS.md.

Usage::

    python recipes/score.py conf/train.yaml --data_dir data --tag elp

The primary metric per task (``metric.chance`` is what a system without information gets):

========== ============================ ==============================================
task       metric                       chance
========== ============================ ==============================================
asr        WER % of the first test set  100 (empty hypotheses)
sv         EER %                        50
classify   accuracy % (UA as extra)     majority-class accuracy of the test set
========== ============================ ==============================================
"""

import json
import sys
from collections import Counter
from pathlib import Path

from elp.recipe import configure_logging, load_experiment
from elp.scoring import character_error_rate, equal_error_rate, min_dcf, unweighted_accuracy, word_error_rate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summarize import append_results_line, write_results_json  # noqa: E402


def read_pairs(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        utt, _, rest = line.partition(" ")
        pairs[utt] = rest
    return pairs


def score_asr(decode: Path) -> tuple[dict, dict]:
    refs, hyps = read_pairs(decode / "ref.txt"), read_pairs(decode / "hyp.txt")
    wer = word_error_rate(refs, hyps)
    cer = character_error_rate(refs, hyps)
    return ({"name": "wer", "value": wer["wer"], "higher_is_better": False, "chance": 100.0},
            {"cer": cer["cer"], "ins": wer["ins"], "del": wer["del"], "sub": wer["sub"]})


def score_classify(decode: Path) -> tuple[dict, dict]:
    rows = [line.split() for line in (decode / "predictions.txt").read_text().splitlines()]
    preds, refs = [r[1] for r in rows], [r[2] for r in rows]
    classes = sorted(set(refs) | set(preds))
    pred_ids, ref_ids = [classes.index(p) for p in preds], [classes.index(r) for r in refs]
    acc = 100.0 * sum(p == r for p, r in zip(preds, refs)) / len(refs)
    majority = 100.0 * Counter(refs).most_common(1)[0][1] / len(refs)
    return ({"name": "accuracy", "value": acc, "higher_is_better": True, "chance": majority},
            {"ua": unweighted_accuracy(pred_ids, ref_ids, len(classes)), "num_utts": len(refs)})


def score_sv(decode: Path) -> tuple[dict, dict]:
    rows = [line.split() for line in (decode / "scores.txt").read_text().splitlines()]
    scores = [float(r[2]) for r in rows]
    labels = [1 if r[3] == "target" else 0 for r in rows]
    eer = equal_error_rate(scores, labels)["eer"]
    dcf = min_dcf(scores, labels, p_target=0.01)["min_dcf"]
    return ({"name": "eer", "value": eer, "higher_is_better": False, "chance": 50.0},
            {"min_dcf": dcf, "num_trials": len(rows)})


SCORERS = {"asr": score_asr, "classify": score_classify, "sv": score_sv}


def backbone_label(hparams: dict) -> str:
    """``wavlm_plus``, ``wavlm_plus[tiny]`` (random weights) or ``wavlm_plus@<dir>`` (local weights)."""
    label = hparams["backbone"]
    if not hparams.get("backbone_pretrained", True) and hparams.get("backbone_arch"):
        return f"{label}[{hparams['backbone_arch']}]"
    source = hparams.get("backbone_source")
    if source and Path(source).is_dir():
        return f"{label}@{Path(source).name}"
    return label


def main(argv) -> int:
    configure_logging()
    hparams, _ = load_experiment(argv)
    output = Path(hparams["output_folder"])
    scorer = SCORERS[hparams["task"]]
    metric, extra = None, {}
    for index, test_dir in enumerate(hparams["test_sets"]):
        name = Path(test_dir).name
        set_metric, set_extra = scorer(output / "decode" / name)
        if index == 0:
            metric, extra = set_metric, dict(set_extra)
        else:
            extra[f"{set_metric['name']}_{name}"] = set_metric["value"]
    train_stats = json.loads((output / "train_stats.json").read_text())
    result = {
        "task": hparams.get("task_name", hparams["task"]), "corpus": hparams["corpus"],
        "backbone": backbone_label(hparams),
        "method": hparams["method"], "tag": hparams["tag"], "metric": metric,
        "learnable_params": train_stats["learnable_params"], "train_wall_s": train_stats["train_wall_s"],
        "peak_mem_mb": train_stats["peak_mem_mb"],
        "extra_metrics": {k: round(float(v), 4) for k, v in extra.items()}, "exp_dir": str(output),
    }
    result = write_results_json(output / hparams.get("results_file", "results.json"), result)
    if hparams.get("results_md"):
        append_results_line(hparams["results_md"], result)
    print(json.dumps(result["metric"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
