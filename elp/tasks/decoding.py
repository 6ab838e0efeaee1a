"""CTC decoding: greedy (best path) and prefix beam search, optionally with a word n-gram LM.

Beam search runs through torchaudio's ``ctc_decoder`` (flashlight-text's lexicon-free and
lexicon decoders, with KenLM for ARPA or binary n-gram files; why this decoder: docs/INFERENCE.md).
Hypotheses sharing a prefix are merged by log-add (``log_add=True``): a proper prefix beam
search, not a Viterbi beam.

* Without an LM the search is lexicon-free over the tokenizer's tokens (characters or BPE
  pieces): the CTC prefix beam search that ESPnet/SpeechBrain call ``beam_size`` decoding.
* With an LM (``lm="lm.arpa"``), words are scored by the n-gram model; the lexicon (word ->
  token spelling) is built from the ARPA file's unigrams with the tokenizer, or given.

Greedy decoding (:func:`greedy_ctc`) stays the default in stage 4.

Examples
--------
>>> from elp.data.inventory import CharTokenizer
>>> tok = CharTokenizer(["<blank>", "<space>", "A", "B"])
>>> probs = torch.tensor([[[0.4, 0.01, 0.35, 0.24], [0.4, 0.01, 0.35, 0.24]]])
>>> mask = torch.ones(1, 2, dtype=torch.bool)
>>> [tok.decode(h) for h in greedy_ctc(probs.log(), mask)], ctc_beam_search(probs.log(), mask, tok, beam_size=4)
([''], ['A'])
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from elp.data.inventory import BLANK, SPACE, BPETokenizer, CharTokenizer


def greedy_ctc(log_probs: torch.Tensor, frame_mask: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Decode the best path: argmax per frame, merge repeats, drop blanks; return B token id sequences.

    ``log_probs`` is [B, F, V], ``frame_mask`` [B, F] bool (True = real frame).

    Examples
    --------
    >>> lp = torch.log(torch.tensor([[[.1, .9], [.1, .9], [.9, .1], [.1, .9]]]))
    >>> greedy_ctc(lp, torch.ones(1, 4, dtype=torch.bool))
    [[1, 1]]
    """
    best = log_probs.argmax(-1)
    hyps = []
    for row, mask in zip(best, frame_mask):
        ids = torch.unique_consecutive(row[mask]).tolist()
        hyps.append([i for i in ids if i != blank])
    return hyps


def _token_list(tokenizer) -> list[str]:
    if isinstance(tokenizer, CharTokenizer):
        return list(tokenizer.tokens)
    if isinstance(tokenizer, BPETokenizer):
        return [BLANK] + [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.sp.get_piece_size())]
    raise ValueError(f"unsupported tokenizer {type(tokenizer).__name__}; expected CharTokenizer or BPETokenizer")


def arpa_words(path: str | os.PathLike) -> list[str]:
    """Return the unigram words of an ARPA file in file order (without ``<s>``, ``</s>``, ``<unk>``).

    Raises
    ------
    ValueError
        If it has no ``\\1-grams:`` section with words.

    Examples
    --------
    >>> import tempfile
    >>> arpa = Path(tempfile.mkdtemp()) / "lm.arpa"
    >>> _ = arpa.write_text("\\\\data\\\\\\nngram 1=3\\n\\n\\\\1-grams:\\n-1.0 <s>\\n-0.5 CAT\\n-0.5 A\\n\\n\\\\end\\\\\\n")
    >>> arpa_words(arpa)
    ['CAT', 'A']
    """
    words, in_unigrams = [], False
    with open(path, encoding="utf-8") as fin:
        for line in fin:
            line = line.strip()
            if line.startswith("\\"):
                if in_unigrams:
                    break
                in_unigrams = line == "\\1-grams:"
                continue
            if in_unigrams and line:
                fields = line.split()
                if len(fields) >= 2 and fields[1] not in ("<s>", "</s>", "<unk>"):
                    words.append(fields[1])
    if not words:
        raise ValueError(f"{path}: no \\1-grams: section with words; pass an ARPA file or lexicon=")
    return words


def write_lexicon(words: list[str], tokenizer, path: str | os.PathLike) -> int:
    """Write a flashlight lexicon (``WORD t1 t2 ... <sil>``) for the words the tokenizer spells.

    Returns the number of words written (words with characters outside a character
    inventory are left out: the decoder cannot produce them anyway).

    Examples
    --------
    >>> import tempfile
    >>> lexicon = Path(tempfile.mkdtemp()) / "lexicon.txt"
    >>> write_lexicon(["AB", "AZ"], CharTokenizer(["<blank>", "<space>", "A", "B"]), lexicon)
    1
    >>> lexicon.read_text()
    'AB\\tA B <space>\\n'
    """
    lines = []
    for word in words:
        if isinstance(tokenizer, CharTokenizer):
            if any(ch not in tokenizer.index for ch in word):
                continue
            spelling = list(word) + [SPACE]
        else:
            spelling = tokenizer.sp.encode(word, out_type=str)
        lines.append(f"{word}\t{' '.join(spelling)}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")
    return len(lines)


