"""CTC speech recognition: characters or sentencepiece BPE, WER."""

from __future__ import annotations

from pathlib import Path

import speechbrain as sb
import torch

from elp.data.inventory import (BPETokenizer, CharTokenizer, check_transcript_coverage, check_transcripts,
                                load_tokenizer)
from elp.data.kaldi_dir import read_data_dir
from elp.scoring import character_error_rate, word_error_rate
from elp.tasks.base import Task, read_pairs, write_lines


class SpeechRecognition(Task):
    """CTC ASR over the transcripts in each data dir's ``text``.

    Parameters
    ----------
    bpe_vocab : int
        0: characters (``tokens.txt``); N > 0: a sentencepiece BPE model of N pieces.
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

    def __init__(self, bpe_vocab: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.bpe_vocab = int(bpe_vocab)

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

    def write_outputs(self, brain, dataset, test_dir, decode_dir, loader_kwargs_of):
        hyps = brain.predict(dataset, loader_kwargs_of(dataset))
        if hyps is None:
            return
        refs = read_data_dir(test_dir).text
        write_lines(decode_dir / "hyp.txt", (f"{u} {hyps[u]}".rstrip() for u in sorted(hyps)))
        write_lines(decode_dir / "ref.txt", (f"{u} {refs[u]}" for u in sorted(hyps)))

    def score(self, test_dir, decode_dir):
        refs, hyps = read_pairs(Path(decode_dir) / "ref.txt"), read_pairs(Path(decode_dir) / "hyp.txt")
        wer = word_error_rate(refs, hyps)
        cer = character_error_rate(refs, hyps)
        return (self.metric(wer["wer"], 100.0),
                {"cer": cer["cer"], "ins": wer["ins"], "del": wer["del"], "sub": wer["sub"]})
