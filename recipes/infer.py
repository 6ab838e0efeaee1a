#!/usr/bin/env python3
"""Stage 4: the best checkpoint on every test set of a recipe.

Usage::

    python recipes/infer.py conf/train.yaml --tag elp [--overrides_file conf/mini.yaml]

Writes ``<output_folder>/decode/<set>/`` with what the recipe's task writes (ASR ``hyp.txt`` and
``ref.txt``; classification ``predictions.txt``; SV ``scores.txt`` of the trial list). Before
the backbone is loaded, the experiment must hold a trained model and every test set (and the
other data sets the task embeds) is checked: validated by stage 1, holding its references, an
SV trial list naming only its utterances.
"""

import sys
from pathlib import Path

from elp.runtime import configure_logging, run_main
from elp.serve.package import calibrate_threshold, record_task_options
from elp.train.experiment import require_trained_model
from elp.train.hparams import build_node
from elp.train.recipe import (build_brain, load_experiment, loader_kwargs, make_dataset, peek_experiment,
                              present_test_sets)


def main(argv) -> int:
    configure_logging()
    # what the inputs can be wrong about is checked before the hparams load the backbone
    peeked = peek_experiment(argv)
    require_trained_model(peeked["output_folder"])
    test_dirs = present_test_sets(peeked)
    build_node(peeked["task"]).check_inference_inputs(test_dirs)
    hparams, run_opts = load_experiment(argv, stage="eval")
    brain = build_brain(hparams, run_opts)
    brain.recover_best()
    decode_root = Path(hparams["output_folder"]) / "decode"
    package_dir = Path(hparams["output_folder"]) / "adapters"
    if (package_dir / "package.json").exists():
        # the package predicts with the task options of this stage (SV windows), and SV packages
        # get their decision threshold from the same windowed embeddings
        record_task_options(package_dir, hparams["task"])
        trials = hparams["task"].calibration_trials(brain, lambda data: loader_kwargs(hparams, data, train=False))
        if trials is not None:
            calibrate_threshold(package_dir, **trials)
    for test_dir in test_dirs:
        dataset = make_dataset(hparams, test_dir, "test")
        hparams["task"].write_outputs(brain, dataset, test_dir, decode_root / Path(test_dir).name,
                                      lambda data: loader_kwargs(hparams, data, train=False),
                                      Path(hparams["output_folder"]))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
