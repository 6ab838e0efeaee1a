"""Token and label inventories (recipe stage 2): characters, sentencepiece BPE, label maps.

Files live in ``data/lang/``:

* ``tokens.txt``: one token per line, line number = id; id 0 is the CTC blank ``<blank>``,
  a space is written ``<space>`` (characters), or ``bpe.model`` next to it (sentencepiece).
* ``labels.txt``: one class per line (emotion, intent, or training speaker), sorted.

Example
-------
>>> tok = CharTokenizer.from_texts(["HI YOU", "YO"])
>>> tok.tokens
['<blank>', '<space>', 'H', 'I', 'O', 'U', 'Y']
>>> tok.decode(tok.encode("HI YO"))
'HI YO'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

BLANK = "<blank>"
SPACE = "<space>"
TOKENS_FILE = "tokens.txt"
BPE_MODEL = "bpe.model"
LABELS_FILE = "labels.txt"


class CharTokenizer:
    """Characters <-> ids, with the CTC blank at id 0."""

    def __init__(self, tokens: list[str]):
        if not tokens or tokens[0] != BLANK:
            raise ValueError(f"the first token must be {BLANK}")
        self.tokens = tokens
        self.index = {tok: i for i, tok in enumerate(tokens)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        chars = sorted({SPACE if ch == " " else ch for text in texts for ch in text})
        return cls([BLANK] + chars)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[SPACE if ch == " " else ch] for ch in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} of {text!r} is not in the token inventory "
                             "(rebuild it with stage 2 from the training text)") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(" " if self.tokens[i] == SPACE else self.tokens[i] for i in ids if i != 0)

    def save(self, directory: os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / TOKENS_FILE).write_text("\n".join(self.tokens) + "\n")


class BPETokenizer:
    """Sentencepiece BPE pieces <-> ids; id 0 is the CTC blank, piece i has id i + 1."""

    def __init__(self, model_path: os.PathLike):
        import sentencepiece as spm

        self.model_path = str(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=self.model_path)

    @classmethod
    def train(cls, texts: Iterable[str], directory: os.PathLike, vocab_size: int) -> "BPETokenizer":
        import sentencepiece as spm

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        corpus = directory / "bpe_train_text.txt"
        corpus.write_text("\n".join(texts) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(directory / "bpe"), vocab_size=vocab_size,
            model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0,
            hard_vocab_limit=False, minloglevel=2)
        tokenizer = cls(directory / BPE_MODEL)
        pieces = [BLANK] + [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.sp.get_piece_size())]
        (directory / TOKENS_FILE).write_text("\n".join(pieces) + "\n")
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + 1

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self.sp.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i - 1 for i in ids if i != 0])


def load_tokenizer(lang_dir: os.PathLike):
    """The tokenizer stage 2 saved in ``lang_dir`` (BPE when ``bpe.model`` exists)."""
    lang_dir = Path(lang_dir)
    if (lang_dir / BPE_MODEL).exists():
        return BPETokenizer(lang_dir / BPE_MODEL)
    if not (lang_dir / TOKENS_FILE).exists():
        raise FileNotFoundError(f"{lang_dir / TOKENS_FILE} is missing: run stage 2 (token inventory) first")
    return CharTokenizer((lang_dir / TOKENS_FILE).read_text().splitlines())


class LabelMap:
    """Class names <-> ids (sorted names; id = position)."""

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.index = {label: i for i, label in enumerate(labels)}

    @classmethod
    def from_values(cls, values: Iterable[str]) -> "LabelMap":
        return cls(sorted(set(values)))

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, label: str) -> int:
        if label not in self.index:
            raise ValueError(f"label {label!r} is not in the label inventory ({len(self)} classes: "
                             f"{', '.join(self.labels[:10])}...); rebuild it with stage 2")
        return self.index[label]

    def save(self, directory: os.PathLike, filename: str = LABELS_FILE) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / filename).write_text("\n".join(self.labels) + "\n")

    @classmethod
    def load(cls, directory: os.PathLike, filename: str = LABELS_FILE) -> "LabelMap":
        path = Path(directory) / filename
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run stage 2 (label inventory) first")
        return cls(path.read_text().splitlines())
