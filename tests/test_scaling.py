"""Scaling pieces: evaluation/training batch samplers (elp.data.sampler) and windowed
embeddings (elp.tasks.windows), checked against a tiny padding-invariant AdaptedSSL."""
import math

import pytest
import torch

from elp.core.backbones import SSLBackbone
from elp.data.sampler import (
    BucketBatchSampler,
    EvalBatchSampler,
    gather_by_utterance,
    length_sorted_batches,
)
from elp.core.heads import SpeakerEmbeddingHead
from elp.core.model import AdaptedSSL
from elp.testing import tiny_config
from elp.tasks.windows import window_bounds, windowed_embeddings
from elp.runtime import leave_process_group

SR = 16000


@pytest.fixture(scope="module")
def tiny_sv():
    """A tiny WavLM + ELP + mean-pooling speaker head, eval mode; embed(wavs, lens) -> [B, 16]."""
    torch.manual_seed(0)
    model = AdaptedSSL(SSLBackbone.from_config("wavlm", tiny_config("wavlm")), "elp",
                       l_dim=16, prompt_frames=2).eval()
    head = SpeakerEmbeddingHead(model.output_dim, embed_dim=16).eval()

    def embed(wavs, wav_lens):
        with torch.no_grad():
            return head(*model(wavs, wav_lens))

    return embed


def pad(wavs):
    longest = max(w.shape[0] for w in wavs)
    batch = torch.zeros(len(wavs), longest)
    for i, w in enumerate(wavs):
        batch[i, :w.shape[0]] = w
    return batch, torch.tensor([w.shape[0] / longest for w in wavs])


