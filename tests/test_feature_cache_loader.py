"""The CNN cache on the loader side: filled before training in capped batches of whole
utterances, keys hashed on the host, cached frames (training crops) read in the loader instead
of the audio, and the same model outputs as the waveform path."""

from __future__ import annotations

import json
import logging
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from recipe_fixtures import experiment, make_recipe
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset

from elp.core.backbones import SSLBackbone, load_backbone
from elp.core.model import AdaptedSSL
from elp.data.sampler import BucketBatchSampler, EvalBatchSampler
from elp.testing import tiny_config
from elp.train import feature_cache
from elp.train.checkpoints import AtomicCheckpointer
from elp.train.feature_cache import (
    CachedCNNDataset,
    CNNCacheBatch,
    CNNFeatureCache,
    HiddenStateCache,
    audio_key,
    cached_forward,
    cnn_cache_forward,
    fill_cnn_cache,
    with_audio_keys,
)
from elp.train.recipe import loader_kwargs, make_dataset
from elp.runtime import leave_process_group

OPTIONS = {"l_dim": 24, "e_dim": 8, "prompt_frames": 4, "prefix_frames": 4, "lora_rank": 2}
LENGTHS = [8000, 5600, 3600]


def counting_dataset(lengths, seed=0):
    """A dataset of random utterances whose ``sig`` counts how often audio is read."""
    generator = torch.Generator().manual_seed(seed)
    data = {f"u{i}": {"wav": torch.randn(n, generator=generator), "num_samples": n, "label": i}
            for i, n in enumerate(lengths)}
    reads = []

    def read(utt, wav):
        reads.append(utt)
        return wav

    dataset = DynamicItemDataset(data, output_keys=["id", "sig", "label"])
    dataset.add_dynamic_item(read, takes=["id", "wav"], provides="sig")
    return dataset, reads


def model_of(tiny_checkpoints, method, seed=1):
    torch.manual_seed(seed)
    backbone = load_backbone("wavlm_plus", source=str(tiny_checkpoints["wavlm_plus"]))
    return AdaptedSSL(backbone, method, **OPTIONS, backbone_dropout=False).train()


def _loss(feats, frame_mask):
    return (feats * frame_mask[..., None]).pow(2).mean() + feats[:, 0].sum()


@pytest.mark.parametrize("method", ["elp", "prefix", "full"])
def test_loader_path_equals_waveform_path(tiny_checkpoints, tmp_path, method):
    """Whole utterances (fp32 cache): all cached, one not cached, and evaluation items (audio
    kept, hashed in the loader) give the waveform path's outputs (<= 1e-5) and gradients."""
    model = model_of(tiny_checkpoints, method)
    dataset, _ = counting_dataset(LENGTHS)
    wavs = torch.zeros(3, max(LENGTHS))
    for i, n in enumerate(LENGTHS):
        wavs[i, :n] = dataset.data[f"u{i}"]["wav"]
    live, live_mask = model(wavs, torch.tensor(LENGTHS) / max(LENGTHS))
    _loss(live, live_mask).backward()
    live_grads = {n: p.grad.clone() for n, p in model.learnable_parameters().items()}
    cache = CNNFeatureCache.for_model(tmp_path, model, dtype="float32")
    keys = fill_cnn_cache(model.backbone, cache, dataset, max_batch_seconds=10).keys
    assert keys == {f"u{i}": audio_key(dataset.data[f"u{i}"]["wav"]) for i in range(3)}
    cache.path(keys["u1"]).unlink()  # one utterance the cache lacks (full, or its write failed)
    for items, cached in [(CachedCNNDataset(dataset, cache, keys), [True, False, True]),
                          (CachedCNNDataset(dataset, cache), [True, False, True])]:  # evaluation: no keys given
        batch = CNNCacheBatch([items[i] for i in range(3)])
        assert batch.cnn_inputs.cached.tolist() == cached and batch.cnn_inputs.keys == [keys[f"u{i}"] for i in range(3)]
        model.zero_grad()
        feats, mask = cnn_cache_forward(model, cache, batch.cnn_inputs, "cpu")
        assert torch.equal(mask, live_mask)
        assert ((feats - live) * mask[..., None]).abs().max().item() <= 1e-5, method
        _loss(feats, mask).backward()
        for name, grad in live_grads.items():
            assert torch.allclose(grad, dict(model.named_parameters())[name].grad, atol=1e-5, rtol=1e-4), name
    assert torch.equal(batch.sig.data, wavs)  # evaluation batches keep the audio (prediction reads it)


