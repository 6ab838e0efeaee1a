#!/usr/bin/env python3
"""Training-step cost of two tasks labelled on the same audio: joint against one model per task.

Builds one frozen backbone (random weights at the named architecture: compute does not depend
on the weights), two classification tasks with the method's adapters and a
:class:`elp.core.heads.PooledClassifier` each, and times, interleaved round by round in this
process:

* **single**: each task's own model (:func:`elp.train.multitask.task_model`, an
  :class:`elp.core.model.AdaptedSSL` on its own view of the backbone) on the batch's ``--batch``
  recordings (forward, cross-entropy, backward, Adam step), one task after the other: what two
  single-task runs spend on one batch each;
* **joint**: :class:`elp.train.multitask.JointModel` over both tasks on the same recordings, one
  forward (each recording held once: ``sources``), the two losses summed, one backward and one
  Adam step: what a joint run spends on one mixed batch.

Prints the median CPU seconds of a step of each over ``--rounds`` rounds (after ``--warmup``)
and their ratio, joint / single. ``--shared e ln p`` ties those groups (one transformer pass for
``elp``). Utterance lengths are spread evenly over ``--seconds`` +- 25 %.

Usage::

    python tools/joint_step_bench.py --backbone wavlm_plus --method l_only --batch 8 --seconds 2 --rounds 5
    python tools/joint_step_bench.py --arch small --method elp         # the stand-in's size
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elp.core.backbones import load_backbone  # noqa: E402
from elp.core.heads import PooledClassifier  # noqa: E402
from elp.core.presets import arch_overrides  # noqa: E402
from elp.train.multitask import JointModel, task_model  # noqa: E402

NUM_CLASSES = 6


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="wavlm_plus")
    parser.add_argument("--arch", default=None, choices=[None, "tiny", "small"],
                        help="default: the backbone's own size (e.g. WavLM Base+: 12 layers of 768)")
    parser.add_argument("--method", default="l_only")
    parser.add_argument("--shared", nargs="*", default=[], help="groups the joint model ties, e.g. e ln p")
    parser.add_argument("--batch", type=int, default=8, help="recordings per batch")
    parser.add_argument("--seconds", type=float, default=2.0, help="mean utterance length")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def step(models, heads, optimizer, forward, labels):
    """One training step: ``forward()`` -> per-task (feats, mask); CE of each head, summed; backward; Adam."""
    start = time.process_time()
    optimizer.zero_grad(set_to_none=True)
    loss = sum(torch.nn.functional.cross_entropy(head(feats, mask), labels)
               for head, (feats, mask) in zip(heads, forward()))
    loss.backward()
    optimizer.step()
    return time.process_time() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = load_backbone(args.backbone, pretrained=False, config_overrides=arch_overrides(args.arch)).eval()
    options = {"e_dim": 32, "l_dim": 64} if args.arch else {}
    singles = [task_model(backbone, args.method, options) for _ in range(2)]  # each on its own view
    views = {name: task_model(backbone, args.method, options) for name in ("a", "b")}
    joint = JointModel(backbone, views, shared=args.shared).train()
    dim = singles[0].output_dim
    single_heads = [PooledClassifier(dim, NUM_CLASSES) for _ in range(2)]
    joint_heads = [PooledClassifier(dim, NUM_CLASSES) for _ in range(2)]
    for model in singles:
        model.train()

    def params(modules):
        return list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())

    single_opts = [torch.optim.Adam(params([m, h]), lr=1e-4) for m, h in zip(singles, single_heads)]
    joint_opt = torch.optim.Adam(params([joint, *joint_heads]), lr=1e-4)

    n = args.batch
    lengths = [int(16000 * args.seconds * (0.75 + 0.5 * i / max(1, n - 1))) for i in range(n)]
    wavs = torch.zeros(n, max(lengths))
    for row, length in enumerate(lengths):
        wavs[row, :length] = 0.1 * torch.randn(length)
    wav_lens = torch.tensor(lengths, dtype=torch.float) / max(lengths)
    labels = torch.randint(NUM_CLASSES, (n,))
    sources = torch.cat([torch.arange(n), torch.arange(n)])

    def single_step():
        return sum(step([m], [h], o, lambda m=m: [m(wavs, wav_lens)], labels)
                   for m, h, o in zip(singles, single_heads, single_opts))

    def joint_step():
        return step([joint], joint_heads, joint_opt, lambda: joint(wavs, wav_lens, [n, n], sources), labels)

    times = {"single": [], "joint": []}
    for round_ in range(args.warmup + args.rounds):
        for name, run in (("single", single_step), ("joint", joint_step)):
            spent = run()
            if round_ >= args.warmup:
                times[name].append(spent)
    single, joint_s = statistics.median(times["single"]), statistics.median(times["joint"])
    size = args.arch or "its own size"
    print(f"{args.backbone} ({size}), {args.method}, shared {args.shared or 'nothing'}, plan {joint.plan()}, "
          f"{n} recordings of {args.seconds} s +- 25 %, two tasks on each, {args.threads} thread(s); "
          f"CPU s per step, median of {args.rounds} interleaved rounds after {args.warmup} warm-up")
    print("| two single-task steps | one joint step | joint / single |")
    print("|---:|---:|---:|")
    print(f"| {single:.3f} | {joint_s:.3f} | {joint_s / single:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
