"""Token and label inventories (recipe stage 2): characters, sentencepiece BPE, label maps.

Files live in ``data/lang/``:

* ``tokens.txt``: one token per line, line number = id; id 0 is the CTC blank ``<blank>``,
  a space is written ``<space>`` (characters), or ``bpe.model`` next to it (sentencepiece).
* ``labels.txt``: one class per line (emotion, intent, or training speaker), sorted.

Checks (stage 2; every error is one :class:`~elp.data.errors.DataError` line naming the file,
line and utterance, and the fix):

* :func:`check_transcripts` on the training text before the character/BPE inventory is
  built: empty transcripts, lowercase letters, punctuation/symbols (apostrophes excepted)
  and tabs are errors, because each variant silently becomes a token of its own ("a" next
  to "A", "WORLD," next to "WORLD"). Normalisation is an explicit choice, never implicit:
  :func:`normalize_text_file` (stage 2 ``--normalize-text``) rewrites ``text`` with
  :func:`normalize_transcript` (upper-case, punctuation -> space, apostrophes kept) and keeps
  the original as ``text.orig``; it must then be applied to every set (train, dev and test),
  so that references are scored in the same form. We chose an error by default because a
  silent rewrite would change the references a user compares against published numbers.
* :func:`check_transcript_coverage` / :func:`check_label_coverage` on the dev/test sets
  against the saved inventory: a label no training utterance has, or a character the
  tokenizer cannot encode, is reported with the utterances before any training starts
  (instead of failing after an epoch).

Examples
--------
>>> tok = CharTokenizer.from_texts(["HI YOU", "YO"])
>>> tok.tokens
['<blank>', '<space>', 'H', 'I', 'O', 'U', 'Y']
>>> tok.decode(tok.encode("HI YO"))
'HI YO'
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from elp.data.errors import DataError
from elp.data.kaldi_dir import (
    TEXT,
    UTT2LABEL,
    read_numbered_lines,
    read_text_lines,
    read_token_mapping,
    write_mapping,
)

BLANK = "<blank>"
SPACE = "<space>"
TOKENS_FILE = "tokens.txt"
BPE_MODEL = "bpe.model"
LABELS_FILE = "labels.txt"


class CharTokenizer:
    """Characters <-> ids: ``tokens[i]`` has id i; ``tokens[0]`` is the CTC blank, a space is ``"<space>"``.

    Raises
    ------
    ValueError
        If the first token is not the blank.

    Examples
    --------
    >>> import tempfile
    >>> tok = CharTokenizer.from_texts(["AB BA"])
    >>> tok.vocab_size, tok.encode("AB A")
    (4, [2, 3, 1, 2])
    >>> directory = tempfile.mkdtemp()
    >>> tok.save(directory)
    >>> load_tokenizer(directory).tokens == tok.tokens
    True
    """

    def __init__(self, tokens: list[str]):
        if not tokens or tokens[0] != BLANK:
            raise ValueError(f"the first token must be {BLANK}")
        self.tokens = tokens
        self.index = {tok: i for i, tok in enumerate(tokens)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """The sorted characters of ``texts`` after the blank."""
        chars = sorted({SPACE if ch == " " else ch for text in texts for ch in text})
        return cls([BLANK] + chars)

    @property
    def vocab_size(self) -> int:
        """Number of ids, the blank included."""
        return len(self.tokens)

    def encode(self, text: str, utt: str | None = None) -> list[int]:
        """Token ids of ``text``; ``utt`` is named in the error for an unknown character.

        Raises
        ------
        DataError
            If a character is not in the inventory.
        """
        try:
            return [self.index[SPACE if ch == " " else ch] for ch in text]
        except KeyError as err:
            where = f"utt {utt!r}: " if utt else ""
            raise DataError(f"{where}character {err.args[0]!r} of {text!r} is not in the token inventory "
                            "(built from the training text); normalise the text like the training text or remove the utterance "
                            "(stage 2 checks every dev/test set and lists every such utterance)") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (blanks dropped, ``<space>`` -> ``" "``)."""
        return "".join(" " if self.tokens[i] == SPACE else self.tokens[i] for i in ids if i != 0)

    def save(self, directory: os.PathLike) -> None:
        """Write ``tokens.txt`` (one token a line) into ``directory`` (created)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / TOKENS_FILE).write_text("\n".join(self.tokens) + "\n")


class BPETokenizer:
    """Sentencepiece BPE pieces <-> ids; id 0 is the CTC blank, piece i has id i + 1."""

    def __init__(self, model_path: os.PathLike):
        import sentencepiece as spm

        self.model_path = str(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=self.model_path)

    @classmethod
    def train(cls, texts: Iterable[str], directory: os.PathLike, vocab_size: int) -> BPETokenizer:
        """Train a BPE model on ``texts`` and write ``bpe.model`` and ``tokens.txt`` into ``directory``.

        Parameters
        ----------
        vocab_size
            Number of pieces (a soft limit).
        """
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
        """Number of ids, the blank included."""
        return self.sp.get_piece_size() + 1

    def encode(self, text: str) -> list[int]:
        """Piece ids of ``text`` (shifted by one for the blank)."""
        return [i + 1 for i in self.sp.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (blanks dropped)."""
        return self.sp.decode([i - 1 for i in ids if i != 0])


