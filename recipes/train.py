#!/usr/bin/env python3
"""Stage 3: train one (task, backbone, method) from a recipe's HyperPyYAML file.

Usage::

    python recipes/train.py conf/train.yaml --data_dir data --tag elp --method elp
    torchrun --standalone --nproc_per_node=2 recipes/train.py conf/train.yaml \\
        --data_dir data --tag elp --distributed_backend=gloo      # 2 CPU processes

Any hparam can be overridden with ``--<key> <value>``. Rerunning resumes from the latest
checkpoint in ``<output_folder>/save`` (intra-epoch ones included). On success it writes
``<output_folder>/train_stats.json`` (learnable parameters, wall time, peak memory) and the
adapter-only export ``<output_folder>/adapters/``.
"""

import json
import sys
from pathlib import Path

import speechbrain as sb

from elp.brains.base import peak_memory_mb, unwrap
from elp.export import save_adapters
from elp.recipe import build_brain, build_inventory, configure_logging, load_experiment, loader_kwargs, make_dataset


def main(argv) -> int:
    configure_logging()
    hparams, run_opts = load_experiment(argv)
    inventory = build_inventory(hparams)
    train_set = make_dataset(hparams["train_set"], hparams, inventory, "train")
    valid_set = make_dataset(hparams["valid_set"], hparams, inventory, "valid")
    brain = build_brain(hparams, run_opts, inventory)
    brain.fit(brain.hparams.epoch_counter, train_set, valid_set,
              train_loader_kwargs=loader_kwargs(hparams, train_set, train=True),
              valid_loader_kwargs=loader_kwargs(hparams, valid_set, train=False))
    if sb.utils.distributed.if_main_process():
        output = Path(hparams["output_folder"])
        previous = json.loads((output / "train_stats.json").read_text()) if (output / "train_stats.json").exists() else {}
        stats = {
            "learnable_params": brain.learnable_parameter_count(),
            "train_wall_s": round(brain.train_wall_s, 2),  # includes an interrupted run's epochs
            "peak_mem_mb": round(max(previous.get("peak_mem_mb", 0.0), peak_memory_mb(brain.device)), 1),
            "epochs": brain.hparams.epoch_counter.current,
            "final_train_loss": float(brain.train_stats["loss"]) if hasattr(brain, "train_stats") else None,
        }
        (output / "train_stats.json").write_text(json.dumps(stats, indent=2))
        save_adapters(unwrap(brain.modules.model), output / "adapters", head=unwrap(brain.modules.head))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
