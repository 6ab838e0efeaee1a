"""Speaker verification: embeddings trained as AAM-softmax speaker classification."""

from __future__ import annotations

import torch

from elp.brains.base import ELPBrain, unwrap
from elp.scoring import accuracy


class SpeakerBrain(ELPBrain):
    """``modules.head`` maps features to embeddings; ``modules.classifier`` is the AAM layer.

    Training reads ``label_id`` (the training speaker); validation reports speaker-ID
    accuracy on held-out utterances of the training speakers. :meth:`predict` returns
    embeddings; stage 4 scores the trial list with them.
    """

    def compute_forward(self, batch, stage):
        feats, frame_mask = self.features(batch, stage)
        return self.modules.head(feats, frame_mask)

    def compute_objectives(self, embeddings, batch, stage):
        targets = self.class_targets(batch)
        if stage.name != "TRAIN":
            self.preds.append(self.modules.classifier(embeddings).argmax(-1).cpu())
            self.targets.append(targets.cpu())
        return self.modules.classifier.loss(embeddings, targets)

    def reset_stats(self, stage):
        self.preds, self.targets = [], []

    def stage_stats(self, stage):
        acc = accuracy(torch.cat(self.preds), torch.cat(self.targets))
        return {"accuracy": acc, "error": 100.0 - acc}

    def head_parameters(self):
        """The embedding head and the AAM classifier share the ``head`` learning rate."""
        return super().head_parameters() + list(unwrap(self.modules.classifier).parameters())

    def predict(self, dataset, loader_kwargs):
        """utt id -> embedding [embed_dim] (CPU tensor)."""
        embeddings = {}
        for batch, feats, frame_mask in self.eval_batches(dataset, loader_kwargs):
            emb = self.modules.head(feats, frame_mask).cpu()
            embeddings.update({utt: e for utt, e in zip(batch.id, emb)})
        return embeddings
