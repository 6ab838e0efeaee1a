"""CTC speech recognition on ELP features.

Examples
--------
Greedy and beam-search transcripts of a tiny untrained model:

>>> import tempfile
>>> import torch
>>> from elp.serve.package import load_package
>>> from elp.testing import make_tiny_package
>>> package = load_package(make_tiny_package(tempfile.mkdtemp(), task="asr", method="l_only"))
>>> brain = ASRBrain(modules={"model": package.model, "head": package.head},
...                  hparams={"inventory": package.tokenizer, "task": package.task}, run_opts={"device": "cpu"})
>>> from speechbrain.dataio.dataset import DynamicItemDataset
>>> dataset = DynamicItemDataset({"u1": {"wav": torch.randn(16000)}, "u2": {"wav": torch.randn(12000)}})
>>> dataset.add_dynamic_item(lambda wav: wav, takes="wav", provides="sig")
>>> dataset.set_output_keys(["id", "sig"])
>>> greedy = brain.predict(dataset, {"batch_size": 2})
>>> beam = brain.predict(dataset, {"batch_size": 2}, beam_size=4)
>>> sorted(greedy), all(isinstance(text, str) for text in [*greedy.values(), *beam.values()])
(['u1', 'u2'], True)
"""

from __future__ import annotations

import speechbrain as sb

from elp.data.sampler import gather_by_utterance
from elp.eval.scoring import word_error_rate
from elp.tasks.asr import SpeechRecognition
from elp.tasks.decoding import greedy_ctc
from elp.train.brains.base import ELPBrain
from elp.train.brains.prediction import brain_task, predicted_outputs


class ASRBrain(ELPBrain):
    """CTC (``hparams.loss``) over ``hparams.inventory`` tokens (blank = 0); validation reports WER.

    The batch carries ``sig`` (waveforms), ``tokens`` (padded token ids) and ``text``.

    Notes
    -----
    Hparams it reads besides :class:`elp.train.brains.base.ELPBrain`'s: ``inventory`` (the
    tokenizer, blank = 0) and ``loss`` (SpeechBrain's ``ctc_loss`` signature: log-probs,
    targets, relative input lengths, relative target lengths).

    Examples
    --------
    See the module docstring.
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
            hyps = [tokenizer.decode(h) for h in greedy_ctc(log_probs, frame_mask)]
            self.records.update(zip(batch.id, zip(batch.text, hyps)))
        return loss

    def reset_stats(self, stage):
        self.records = {}  # utt id -> (reference, greedy hypothesis)

    def stage_stats(self, stage):
        pairs = list(gather_by_utterance(self.records).values())  # every rank's share under DDP
        return {"wer": word_error_rate([ref for ref, _ in pairs], [hyp for _, hyp in pairs])["wer"]}

    def predict(self, dataset, loader_kwargs, beam_size: int = 0, lm=None):
        """Utterance id -> hypothesis text (as :meth:`ELPBrain.predict`): greedy CTC, or CTC prefix beam search.

        The task's prediction path (:meth:`elp.tasks.asr.SpeechRecognition.predict_batch`, the
        one the package API runs) on every batch, then its decoding.

        Parameters
        ----------
        beam_size
            0: greedy; > 0: :class:`elp.tasks.decoding.CTCBeamSearch` with this beam.
        lm : object, optional
            An n-gram LM for the beam search (see :class:`elp.tasks.decoding.CTCBeamSearch`).
        """
        task, tokenizer = brain_task(self, SpeechRecognition), self.hparams.inventory
        beam = task.beam_search(tokenizer, beam_size, lm) if beam_size else None
        hyps = {}
        for ids, log_probs in predicted_outputs(self, dataset, loader_kwargs, task=task):
            hyps.update(zip(ids, task.transcripts(log_probs, tokenizer, beam)))
        return hyps
