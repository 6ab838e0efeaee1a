"""Batches that mix the utterances of several tasks (joint training of several tasks' adapters).

Several tasks' datasets are read as one (:class:`TaskConcatDataset`: global index = the task's
offset + its own index), and every batch may hold utterances of several tasks
(:class:`MixedBatch`: task-major, each task's items collated by SpeechBrain's ``PaddedBatch``
with its own keys, plus one padded waveform batch for the shared backbone).

=============================  ===================================================================
sampler                        what it is for
=============================  ===================================================================
:class:`TaskMixer`             training: each epoch draws ``epoch_size`` utterances, task t's
                               share set by :func:`task_shares` (weights, optionally temperature
                               sampling over corpus sizes), and cuts them into batches of at most
                               ``max_batch_size`` utterances, or length-bucketed batches of at most
                               ``max_batch_seconds`` of padded audio
                               (:class:`elp.data.sampler.BucketBatchSampler`); deterministic per
                               seed and epoch (a resumed run sees the same batches).
:class:`TaskEvalBatchSampler`  validation / test: each task's utterances in its own length-sorted,
                               duration-capped batches (:func:`elp.data.sampler.length_sorted_batches`);
                               tasks on the same recordings in shared batches.
=============================  ===================================================================

Tasks labelled on the same recordings (``audio_keys``) get each recording's items in one batch
as one unit (:func:`audio_units`), and :class:`MixedBatch` holds its waveform once, so the
backbone reads it once for all of them.

Within a task, the draws of an epoch go through a random permutation of its utterances (again
and again for a task drawn more often than it has utterances), so a task drawn less often than
its size sees a different subset every epoch and a task drawn more often is repeated.

Examples
--------
Two tasks of 6 and 2 utterances, weighted equally (not by size):

>>> mixer = TaskMixer([[16000] * 6, [8000] * 2], weights=[1.0, 1.0], temperature=float("inf"),
...                   max_batch_size=4, seed=0)
>>> mixer.task_counts, len(mixer)
([4, 4], 2)
>>> sorted(i for batch in mixer for i in batch if i >= 6)  # task 1 (global 6, 7): each twice
[6, 6, 7, 7]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Iterator, Sequence

import torch
from speechbrain.dataio.batch import PaddedBatch
from torch.utils.data import Dataset, Sampler

from elp.data.sampler import BucketBatchSampler, _check_caps, _check_lengths, length_sorted_batches
from elp.runtime import SAMPLE_RATE


def task_shares(sizes: Sequence[int], weights: Sequence[float] | None = None,
                temperature: float | None = None) -> list[float]:
    """Each task's share of the drawn utterances: ``weight_t * size_t ** (1 / temperature)``, normalised.

    Parameters
    ----------
    sizes
        Utterances per task.
    weights
        Per-task weights (default: all 1).
    temperature
        None or 1: shares proportional to corpus size (times the weights), as if the corpora
        were concatenated; larger values flatten the sizes (``inf``: the weights alone); values
        in (0, 1) sharpen them.

    Raises
    ------
    ValueError
        Sizes and weights of other lengths, an empty task, a negative weight, all weights 0,
        or a temperature <= 0.

    Examples
    --------
    >>> task_shares([300, 100])
    [0.75, 0.25]
    >>> [round(s, 3) for s in task_shares([300, 100], temperature=2.0)]
    [0.634, 0.366]
    >>> task_shares([300, 100], weights=[1, 3], temperature=float("inf"))
    [0.25, 0.75]
    """
    sizes = [int(n) for n in sizes]
    weights = [1.0] * len(sizes) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sizes):
        raise ValueError(f"{len(weights)} task weights for {len(sizes)} tasks")
    if any(n <= 0 for n in sizes):
        raise ValueError(f"every task needs utterances; sizes {sizes}")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"task weights must be >= 0 and not all 0, got {weights}")
    temperature = 1.0 if temperature is None else float(temperature)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    raw = [w * n ** (1.0 / temperature) for w, n in zip(weights, sizes)]
    total = sum(raw)
    return [r / total for r in raw]


def draw_counts(shares: Sequence[float], total: int) -> list[int]:
    """Integer counts adding up to ``total``, as close to ``shares * total`` as possible (largest remainder).

    Examples
    --------
    >>> draw_counts([0.5, 0.3, 0.2], 7)
    [4, 2, 1]
    """
    exact = [s * total for s in shares]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda t: (-(exact[t] - counts[t]), t))
    for t in by_remainder[:total - sum(counts)]:
        counts[t] += 1
    return counts


def _task_of(offsets: Sequence[int], index: int) -> int:
    """The task of a global index, given the tasks' offsets."""
    return max(t for t, offset in enumerate(offsets) if index >= offset)


