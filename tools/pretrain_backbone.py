#!/usr/bin/env python3
"""Pretrain a small backbone on a synthetic corpus, so CPU smoke runs have a real *frozen* model.

No machine here reaches a model hub, and a randomly initialised transformer is a poor frozen
backbone (deep random attention mixes every frame into nearly the same vector, so frozen-
backbone methods have almost nothing to read). This tool stands in for self-supervised
pre-training at toy scale: it trains every part of a small WavLM/wav2vec2/HuBERT (CNN
included) for a fixed number of steps on a LibriSpeech-layout corpus with two objectives,

* CTC over characters on the last layer (linguistic content), and
* speaker classification from the mean of the first layer (speaker information),

then saves a HF checkpoint directory that recipes load with ``backbone_source``. The corpus
should not be a task's own training data (``run_all.sh`` builds a separate one with another
seed).

Usage::

    python tools/pretrain_backbone.py --corpus exp/pretrain_corpus [more corpora ...] \\
        --out exp/backbone_small [--backbone wavlm_plus] [--arch small] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from elp.core.backbones import SSLBackbone, backbone_config
from elp.data.audio import read_audio
from elp.data.inventory import CharTokenizer
from elp.core.presets import ARCH_PRESETS
from elp.runtime import configure_logging

logger = logging.getLogger("pretrain_backbone")


def read_librispeech_layout(corpus: Path) -> list[tuple[str, str, str]]:
    """(flac path, speaker, transcript) for every utterance of a LibriSpeech-layout folder."""
    items = []
    for trans in sorted(corpus.rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt, _, text = line.partition(" ")
            items.append((str(trans.parent / f"{utt}.flac"), utt.split("-")[0], text))
    if not items:
        raise SystemExit(f"no *.trans.txt under {corpus}: build it with tools/mini_corpus/librispeech.py")
    return items


def pad(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([w.shape[0] for w in wavs])
    batch = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        batch[i, : w.shape[0]] = w
    return batch, lengths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path, nargs="+",
                        help="LibriSpeech-layout corpora (every utterance of each)")
    parser.add_argument("--out", required=True, type=Path, help="output HF checkpoint directory")
    parser.add_argument("--backbone", default="wavlm_plus")
    parser.add_argument("--arch", default="small", choices=sorted(ARCH_PRESETS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configure_logging("pretrain_backbone.py", force=True)

    if (args.out / "config.json").exists() and (args.out / "pretrain_stats.json").exists():
        logger.info("%s exists; delete it to pretrain again", args.out)
        return 0
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    items = [item for corpus in args.corpus for item in read_librispeech_layout(corpus)]
    tokenizer = CharTokenizer.from_texts(text for _, _, text in items)
    speakers = sorted({spk for _, spk, _ in items})
    audio = [read_audio(path) for path, _, _ in items]
    logger.info("%d utterances, %d speakers, %d tokens", len(items), len(speakers), tokenizer.vocab_size)

    backbone = SSLBackbone.from_config(args.backbone, backbone_config(args.backbone, **ARCH_PRESETS[args.arch]))
    model = backbone.model
    model.feature_extractor.requires_grad_(True)
    model.train()
    hidden = model.config.hidden_size
    ctc_head = torch.nn.Linear(hidden, tokenizer.vocab_size)
    speaker_head = torch.nn.Linear(hidden, len(speakers))
    params = list(model.parameters()) + list(ctc_head.parameters()) + list(speaker_head.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)

    started = time.time()
    order: list[int] = []
    first_loss = last_loss = None
    for step in range(args.steps):
        if len(order) < args.batch_size:
            order = list(range(len(items)))
            rng.shuffle(order)
        batch = [order.pop() for _ in range(args.batch_size)]
        wavs, lengths = pad([audio[i] for i in batch])
        mask = (torch.arange(wavs.shape[1])[None] < lengths[:, None]).long()
        out = model(wavs, attention_mask=mask, output_hidden_states=True)
        frames = model._get_feat_extract_output_lengths(lengths)
        log_probs = F.log_softmax(ctc_head(out.last_hidden_state), -1).transpose(0, 1)
        targets = [torch.tensor(tokenizer.encode(items[i][2])) for i in batch]
        ctc = F.ctc_loss(log_probs, torch.cat(targets), frames, torch.tensor([len(t) for t in targets]),
                         blank=0, zero_infinity=True)
        frame_mask = (torch.arange(out.hidden_states[1].shape[1])[None] < frames[:, None]).unsqueeze(-1)
        pooled = (out.hidden_states[1] * frame_mask).sum(1) / frame_mask.sum(1)
        spk = F.cross_entropy(speaker_head(pooled), torch.tensor([speakers.index(items[i][1]) for i in batch]))
        loss = ctc + spk
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        scheduler.step()
        last_loss = (float(ctc), float(spk))
        first_loss = first_loss or last_loss
        if step % 50 == 0 or step == args.steps - 1:
            logger.info("step %d/%d: ctc %.3f speaker %.3f (%.0f s)", step, args.steps, *last_loss,
                        time.time() - started)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    stats = {"steps": args.steps, "seconds": round(time.time() - started, 1), "first_loss": first_loss,
             "last_loss": last_loss, "utterances": len(items), "arch": args.arch, "backbone": args.backbone}
    (args.out / "pretrain_stats.json").write_text(json.dumps(stats, indent=2))
    logger.info("saved %s: %s", args.out, stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
