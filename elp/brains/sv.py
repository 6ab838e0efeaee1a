"""Speaker verification: embeddings trained as AAM-softmax speaker classification."""

from __future__ import annotations

import speechbrain as sb
import torch

from elp.brains.base import unwrap
from elp.brains.classify import UtteranceClassifierBrain
from elp.windows import windowed_embeddings


class SpeakerBrain(UtteranceClassifierBrain):
    """``modules.head`` maps features to embeddings; ``modules.classifier`` is the AAM layer.

    Training reads ``label_id`` (the training speaker); validation reports speaker-ID
    accuracy on held-out utterances of the training speakers. :meth:`predict` returns
    embeddings; stage 4 scores the trial list with them.
    """

    def class_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Scaled cosines to the training speakers (no margin)."""
        return self.modules.classifier(embeddings)

    def class_loss(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The hparams' ``loss`` of the classifier's margin logits (AAM-softmax with cross-entropy).

        The classifier is called as a module (its ``forward`` with targets), so under DDP the
        call goes through the wrapper and its gradients are all-reduced.
        """
        return self.hparams.loss(self.modules.classifier(embeddings, targets), targets)

    def head_parameters(self):
        """The embedding head and the AAM classifier share the ``head`` learning rate."""
        return super().head_parameters() + list(unwrap(self.modules.classifier).parameters())

    def predict(self, dataset, loader_kwargs):
        """utt id -> embedding [embed_dim] (CPU tensor, fp32).

        Utterances longer than the task's ``window_seconds`` are embedded in overlapping
        windows whose L2-normalised embeddings are averaged (:func:`elp.windows.windowed_embeddings`),
        so memory is bounded by the window, not the utterance (VoxCeleb test files reach minutes).
        """
        task = self.hparams.task
        model, head = unwrap(self.modules.model), unwrap(self.modules.head)
        loader = self.make_dataloader(dataset, sb.Stage.TEST, **loader_kwargs)
        self.modules.eval()
        embeddings = {}
        with torch.no_grad(), self.evaluation_ctx:
            for batch in loader:
                wavs, wav_lens = batch.sig
                emb = windowed_embeddings(lambda w, lens: head(*model(w, lens)), wavs.to(self.device),
                                          wav_lens.to(self.device), window_seconds=task.window_seconds,
                                          overlap_seconds=task.window_overlap_seconds)
                embeddings.update({utt: e for utt, e in zip(batch.id, emb.float().cpu())})
        return embeddings
