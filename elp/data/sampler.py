"""Batch samplers over utterance lengths: length-sorted evaluation batches capped by padded
duration (optionally sharded across DDP ranks) and bucketed training batches.

Both yield lists of dataset indices (``DataLoader(dataset, batch_sampler=...)``) and read
only the lengths (in samples) given to them, e.g. ``utt2num_samples`` of a data dir, so no
audio is opened to build batches.

Padded duration of a batch = number of utterances x the longest one, in seconds: what the
backbone actually computes on (padding frames cost as much as real ones). Everywhere here
``lengths`` are utterance lengths in samples by dataset index, at ``sample_rate`` samples per
second; ``max_batch_seconds`` caps a batch's padded duration and ``max_batch_size`` its
utterances (None: no cap).

=========================  ====================================================================
sampler                    what it is for
=========================  ====================================================================
:class:`EvalBatchSampler`  validation / test / embedding extraction: utterances sorted by
                           length (longest first), batches filled up to
                           ``max_batch_seconds`` of padded audio and ``max_batch_size``
                           utterances; with ``world_size > 1`` each rank gets a disjoint
                           subset of the batches (balanced by padded duration); the caller
                           gathers the per-utterance results (:func:`gather_by_utterance`).
:class:`BucketBatchSampler` training: utterances grouped into ``num_buckets`` buckets of
                           similar length (equal-count quantiles), shuffled within buckets
                           and batched up to ``max_batch_seconds``; batch order shuffled.
                           ``set_epoch(epoch)`` changes the order (deterministic per seed).
=========================  ====================================================================

Examples
--------
>>> lengths = [16000, 48000, 32000, 16000]
>>> list(EvalBatchSampler(lengths, max_batch_seconds=6.0))
[[1, 2], [0, 3]]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from elp.runtime import SAMPLE_RATE, distributed_rank_world


def _check_lengths(lengths: Sequence[int]) -> list[int]:
    values = [int(n) for n in lengths]
    bad = [i for i, n in enumerate(values) if n <= 0]
    if bad:
        raise ValueError(
            f"utterance index {bad[0]} has length {values[bad[0]]} samples; lengths must be "
            f"positive (run stage 1, which writes utt2num_samples, and read lengths from it)"
        )
    return values


def _check_caps(max_batch_seconds: float, max_batch_size: int | None) -> None:
    if not max_batch_seconds > 0:
        raise ValueError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1 (or null for no limit), got {max_batch_size}")


def length_sorted_batches(
    lengths: Sequence[int],
    max_batch_seconds: float,
    max_batch_size: int | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> list[list[int]]:
    """Indices sorted by length (longest first, ties by index) cut into batches within the caps.

    Every index is in exactly one batch.

    An utterance longer than ``max_batch_seconds`` on its own gets a batch of its own (the
    only case where a batch exceeds the cap; embed such utterances in windows,
    :mod:`elp.tasks.windows`).

    Examples
    --------
    >>> length_sorted_batches([10, 30, 20, 40], max_batch_seconds=60, sample_rate=1)
    [[3], [1, 2], [0]]
    >>> length_sorted_batches([10, 30, 20, 40], 100, max_batch_size=3, sample_rate=1)
    [[3, 1], [2, 0]]
    """
    values = _check_lengths(lengths)
    _check_caps(max_batch_seconds, max_batch_size)
    cap = max_batch_seconds * sample_rate
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = values[current[0]] if current else values[index]
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or (len(current) + 1) * longest > cap):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class EvalBatchSampler(Sampler[list[int]]):
    """Length-sorted, duration-capped evaluation batches, sharded across ranks.

    Parameters
    ----------
    rank, world_size
        This process's shard; None reads them from ``torch.distributed`` when it is
        initialised (else 0 and 1). Batches go to ranks greedily by padded duration (the
        next longest batch to the least loaded rank, ties to the lower rank), so every rank
        gets a disjoint subset and about the same work; ranks may get different numbers of
        batches, so evaluation must not run collective operations per batch (call the
        unwrapped module, not the DDP wrapper) and the caller gathers the results once
        (:func:`gather_by_utterance`).

    Examples
    --------
    >>> lengths = [16000, 48000, 32000, 16000, 8000]
    >>> [list(EvalBatchSampler(lengths, 6.0, rank=r, world_size=2)) for r in (0, 1)]
    [[[1, 2]], [[0, 3, 4]]]
    """

    def __init__(self, lengths: Sequence[int], max_batch_seconds: float, max_batch_size: int | None = None,
                 sample_rate: int = SAMPLE_RATE, rank: int | None = None, world_size: int | None = None):
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither (read from torch.distributed)")
        if rank is None:
            rank, world_size = distributed_rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.lengths = _check_lengths(lengths)
        self.rank, self.world_size = rank, world_size
        all_batches = length_sorted_batches(self.lengths, max_batch_seconds, max_batch_size, sample_rate)
        load = [0] * world_size
        shards: list[list[list[int]]] = [[] for _ in range(world_size)]
        for batch in all_batches:  # longest padded batches first (sorted by length)
            cost = len(batch) * self.lengths[batch[0]]
            target = min(range(world_size), key=lambda r: (load[r], r))
            load[target] += cost
            shards[target].append(batch)
        self.batches = shards[rank]
        self.padded_samples_per_rank = load

    @property
    def indices(self) -> list[int]:
        """Dataset indices this rank evaluates, in batch order."""
        return [i for batch in self.batches for i in batch]

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(batch) for batch in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


class BucketBatchSampler(Sampler[list[int]]):
    """Training batches from length buckets, a new order every epoch.

    Utterances are split into ``num_buckets`` buckets of about equal count by length
    (quantiles); each epoch every bucket is shuffled and cut into batches of
    ``floor(max_batch_seconds / longest utterance of the bucket)`` utterances (at most
    ``max_batch_size``), so every batch stays within ``max_batch_seconds`` of padded audio;
    then the batch order is shuffled. The shuffles use ``seed + epoch``: the same seed and
    epoch give the same batches on every process, another epoch another order.
    The number of batches is the same every epoch.

    SpeechBrain's ``Brain.fit`` calls ``set_epoch`` only on ``brain.train_sampler``; on one
    process that attribute stays None for a batch sampler, so assign the sampler to it
    (``brain.train_sampler = sampler``) before ``fit``. Under DDP the Brain wraps the batch
    sampler in its ``DistributedSamplerWrapper`` (which shards the batches and forwards
    ``set_epoch``): leave ``world_size`` at 1 then. ``rank`` / ``world_size`` shard the
    batches here for loops that do not go through the Brain (every rank gets the same
    number of batches; the list is padded by repeating its first batches).

    Parameters
    ----------
    lengths
        Length of every utterance in samples (for random crops: the cropped length,
        ``min(n, crop)``), by dataset index.
    num_buckets
        Number of length buckets (fewer when there are fewer distinct lengths). With
        equal-count buckets padding is bounded by the length spread inside a bucket; 32
        buckets keep it to a few percent on LibriSpeech-like length distributions.
    shuffle
        False: buckets in length order, no shuffling (for debugging).
    rank, world_size
        Shard of the batches for this process (see above).

    Examples
    --------
    >>> sampler = BucketBatchSampler([16000] * 4 + [32000] * 4, max_batch_seconds=4.0,
    ...                              num_buckets=2, seed=0)
    >>> sorted(len(b) for b in sampler)
    [2, 2, 4]
    >>> first = list(sampler); sampler.set_epoch(1); first != list(sampler)
    True
    """

    def __init__(self, lengths: Sequence[int], max_batch_seconds: float, max_batch_size: int | None = None,
                 num_buckets: int = 32, seed: int = 0, shuffle: bool = True, sample_rate: int = SAMPLE_RATE,
                 rank: int = 0, world_size: int = 1):
        self.lengths = _check_lengths(lengths)
        _check_caps(max_batch_seconds, max_batch_size)
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.max_batch_seconds, self.max_batch_size = max_batch_seconds, max_batch_size
        self.sample_rate, self.seed, self.shuffle = sample_rate, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        order = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], i))
        num_buckets = min(num_buckets, max(1, len(set(self.lengths))))
        # equal-count buckets; an equal length never straddles two buckets
        self.buckets: list[list[int]] = []
        bucket: list[int] = []
        for position, index in enumerate(order):
            boundary = math.ceil((len(self.buckets) + 1) * len(order) / num_buckets)
            if bucket and position >= boundary and self.lengths[index] != self.lengths[bucket[-1]]:
                self.buckets.append(bucket)
                bucket = []
            bucket.append(index)
        if bucket:
            self.buckets.append(bucket)
        cap = max_batch_seconds * sample_rate
        self.bucket_batch_sizes = []
        for members in self.buckets:
            size = max(1, int(cap // max(self.lengths[i] for i in members)))
            if max_batch_size is not None:
                size = min(size, max_batch_size)
            self.bucket_batch_sizes.append(size)
        self._num_batches = sum(math.ceil(len(m) / s) for m, s in zip(self.buckets, self.bucket_batch_sizes))

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (SpeechBrain calls this at the start of every epoch)."""
        self.epoch = int(epoch)

    def _all_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        for members, size in zip(self.buckets, self.bucket_batch_sizes):
            if self.shuffle:
                members = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
            batches.extend(members[start:start + size] for start in range(0, len(members), size))
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        if self.world_size > 1:
            per_rank = math.ceil(len(batches) / self.world_size)
            batches = (batches * self.world_size)[:per_rank * self.world_size]
            batches = batches[self.rank::self.world_size]
        return iter(batches)

    def __len__(self) -> int:
        return math.ceil(self._num_batches / self.world_size)


def gather_by_utterance(local: dict) -> dict:
    """Merge the per-utterance results of every rank (``all_gather_object``) into one dict.

    A no-op without an initialised process group. Every rank gets the merged dict. An
    utterance produced by two ranks is an error (the evaluation shards overlapped).

    Parameters
    ----------
    local
        utt id -> result of this rank (CPU tensors, strings, numbers).

    Returns
    -------
    dict
        utt id -> result over all ranks, keys in sorted order.

    Examples
    --------
    >>> gather_by_utterance({"b": 2, "a": 1})
    {'a': 1, 'b': 2}
    """
    rank, world_size = distributed_rank_world()
    parts = [local]
    if world_size > 1:
        parts = [None] * world_size
        torch.distributed.all_gather_object(parts, local)
    merged: dict = {}
    for part_rank, part in enumerate(parts):
        for key, value in part.items():
            if key in merged:
                raise ValueError(f"utterance '{key}' was evaluated by two ranks (rank {part_rank} and another); "
                                 f"the evaluation shards must be disjoint (EvalBatchSampler)")
            merged[key] = value
    return {key: merged[key] for key in sorted(merged)}
