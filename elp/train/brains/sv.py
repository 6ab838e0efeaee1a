"""Speaker verification: embeddings trained as AAM-softmax speaker classification.

Examples
--------
Embeddings of a tiny untrained model, windowed (0.5 s windows):

>>> import tempfile
>>> from speechbrain.dataio.dataset import DynamicItemDataset
>>> from elp.core.heads import AAMSoftmaxClassifier
>>> from elp.serve.package import load_package
>>> from elp.testing import make_tiny_package
>>> from elp.tasks import SpeakerVerification
>>> package = load_package(make_tiny_package(tempfile.mkdtemp(), task="sv", method="l_only"))
>>> modules = {"model": package.model, "head": package.head,
...            "classifier": AAMSoftmaxClassifier(8, num_speakers=3)}
>>> task = SpeakerVerification(window_seconds=0.5, window_overlap_seconds=0.1)
>>> brain = SpeakerBrain(modules=modules, run_opts={"device": "cpu"},
...                      hparams={"task": task, "loss": torch.nn.CrossEntropyLoss()})
>>> from speechbrain.dataio.dataset import DynamicItemDataset
>>> dataset = DynamicItemDataset({"u1": {"wav": torch.randn(16000)}, "u2": {"wav": torch.randn(12000)}})
>>> dataset.add_dynamic_item(lambda wav: wav, takes="wav", provides="sig")
>>> dataset.set_output_keys(["id", "sig"])
>>> {utt: tuple(e.shape) for utt, e in brain.predict(dataset, {"batch_size": 2}).items()}
{'u1': (8,), 'u2': (8,)}
>>> brain.class_loss(torch.randn(2, 8), torch.tensor([0, 2])).dim()
0
"""

from __future__ import annotations

import speechbrain as sb
import torch

from elp.tasks.sv import SpeakerVerification
from elp.train.brains.base import unwrap
from elp.train.brains.classify import UtteranceClassifierBrain
from elp.train.brains.prediction import brain_task, model_encoder, predicted_outputs


class SpeakerBrain(UtteranceClassifierBrain):
    """``modules.head`` maps features to embeddings; ``modules.classifier`` is the AAM layer.

    Training reads ``label_id`` (the training speaker); validation reports speaker-ID
    accuracy on held-out utterances of the training speakers, with embeddings made as stage 4
    makes them (:meth:`compute_forward`: long utterances in windows, memory bounded by the
    window). :meth:`predict` returns embeddings; stage 4 scores the trial list with them.

    Notes
    -----
    Hparams it reads besides :class:`elp.train.brains.base.ELPBrain`'s: ``loss`` (on the AAM
    logits [B, #speakers] and speaker ids [B]) and ``task`` (its ``window_seconds`` and
    ``window_overlap_seconds`` for :meth:`predict`).

    Examples
    --------
    See the module docstring.
    """

    def compute_forward(self, batch, stage):
        """Embeddings [B, E] of the batch's waveforms.

        Training: the features (with the caches and crops) through the head. Validation and
        test: the task's prediction path, :meth:`elp.tasks.sv.SpeakerVerification.predict_batch`
        with the model run on the waveforms (no feature caches), as in :meth:`predict`:
        utterances longer than the task's ``window_seconds`` are embedded in overlapping
        windows, so a validation utterance of minutes needs the memory of its windows, and
        validation measures the embeddings stage 4 scores.
        """
        if stage == sb.Stage.TRAIN:
            return super().compute_forward(batch, stage)
        wavs, wav_lens = batch.sig
        wavs, wav_lens = wavs.to(self.device), wav_lens.to(self.device)
        task = brain_task(self, SpeakerVerification)
        embeddings = task.predict_batch(model_encoder(self)(batch, wavs, wav_lens), unwrap(self.modules.head),
                                        wavs, wav_lens)
        return torch.stack(embeddings).to(self.device)

    def with_cnn_cache(self, dataset, stage, loader_kwargs: dict):
        """Training and test loaders as :meth:`ELPBrain.with_cnn_cache`; validation reads audio (windows need it)."""
        if stage == sb.Stage.VALID:
            return dataset, loader_kwargs
        return super().with_cnn_cache(dataset, stage, loader_kwargs)

    def class_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Scaled cosines [B, #speakers] of embeddings [B, E] to the training speakers (no margin)."""
        return self.modules.classifier(embeddings)

    def class_loss(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss of embeddings [B, E] and speaker ids [B]: the hparams' ``loss`` of the margin logits.

        AAM-softmax with cross-entropy.

        The classifier is called as a module (its ``forward`` with targets), so under DDP the
        call goes through the wrapper and its gradients are all-reduced.
        """
        return self.hparams.loss(self.modules.classifier(embeddings, targets), targets)

    def head_parameters(self):
        """The head's trainable parameters, then the AAM classifier's: they share the ``head`` learning rate."""
        return super().head_parameters() + list(unwrap(self.modules.classifier).parameters())

    def predict(self, dataset, loader_kwargs):
        """Utterance id -> embedding [embed_dim] (CPU tensor, fp32; as :meth:`ELPBrain.predict`).

        The task's prediction path (:meth:`elp.tasks.sv.SpeakerVerification.predict_batch`, the
        one the package API runs): utterances longer than the task's ``window_seconds`` are
        embedded in overlapping windows whose L2-normalised embeddings are averaged, so memory
        is bounded by the window, not the utterance (VoxCeleb test files reach minutes). The
        model runs on the waveforms (no feature caches).
        """
        embeddings = {}
        for ids, outputs in predicted_outputs(self, dataset, loader_kwargs, model_encoder(self),
                                              task=brain_task(self, SpeakerVerification)):
            embeddings.update(zip(ids, outputs))
        return embeddings