def test_training_items_are_frame_crops_read_without_the_audio(tmp_path):
    backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm")).eval()
    lengths = [48000, 40000, 4000, 30000]
    dataset, reads = counting_dataset(lengths)
    cache = CNNFeatureCache.for_model(tmp_path, backbone, dtype="float32")
    fill = fill_cnn_cache(backbone, cache, dataset, max_batch_seconds=5.0)
    assert (fill.found, fill.stored, fill.left_out) == (0, 4, 0) and sorted(reads) == ["u0", "u1", "u2", "u3"]
    crop_samples = 16000
    crop = int(backbone.num_frames(torch.tensor(crop_samples)))
    items = CachedCNNDataset(dataset, cache, fill.keys, max_frames=crop, max_samples=crop_samples)
    reads.clear()
    starts = set()
    for _ in range(20):
        for index, n in enumerate(lengths):
            item = items[index]
            stored = cache.read(fill.keys[f"u{index}"])
            frames = item["cnn_frames"]
            assert item["sig"] is None and item["label"] == index
            assert frames.shape[0] == min(crop, stored.shape[0])
            start = next(s for s in range(stored.shape[0] - frames.shape[0] + 1)
                         if torch.equal(stored[s:s + frames.shape[0]], frames))  # a window of the stored rows
            starts.add((index, start))
    assert reads == []  # cached: the audio is never read
    assert len({s for i, s in starts if i == 0}) > 5 and {s for i, s in starts if i == 2} == {0}
    cache.path(fill.keys["u1"]).unlink()  # not cached: the audio, cropped as the waveform path crops
    item = items[1]
    wav = dataset.data["u1"]["wav"]
    assert reads == ["u1"] and item["cnn_frames"] is None and item["sig"].shape[0] == crop_samples
    assert any(torch.equal(wav[s:s + crop_samples], item["sig"]) for s in range(len(wav) - crop_samples + 1))
    loader = torch.utils.data.DataLoader(items, batch_size=4, num_workers=2, collate_fn=CNNCacheBatch)
    batch = next(iter(loader))  # the same through loader workers
    assert batch.cnn_inputs.keys == [fill.keys[f"u{i}"] for i in range(4)]
    assert batch.cnn_inputs.cached.tolist() == [True, False, True, True]
    assert batch.cnn_inputs.frame_lens.tolist() == [crop, 0, 12, crop] and batch.cnn_inputs.wavs.shape == (1, 16000)


def test_hidden_state_cache_reads_keys_hashed_by_the_loader(tmp_path, monkeypatch):
    model = AdaptedSSL(SSLBackbone.from_config("wavlm", tiny_config("wavlm")), "weighted_sum").eval()
    dataset, _ = counting_dataset(LENGTHS)
    with_audio_keys(dataset)
    batch = PaddedBatch([dataset[i] for i in range(3)])
    assert batch.audio_key == [audio_key(dataset.data[f"u{i}"]["wav"]) for i in range(3)]
    cache = HiddenStateCache.for_model(tmp_path, model)
    wavs, wav_lens = batch.sig
    with torch.no_grad():
        live, _ = model(wavs, wav_lens)
        monkeypatch.setattr(feature_cache, "batch_audio_keys", None)  # nothing is hashed here
        first, mask = cached_forward(model, cache, list(batch.id), wavs, wav_lens, keys=batch.audio_key)
        second, _ = cached_forward(model, cache, list(batch.id), wavs, wav_lens, keys=batch.audio_key)
    assert cache.hits == 3 and all(key in cache for key in batch.audio_key)
    for feats in (first, second):  # computed, then read
        assert ((feats - live[:, :feats.shape[1]]) * mask[..., None]).abs().max().item() <= 1e-5


