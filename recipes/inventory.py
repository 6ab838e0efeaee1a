#!/usr/bin/env python3
"""Stage 2: token / label inventory of a recipe, saved to ``<lang_dir>``.

Usage::

    python recipes/inventory.py --task asr --train data/train_clean_100 --lang data/lang [--bpe 500]
    python recipes/inventory.py --task classify --train data/train --lang data/lang
    python recipes/inventory.py --task sv --train data/train --lang data/lang --holdout 0.1

For ``sv`` the training speakers are the classes, and a held-out part of every training
speaker's utterances (``--holdout``) becomes the validation set: ``<train>_trn`` and ``<train>_cv``.
"""

import argparse
import logging
import sys
from pathlib import Path

from elp.data.inventory import BPETokenizer, CharTokenizer, LabelMap
from elp.data.kaldi_dir import read_data_dir, subset_data_dir, write_data_dir
from elp.data.prep import evenly_spaced_holdout

logger = logging.getLogger("inventory")


def speaker_holdout(train_dir: Path, fraction: float) -> None:
    """Split ``train_dir`` into ``<train_dir>_trn`` / ``<train_dir>_cv`` per speaker."""
    data = read_data_dir(train_dir)
    by_speaker: dict[str, list[str]] = {}
    for utt, spk in data.utt2spk.items():
        by_speaker.setdefault(spk, []).append(utt)
    held_out = {utt for utts in by_speaker.values() for utt in evenly_spaced_holdout(utts, fraction)}
    if not held_out:
        raise SystemExit(f"{train_dir}: --holdout {fraction} leaves no validation utterance; raise it")
    for suffix, utts in (("_trn", set(data.utt2spk) - held_out), ("_cv", held_out)):
        write_data_dir(f"{train_dir}{suffix}", **subset_data_dir(data, sorted(utts)).mappings())
        logger.info("%s%s: %d utterances", train_dir, suffix, len(utts))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=["asr", "sv", "classify"])
    parser.add_argument("--train", required=True, type=Path, help="training data dir")
    parser.add_argument("--lang", required=True, type=Path, help="output directory")
    parser.add_argument("--bpe", type=int, default=0, help="ASR: sentencepiece BPE vocabulary (0 = characters)")
    parser.add_argument("--holdout", type=float, default=0.1, help="SV: validation fraction per speaker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (inventory.py) %(message)s")

    data = read_data_dir(args.train)
    if args.task == "asr":
        if data.text is None:
            raise SystemExit(f"{args.train}/text is missing: an ASR data dir needs transcripts")
        texts = list(data.text.values())
        tokenizer = BPETokenizer.train(texts, args.lang, args.bpe) if args.bpe else CharTokenizer.from_texts(texts)
        if not args.bpe:
            tokenizer.save(args.lang)
        logger.info("%s: %d tokens (blank included)", args.lang, tokenizer.vocab_size)
    elif args.task == "classify":
        if data.utt2label is None:
            raise SystemExit(f"{args.train}/utt2label is missing: a classification data dir needs labels")
        labels = LabelMap.from_values(data.utt2label.values())
        labels.save(args.lang)
        logger.info("%s: %d classes: %s", args.lang, len(labels), " ".join(labels.labels))
    else:
        speakers = LabelMap.from_values(data.utt2spk.values())
        speakers.save(args.lang)
        logger.info("%s: %d training speakers", args.lang, len(speakers))
        speaker_holdout(args.train, args.holdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