def audio_units(items: Sequence[int], keys: Sequence[Hashable], tasks: Sequence[int]) -> list[list[int]]:
    """Items grouped into units: items of *different* tasks on the same audio key, at most one per task.

    Units come in the order of their first item; an item joins the first unit of its key that has
    no item of its task yet (so a task's repeats of a recording stay in separate units).

    Examples
    --------
    >>> audio_units([0, 1, 2, 3, 4], keys=["a", "b", "a", "a", "b"], tasks=[0, 0, 1, 1, 1])
    [[0, 2], [1, 4], [3]]
    """
    units: list[list[int]] = []
    unit_tasks: list[set[int]] = []
    by_key: dict[Hashable, list[int]] = {}  # key -> positions of its units
    for item, key, task in zip(items, keys, tasks):
        for position in by_key.setdefault(key, []):
            if task not in unit_tasks[position]:
                units[position].append(item)
                unit_tasks[position].add(task)
                break
        else:
            by_key[key].append(len(units))
            units.append([item])
            unit_tasks.append({task})
    return units


class TaskMixer(Sampler[list[int]]):
    """Training batches mixing several tasks' utterances, a new draw every epoch.

    Parameters
    ----------
    lengths
        Per task, the length of every utterance in samples (random crops: the cropped length),
        by the task's own index; batches hold global indices (task t's offset is the number of
        utterances of tasks 0 .. t-1).
    weights, temperature
        Task shares (:func:`task_shares`).
    epoch_size
        Utterances drawn per epoch (default: all tasks' utterances together).
    max_batch_seconds
        None: batches of ``max_batch_size`` utterances from a shuffled draw (the last may be
        smaller). A number: length buckets (``num_buckets``) cut into batches of at most that
        many seconds of padded audio and ``max_batch_size`` utterances; the number of batches
        can then change by a few between epochs (each epoch draws other utterances).
    seed
        Draws and orders use ``seed + epoch``.
    audio_keys
        Per task, the identity of every utterance's audio (e.g. its ``wav.scp`` entry and
        segment), by the task's own index. Utterances of *different* tasks drawn in one epoch on
        the same audio go into one batch as one unit, and the caps count units (the backbone
        reads each distinct waveform once: :class:`MixedBatch`). Without keys shared across tasks
        the batches are those of no keys.

    Examples
    --------
    >>> mixer = TaskMixer([[16000] * 4, [32000] * 4], max_batch_seconds=4.0, num_buckets=2, seed=0)
    >>> sorted(len(b) for b in mixer), sum(len(b) for b in mixer)
    ([2, 2, 4], 8)
    >>> first = list(mixer); mixer.set_epoch(1); first != list(mixer)
    True

    Two tasks labelled on the same three recordings: every batch holds both tasks' items of a
    recording (global index ``i`` and ``3 + i``), two recordings per batch:

    >>> keys = ["a.flac", "b.flac", "c.flac"]
    >>> mixer = TaskMixer([[16000] * 3] * 2, max_batch_size=2, audio_keys=[keys, keys], seed=0)
    >>> [sorted(batch) for batch in mixer]
    [[0, 1, 3, 4], [2, 5]]
    """

    def __init__(self, lengths: Sequence[Sequence[int]], weights: Sequence[float] | None = None,
                 temperature: float | None = None, epoch_size: int | None = None,
                 max_batch_seconds: float | None = None, max_batch_size: int | None = 8, num_buckets: int = 32,
                 seed: int = 0, sample_rate: int = SAMPLE_RATE,
                 audio_keys: Sequence[Sequence[Hashable]] | None = None):
        self.lengths = [_check_lengths(task_lengths) if len(task_lengths) else [] for task_lengths in lengths]
        sizes = [len(task_lengths) for task_lengths in self.lengths]
        self.shares = task_shares(sizes, weights, temperature)
        self.epoch_size = int(epoch_size) if epoch_size is not None else sum(sizes)
        if self.epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1, got {epoch_size}")
        if max_batch_seconds is None:
            if max_batch_size is None or max_batch_size < 1:
                raise ValueError("fixed-size batches need max_batch_size >= 1")
        else:
            _check_caps(max_batch_seconds, max_batch_size)
        self.task_counts = draw_counts(self.shares, self.epoch_size)
        self.offsets = [sum(sizes[:t]) for t in range(len(sizes))]
        self.max_batch_seconds, self.max_batch_size = max_batch_seconds, max_batch_size
        self.num_buckets, self.seed, self.sample_rate = num_buckets, int(seed), sample_rate
        self.epoch = 0
        self._batches: list[list[int]] | None = None
        self.audio_keys: list | None = None
        if audio_keys is not None:
            if [len(keys) for keys in audio_keys] != sizes:
                raise ValueError(f"audio_keys of {[len(keys) for keys in audio_keys]} utterances for tasks of {sizes}")
            self.audio_keys = [key for task_keys in audio_keys for key in task_keys]

    def set_epoch(self, epoch: int) -> None:
        """Use the draw and order of ``epoch`` (SpeechBrain calls this at the start of every epoch)."""
        if int(epoch) != self.epoch:
            self.epoch, self._batches = int(epoch), None

    def units(self, order: Sequence[int]) -> list[list[int]]:
        """Global indices in ``order`` grouped into units (:func:`audio_units`); without keys, one item each."""
        if self.audio_keys is None:
            return [[index] for index in order]
        return audio_units(order, [self.audio_keys[i] for i in order], [_task_of(self.offsets, i) for i in order])

    def draw(self) -> list[int]:
        """The global indices this epoch draws, task by task (before batching)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = []
        for task, count in enumerate(self.task_counts):
            size, picked = len(self.lengths[task]), []
            while len(picked) < count:
                picked += torch.randperm(size, generator=generator).tolist()
            drawn += [self.offsets[task] + i for i in picked[:count]]
        return drawn

    def batches(self) -> list[list[int]]:
        """This epoch's batches of global indices (computed once per epoch)."""
        if self._batches is None:
            drawn = self.draw()
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            if self.max_batch_seconds is None:
                order = [drawn[i] for i in torch.randperm(len(drawn), generator=generator).tolist()]
                units, size = self.units(order), self.max_batch_size
                self._batches = [[i for unit in units[start:start + size] for i in unit]
                                 for start in range(0, len(units), size)]
            else:
                flat = [length for task_lengths in self.lengths for length in task_lengths]
                units = self.units(drawn)
                buckets = BucketBatchSampler([max(flat[i] for i in unit) for unit in units], self.max_batch_seconds,
                                             self.max_batch_size, num_buckets=self.num_buckets,
                                             seed=self.seed + self.epoch, sample_rate=self.sample_rate)
                self._batches = [[i for u in batch for i in units[u]] for batch in buckets]
        return self._batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(batch) for batch in self.batches()])

    def __len__(self) -> int:
        return len(self.batches())