def load_tokenizer(lang_dir: os.PathLike):
    """The tokenizer stage 2 saved in ``lang_dir``: :class:`BPETokenizer` when ``bpe.model`` exists, else characters.

    Raises
    ------
    FileNotFoundError
        If neither ``bpe.model`` nor ``tokens.txt`` is there.
    """
    lang_dir = Path(lang_dir)
    if (lang_dir / BPE_MODEL).exists():
        return BPETokenizer(lang_dir / BPE_MODEL)
    if not (lang_dir / TOKENS_FILE).exists():
        raise FileNotFoundError(f"{lang_dir / TOKENS_FILE} is missing: run stage 2 (token inventory) first")
    return CharTokenizer([line for _, line in read_text_lines(lang_dir / TOKENS_FILE)])


class LabelMap:
    """Class names <-> ids (``labels`` in id order: sorted names, id = position).

    Examples
    --------
    >>> import tempfile
    >>> labels = LabelMap.from_values(["yes", "no", "yes"])
    >>> labels.labels, labels.encode("yes"), len(labels)
    (['no', 'yes'], 1, 2)
    >>> directory = tempfile.mkdtemp()
    >>> labels.save(directory)
    >>> LabelMap.load(directory).labels
    ['no', 'yes']
    """

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.index = {label: i for i, label in enumerate(labels)}

    @classmethod
    def from_values(cls, values: Iterable[str]) -> LabelMap:
        """The sorted distinct ``values`` (labels, one token each).

        Raises
        ------
        DataError
            If a label is empty or holds whitespace.
        """
        values = set(values)
        bad = sorted(value for value in values if len(value.split()) != 1 or value != value.strip())
        if bad:
            raise DataError(f"labels must be one non-empty token, got {bad[:5]!r}; fix the label file "
                            "(validate_data.py names the lines)")
        return cls(sorted(values))

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, label: str, utt: str | None = None) -> int:
        """Class id of ``label``; ``utt`` is named in the error for an unseen label.

        Raises
        ------
        DataError
            If ``label`` is not a training class.
        """
        if label not in self.index:
            where = f"utt {utt!r}: " if utt else ""
            raise DataError(f"{where}label {label!r} is not among the {len(self)} training classes "
                            f"({', '.join(self.labels[:10])}{', ...' if len(self) > 10 else ''}); the model "
                            "cannot predict it: remove the utterance from this set or add training examples "
                            "of the class and rerun stage 2 (which lists all of them)")
        return self.index[label]

    def save(self, directory: os.PathLike, filename: str = LABELS_FILE) -> None:
        """Write the labels, one a line, to ``directory / filename`` (the lang directory, created)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / filename).write_text("\n".join(self.labels) + "\n")

    @classmethod
    def load(cls, directory: os.PathLike, filename: str = LABELS_FILE) -> LabelMap:
        """Read a label map :meth:`save` wrote.

        Raises
        ------
        FileNotFoundError
            If the file is missing.
        """
        path = Path(directory) / filename
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run stage 2 (label inventory) first")
        return cls([line for _, line in read_text_lines(path)])


# --------------------------------------------------------------------------- checks (stage 2)
_KEPT_PUNCTUATION = "'"


def _char_problem(ch: str, allow: str) -> str | None:
    """Why ``ch`` must not enter a character inventory (None: it may)."""
    if ch == " " or ch in allow:
        return None
    if ch.isspace():
        return "whitespace other than a single space"
    if ch.islower():
        return "a lowercase letter"
    category = unicodedata.category(ch)
    if category[0] in "PS":
        return "punctuation or a symbol"
    if category[0] == "C":
        return "a control or format character"
    return None


def check_transcripts(data_dir: os.PathLike, allow: str = _KEPT_PUNCTUATION) -> dict[str, str]:
    """Check the ``text`` of a data dir before an inventory is built from it; return utt -> transcript.

    Parameters
    ----------
    allow
        Characters accepted although they are punctuation/symbols (default: the apostrophe).

    Raises
    ------
    DataError
        One line: the number of offending transcripts, the first ones with file:line,
        utterance and character, and the fix (normalise in data preparation, or the explicit
        :func:`normalize_text_file`).

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> write_mapping(os.path.join(d, "text"), {"u1": "HELLO", "u2": "Hello"})
    >>> check_transcripts(d)
    Traceback (most recent call last):
    ...
    elp.data.errors.DataError: ...text: 1 transcript(s) would grow the character inventory: ...text:2: utt 'u2' has 'e' (a lowercase letter) in 'Hello'; ...
    """
    path = Path(data_dir) / TEXT
    texts: dict[str, str] = {}
    empty, bad = [], []
    for number, utt, transcript in read_numbered_lines(path):
        texts[utt] = transcript
        if not transcript.strip():
            empty.append(f"{path}:{number}: utt {utt!r}")
            continue
        for ch in transcript:
            reason = _char_problem(ch, allow)
            if reason is not None:
                bad.append(f"{path}:{number}: utt {utt!r} has {ch!r} ({reason}) in {transcript!r}")
                break
    if empty:
        raise DataError(f"{path}: {len(empty)} empty transcript(s): {'; '.join(empty[:5])}; write their words "
                        "or remove these utterances from every file of the data dir")
    if bad:
        raise DataError(
            f"{path}: {len(bad)} transcript(s) would grow the character inventory: {'; '.join(bad[:5])}; "
            "normalise the transcripts in data preparation (upper-case, no punctuation), or choose the explicit "
            "normalisation (stage 2 --normalize-text: elp.data.inventory.normalize_text_file on every set)"
        )
    return texts


def normalize_transcript(text: str, keep: str = _KEPT_PUNCTUATION) -> str:
    """Upper-case, punctuation and symbols -> space (``keep``, the apostrophe, excepted), single spaces.

    Examples
    --------
    >>> normalize_transcript("Hello, world!  It’s  A-OK.")
    "HELLO WORLD IT'S A OK"
    """
    text = text.replace("\u2019", "'").upper()
    chars = [" " if (unicodedata.category(ch)[0] in "PSC" and ch not in keep) or ch.isspace() else ch
             for ch in text]
    return " ".join("".join(chars).split())


def normalize_text_file(data_dir: os.PathLike, keep: str = _KEPT_PUNCTUATION) -> int:
    """Normalise a data dir's ``text`` (:func:`normalize_transcript`); return how many transcripts changed.

    The original is kept as ``text.orig`` (never overwritten: running twice normalises the
    original again). Apply it to every set of a recipe, so references match the model's output.

    Raises
    ------
    DataError
        If a transcript becomes empty (names the utterances).
    """
    data_dir = Path(data_dir)
    original = data_dir / f"{TEXT}.orig"
    if not original.exists():
        original.write_bytes((data_dir / TEXT).read_bytes())
    texts = {utt: value for _, utt, value in read_numbered_lines(original)}
    normalized = {utt: normalize_transcript(value, keep) for utt, value in texts.items()}
    emptied = [utt for utt, value in normalized.items() if not value]
    if emptied:
        raise DataError(f"{data_dir / TEXT}: normalisation leaves {len(emptied)} transcript(s) empty, e.g. "
                        f"utt {emptied[0]!r} ({texts[emptied[0]]!r}); fix or remove these utterances")
    write_mapping(data_dir / TEXT, normalized)
    return sum(normalized[utt] != texts[utt] for utt in texts)


def _unknown_characters(tokenizer) -> Callable[[str], bool]:
    """A function: character -> True if the tokenizer cannot encode it."""
    if isinstance(tokenizer, CharTokenizer):
        return lambda ch: (SPACE if ch == " " else ch) not in tokenizer.index
    unk = tokenizer.sp.unk_id()
    cache: dict[str, bool] = {}

    def unknown(ch: str) -> bool:
        if ch not in cache:
            cache[ch] = ch != " " and unk in tokenizer.sp.encode(ch)
        return cache[ch]
    return unknown


def check_transcript_coverage(lang_dir: os.PathLike, data_dirs: Sequence[os.PathLike]) -> None:
    """Check that the tokenizer stage 2 saved in ``lang_dir`` encodes every transcript of
    ``data_dirs`` (characters of the character list, or BPE without its unknown piece).

    Raises
    ------
    DataError
        One line naming, per offending set, the file:line and utterances, the unseen
        characters with counts, and the fix.
    """
    problems = []
    unknown = _unknown_characters(load_tokenizer(lang_dir))
    for data_dir in data_dirs:
        path = Path(data_dir) / TEXT
        if not path.is_file():
            problems.append(f"{path}: file not found (an ASR set needs transcripts)")
            continue
        counts, examples = Counter(), []
        for number, utt, transcript in read_numbered_lines(path):
            missing = sorted({ch for ch in transcript if unknown(ch)})
            if not transcript.strip():
                examples.append(f"{path}:{number}: utt {utt!r} has an empty transcript")
                counts["<empty>"] += 1
            elif missing:
                counts.update(missing)
                examples.append(f"{path}:{number}: utt {utt!r} has {', '.join(map(repr, missing))}")
        if examples:
            summary = ", ".join(f"{ch!r}={n}" for ch, n in counts.most_common())
            problems.append(
                f"{path}: {len(examples)} transcript(s) hold characters the training inventory of {lang_dir} "
                f"cannot encode ({summary}): {'; '.join(examples[:5])}; normalise this set like the "
                "training text, or remove these utterances from it"
            )
    if problems:
        raise DataError(" | ".join(problems))


def check_label_coverage(lang_dir: os.PathLike, data_dirs: Sequence[os.PathLike],
                         label_file: str = UTT2LABEL, what: str = "labels") -> None:
    """Check that every label of ``label_file`` in ``data_dirs`` is in the label map stage 2
    saved in ``lang_dir`` (classes, or training speakers with ``label_file="utt2spk"``).

    Parameters
    ----------
    label_file
        ``utt2label`` or ``utt2spk``.
    what
        What the labels are, for the message.

    Raises
    ------
    DataError
        One line naming, per offending set, the file:line and utterances, the unseen labels
        with counts, and the fix.

    Examples
    --------
    >>> import tempfile, os
    >>> lang, test = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> LabelMap(["ang", "neu"]).save(lang)
    >>> write_mapping(os.path.join(test, "utt2label"), {"u1": "neu", "u2": "hap"})
    >>> check_label_coverage(lang, [test])
    Traceback (most recent call last):
    ...
    elp.data.errors.DataError: ...utt2label: 1 utterance(s) have labels no training utterance has (hap=1): ...utt2label:2: utt 'u2' has 'hap'; ...
    """
    labels = LabelMap.load(lang_dir)
    problems = []
    for data_dir in data_dirs:
        path = Path(data_dir) / label_file
        if not path.is_file():
            problems.append(f"{path}: file not found")
            continue
        read_token_mapping(path)  # one token per line, named errors
        counts, examples = Counter(), []
        for number, utt, label in read_numbered_lines(path):
            if label not in labels.index:
                counts[label] += 1
                examples.append(f"{path}:{number}: utt {utt!r} has {label!r}")
        if examples:
            summary = ", ".join(f"{label}={n}" for label, n in sorted(counts.items()))
            problems.append(
                f"{path}: {len(examples)} utterance(s) have {what} no training utterance has ({summary}): "
                f"{'; '.join(examples[:5])}; the model cannot predict them: remove these utterances from "
                "the set, or add training examples and rerun stage 2"
            )
    if problems:
        raise DataError(" | ".join(problems))
