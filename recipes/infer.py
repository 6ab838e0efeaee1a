#!/usr/bin/env python3
"""Stage 4: inference with the best checkpoint on every test set of a recipe.

Usage::

    python recipes/infer.py conf/train.yaml --data_dir data --tag elp

Writes ``<output_folder>/decode/<set>/``:

* ASR: ``hyp.txt`` (``<utt> <hypothesis>``, greedy CTC) and ``ref.txt``;
* classification: ``predictions.txt`` (``<utt> <predicted> <reference>``);
* SV: ``scores.txt`` (``<enroll> <test> <score> target|nontarget``, cosine; S-norm with the
  training embeddings as cohort when ``snorm_cohort`` > 0).
"""

import sys
from pathlib import Path

import speechbrain as sb
import torch

from elp.data.kaldi_dir import read_data_dir, read_trials
from elp.recipe import build_brain, build_inventory, configure_logging, load_experiment, loader_kwargs, make_dataset
from elp.scoring import cosine_scores, s_norm


def write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)


def score_trials(embeddings: dict, trials, cohort: torch.Tensor | None, top_k: int | None):
    """Cosine (and optionally S-normalised) scores of ``trials``."""
    enroll = torch.stack([embeddings[t.enroll] for t in trials])
    test = torch.stack([embeddings[t.test] for t in trials])
    scores = cosine_scores(enroll, test)
    if cohort is not None:
        utts = sorted(embeddings)
        index = {u: i for i, u in enumerate(utts)}
        against_cohort = cosine_scores(torch.stack([embeddings[u] for u in utts]), cohort, all_pairs=True)
        scores = s_norm(scores, against_cohort[[index[t.enroll] for t in trials]],
                        against_cohort[[index[t.test] for t in trials]], top_k=top_k)
    return scores


def main(argv) -> int:
    configure_logging()
    hparams, run_opts = load_experiment(argv)
    inventory = build_inventory(hparams)
    brain = build_brain(hparams, run_opts, inventory)
    key, mode = hparams["valid_key"], hparams["valid_key_mode"]
    brain.checkpointer.recover_if_possible(**({"min_key": key} if mode == "min" else {"max_key": key}))
    decode_root = Path(hparams["output_folder"]) / "decode"
    task = hparams["task"]
    for test_dir in hparams["test_sets"]:
        name = Path(test_dir).name
        dataset = make_dataset(test_dir, hparams, inventory, "test")
        kwargs = loader_kwargs(hparams, dataset, train=False)
        outputs = brain.predict(dataset, kwargs)
        if not sb.utils.distributed.if_main_process():
            continue
        data = read_data_dir(test_dir)
        if task == "asr":
            write_lines(decode_root / name / "hyp.txt", (f"{u} {outputs[u]}".rstrip() for u in sorted(outputs)))
            write_lines(decode_root / name / "ref.txt", (f"{u} {data.text[u]}" for u in sorted(outputs)))
        elif task == "classify":
            write_lines(decode_root / name / "predictions.txt",
                        (f"{u} {outputs[u]} {data.utt2label[u]}" for u in sorted(outputs)))
        else:
            trials = read_trials(Path(test_dir) / "trials")
            cohort = None
            if hparams.get("snorm_cohort", 0):
                train = make_dataset(hparams["train_set"], hparams, inventory, "test")
                train_emb = brain.predict(train, kwargs)
                cohort = torch.stack([train_emb[u] for u in sorted(train_emb)][: hparams["snorm_cohort"]])
            scores = score_trials(outputs, trials, cohort, hparams.get("snorm_top_k"))
            write_lines(decode_root / name / "scores.txt",
                        (f"{t.enroll} {t.test} {s:.6f} {'target' if t.target else 'nontarget'}"
                         for t, s in zip(trials, scores.tolist())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
