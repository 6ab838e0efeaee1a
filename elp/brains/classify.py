"""Utterance classification (emotion, intent) on ELP features."""

from __future__ import annotations

import torch

from elp.brains.base import ELPBrain
from elp.scoring import accuracy, unweighted_accuracy


class UtteranceClassifierBrain(ELPBrain):
    """Classes of ``hparams.inventory`` trained with ``hparams.loss``; validation reports accuracy and UA.

    The batch carries ``sig`` and ``label_id``.
    """

    def compute_forward(self, batch, stage):
        feats, frame_mask = self.features(batch, stage)
        return self.modules.head(feats, frame_mask)

    def class_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """[B, num_classes] scores of the head's outputs (here the outputs themselves)."""
        return outputs

    def class_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss of the head's outputs (the hparams' ``loss``)."""
        return self.hparams.loss(outputs, targets)

    def compute_objectives(self, outputs, batch, stage):
        targets = self.class_targets(batch)
        if stage.name != "TRAIN":
            self.preds.append(self.class_logits(outputs).argmax(-1).cpu())
            self.targets.append(targets.cpu())
        return self.class_loss(outputs, targets)

    def reset_stats(self, stage):
        self.preds, self.targets = [], []

    def stage_stats(self, stage):
        preds, targets = torch.cat(self.preds), torch.cat(self.targets)
        num_classes = len(self.hparams.inventory)
        return {"accuracy": accuracy(preds, targets),
                "ua": unweighted_accuracy(preds, targets, num_classes),
                "error": 100.0 - accuracy(preds, targets)}

    def predict(self, dataset, loader_kwargs):
        """utt id -> predicted label name."""
        labels = self.hparams.inventory.labels
        predictions = {}
        for batch, feats, frame_mask in self.eval_batches(dataset, loader_kwargs):
            best = self.modules.head(feats, frame_mask).argmax(-1).tolist()
            predictions.update({utt: labels[i] for utt, i in zip(batch.id, best)})
        return predictions