def lengths_fixture(n=23, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [int(x) for x in torch.randint(2000, 60000, (n,), generator=gen)]


# ------------------------------------------------------------------ evaluation batches
@pytest.mark.parametrize("cap,max_size", [(1.0, None), (4.0, None), (4.0, 3), (100.0, 5)])
def test_eval_batches_cover_once_sorted_and_capped(cap, max_size):
    lengths = lengths_fixture()
    batches = length_sorted_batches(lengths, cap, max_size)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every utterance exactly once
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= cap * SR or len(batch) == 1  # only a lone over-long utterance exceeds
        assert max_size is None or len(batch) <= max_size
    # greedy: the next utterance would not have fitted into the previous batch
    for prev, nxt in zip(batches, batches[1:]):
        full = max_size is not None and len(prev) == max_size
        assert full or (len(prev) + 1) * lengths[prev[0]] > cap * SR


def test_eval_batches_bad_input_is_named():
    with pytest.raises(ValueError, match="utterance index 1 .*utt2num_samples"):
        length_sorted_batches([10, 0], 1.0)
    with pytest.raises(ValueError, match="max_batch_seconds"):
        length_sorted_batches([10], 0)
    with pytest.raises(ValueError, match="max_batch_size"):
        EvalBatchSampler([10], 1.0, max_batch_size=0)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_sampler_shards_are_disjoint_and_balanced(world_size):
    lengths = lengths_fixture(41, seed=2)
    samplers = [EvalBatchSampler(lengths, 3.0, rank=r, world_size=world_size) for r in range(world_size)]
    shards = [s.indices for s in samplers]
    assert sorted(i for shard in shards for i in shard) == list(range(41))
    assert sum(len(s) for s in samplers) == len(length_sorted_batches(lengths, 3.0))
    load = samplers[0].padded_samples_per_rank
    longest_batch = 3.0 * SR
    assert max(load) - min(load) <= longest_batch  # greedy balancing: within one batch
    for r, sampler in enumerate(samplers):
        assert sum(len(b) * lengths[b[0]] for b in sampler) == load[r]
    with pytest.raises(ValueError, match="rank"):
        EvalBatchSampler(lengths, 3.0, rank=2, world_size=2)


def test_sorted_evaluation_equals_unsorted(tiny_sv):
    gen = torch.Generator().manual_seed(3)
    lengths = [int(x) for x in torch.randint(1200, 16000, (9,), generator=gen)]
    wavs = [torch.randn(n, generator=gen) for n in lengths]
    # reference: fixed batches of 4 in dataset order (the old evaluation)
    reference = {}
    for start in range(0, 9, 4):
        idx = list(range(start, min(start + 4, 9)))
        emb = tiny_sv(*pad([wavs[i] for i in idx]))
        reference.update(zip(idx, emb))
    sampler = EvalBatchSampler(lengths, max_batch_seconds=2.0, max_batch_size=3)
    assert len(sampler) >= 3
    sorted_out = {}
    for batch in sampler:
        emb = tiny_sv(*pad([wavs[i] for i in batch]))
        sorted_out.update(zip(batch, emb))
    assert sorted(sorted_out) == list(range(9))
    for i in range(9):  # padding-invariant model: per-utterance results agree
        assert torch.allclose(sorted_out[i], reference[i], atol=1e-5), i
    # each utterance alone gives the same embedding too
    for i in (0, 4):
        alone = tiny_sv(wavs[i][None], torch.ones(1))[0]
        assert torch.allclose(alone, sorted_out[i], atol=1e-5)


def test_gather_by_utterance_single_process():
    assert gather_by_utterance({"b": 1, "a": 2}) == {"a": 2, "b": 1}


def _gather_worker(rank, world_size, port, out_dir):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        lengths = [16000, 48000, 32000, 16000, 8000, 24000, 4000]
        sampler = EvalBatchSampler(lengths, 4.0)  # rank / world size from torch.distributed
        local = {f"utt{i}": lengths[i] * 2 for i in sampler.indices}
        merged = gather_by_utterance(local)
        torch.save({"local": sorted(local), "merged": merged}, f"{out_dir}/{rank}.pt")
        leave_process_group()
    finally:
        leave_process_group(wait=False)


def test_eval_shards_gathered_over_two_gloo_processes(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.start_processes(_gather_worker, args=(2, port, str(tmp_path)), nprocs=2,
                                          start_method="fork")
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert not set(results[0]["local"]) & set(results[1]["local"])
    expected = {f"utt{i}": n * 2 for i, n in enumerate([16000, 48000, 32000, 16000, 8000, 24000, 4000])}
    assert results[0]["merged"] == results[1]["merged"] == dict(sorted(expected.items()))


# ------------------------------------------------------------------ training buckets
def test_bucket_sampler_epochs_differ_and_are_deterministic():
    lengths = lengths_fixture(200, seed=4)
    sampler = BucketBatchSampler(lengths, max_batch_seconds=10.0, num_buckets=8, seed=7)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0  # same epoch, same order
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and len(epoch1) == len(epoch0) == len(sampler)
    again = BucketBatchSampler(lengths, max_batch_seconds=10.0, num_buckets=8, seed=7)
    again.set_epoch(1)
    assert list(again) == epoch1  # deterministic per seed and epoch
    other_seed = BucketBatchSampler(lengths, max_batch_seconds=10.0, num_buckets=8, seed=8)
    assert list(other_seed) != epoch0
    for batches in (epoch0, epoch1):
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(200))
        for b in batches:
            assert len(b) * max(lengths[i] for i in b) <= 10.0 * SR


def test_bucket_sampler_buckets_and_caps():
    lengths = lengths_fixture(300, seed=5)
    sampler = BucketBatchSampler(lengths, max_batch_seconds=20.0, max_batch_size=6, num_buckets=32)
    assert len(sampler.buckets) == 32
    spans = [(min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in sampler.buckets]
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:]))  # buckets ordered by length
    batches = list(sampler)
    assert max(len(b) for b in batches) == 6
    # padding of the bucketed batches vs random batches of the same sizes
    def waste(bs):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)
    shuffled = torch.randperm(300, generator=torch.Generator().manual_seed(0)).tolist()
    sizes, random_batches, pos = [len(b) for b in batches], [], 0
    for size in sizes:
        random_batches.append(shuffled[pos:pos + size])
        pos += size
    assert waste(batches) < 0.25 * waste(random_batches)
    with pytest.raises(ValueError, match="num_buckets"):
        BucketBatchSampler(lengths, 20.0, num_buckets=0)