class CTCBeamSearch:
    """A reusable CTC prefix beam search decoder for one tokenizer (and optional LM).

    Parameters
    ----------
    tokenizer : CharTokenizer | BPETokenizer
        Blank must be id 0 (as stage 2 writes it).
    beam_size
        Hypotheses kept per frame.
    lm
        KenLM n-gram file (ARPA, or binary with ``lexicon``) over words.
    lexicon
        ``WORD token token ...`` lines; default: built from the ARPA unigrams.
    word_score
        Per-word insertion score.

    Raises
    ------
    ImportError
        Without the flashlight-text package.
    ValueError
        For ``beam_size < 1`` or an LM none of whose words the tokenizer can spell.
    FileNotFoundError
        If ``lm`` does not exist.
    """

    def __init__(self, tokenizer, beam_size: int = 10, lm: str | os.PathLike | None = None,
                 lexicon: str | os.PathLike | None = None, lm_weight: float = 2.0, word_score: float = 0.0):
        try:
            from torchaudio.models.decoder import ctc_decoder
        except (ImportError, RuntimeError) as err:  # torchaudio raises RuntimeError without flashlight-text
            raise ImportError("CTC beam search needs the flashlight-text package: "
                              "pip install flashlight-text (see tools/requirements.txt)") from err
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.tokenizer = tokenizer
        self.tokens = _token_list(tokenizer)
        sil = SPACE if isinstance(tokenizer, CharTokenizer) and SPACE in tokenizer.index else BLANK
        self.sil_id = self.tokens.index(sil)
        self._tmp = None
        if lm is not None:
            if not Path(lm).is_file():
                raise FileNotFoundError(f"LM file {lm} does not exist")
            if lexicon is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="elp_lexicon_")
                lexicon = Path(self._tmp.name) / "lexicon.txt"
                if write_lexicon(arpa_words(lm), tokenizer, lexicon) == 0:
                    raise ValueError(f"{lm}: none of its words can be spelled with the tokenizer's tokens")
            lm = str(lm)
            lexicon = str(lexicon)
        self.decoder = ctc_decoder(lexicon=lexicon, tokens=self.tokens, lm=lm, beam_size=beam_size,
                                   lm_weight=lm_weight, word_score=word_score, blank_token=BLANK,
                                   sil_token=sil, unk_word="<unk>", nbest=1, log_add=True)
        self.uses_words = lm is not None

    def __call__(self, log_probs: torch.Tensor, frame_mask: torch.Tensor) -> list[str]:
        """Decode log_probs [B, F, V] with frame_mask [B, F] bool into B hypothesis texts."""
        if log_probs.shape[-1] != len(self.tokens):
            raise ValueError(f"log_probs have {log_probs.shape[-1]} classes but the tokenizer has "
                             f"{len(self.tokens)} tokens (blank included); use the package's tokenizer")
        lengths = frame_mask.sum(1).to(torch.int32).cpu()
        results = self.decoder(log_probs.detach().float().cpu().contiguous(), lengths)
        texts = []
        for nbest in results:
            best = nbest[0]
            if self.uses_words:
                texts.append(" ".join(best.words))
                continue
            ids = [i for i in best.tokens.tolist() if i != 0]
            while ids and ids[0] == self.sil_id:
                ids = ids[1:]
            while ids and ids[-1] == self.sil_id:
                ids = ids[:-1]
            texts.append(self.tokenizer.decode(ids).strip())
        return texts


def ctc_beam_search(log_probs: torch.Tensor, frame_mask: torch.Tensor, tokenizer, beam_size: int = 10,
                    lm: str | os.PathLike | None = None, **lm_options) -> list[str]:
    """Decode CTC log-probs [B, F, V] (blank = 0) into B texts; see :class:`CTCBeamSearch`.

    ``frame_mask`` is [B, F] bool (True = real frame); ``**lm_options``: ``lexicon``,
    ``lm_weight``, ``word_score``.

    Examples
    --------
    >>> tok = CharTokenizer(["<blank>", "<space>", "A", "B"])
    >>> peaked = torch.nn.functional.one_hot(torch.tensor([[2, 0, 1, 3, 3]]), 4).float() * 20
    >>> ctc_beam_search(peaked.log_softmax(-1), torch.ones(1, 5, dtype=torch.bool), tok)
    ['A B']
    """
    return CTCBeamSearch(tokenizer, beam_size, lm, **lm_options)(log_probs, frame_mask)
