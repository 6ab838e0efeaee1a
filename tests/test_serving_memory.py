"""Bounded memory: batches capped in count and padded seconds, inputs read lazily per batch, routed
batches capped in samples x tasks, long inputs windowed (utterance tasks) or chunked (ASR)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from elp.serve import inference
from elp.serve.inference import load_predictor
from elp.serve.multitask import MultiTask
from elp.serve.package import load_package, read_package_config
from elp.tasks.asr import SpeechRecognition
from elp.tasks.classify import UtteranceClassification
from elp.tasks.windows import chunk_starts
from elp.testing import make_tiny_package, save_tiny_checkpoint

RNG = np.random.default_rng(0)


def waves(*seconds):
    return [(0.1 * RNG.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]


def test_batches_are_capped_by_count_and_padded_seconds(tmp_path, monkeypatch):
    classifier = load_predictor(make_tiny_package(tmp_path, task="classify"))
    seen = []
    original = classifier.forward_batch
    monkeypatch.setattr(classifier, "forward_batch", lambda ws: seen.append([w.shape[0] for w in ws]) or original(ws))
    inputs = waves(1.0, 1.0, 1.0, 3.0, 0.5, 0.5, 0.5, 0.5, 0.5)
    results = classifier.classify(inputs, sample_rate=16000, batch_size=4, max_batch_seconds=3.0)
    assert seen == [[16000] * 3, [48000], [8000] * 4, [8000]]
    assert all(max(batch) * len(batch) <= 3 * 16000 or len(batch) == 1 for batch in seen)
    alone = [classifier.classify(w, sample_rate=16000) for w in inputs]
    for got, want in zip(results, alone):
        assert got.label == want.label
        assert got.probabilities == pytest.approx(want.probabilities, abs=1e-5)


def test_inputs_are_read_lazily_one_batch_at_a_time(tmp_path, monkeypatch):
    classifier = load_predictor(make_tiny_package(tmp_path, task="classify"))
    events = []
    load = inference.load_waveform
    monkeypatch.setattr(inference, "load_waveform", lambda item, rate=None, name=None: events.append("read") or
                        load(item, rate, name))
    original = classifier.forward_batch
    monkeypatch.setattr(classifier, "forward_batch", lambda ws: events.append("run") or original(ws))
    classifier.classify(waves(*[0.5] * 5), sample_rate=16000, batch_size=2)
    assert events == ["read", "read", "read", "run", "read", "read", "run", "run"]


def test_routed_batches_count_samples_times_tasks(tmp_path, monkeypatch):
    ckpt = save_tiny_checkpoint("wavlm", tmp_path / "ckpt")
    dirs = [make_tiny_package(tmp_path / f"p{i}", task="classify", method="el", backbone_dir=ckpt, seed=i)
            for i in range(3)]
    tasks = MultiTask(dirs)
    assert tasks.plan()["routed_batches"] == [[0, 1, 2]]
    assert tasks.batch_seconds(6.0) == 2.0 and tasks.batch_seconds(None) is None
    seen = []
    original = tasks.forward_batch
    monkeypatch.setattr(tasks, "forward_batch", lambda ws: seen.append([w.shape[0] for w in ws]) or original(ws))
    tasks.outputs(waves(*[0.5] * 5), sample_rate=16000, batch_size=8, max_batch_seconds=4.5)
    assert seen == [[8000] * 3, [8000] * 2]  # 3 x 3 tasks x 0.5 s = 4.5 s per routed batch


def test_long_classification_inputs_are_the_mean_of_window_probabilities(tmp_path):
    package = load_package(make_tiny_package(tmp_path, task="classify", method="elp",
                                             task_options={"window_seconds": 1.0, "window_overlap_seconds": 0.5}))
    assert read_package_config(tmp_path)["task_options"] == {"window_seconds": 1.0, "window_overlap_seconds": 0.5}
    task, model, head = package.task, package.model, package.head
    wav = torch.from_numpy(waves(2.2)[0])[None]
    with torch.no_grad():
        got = task.predict_batch(model, head, wav, torch.ones(1))[0]
        # windows of 1 s every 0.5 s, the last moved back to end at the end
        starts = [0, 8000, 16000, 35200 - 16000]
        want = torch.stack([task.probabilities(head, *model(wav[:, s:s + 16000], torch.ones(1)))[0]
                            for s in starts]).mean(0)
        short = torch.from_numpy(waves(0.8)[0])[None]
        whole = task.head_outputs(head, *model(short, torch.ones(1)))[0]
        assert torch.equal(task.predict_batch(model, head, short, torch.ones(1))[0], whole)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert abs(float(got.sum()) - 1) < 1e-6


def test_default_windows_exceed_the_mini_corpus_utterances():
    assert UtteranceClassification().package_options() == {"window_seconds": 30.0, "window_overlap_seconds": 5.0}
    assert SpeechRecognition().package_options() == {"chunk_seconds": 30.0, "chunk_overlap_seconds": 2.0}


def test_long_asr_inputs_are_chunked_and_stitched_on_the_frame_grid(tmp_path):
    package = load_package(make_tiny_package(tmp_path, task="asr", method="elp"))
    model, head = package.model, package.head
    wav = torch.from_numpy(waves(5.0)[0])[None]
    chunked = SpeechRecognition(chunk_seconds=2.0, chunk_overlap_seconds=0.6)
    assert chunk_starts(80000, 32000, 22400) == [0, 22400, 44800, 67200]  # the last one shorter
    with torch.no_grad():
        whole = SpeechRecognition().predict_batch(model, head, wav, torch.ones(1))[0]
        got = chunked.predict_batch(model, head, wav, torch.ones(1))[0]
        first = chunked.head_outputs(head, *model(wav[:, :32000], torch.ones(1)))[0]
        last = chunked.head_outputs(head, *model(wav[:, 67200:], torch.ones(1)))[0]
    assert got.shape == whole.shape == ((80000 - 400) // 320 + 1, head.config["vocab_size"])
    cut = (22400 // 320 + first.shape[0]) // 2  # the middle of the first overlap
    torch.testing.assert_close(got[:cut], first[:cut], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[-20:], last[-20:], atol=1e-5, rtol=1e-5)
