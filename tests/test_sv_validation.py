"""SV validation embeds long utterances in stage 4's windows (bounded memory, the embeddings stage 4 scores)."""

import tempfile
from types import SimpleNamespace

import speechbrain as sb
import torch

from elp.core.heads import AAMSoftmaxClassifier
from elp.serve.package import load_package
from elp.tasks import SpeakerVerification
from elp.testing import make_tiny_package
from elp.train.brains import SpeakerBrain

WINDOW_SECONDS = 0.5


def tiny_sv_brain():
    torch.manual_seed(0)
    package = load_package(make_tiny_package(tempfile.mkdtemp(), task="sv", method="l_only"))
    task = SpeakerVerification(window_seconds=WINDOW_SECONDS, window_overlap_seconds=0.1)
    modules = {"model": package.model, "head": package.head, "classifier": AAMSoftmaxClassifier(8, num_speakers=3)}
    brain = SpeakerBrain(modules=modules, run_opts={"device": "cpu"},
                         hparams={"task": task, "loss": torch.nn.CrossEntropyLoss()})
    return brain, package, task


def batch_of(seconds: list[float]):
    torch.manual_seed(1)
    lengths = [int(s * 16000) for s in seconds]
    wavs = torch.zeros(len(lengths), max(lengths))
    for row, n in zip(wavs, lengths):
        row[:n] = 0.1 * torch.randn(n)
    lens = torch.tensor([n / max(lengths) for n in lengths])
    return SimpleNamespace(id=[f"u{i}" for i in range(len(lengths))], sig=(wavs, lens),
                           label_id=SimpleNamespace(data=torch.tensor([[0], [2]])))


def test_validation_embeddings_are_stage_4_embeddings_of_windows(monkeypatch):
    brain, package, task = tiny_sv_brain()
    batch = batch_of([1.3, 0.3])  # the first is longer than the 0.5 s window
    inputs = []
    package.model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].shape[1]))
    brain.on_stage_start(sb.Stage.VALID)
    brain.modules.eval()
    with torch.no_grad():
        validation = brain.compute_forward(batch, sb.Stage.VALID)
        loss = brain.compute_objectives(validation, batch, sb.Stage.VALID)
    assert max(inputs) == int(WINDOW_SECONDS * 16000)  # the model never saw more than a window
    with torch.no_grad():
        stage4 = torch.stack(task.predict_batch(package.model, package.head, *batch.sig))
        whole = package.head(*package.model(*batch.sig))
    assert validation.shape == (2, 8)
    assert torch.allclose(validation, stage4, atol=1e-5)
    assert not torch.allclose(validation[0], whole[0], atol=1e-3)  # the windows are what made the difference
    assert torch.isfinite(loss) and sorted(brain.records) == ["u0", "u1"]


def test_validation_reads_audio_when_the_cnn_cache_is_on(tmp_path):
    brain, _, _ = tiny_sv_brain()
    brain.hparams.cnn_cache, brain.hparams.cnn_cache_dir = True, str(tmp_path)
    dataset, kwargs = object(), {"batch_size": 2}  # its loader gets no cached frames: the windows need audio
    assert brain.with_cnn_cache(dataset, sb.Stage.VALID, kwargs) == (dataset, kwargs)


def test_training_still_runs_on_the_features():
    brain, _, _ = tiny_sv_brain()
    batch = batch_of([1.3, 0.3])
    brain.modules.train()
    embeddings = brain.compute_forward(batch, sb.Stage.TRAIN)
    assert embeddings.shape == (2, 8) and embeddings.requires_grad