def _tasks_sharing_audio(audio_keys: Sequence[Sequence[Hashable]]) -> list[list[int]]:
    """Tasks grouped by shared recordings (connected: two tasks sharing a key are in one group), in task order."""
    group_of = list(range(len(audio_keys)))

    def root(t: int) -> int:
        while group_of[t] != t:
            t = group_of[t]
        return t

    owner: dict[Hashable, int] = {}
    for task, keys in enumerate(audio_keys):
        for key in keys:
            if key in owner:
                a, b = root(owner[key]), root(task)
                if a != b:
                    group_of[max(a, b)] = min(a, b)
            else:
                owner[key] = task
    groups: dict[int, list[int]] = {}
    for task in range(len(audio_keys)):
        groups.setdefault(root(task), []).append(task)
    return list(groups.values())


class TaskEvalBatchSampler(Sampler[list[int]]):
    """Each task's utterances in length-sorted batches of that task alone, task after task.

    With ``audio_keys``, tasks that share recordings are batched together instead: their items
    on one recording form a unit (:func:`audio_units`) read by one backbone pass, and the caps
    count units. Tasks sharing no recording keep batches of their own.

    Parameters
    ----------
    lengths
        Per task, utterance lengths in samples (as :class:`TaskMixer`).
    max_batch_seconds, max_batch_size
        Caps of :func:`elp.data.sampler.length_sorted_batches`.
    audio_keys
        Per task, every utterance's audio identity (as :class:`TaskMixer`), or None.

    Examples
    --------
    >>> list(TaskEvalBatchSampler([[16000, 32000], [8000]], max_batch_seconds=4.0))
    [[1, 0], [2]]
    >>> list(TaskEvalBatchSampler([[16000, 32000], [32000]], max_batch_seconds=4.0,
    ...                           audio_keys=[["a", "b"], ["b"]]))
    [[1, 2, 0]]
    """

    def __init__(self, lengths: Sequence[Sequence[int]], max_batch_seconds: float, max_batch_size: int | None = None,
                 sample_rate: int = SAMPLE_RATE, audio_keys: Sequence[Sequence[Hashable]] | None = None):
        sizes = [len(task_lengths) for task_lengths in lengths]
        offsets = [sum(sizes[:t]) for t in range(len(sizes))]
        if audio_keys is not None and [len(keys) for keys in audio_keys] != sizes:
            raise ValueError(f"audio_keys of {[len(keys) for keys in audio_keys]} utterances for tasks of {sizes}")
        self.batches = []
        for group in _tasks_sharing_audio(audio_keys) if audio_keys is not None else [[t] for t in range(len(sizes))]:
            items = [offsets[t] + i for t in group for i in range(sizes[t])]
            if not items:
                continue
            flat = {offsets[t] + i: n for t in group for i, n in enumerate(lengths[t])}
            if len(group) == 1:
                units = [[index] for index in items]
            else:
                units = audio_units(items, [audio_keys[t][i] for t in group for i in range(sizes[t])],
                                    [t for t in group for _ in range(sizes[t])])
            for batch in length_sorted_batches([max(flat[i] for i in unit) for unit in units], max_batch_seconds,
                                               max_batch_size, sample_rate):
                self.batches.append([i for u in batch for i in units[u]])

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(batch) for batch in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def distinct_waveforms(waveforms: Sequence[torch.Tensor]) -> tuple[list[int], list[int]]:
    """The distinct waveforms of a batch: ``(rows, sources)``.

    ``rows`` are the indices of each distinct waveform's first occurrence, in order; ``sources[i]``
    is the position in ``rows`` of waveform ``i``'s. Waveforms are the same when their samples are
    equal (compared exactly, after their lengths and a hash of their bytes agree), so two tasks'
    items share a backbone pass only when the backbone would see the same input.

    Examples
    --------
    >>> a, b = torch.ones(4), torch.zeros(4)
    >>> distinct_waveforms([a, b, a.clone(), torch.ones(3)])
    ([0, 1, 3], [0, 1, 0, 2])
    """
    by_length: dict[tuple, list[int]] = {}
    for index, waveform in enumerate(waveforms):
        by_length.setdefault(tuple(waveform.shape), []).append(index)
    first = list(range(len(waveforms)))
    for indices in by_length.values():
        if len(indices) < 2:
            continue  # a length of its own: nothing to compare (no hashing for disjoint corpora)
        by_digest: dict[bytes, list[int]] = {}
        for index in indices:
            data = waveforms[index].detach().cpu().contiguous()
            digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=16).digest()
            for earlier in by_digest.setdefault(digest, []):
                if torch.equal(waveforms[earlier], waveforms[index]):
                    first[index] = earlier
                    break
            else:
                by_digest[digest].append(index)
    rows = [index for index in range(len(waveforms)) if first[index] == index]
    position = {row: k for k, row in enumerate(rows)}
    return rows, [position[first[index]] for index in range(len(waveforms))]