def _long_recipe(tmp_path, monkeypatch):
    """The IC recipe with utterances of 0.4-3 s; with :func:`_fit`, batches capped at 3.2 s
    (training and evaluation) and 8 utterances, and 0.4 s training crops: one training batch of
    8 crops, whose whole utterances would be 24 s."""
    recipe = make_recipe(tmp_path, durations=[2.5, 3.0, 2.0, 2.8, 0.4, 2.2, 1.5, 2.9])
    monkeypatch.chdir(recipe)
    return recipe


def _record_cnn_batches(monkeypatch) -> list[tuple[int, int]]:
    """(utterances, padded samples) of every batch the CNN runs on."""
    calls = []
    original = SSLBackbone.extract_cnn_features

    def recording(self, wavs, lengths):
        calls.append(tuple(wavs.shape))
        return original(self, wavs, lengths)

    monkeypatch.setattr(SSLBackbone, "extract_cnn_features", recording)
    return calls


def _fit(recipe, *args, epochs=1):
    hparams, brain = experiment(recipe, "--cnn_cache", "true", "--dynamic_batching", "true", "--max_batch_seconds",
                                "3.2", "--eval_max_batch_seconds", "3.2", "--max_batch_utterances", "8",
                                "--number_of_epochs", str(epochs), *args)
    hparams["task"].max_train_seconds = 0.4
    train, valid = (make_dataset(hparams, hparams[k], s) for k, s in (("train_set", "train"), ("valid_set", "valid")))
    options = loader_kwargs(hparams, train, True)
    brain.fit(hparams["epoch_counter"], train, valid, train_loader_kwargs=options,
              valid_loader_kwargs=loader_kwargs(hparams, valid, False))
    return hparams, brain, train, valid, options


def test_no_batch_fed_to_the_cnn_exceeds_the_cap(tmp_path, monkeypatch):
    recipe = _long_recipe(tmp_path, monkeypatch)
    calls = _record_cnn_batches(monkeypatch)
    transformer_inputs = []
    original = AdaptedSSL.forward_from_cnn_features

    def recording(self, cnn_feats, frame_lens):
        transformer_inputs.append((torch.is_grad_enabled(), cnn_feats.shape[1]))
        return original(self, cnn_feats, frame_lens)

    monkeypatch.setattr(AdaptedSSL, "forward_from_cnn_features", recording)
    _, brain, train, valid, options = _fit(recipe, "--tag", "cap")
    whole = [int(train.data[u]["num_samples"]) for u in train.data_ids]
    sampler = options["batch_sampler"]
    assert isinstance(sampler, BucketBatchSampler)
    # the sampler counts crops: one batch of 8; its whole utterances would be 8 x 3 s
    assert [len(b) for b in sampler] == [8] and max(len(b) * max(whole[i] for i in b) for b in sampler) == 8 * 48000
    cap = 3.2 * 16000
    assert calls and all(b * t <= cap for b, t in calls), calls
    valid_lengths = [int(valid.data[u]["num_samples"]) for u in valid.data_ids]
    fill_batches = [len(list(EvalBatchSampler(n, 3.2, 64, rank=0, world_size=1))) for n in (whole, valid_lengths)]
    assert len(calls) == sum(fill_batches)  # the CNN ran in the fill only: training and validation read frames
    crop_frames = int(brain.modules.model.backbone.num_frames(torch.tensor(6400)))
    training = [frames for grad, frames in transformer_inputs if grad]
    assert training and max(training) == crop_frames
    assert len(list((recipe / "exp" / "cnn_cache").rglob("*.safetensors"))) == 16
    assert brain.train_stats["loss"] == brain.train_stats["loss"]  # trained, finite


