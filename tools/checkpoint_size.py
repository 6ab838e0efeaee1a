#!/usr/bin/env python3
"""Bytes one training checkpoint and one model package take on disk, per method.

Builds the backbone architecture with random weights (no download), the method and a
classification head, takes one Adam step (so the optimizer state exists, as in any checkpoint
after the first step), saves a checkpoint the way the recipes do (trainable tensors, head,
optimizer) and a model package, and prints their sizes.

Usage::

    python tools/checkpoint_size.py --backbone wavlm_plus --methods elp full
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from elp.core.backbones import load_backbone
from elp.core.heads import PooledClassifier
from elp.core.model import AdaptedSSL
from elp.serve.package import write_package
from elp.train.checkpoints import AtomicCheckpointer, TrainableState


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="wavlm_plus")
    parser.add_argument("--methods", nargs="+", default=["elp", "full"])
    parser.add_argument("--num-classes", type=int, default=18, help="outputs of the head (default: %(default)s)")
    args = parser.parse_args(argv)
    print("| method | learnable incl. head | tensors (fp32) | checkpoint | model package |")
    print("|---|---:|---:|---:|---:|")
    for method in args.methods:
        torch.manual_seed(0)
        model = AdaptedSSL(load_backbone(args.backbone, pretrained=False), method)
        head = PooledClassifier(model.output_dim, args.num_classes, hidden_dim=256)
        params = list(model.learnable_parameters().values()) + list(head.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-3)
        sum(p.sum() for p in params).backward()
        optimizer.step()
        with tempfile.TemporaryDirectory() as tmp:
            save = Path(tmp) / "save"
            AtomicCheckpointer(save, recoverables={"model": TrainableState(model), "head": head,
                                                   "optimizer": optimizer}).save_checkpoint()
            package = write_package(Path(tmp) / "package", model, head, task="classify",
                                    labels=[str(i) for i in range(args.num_classes)], backbone_pretrained=True)
            count = sum(p.numel() for p in params)
            print(f"| {method} | {count:,} | {4 * count / 1e6:.1f} MB | {disk_bytes(save) / 1e6:.1f} MB | "
                  f"{disk_bytes(package) / 1e6:.1f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