class TaskConcatDataset(Dataset):
    """Several tasks' datasets read as one: item ``offset[t] + i`` is ``(t, datasets[t][i])``.

    Its :meth:`collate` makes a :class:`MixedBatch` (pass it as the DataLoader's ``collate_fn``).

    Examples
    --------
    >>> data = TaskConcatDataset([[{"id": "a", "sig": torch.ones(3)}],
    ...                           [{"id": "b", "sig": torch.ones(2), "label_id": torch.tensor([1])}]])
    >>> len(data), data[1][0]
    (2, 1)
    >>> batch = data.collate([data[1], data[0]])
    >>> batch.id, batch.counts, batch.sig.data.shape, batch.sources.tolist()
    (['a', 'b'], [1, 1], torch.Size([2, 3]), [0, 1])
    >>> batch.task_batch(1).label_id.data.tolist()
    [[1]]
    """

    def __init__(self, datasets: Sequence[Dataset]):
        self.datasets = list(datasets)
        self.offsets = [0]
        for dataset in self.datasets:
            self.offsets.append(self.offsets[-1] + len(dataset))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int):
        task = next(t for t in range(len(self.datasets)) if index < self.offsets[t + 1])
        return task, self.datasets[task][index - self.offsets[task]]

    def collate(self, items) -> MixedBatch:
        """``(task, item)`` pairs -> one :class:`MixedBatch` over this dataset's tasks."""
        return MixedBatch(items, len(self.datasets))


