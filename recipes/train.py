#!/usr/bin/env python3
"""Stage 3: train the model a recipe's HyperPyYAML file builds.

Usage::

    python recipes/train.py conf/train.yaml --tag elp [--overrides_file conf/mini.yaml] [--key value ...]
    torchrun --standalone --nproc_per_node=2 recipes/train.py conf/train.yaml --tag elp \\
        --distributed_backend=gloo      # 2 CPU processes

Rerunning resumes from the latest checkpoint in ``<output_folder>/save``. On success it writes
``<output_folder>/train_stats.json`` (with ``valid_metric``, the validation metric of the best
checkpoint) and the model package of the *best* checkpoint (the model
stage 4 evaluates) in ``<output_folder>/adapters/``: the adapter export plus everything inference
needs (:mod:`elp.serve.package`; ``elp infer --package``).
"""

import json
import sys
from pathlib import Path

import speechbrain as sb
import torch

from elp.core.backbones import weights_hash
from elp.train.brains.base import unwrap
from elp.serve.package import write_package
from elp.train.recipe import build_brain, load_experiment, loader_kwargs, make_dataset
from elp.runtime import configure_logging, peak_memory_mb, run_main


def main(argv) -> int:
    configure_logging()
    hparams, run_opts = load_experiment(argv)
    train_set = make_dataset(hparams, hparams["train_set"], "train")
    valid_set = make_dataset(hparams, hparams["valid_set"], "valid")
    brain = build_brain(hparams, run_opts)
    brain.fit(brain.hparams.epoch_counter, train_set, valid_set,
              train_loader_kwargs=loader_kwargs(hparams, train_set, train=True),
              valid_loader_kwargs=loader_kwargs(hparams, valid_set, train=False, shard=True))
    output = Path(hparams["output_folder"])
    if torch.distributed.is_initialized():  # every rank must end with the same weights
        rank = torch.distributed.get_rank()
        learnable = {**{f"model.{k}": v for k, v in unwrap(brain.modules.model).learnable_parameters().items()},
                     **{f"head.{k}": v for k, v in unwrap(brain.modules.head).state_dict().items()}}
        (output / f"rank{rank}_learnable.sha256").write_text(weights_hash(learnable) + "\n")
    stats_file = output / "train_stats.json"
    if sb.utils.distributed.if_main_process():
        previous = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        stats = {
            "learnable_params": brain.learnable_parameter_count(),
            "backbone_params": sum(p.numel() for p in unwrap(brain.modules.model).backbone.parameters()),
            "train_wall_s": round(brain.train_wall_s, 2),  # includes an interrupted run's epochs
            "peak_mem_mb": round(max(previous.get("peak_mem_mb", 0.0), peak_memory_mb(brain.device)), 1),
            "peak_mem_kind": "cuda max_memory_allocated" if str(brain.device).startswith("cuda") else "cpu peak RSS",
            # the host's share on every device (data loading, caches, the optimizer on CPU): VmHWM of rank 0
            "peak_host_rss_mb": round(max(previous.get("peak_host_rss_mb", 0.0), peak_memory_mb("cpu")), 1),
            # what one optimizer step saw (averages over an epoch), the processes and the learning-rate factor
            "effective_batch": getattr(brain, "train_batch", None) or previous.get("effective_batch"),
            "epochs": brain.hparams.epoch_counter.current,
            # a rerun of a finished run trains no epoch: keep the loss the run ended with
            "final_train_loss": (float(brain.train_stats["loss"]) if hasattr(brain, "train_stats")
                                 else previous.get("final_train_loss")),
        }
    brain.recover_best()  # on every rank: under DDP the checkpointer lists checkpoints collectively
    key, mode = hparams["task"].valid_key, hparams["task"].valid_key_mode  # what chose that checkpoint
    best = brain.checkpointer.find_checkpoint(**({"min_key": key} if mode == "min" else {"max_key": key}))
    if sb.utils.distributed.if_main_process():
        stats["best_epoch"] = brain.hparams.epoch_counter.current
        # the validation metric of the best checkpoint: what a learning-rate search compares
        stats["valid_metric"] = {"name": key, "value": float(best.meta[key]), "higher_is_better": mode == "max"}
        stats_file.write_text(json.dumps(stats, indent=2))
        task, source = hparams["task"], hparams["backbone_source"]
        if source is None and Path(hparams["backbone"]).is_dir():
            source = hparams["backbone"]
        write_package(output / "adapters", unwrap(brain.modules.model), unwrap(brain.modules.head), task=task,
                      backbone_source=source, backbone_pretrained=not hparams["backbone_arch"],
                      extra={"corpus": hparams["corpus"], "benchmark": hparams["benchmark"], "tag": hparams["tag"]},
                      **task.package_fields(hparams["inventory"]))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