def test_full_disk_degrades_to_computing_with_one_warning(tmp_path, monkeypatch):
    """ENOSPC on every write: one warning for the run, nothing stored, training goes on with
    waveform crops (the sampler's sizes) through the CNN."""
    recipe = _long_recipe(tmp_path, monkeypatch)
    calls = _record_cnn_batches(monkeypatch)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(feature_cache, "save_file", full_disk)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    feature_cache.logger.addHandler(handler)  # the recipe's logging set-up replaces pytest's capture
    try:
        _, brain, *_ = _fit(recipe, "--tag", "full")
    finally:
        feature_cache.logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "elp cache prune" in warnings[0]
    assert not list((recipe / "exp" / "cnn_cache").rglob("*.safetensors"))
    assert all(b * t <= 3.2 * 16000 for b, t in calls), calls
    assert (8, 6400) in calls  # the training batch: 8 waveform crops of 0.4 s
    assert brain.train_stats["loss"] == brain.train_stats["loss"]


def test_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    """The crops drawn in the loader follow the recovered RNG state: a run stopped after its
    first epoch's checkpoint and resumed ends with the weights of the uninterrupted run."""
    from elp.train import recipe as plumbing
    from elp.train.brains.base import unwrap

    class Killed(Exception):
        pass

    def fit(tag, kill=False):
        if kill:  # stop right after the first end-of-epoch checkpoint, as a killed process would
            original = AtomicCheckpointer.save_and_keep_only

            def save_then_die(self, *args, **kwargs):
                original(self, *args, **kwargs)
                raise Killed

            monkeypatch.setattr(AtomicCheckpointer, "save_and_keep_only", save_then_die)
        try:
            brain = _fit(recipe, "--tag", tag, epochs=2)[1]
        finally:
            monkeypatch.undo()
            monkeypatch.chdir(recipe)
            while plumbing._HELD:  # the experiment locks, released as at the end of a process
                plumbing._HELD.pop().__exit__(None, None, None)
        model, head = unwrap(brain.modules.model), unwrap(brain.modules.head)
        return {**{f"model.{n}": p.detach().clone() for n, p in model.learnable_parameters().items()},
                **{f"head.{n}": t.clone() for n, t in head.state_dict().items()}}

    recipe = _long_recipe(tmp_path, monkeypatch)
    straight = fit("straight")
    with pytest.raises(Killed):
        fit("resumed", kill=True)
    assert len(list((recipe / "exp" / "resumed" / "save").glob("CKPT+*"))) == 1
    resumed = fit("resumed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def _fill_worker(rank: int, world: int, port: int, root: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    backbone = SSLBackbone.from_config("wavlm", tiny_config("wavlm")).eval()  # the same weights on both ranks
    dataset, reads = counting_dataset([16000, 12000, 8000, 8000, 6000, 4000])
    cache = CNNFeatureCache.for_model(root, backbone, writers=world)
    fill = fill_cnn_cache(backbone, cache, dataset, max_batch_seconds=1.0)
    with open(f"{root}/rank{rank}.json", "w") as handle:
        json.dump({"keys": fill.keys, "read": sorted(reads), "stored": fill.stored}, handle)
    leave_process_group()


@pytest.mark.slow  # two processes
def test_ranks_fill_disjoint_shares_and_share_the_keys(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_fill_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    dataset, _ = counting_dataset([16000, 12000, 8000, 8000, 6000, 4000])
    expected = {u: audio_key(dataset.data[u]["wav"]) for u in dataset.data_ids}
    assert ranks[0]["keys"] == ranks[1]["keys"] == expected
    assert ranks[0]["read"] and set(ranks[0]["read"]).isdisjoint(ranks[1]["read"])
    assert sorted(ranks[0]["read"] + ranks[1]["read"]) == sorted(expected)
    assert ranks[0]["stored"] + ranks[1]["stored"] == 6 == len(list(tmp_path.rglob("*.safetensors")))