def test_bucket_sampler_rank_shards_have_equal_length():
    lengths = lengths_fixture(101, seed=6)
    shards = [list(BucketBatchSampler(lengths, 8.0, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    everything = BucketBatchSampler(lengths, 8.0, seed=1)
    covered = {i for s in shards for b in s for i in b}
    assert covered == set(range(101))
    assert len(shards[0]) == math.ceil(len(everything) / 3)


# ------------------------------------------------------------------ windowed embeddings
def test_window_bounds_cover_with_full_windows():
    for n in (1, 399, 400, 401, 1000, 1234):
        bounds = window_bounds(n, window=400, hop=300)
        if n <= 400:
            assert bounds == [(0, n)]
            continue
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(end - start == 400 for start, end in bounds)
        assert all(b[0] < a[1] for a, b in zip(bounds, bounds[1:]))  # overlapping, no gap
    with pytest.raises(ValueError, match="overlap"):
        window_bounds(10, window=4, hop=5)


def test_windowed_combination_by_hand():
    # embed = mean of the samples; window 4, hop 2; utterance 0 = [0, 1, ..., 7] (8 samples)
    # windows (0,4) (2,6) (4,8): means 1.5, 3.5, 5.5 -> "mean" 3.5;
    # "mean_normalized" of 1-dim positive values: each normalises to 1 -> 1.0.
    # utterance 1 = [10, 20, 30] (3 samples, one window): its whole mean 20, unnormalised.
    def embed(w, lens):
        n = torch.round(lens * w.shape[1]).long()
        mask = torch.arange(w.shape[1])[None] < n[:, None]
        return ((w * mask).sum(1) / n)[:, None]

    wavs = torch.zeros(2, 8)
    wavs[0] = torch.arange(8.0)
    wavs[1, :3] = torch.tensor([10.0, 20.0, 30.0])
    lens = torch.tensor([1.0, 3 / 8])
    kwargs = dict(window_seconds=4, overlap_seconds=2, sample_rate=1)
    assert windowed_embeddings(embed, wavs, lens, combine="mean", **kwargs).tolist() == [[3.5], [20.0]]
    assert windowed_embeddings(embed, wavs, lens, **kwargs).tolist() == [[1.0], [20.0]]
    # windows go through embed at most max_windows_per_batch at a time
    calls = []
    windowed_embeddings(lambda w, l: calls.append(w.shape[0]) or embed(w, l), wavs, lens,
                        max_windows_per_batch=2, **kwargs)
    assert calls == [1, 2, 1]  # the short utterance, then 3 windows in chunks of 2
    with pytest.raises(ValueError, match="combine"):
        windowed_embeddings(embed, wavs, lens, combine="max", **kwargs)


def test_short_utterances_give_exactly_the_whole_utterance_embedding(tiny_sv):
    gen = torch.Generator().manual_seed(8)
    wavs, lens = pad([torch.randn(n, generator=gen) for n in (16000, 9000, 4000)])
    whole = tiny_sv(wavs, lens)
    assert torch.equal(windowed_embeddings(tiny_sv, wavs, lens, window_seconds=1.0, overlap_seconds=0.25),
                       whole)
    single = wavs[:1]
    assert torch.equal(windowed_embeddings(tiny_sv, single, None, window_seconds=3.0),
                       tiny_sv(single, torch.ones(1)))


def test_long_utterances_windowed_vs_whole(tiny_sv, capsys):
    gen = torch.Generator().manual_seed(9)
    wavs, lens = pad([torch.randn(n, generator=gen) for n in (48000, 8000, 30000)])
    whole = tiny_sv(wavs, lens)
    windowed = windowed_embeddings(tiny_sv, wavs, lens, window_seconds=1.0, overlap_seconds=0.25)
    # the short utterance (0.5 s) is embedded whole, in a sub-batch: padding-invariant model
    assert torch.allclose(windowed[1], whole[1], atol=1e-5)
    cosine = torch.nn.functional.cosine_similarity(windowed, whole, dim=-1)
    with capsys.disabled():
        print(f"\n[windowed vs whole, tiny random WavLM, 1 s windows] cosine: 3 s {cosine[0]:.4f}, "
              f"1.9 s {cosine[2]:.4f}")
    assert torch.isfinite(windowed).all() and (cosine[[0, 2]] > 0.5).all()
