"""CTC speech recognition: characters or sentencepiece BPE, WER."""

from __future__ import annotations

import shutil
from pathlib import Path

import speechbrain as sb
import torch

from elp.core.heads import CTCHead
from elp.data.inventory import (BPE_MODEL, TOKENS_FILE, BPETokenizer, CharTokenizer, check_transcript_coverage,
                                check_transcripts, load_tokenizer)
from elp.data.kaldi_dir import TEXT, DataDirError, read_data_dir
from elp.eval.plots import plot_wer_by_length
from elp.eval.scoring import character_error_rate, check_decode_coverage, word_error_rate
from elp.tasks.base import Task, read_pairs, read_rows, write_lines
from elp.tasks.decoding import CTCBeamSearch, greedy_ctc
from elp.tasks.windows import chunked_frames
from elp.runtime import SAMPLE_RATE

#: the transcripts of the example inventory (:meth:`SpeechRecognition.example_inventory`)
EXAMPLE_TEXTS = ["HELLO WORLD", "A CAT"]


class SpeechRecognition(Task):
    """CTC ASR over the transcripts in each data dir's ``text``.

    Parameters
    ----------
    bpe_vocab
        0: characters (``tokens.txt``); N > 0: a sentencepiece BPE model of N pieces.
    beam_size
        0: greedy CTC only; N > 0: stage 4 also decodes with CTC prefix beam search of width N
        (``hyp_beam.txt``, scored as ``wer_beam``); greedy stays the primary metric.
    lm
        An ARPA n-gram LM for the beam search (words of the LM's unigrams form the lexicon).
    chunk_seconds, chunk_overlap_seconds
        Utterances longer than ``chunk_seconds`` are recognised in chunks of that length
        overlapping by ``chunk_overlap_seconds``, their CTC frames stitched at the middle of
        each overlap (:func:`elp.tasks.windows.chunked_frames`), so memory is bounded by a chunk.
    **kwargs
        See :class:`elp.tasks.base.Task`.

    Examples
    --------
    >>> SpeechRecognition(bpe_vocab=0).valid_key
    'wer'
    """

    kind = "asr"
    valid_key, valid_key_mode = "wer", "min"
    metric_name, higher_is_better = "wer", False
    extra_metric_names = ("cer", "ins", "del", "sub", "wer_beam")

    def __init__(self, bpe_vocab: int = 0, beam_size: int = 0, lm: str | None = None, chunk_seconds: float = 30.0,
                 chunk_overlap_seconds: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.bpe_vocab = int(bpe_vocab)
        self.beam_size = int(beam_size or 0)
        self.lm = lm
        self.chunk_seconds = float(chunk_seconds)
        self.chunk_overlap_seconds = float(chunk_overlap_seconds)

    def predict_batch(self, encode, head, wavs, wav_lens):
        """Return CTC log-probs [F_b, V]; utterances longer than ``chunk_seconds`` run in chunks."""
        return chunked_frames(lambda w, lens: self.head_outputs(head, *encode(w, lens)), wavs, wav_lens,
                              chunk_seconds=self.chunk_seconds, overlap_seconds=self.chunk_overlap_seconds)

    def package_options(self) -> dict:
        return {"chunk_seconds": self.chunk_seconds, "chunk_overlap_seconds": self.chunk_overlap_seconds}

    def build_inventory(self, train_dir, lang_dir):
        data = read_data_dir(train_dir)
        if data.text is None:
            raise FileNotFoundError(f"{train_dir}/text is missing: an ASR data dir needs transcripts")
        check_transcripts(train_dir)
        texts = list(data.text.values())
        if self.bpe_vocab:
            BPETokenizer.train(texts, lang_dir, self.bpe_vocab)
        else:
            CharTokenizer.from_texts(texts).save(lang_dir)

    def check_coverage(self, lang_dir, data_dir):
        check_transcript_coverage(lang_dir, [data_dir])

    def load_inventory(self, lang_dir):
        return load_tokenizer(lang_dir)

    def add_targets(self, dataset, split, inventory):
        @sb.utils.data_pipeline.takes("text")
        @sb.utils.data_pipeline.provides("tokens")
        def token_pipeline(text):
            return torch.LongTensor(inventory.encode(text))

        dataset.add_dynamic_item(token_pipeline)
        return ["text", "tokens"]

    def package_fields(self, inventory):
        return {"tokenizer": inventory}

    def head_outputs(self, head, feats, frame_mask):
        """Return CTC log-probs [F_b, V] of each utterance's valid frames (head on features alone, as in training)."""
        log_probs = head(feats).detach().float()
        return [lp[:n].cpu() for lp, n in zip(log_probs, frame_mask.sum(1).tolist())]

    @staticmethod
    def beam_search(tokenizer, beam_size: int | None = None, lm: str | Path | None = None,
                    **lm_options) -> CTCBeamSearch | None:
        """Return the CTC prefix beam search of ``beam_size`` (with ``lm``), or None for greedy decoding.

        Parameters
        ----------
        beam_size
            Beam width; None or 0: greedy unless ``lm`` (an ARPA word n-gram LM) is given (then 10).
        **lm_options
            ``lexicon``, ``lm_weight``, ``word_score`` (:class:`elp.tasks.decoding.CTCBeamSearch`).

        Examples
        --------
        >>> SpeechRecognition.beam_search(CharTokenizer.from_texts(["A"])) is None
        True
        """
        if not beam_size and lm is None:
            return None
        return CTCBeamSearch(tokenizer, beam_size or 10, lm, **lm_options)

    @staticmethod
    def transcripts(log_probs: list[torch.Tensor], tokenizer, beam_search: CTCBeamSearch | None = None) -> list[str]:
        """Return one text per utterance of log-probs [F_b, V] (:meth:`head_outputs`): greedy, or ``beam_search``.

        Examples
        --------
        >>> tokenizer = CharTokenizer(["<blank>", "<space>", "A", "B"])
        >>> probs = torch.tensor([[0.1, 0.1, 0.7, 0.1], [0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
        >>> SpeechRecognition.transcripts([probs.log(), probs[:1].log()], tokenizer)
        ['AB', 'A']
        """
        lengths = torch.tensor([lp.shape[0] for lp in log_probs])
        padded = torch.nn.utils.rnn.pad_sequence(list(log_probs), batch_first=True)
        frame_mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
        if beam_search is None:
            return [tokenizer.decode(ids) for ids in greedy_ctc(padded, frame_mask)]
        return beam_search(padded, frame_mask)

    def save_package_inventory(self, directory, inventory_dir=None, labels=None, tokenizer=None):
        if tokenizer is None:
            if inventory_dir is None:
                raise ValueError("an asr package needs inventory_dir= (stage 2's data/lang) or tokenizer=")
            tokenizer = load_tokenizer(inventory_dir)
        if isinstance(tokenizer, BPETokenizer):
            shutil.copyfile(tokenizer.model_path, Path(directory) / BPE_MODEL)
            return {"kind": "bpe", "file": BPE_MODEL}
        if isinstance(tokenizer, CharTokenizer):
            tokenizer.save(directory)
            return {"kind": "char", "file": TOKENS_FILE}
        raise ValueError(f"unsupported tokenizer {type(tokenizer).__name__}; expected CharTokenizer or BPETokenizer")

    def load_package_inventory(self, directory, entry):
        if entry.get("kind") == "bpe":
            return BPETokenizer(Path(directory) / BPE_MODEL), None
        return CharTokenizer((Path(directory) / TOKENS_FILE).read_text().splitlines()), None

    def example_inventory(self):
        return CharTokenizer.from_texts(EXAMPLE_TEXTS)

    def example_head(self, in_dim, inventory):
        return CTCHead(in_dim, inventory.vocab_size)

    def plot(self, test_dir, decode_dir, out_dir, inventory_labels=None):
        refs, hyps = read_pairs(Path(decode_dir) / "ref.txt"), read_pairs(Path(decode_dir) / "hyp.txt")
        durations = {u: n / SAMPLE_RATE for u, n in read_data_dir(test_dir).utt2num_samples.items()}
        return [plot_wer_by_length(refs, hyps, durations, Path(out_dir) / f"wer_by_length_{Path(test_dir).name}.png")]

    def write_outputs(self, brain, dataset, test_dir, decode_dir, loader_kwargs_of, exp_dir):
        hyps = brain.predict(dataset, loader_kwargs_of(dataset))
        refs = read_data_dir(test_dir).text
        write_lines(decode_dir / "hyp.txt", (f"{u} {hyps[u]}".rstrip() for u in sorted(hyps)))
        write_lines(decode_dir / "ref.txt", (f"{u} {refs[u]}" for u in sorted(hyps)))
        if self.beam_size:
            beam = brain.predict(dataset, loader_kwargs_of(dataset), beam_size=self.beam_size, lm=self.lm)
            write_lines(decode_dir / "hyp_beam.txt", (f"{u} {beam[u]}".rstrip() for u in sorted(beam)))

    def check_test_set(self, test_dir):
        data = super().check_test_set(test_dir)
        if data.text is None:
            raise DataDirError(f"{Path(test_dir) / TEXT} is missing: an ASR test set needs transcripts "
                               "(rerun stage 0, data preparation)")
        return data

    def score(self, test_dir, decode_dir):
        text = read_data_dir(test_dir).text
        if text is None:
            raise FileNotFoundError(f"{Path(test_dir) / TEXT} is missing: an ASR test set needs transcripts")
        expected = [(utt, " ".join(words.split())) for utt, words in text.items()]

        def checked(name: str, compare: bool) -> dict[str, str]:
            path = Path(decode_dir) / name
            rows = read_rows(path)
            check_decode_coverage(path, [(u, " ".join(t.split()) if compare else None) for u, t in rows],
                                  expected, str(Path(test_dir) / TEXT))
            return dict(rows)

        refs, hyps = checked("ref.txt", True), checked("hyp.txt", False)
        wer = word_error_rate(refs, hyps)
        cer = character_error_rate(refs, hyps)
        extra = {"cer": cer["cer"], "ins": wer["ins"], "del": wer["del"], "sub": wer["sub"]}
        if (Path(decode_dir) / "hyp_beam.txt").exists():
            extra["wer_beam"] = word_error_rate(refs, checked("hyp_beam.txt", False))["wer"]
        return self.metric(wer["wer"], 100.0), extra
