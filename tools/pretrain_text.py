#!/usr/bin/env python3
"""Transcripts for the synthetic pre-training corpus: in-domain, disjoint from the IC and ASR corpora.

The stand-in backbone of the mini recipes is pre-trained on a synthetic LibriSpeech-layout
corpus (``tools/pretrain_backbone.py``). Its transcripts come from here: sentences of the
mini SLURP corpus's built-in text (``tools/mini_corpus/slurp.py``), so the frozen backbone
has heard the domain's words as a real self-supervised backbone has heard English, but never
a sentence of the intent-classification corpus.

The mini SLURP corpus takes, per intent, the first ``--sentences_per_intent`` sentences of
:func:`~tools.mini_corpus.slurp.builtin_order` (seeded by the corpus seed and the intent
only). This tool takes sentences from position ``--reserve`` on (default
:data:`DEFAULT_RESERVE`, above the mini IC recipe's 48), one intent after the other in turn,
until ``--num`` are chosen, and writes them sorted, one per line. The output depends only on
these options: nothing outside the repository is read, and no corpus must be built first.
``--exclude DIR`` (a built corpus's ``dataset/slurp``) only *checks* that no chosen sentence
occurs there and fails otherwise (the corpus was built with more sentences per intent than
``--reserve`` or with another seed).

It also writes ``--vocab_sentences`` sentences of 2-4 words of the mini LibriSpeech
vocabulary (:func:`vocabulary_sentences`), as a real backbone has heard digits and commands,
none of them a sentence of the mini ASR corpus (any split) built with ``--asr_seed``: the
stand-in never hears an ASR test sentence, in any voice.

Usage::

    python tools/pretrain_text.py --out exp/pretrain_text.txt [--num 200] [--seed 0]
        [--reserve 56] [--exclude egs/slurp/ic/corpus/slurp/dataset/slurp]
        [--vocab_sentences 0] [--vocab_seed 0] [--asr_seed 0]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``tools.mini_corpus`` importable
    sys.path.insert(0, str(ROOT))

from tools.mini_corpus.librispeech import make_sentence, plan_utterances  # noqa: E402
from tools.mini_corpus.slurp import BUILTIN_TEMPLATES, builtin_order, parse_annotation  # noqa: E402

DEFAULT_RESERVE = 56
"""Sentences per intent left to the IC corpus (its mini recipe uses 48)."""


def pretrain_sentences(num: int = 200, seed: int = 0, reserve: int = DEFAULT_RESERVE,
                       intents: list[str] | None = None) -> list[str]:
    """Up to ``num`` built-in sentences, sorted, that the mini SLURP corpus does not use.

    The corpus is the one built with ``seed`` and ``reserve`` sentences per intent. Fewer when
    the built-in text has fewer beyond ``reserve``; ``intents`` None draws from every built-in
    intent.

    Examples
    --------
    >>> text = pretrain_sentences(num=12)
    >>> len(text), text == sorted(set(text))
    (12, True)
    """
    pools = [[parse_annotation(a)[0] for a in builtin_order(intent, seed)[reserve:]]
             for intent in (intents or sorted(BUILTIN_TEMPLATES))]
    chosen: list[str] = []
    for position in range(max(map(len, pools), default=0)):
        for pool in pools:
            if position < len(pool) and len(chosen) < num:
                chosen.append(pool[position])
    return sorted(set(chosen))


def vocabulary_sentences(num: int, seed: int = 0, asr_seed: int = 0) -> list[str]:
    """``num`` distinct upper-case sentences of 2-4 mini LibriSpeech words (e.g. ``"LEFT SEVEN GO"``), sorted.

    None is a sentence of the mini LibriSpeech corpus (size ``small``) built with ``asr_seed``,
    in any split; ``seed`` seeds the draw.

    Examples
    --------
    >>> from tools.mini_corpus.librispeech import plan_utterances
    >>> text = vocabulary_sentences(50)
    >>> len(text), set(text) & {p[-1] for p in plan_utterances(0, "small")}
    (50, set())
    """
    excluded = {p[-1] for p in plan_utterances(asr_seed, "small")}
    rng = random.Random(f"pretrain-vocabulary-{seed}")
    chosen: set[str] = set()
    while len(chosen) < num:
        sentence = make_sentence(rng)
        if sentence not in excluded:
            chosen.add(sentence)
    return sorted(chosen)


def check_disjoint(sentences: list[str], corpus_jsonl_dir: Path) -> int:
    """Raise ValueError if a sentence occurs in a ``*.jsonl`` of ``corpus_jsonl_dir``; return the lines checked.

    0 when the folder holds no jsonl file.
    """
    chosen = {s.lower() for s in sentences}
    checked = 0
    for path in sorted(corpus_jsonl_dir.glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            sentence = json.loads(line)["sentence"]
            checked += 1
            if sentence.lower() in chosen:
                raise ValueError(
                    f"{path}:{number}: sentence {sentence!r} is also pre-training text; the "
                    f"corpus uses more sentences per intent than --reserve or another seed: "
                    f"pass a larger --reserve or the corpus's --seed")
    return checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="text file to write")
    parser.add_argument("--num", type=int, default=200, help="sentences (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mini SLURP corpus")
    parser.add_argument("--reserve", type=int, default=DEFAULT_RESERVE,
                        help=f"sentences per intent left to the IC corpus "
                             f"(default {DEFAULT_RESERVE})")
    parser.add_argument("--exclude", type=Path, default=None,
                        help="dataset/slurp folder of a built mini corpus: check that no chosen "
                             "sentence occurs there")
    parser.add_argument("--vocab_sentences", type=int, default=0,
                        help="also this many sentences of the mini LibriSpeech vocabulary "
                             "(default 0)")
    parser.add_argument("--vocab_seed", type=int, default=0, help="seed of that draw (default 0)")
    parser.add_argument("--asr_seed", type=int, default=0,
                        help="seed of the mini LibriSpeech corpus whose sentences the "
                             "vocabulary sentences avoid (default 0)")
    args = parser.parse_args(argv)

    sentences = pretrain_sentences(args.num, args.seed, args.reserve)
    checked = check_disjoint(sentences, args.exclude) if args.exclude else 0
    sentences += vocabulary_sentences(args.vocab_sentences, args.vocab_seed, args.asr_seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    print(f"{args.out}: {len(sentences)} sentences"
          + (f" (none among the {checked} lines of {args.exclude})" if args.exclude else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
