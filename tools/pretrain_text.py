#!/usr/bin/env python3
"""Transcripts for the synthetic pre-training corpus, disjoint from every recipe's data.

Takes real SLURP sentences (``../shared/data/slurp`` or ``--slurp``) whose ``slurp_id`` the
mini SLURP corpus does NOT use, preferring the intents that corpus covers (so the frozen
backbone has heard the domain's words, as a real SSL backbone has heard English), and writes
one sentence per line. Without SLURP annotations it writes an empty file: the pre-training
corpus then falls back to the LibriSpeech mini vocabulary.

Usage::

    python tools/pretrain_text.py --exclude egs/slurp/ic/corpus/slurp/dataset/slurp \\
        --out exp/pretrain_text.txt [--num 200]
"""

import argparse
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slurp", type=Path,
                        default=Path(os.environ.get("ELP_SHARED_DATA", ROOT.parent / "shared" / "data")) / "slurp")
    parser.add_argument("--exclude", type=Path, required=True, help="dataset/slurp folder of the mini corpus")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    sources = sorted(args.slurp.glob("*.jsonl")) if args.slurp.is_dir() else []
    if not sources:
        args.out.write_text("")
        print(f"no SLURP annotations under {args.slurp}: empty {args.out}", file=sys.stderr)
        return 0
    used = [row for path in sorted(args.exclude.glob("*.jsonl")) for row in read_jsonl(path)]
    used_ids = {row["slurp_id"] for row in used}
    used_text = {row["sentence"].lower() for row in used}
    intents = {row["intent"] for row in used}
    candidates = [row for path in sources for row in read_jsonl(path)
                  if row["slurp_id"] not in used_ids and row["sentence"].lower() not in used_text
                  and len(row["sentence"].split()) <= 8]
    rng = random.Random(args.seed)
    rng.shuffle(candidates)
    candidates.sort(key=lambda row: row["intent"] not in intents)  # stable: in-domain intents first
    sentences = sorted({row["sentence"] for row in candidates[: args.num]})
    args.out.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(sentences)} sentences ({len(used_ids)} slurp ids of the mini corpus excluded)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