class MixedBatch:
    """A batch of several tasks' items, task-major (stable within a task).

    Items of several tasks on the same audio (the same samples) share one row of ``sig``: the
    backbone then runs once for them (:func:`distinct_waveforms`).

    Attributes
    ----------
    id : list[str]
        Utterance ids in batch order.
    sig : speechbrain.dataio.batch.PaddedData
        Every distinct waveform padded together: ``data`` [U, T] and relative ``lengths`` [U]
        (what the shared backbone reads; U <= B).
    sources : torch.LongTensor
        [B]: the row of ``sig`` holding each item's waveform, in batch order.
    counts : list[int]
        Utterances of each task (T numbers, zeros included), in task order.
    """

    def __init__(self, items, num_tasks: int):
        ordered = sorted(items, key=lambda pair: pair[0])  # stable: keeps the order within a task
        self.counts = [sum(1 for task, _ in ordered if task == t) for t in range(num_tasks)]
        self.id = [item["id"] for _, item in ordered]
        waveforms = [item["sig"] for _, item in ordered]
        rows, sources = distinct_waveforms(waveforms)
        self.sig = PaddedBatch([{"sig": waveforms[row]} for row in rows]).sig
        self.sources = torch.tensor(sources, dtype=torch.long)
        self._tasks = {t: PaddedBatch([item for task, item in ordered if task == t])
                       for t in range(num_tasks) if self.counts[t]}

    def task_batch(self, task: int) -> PaddedBatch | None:
        """Task ``task``'s items as SpeechBrain's ``PaddedBatch`` (its own keys), or None when it has none here."""
        return self._tasks.get(task)

    def to(self, *args, **kwargs) -> MixedBatch:
        """Move every tensor (``torch.Tensor.to`` arguments); returns self."""
        self.sig = type(self.sig)(*(t.to(*args, **kwargs) for t in self.sig))
        self.sources = self.sources.to(*args, **kwargs)
        self._tasks = {t: batch.to(*args, **kwargs) for t, batch in self._tasks.items()}
        return self

    def pin_memory(self) -> MixedBatch:
        """Pin every tensor (the DataLoader's ``pin_memory``); returns self."""
        self.sig = type(self.sig)(*(t.pin_memory() for t in self.sig))
        self.sources = self.sources.pin_memory()
        self._tasks = {t: batch.pin_memory() for t, batch in self._tasks.items()}
        return self
