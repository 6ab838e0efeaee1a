"""Utterance classification (emotion, intent) on ELP features.

Examples
--------
One validation batch of a tiny untrained model:

>>> import tempfile
>>> from types import SimpleNamespace
>>> import speechbrain as sb
>>> from elp.data.inventory import LabelMap
>>> from elp.serve.package import load_package
>>> from elp.testing import make_tiny_package
>>> package = load_package(make_tiny_package(tempfile.mkdtemp(), task="classify", method="l_only"))
>>> brain = UtteranceClassifierBrain(
...     modules={"model": package.model, "head": package.head}, run_opts={"device": "cpu"},
...     hparams={"loss": torch.nn.CrossEntropyLoss(), "inventory": LabelMap.from_values(package.labels)})
>>> batch = SimpleNamespace(id=["a", "b"], sig=(torch.randn(2, 16000), torch.tensor([1.0, 0.75])),
...                         label_id=SimpleNamespace(data=torch.tensor([[0], [2]])))
>>> brain.reset_stats(sb.Stage.VALID)
>>> logits = brain.compute_forward(batch, sb.Stage.VALID)
>>> logits.shape, brain.compute_objectives(logits, batch, sb.Stage.VALID).dim()
(torch.Size([2, 3]), 0)
>>> sorted(brain.stage_stats(sb.Stage.VALID))
['accuracy', 'error', 'ua']
"""

from __future__ import annotations

import torch

from elp.data.sampler import gather_by_utterance
from elp.eval.scoring import accuracy, unweighted_accuracy
from elp.tasks.classify import UtteranceClassification
from elp.train.brains.base import ELPBrain
from elp.train.brains.prediction import brain_task, predicted_outputs


class UtteranceClassifierBrain(ELPBrain):
    """Classes of ``hparams.inventory`` trained with ``hparams.loss``; validation reports accuracy and UA.

    The batch carries ``sig`` and ``label_id``.

    Notes
    -----
    Hparams it reads besides :class:`elp.train.brains.base.ELPBrain`'s: ``inventory`` (a
    :class:`elp.data.inventory.LabelMap`) and ``loss`` (on logits [B, n] and class ids [B]).

    Examples
    --------
    See the module docstring.
    """

    def compute_forward(self, batch, stage):
        feats, frame_mask = self.features(batch, stage)
        return self.modules.head(feats, frame_mask)

    def class_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class scores [B, num_classes] of the head's outputs (here the logits themselves)."""
        return outputs

    def class_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar training loss (the hparams' ``loss``) of the head's logits and class ids [B]."""
        return self.hparams.loss(outputs, targets)

    def compute_objectives(self, outputs, batch, stage):
        targets = self.class_targets(batch)
        if stage.name != "TRAIN":
            preds = self.class_logits(outputs).argmax(-1).tolist()
            self.records.update(zip(batch.id, zip(preds, targets.tolist())))
        return self.class_loss(outputs, targets)

    def reset_stats(self, stage):
        self.records = {}  # utt id -> (predicted class, target class)

    def stage_stats(self, stage):
        pairs = list(gather_by_utterance(self.records).values())  # every rank's share under DDP
        preds, targets = torch.tensor([p for p, _ in pairs]), torch.tensor([t for _, t in pairs])
        num_classes = len(self.hparams.inventory)
        return {"accuracy": accuracy(preds, targets),
                "ua": unweighted_accuracy(preds, targets, num_classes),
                "error": 100.0 - accuracy(preds, targets)}

    def predict(self, dataset, loader_kwargs):
        """Utterance id -> predicted label name (as :meth:`ELPBrain.predict`).

        The task's prediction path (:meth:`elp.tasks.classify.UtteranceClassification.predict_batch`,
        the one the package API runs) on every batch; the most probable class wins.
        """
        task, labels = brain_task(self, UtteranceClassification), self.hparams.inventory.labels
        predictions = {}
        for ids, probabilities in predicted_outputs(self, dataset, loader_kwargs, task=task):
            predictions.update({utt: task.best_label(p, labels) for utt, p in zip(ids, probabilities)})
        return predictions
