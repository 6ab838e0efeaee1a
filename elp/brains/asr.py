"""CTC speech recognition on ELP features."""

from __future__ import annotations

import speechbrain as sb
import torch

from elp.brains.base import ELPBrain
from elp.decoding import CTCBeamSearch, greedy_ctc
from elp.scoring import word_error_rate


class ASRBrain(ELPBrain):
    """CTC (``hparams.loss``) over ``hparams.inventory`` tokens (blank = 0); validation reports WER.

    The batch carries ``sig`` (waveforms), ``tokens`` (padded token ids) and ``text``.
    """

    def compute_forward(self, batch, stage):
        feats, frame_mask = self.features(batch, stage)
        return self.modules.head(feats), frame_mask

    def compute_objectives(self, predictions, batch, stage):
        log_probs, frame_mask = predictions
        tokens, token_lens = batch.tokens
        input_lens = frame_mask.sum(1).float() / frame_mask.shape[1]
        loss = self.hparams.loss(log_probs, tokens.to(self.device), input_lens, token_lens.to(self.device))
        if stage != sb.Stage.TRAIN:
            tokenizer = self.hparams.inventory
            self.refs += list(batch.text)
            self.hyps += [tokenizer.decode(h) for h in greedy_ctc(log_probs, frame_mask)]
        return loss

    def reset_stats(self, stage):
        self.refs, self.hyps = [], []

    def stage_stats(self, stage):
        return {"wer": word_error_rate(self.refs, self.hyps)["wer"]}

    def predict(self, dataset, loader_kwargs, beam_size: int = 0, lm=None):
        """utt id -> hypothesis text: greedy CTC, or CTC prefix beam search (``beam_size`` > 0,
        optionally with an n-gram ``lm``, :class:`elp.decoding.CTCBeamSearch`)."""
        tokenizer = self.hparams.inventory
        beam = CTCBeamSearch(tokenizer, beam_size=beam_size, lm=lm) if beam_size else None
        hyps = {}
        for batch, feats, frame_mask in self.eval_batches(dataset, loader_kwargs):
            log_probs = self.modules.head(feats)
            if beam is None:
                texts = [tokenizer.decode(h) for h in greedy_ctc(log_probs, frame_mask)]
            else:
                texts = beam(log_probs.float(), frame_mask)
            hyps.update(dict(zip(batch.id, texts)))
        return hyps
