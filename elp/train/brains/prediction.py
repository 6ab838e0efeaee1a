"""Stage 4's prediction: the task's own prediction path over a dataset.

:func:`predicted_outputs` runs :meth:`elp.tasks.base.Task.predict_batch` (the path the package
API and multi-task serving run too) on every batch of a dataset; the Brain chooses the
encoder: :func:`feature_encoder` reads :meth:`elp.train.brains.base.ELPBrain.features` (with its
caches) for the batch itself, :func:`model_encoder` always runs the model.

Examples
--------
>>> import tempfile
>>> from speechbrain.dataio.dataset import DynamicItemDataset
>>> from elp.serve.package import load_package
>>> from elp.testing import make_tiny_package
>>> from elp.tasks import UtteranceClassification
>>> from elp.train.brains import UtteranceClassifierBrain
>>> package = load_package(make_tiny_package(tempfile.mkdtemp(), task="classify"))
>>> brain = UtteranceClassifierBrain(modules={"model": package.model, "head": package.head},
...                                  hparams={"task": UtteranceClassification()}, run_opts={"device": "cpu"})
>>> dataset = DynamicItemDataset({"u1": {"wav": torch.randn(16000)}, "u2": {"wav": torch.randn(12000)}})
>>> dataset.add_dynamic_item(lambda wav: wav, takes="wav", provides="sig")
>>> dataset.set_output_keys(["id", "sig"])
>>> [(ids, [tuple(p.shape) for p in probs]) for ids, probs in predicted_outputs(brain, dataset, {"batch_size": 2})]
[(['u1', 'u2'], [(3,), (3,)])]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import speechbrain as sb
import torch

from elp.tasks.base import Encoder, Task
from elp.train.brains.base import unwrap

#: ``(batch, wavs, wav_lens) -> encode`` for one batch of the loader
EncoderOf = Callable[[object, torch.Tensor, torch.Tensor], Encoder]


def brain_task(brain, default: type[Task]) -> Task:
    """The recipe's task (``hparams.task``), or ``default()`` for a Brain built without one."""
    return getattr(brain.hparams, "task", None) or default()


def feature_encoder(brain) -> EncoderOf:
    """Encoders that read ``brain.features`` (its caches) for the batch itself, as float32.

    Any other input (e.g. windows) runs the model.
    """
    model = unwrap(brain.modules.model)

    def encoder_of(batch, wavs, wav_lens):
        def encode(w, lens):
            if w is wavs and lens is wav_lens:
                feats, frame_mask = brain.features(batch, sb.Stage.TEST)
                return feats.float(), frame_mask
            return model(w, lens)

        return encode

    return encoder_of


def model_encoder(brain) -> EncoderOf:
    """Encoders that always run the Brain's model on the waveforms."""
    model = unwrap(brain.modules.model)
    return lambda batch, wavs, wav_lens: model


def predicted_outputs(brain, dataset, loader_kwargs: dict, encoder_of: EncoderOf | None = None,
                      task: Task | None = None) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
    """Per batch: the utterance ids and the task's outputs (:meth:`elp.tasks.base.Task.predict_batch`).

    Runs over ``dataset`` (as :meth:`elp.train.brains.base.ELPBrain.predict`) in eval mode,
    without autograd, in the Brain's evaluation precision.

    Parameters
    ----------
    brain : elp.train.brains.base.ELPBrain
        The Brain (its ``hparams.task``, model and head).
    encoder_of
        Default: :func:`feature_encoder`.
    task
        Default: ``brain.hparams.task``.

    Yields
    ------
    ids : list[str]
        The batch's utterances.
    outputs : list[torch.Tensor]
        Their outputs (CPU, float32).
    """
    task = task or brain.hparams.task
    encoder_of = encoder_of or feature_encoder(brain)
    head = unwrap(brain.modules.head)
    loader = brain.make_dataloader(dataset, sb.Stage.TEST, **loader_kwargs)
    brain.modules.eval()
    with torch.no_grad(), brain.evaluation_ctx:  # the training precision (bf16 autocast on a GPU)
        for batch in loader:
            wavs, wav_lens = batch.sig
            wavs, wav_lens = wavs.to(brain.device), wav_lens.to(brain.device)
            yield list(batch.id), task.predict_batch(encoder_of(batch, wavs, wav_lens), head, wavs, wav_lens)
