"""CTC speech recognition on ELP features."""

from __future__ import annotations

import speechbrain as sb
import torch

from elp.brains.base import ELPBrain
from elp.scoring import word_error_rate


def greedy_ctc(log_probs: torch.Tensor, frame_mask: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path decoding: argmax per frame, merge repeats, drop blanks.

    Arguments
    ---------
    log_probs: [B, F, V]; frame_mask: [B, F] bool.

    Returns
    -------
    B lists of token ids.

    Example
    -------
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

    def predict(self, dataset, loader_kwargs):
        """utt id -> hypothesis text (greedy CTC)."""
        hyps = {}
        for batch, feats, frame_mask in self.eval_batches(dataset, loader_kwargs):
            decoded = greedy_ctc(self.modules.head(feats), frame_mask)
            hyps.update({utt: self.hparams.inventory.decode(h) for utt, h in zip(batch.id, decoded)})
        return hyps
