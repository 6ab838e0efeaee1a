"""The benchmark harness: training steps of any model, timed and measured one way.

A *source of rows* (:mod:`elp.bench.sources.elp_variants`, :mod:`elp.bench.sources.peer_variants`)
names :class:`Candidate` rows and builds each one's model (:class:`BuiltModel`: its modules, its
``forward(wavs, wav_lens) -> (feats, frame_mask)`` and the tensors it trains). The harness puts
the same head on every model (:class:`BenchHead`: per-frame Linear, masked mean pool,
cross-entropy) and one Adam optimizer over the learnable tensors and the head, and times a
step: forward + loss (inside ``torch.autocast`` for ``bf16``), backward, ``optimizer.step()``
and ``zero_grad``, each phase after a device sync (:func:`timed_step`).

One measurement run (:func:`measure`) builds its candidates, fills their caches, runs
``warmup + repeats`` rounds of one step per candidate (the order rotated every round, so that
a slow phase of a shared machine hits every candidate alike) and keeps each candidate's median
over the timed rounds. A run of a single candidate also measures its peak memory: the increment
of :func:`elp.runtime.peak_memory_mb` over the memory in use once model, head, optimizer and
batch are built. :func:`run_bench` schedules the runs: one run per candidate, or
(``interleave``) one timing run of all candidates and then one memory run per candidate
(``warmup + 1`` steps), since one process cannot tell apart the peaks of several models; with
``isolate`` every run is a fresh subprocess (:func:`run_isolated`). Every ratio is against the
first row of the same run.

Examples
--------
A tiny random backbone, measured in this process (timings and memory depend on the machine,
so only the layout is shown):

>>> import tempfile
>>> from elp.bench.sources import elp_variants
>>> from elp.core.presets import TINY_CONFIG
>>> settings = BenchSettings(backbone="wavlm", config_overrides=TINY_CONFIG, batch_size=1, duration=0.5,
...                          warmup=1, repeats=1, threads=1, isolate=False, retries=0)
>>> rows = run_bench(settings, elp_variants.candidates(["el"], "fp32", full_first=True), log=lambda line: None)
>>> [row["key"] for row in rows], rows[0]["step_vs_baseline"]
(['full', 'el'], 1.0)
>>> markdown, json_file = write_results(settings, rows, tempfile.mkdtemp())
>>> markdown.name, json_file.name
('wavlm_custom_cpu_fp32_b1x0.5s.md', 'wavlm_custom_cpu_fp32_b1x0.5s.json')
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from elp.runtime import SAMPLE_RATE, peak_memory_mb

#: The phases of a step, in seconds, as :func:`timed_step` reports them.
PHASES = ("forward_s", "backward_s", "optimizer_s", "step_s")


@dataclass
class BenchSettings:
    """What one benchmark run measures, and how.

    Parameters
    ----------
    backbone
        Short backbone name (random weights built from its config, nothing downloaded, unless
        ``source`` names a checkpoint).
    config_overrides
        Config fields to change (e.g. :data:`elp.core.presets.TINY_CONFIG`).
    batch_size
        B utterances per step.
    duration
        Seconds per utterance (16 kHz, no padding): the batch is [B, 16000 * duration].
    precision
        ``"fp32"`` or ``"bf16"`` (``torch.autocast`` around forward and loss).
    warmup
        Untimed rounds before timing.
    repeats
        Timed rounds (one step of every candidate per round).
    threads
        ``torch.set_num_threads`` in each run (None: PyTorch's default / $OMP_NUM_THREADS).
    profile
        Also record the top operators of one step of every candidate (torch.profiler).
    source
        A HF checkpoint directory every candidate loads its backbone from (None: random
        weights of ``backbone``'s config).
    tag
        Prefix of the output file names (``elp bench --peers``: ``peers``).
    interleave
        Time all candidates round by round in one run (memory then in one run per candidate);
        False times each candidate in its own run.
    isolate
        Every run in a fresh subprocess (robust peak memory); False runs them in this process
        (faster; the peak then also sees earlier runs' leftovers).
    max_other_load
        A run during which other processes kept more than this many cores busy (beyond those
        its threads leave free) is measured again; the least disturbed run is kept.
    retries
        How many more times such a disturbed run is measured at most.

    Examples
    --------
    >>> BenchSettings(backbone="hubert", batch_size=2, duration=1.5).name
    'hubert_cpu_fp32_b2x1.5s'
    >>> BenchSettings(tag="peers", precision="bf16").name
    'peers_wavlm_plus_cpu_bf16_b4x3s'
    """

    backbone: str = "wavlm_plus"
    config_overrides: dict = field(default_factory=dict)
    batch_size: int = 4
    duration: float = 3.0
    precision: str = "fp32"
    device: str = "cpu"
    warmup: int = 2
    repeats: int = 5
    threads: int | None = None
    num_classes: int = 10
    seed: int = 0
    profile: bool = False
    memory: bool = True
    source: str | None = None
    tag: str = ""
    interleave: bool = False
    isolate: bool = True
    max_other_load: float = 0.25
    retries: int = 2

    @property
    def name(self) -> str:
        """File stem of the outputs, e.g. ``wavlm_plus_cpu_fp32_b4x3s``."""
        custom = "_custom" if self.config_overrides else ""
        stem = f"{self.backbone}{custom}_{self.device}_{self.precision}_b{self.batch_size}x{self.duration:g}s"
        return f"{self.tag}_{stem}" if self.tag else stem


@dataclass(frozen=True)
class Candidate:
    """One row to measure.

    ``source`` is the module that builds it: its ``build(key, settings, work_dir)`` returns
    a :class:`BuiltModel` (a module name, so that a worker process can build it too).
    ``frozen_forward`` is the key of the row, in the same run, whose step is this row's frozen
    forward (the backbone's forward without autograd and with the same speed options); the
    row's *floor* is twice that step (a forward, plus a backward through the same layers), and
    :func:`run_bench` reports ``step_vs_floor`` = step / floor. None: no floor (peer rows, rows
    that read cached hidden states).
    """

    key: str
    label: str
    source: str
    frozen_forward: str | None = None


@dataclass
class BuiltModel:
    """What a source builds for a candidate: the model the harness trains."""

    modules: list[nn.Module]
    #: (wavs [B, T], wav_lens [B]) -> (feats [B, F, D], frame_mask [B, F] or None: every frame)
    forward: Callable
    learnable: list[nn.Parameter]
    output_dim: int
    #: LoRA tensors by name (their gradients are counted)
    lora: dict[str, nn.Parameter] = field(default_factory=dict)
    #: called once, without gradients, before the steps (fills a feature cache the steps read)
    fill_cache: Callable | None = None


class BenchHead(nn.Module):
    """Per-frame Linear, mean over valid frames, cross-entropy: the loss of the benchmark step.

    Examples
    --------
    >>> head = BenchHead(4, 3)
    >>> loss = head(torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool), torch.tensor([0, 2]))
    >>> loss.shape
    torch.Size([])
    """

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, num_classes)

    def forward(self, feats: torch.Tensor, frame_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """feats [B, F, D], frame_mask [B, F], labels [B] -> scalar loss."""
        mask = frame_mask[..., None].to(feats.dtype)
        pooled = (self.proj(feats) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return nn.functional.cross_entropy(pooled.float(), labels)


@dataclass
class Trainable:
    """A candidate's model with the benchmark head and its Adam optimizer."""

    candidate: Candidate
    model: BuiltModel
    head: BenchHead
    optimizer: torch.optim.Optimizer
    precision: str
    device: str

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Forward + head loss of ``batch`` (:func:`make_batch`), inside autocast for bf16."""
        wavs, wav_lens, labels = batch
        with _autocast(self.device, self.precision):
            feats, frame_mask = self.model.forward(wavs, wav_lens)
            if frame_mask is None:
                frame_mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
            return self.head(feats, frame_mask, labels)

    def step(self, batch) -> dict[str, float]:
        """One training step of ``batch``; the seconds of its phases (:data:`PHASES`)."""
        return timed_step(lambda: self.loss(batch), self.optimizer, self.device)[1]

    def count_lora_gradients(self, batch) -> tuple[int, int]:
        """LoRA tensors whose ``.grad`` is set and non-zero after one forward/backward, and all
        LoRA tensors; no update is made and the gradients are cleared again."""
        lora = self.model.lora
        if not lora:
            return 0, 0
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(batch).backward()
        with_grad = sum(1 for p in lora.values() if p.grad is not None and bool(p.grad.ne(0).any()))
        self.optimizer.zero_grad(set_to_none=True)
        return with_grad, len(lora)


def _autocast(device: str, precision: str):
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")


def build_trainable(candidate: Candidate, settings: BenchSettings, work_dir: str | os.PathLike) -> Trainable:
    """Build a candidate (seeded by ``settings.seed``) with head and optimizer, on ``settings.device``, in train mode.

    ``work_dir`` is the source's scratch directory (caches, saved copies).
    """
    torch.manual_seed(settings.seed)
    model = importlib.import_module(candidate.source).build(candidate.key, settings, Path(work_dir))
    head = BenchHead(model.output_dim, settings.num_classes)
    for module in [*model.modules, head]:
        module.to(settings.device)
        module.train()
    optimizer = torch.optim.Adam(list(model.learnable) + list(head.parameters()), lr=1e-4)
    return Trainable(candidate, model, head, optimizer, settings.precision, settings.device)


def make_batch(settings: BenchSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The benchmark batch (seeded by ``settings.seed``): wavs [B, T], wav_lens [B] (all 1.0), labels [B].

    Examples
    --------
    >>> wavs, wav_lens, labels = make_batch(BenchSettings(batch_size=2, duration=0.5))
    >>> tuple(wavs.shape), wav_lens.tolist(), tuple(labels.shape)
    ((2, 8000), [1.0, 1.0], (2,))
    """
    generator = torch.Generator().manual_seed(settings.seed)
    num_samples = int(round(settings.duration * SAMPLE_RATE))
    wavs = 0.1 * torch.randn(settings.batch_size, num_samples, generator=generator)
    labels = torch.randint(0, settings.num_classes, (settings.batch_size,), generator=generator)
    device = settings.device
    return wavs.to(device), torch.ones(settings.batch_size, device=device), labels.to(device)


def timed_step(loss_fn, optimizer: torch.optim.Optimizer, device: str) -> tuple[torch.Tensor, dict[str, float]]:
    """One training step (forward, backward, optimizer), each phase timed after a device sync.

    ``loss_fn() -> loss`` is the forward pass (under autocast if wanted); the optimizer is
    stepped once, then its gradients are cleared. Returns the loss and the seconds of
    :data:`PHASES`.

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> opt = torch.optim.SGD([w], lr=0.1)
    >>> loss, seconds = timed_step(lambda: (w ** 2).sum(), opt, "cpu")
    >>> sorted(seconds), w.tolist()
    (['backward_s', 'forward_s', 'optimizer_s', 'step_s'], [0.800000011920929, 0.800000011920929])
    """
    start = time.perf_counter()
    loss = loss_fn()
    _sync(device)
    after_forward = time.perf_counter()
    loss.backward()
    _sync(device)
    after_backward = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    end = time.perf_counter()
    return loss, {"forward_s": after_forward - start, "backward_s": after_backward - after_forward,
                  "optimizer_s": end - after_backward, "step_s": end - start}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _busy_seconds() -> tuple[float, float]:
    """(CPU seconds all processes have been busy, CPU seconds this process used) so far."""
    import resource

    ticks = os.sysconf("SC_CLK_TCK")
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / ticks  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return busy, usage.ru_utime + usage.ru_stime


def memory_kind(device: str) -> str:
    """What :func:`elp.runtime.peak_memory_mb` measures on ``device``.

    Examples
    --------
    >>> memory_kind("cpu")
    'RSS peak (VmHWM after clear_refs)'
    """
    return "cuda max_memory_allocated" if device == "cuda" else "RSS peak (VmHWM after clear_refs)"


# ------------------------------------------------------------------------- one measurement run
def measure(settings: BenchSettings, candidates: list[Candidate]) -> list[dict]:
    """One measurement run in this process: build, fill caches, time interleaved rounds.

    Parameters
    ----------
    settings
        What to measure (``memory`` counts only for a single candidate).

    Returns
    -------
    list[dict]
        One row per candidate: ``key``, ``variant`` (label), ``learnable``, medians
        :data:`PHASES`, ``step_min_s``, ``audio_s_per_s``, ``other_load`` (CPU cores other
        processes kept busy while timing), ``threads``, ``peak_mib`` and ``memory_kind`` (None
        unless measured), ``lora_with_grad`` / ``lora_total`` (None without LoRA tensors), and
        ``cache_fill_s`` / ``profile`` where they apply.

    Raises
    ------
    RuntimeError
        For ``device="cuda"`` without CUDA.
    """
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = settings.device
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda given but torch.cuda.is_available() is False")
    with tempfile.TemporaryDirectory(prefix="elp-bench-") as work_dir:
        batch = make_batch(settings)
        trainables, rows = [], []
        for candidate in candidates:
            trainable = build_trainable(candidate, settings, Path(work_dir) / f"run-{len(rows)}")
            row = {"key": candidate.key, "variant": candidate.label,
                   "learnable": sum(p.numel() for p in trainable.model.learnable)}
            if trainable.model.fill_cache is not None:  # the first epoch: compute and store
                start = time.perf_counter()
                with _autocast(device, settings.precision), torch.no_grad():
                    trainable.model.fill_cache(batch[0], batch[1])
                _sync(device)
                row["cache_fill_s"] = time.perf_counter() - start
            trainables.append(trainable)
            rows.append(row)
        memory = settings.memory and len(candidates) == 1
        if memory:
            gc.collect()
            _sync(device)
            start_mib = peak_memory_mb(device, reset=True)
        times, other_load = time_rounds(trainables, batch, settings.warmup, settings.repeats)
        peak_mib = peak_memory_mb(device) - start_mib if memory else None
        for trainable, row in zip(trainables, rows):
            with_grad, total = trainable.count_lora_gradients(batch)
            step_s = statistics.median(t["step_s"] for t in times[trainable.candidate.key])
            row.update({part: statistics.median(t[part] for t in times[trainable.candidate.key])
                        for part in PHASES})
            row.update(step_min_s=min(t["step_s"] for t in times[trainable.candidate.key]),
                       audio_s_per_s=settings.batch_size * settings.duration / step_s,
                       other_load=other_load, threads=torch.get_num_threads(),
                       peak_mib=peak_mib, memory_kind=memory_kind(device) if memory else None,
                       lora_with_grad=with_grad if total else None, lora_total=total or None)
            if settings.profile:
                row["profile"] = _profile_step(trainable, batch)
        return rows


def time_rounds(trainables: list[Trainable], batch, warmup: int, repeats: int) -> tuple[dict, float]:
    """Run ``warmup + repeats`` rounds of one step per trainable, the order rotated every round.

    Parameters
    ----------
    warmup, repeats
        Untimed rounds, then timed rounds (``repeats`` >= 1).

    Returns
    -------
    tuple[dict, float]
        Candidate key -> the seconds of its timed steps (one :data:`PHASES` dict per round),
        and the CPU cores other processes kept busy during the timed rounds.
    """
    times = {t.candidate.key: [] for t in trainables}
    for round_index in range(warmup + repeats):
        if round_index == warmup:
            busy_start, own_start, wall_start = *_busy_seconds(), time.perf_counter()
        shift = round_index % len(trainables)
        for trainable in trainables[shift:] + trainables[:shift]:
            seconds = trainable.step(batch)
            if round_index >= warmup:
                times[trainable.candidate.key].append(seconds)
    busy_end, own_end, wall_end = *_busy_seconds(), time.perf_counter()
    return times, max(0.0, ((busy_end - busy_start) - (own_end - own_start)) / (wall_end - wall_start))


def _profile_step(trainable: Trainable, batch, top: int = 15) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    cuda = trainable.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        trainable.step(batch)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"op": e.key, "self_ms": getattr(e, key) / 1000, "calls": e.count} for e in events]


# ------------------------------------------------------------------------------- worker process
def run_isolated(function: str, request: dict) -> object:
    """``function(**request)`` in a fresh Python process; its JSON result.

    Parameters
    ----------
    function
        ``"module:name"`` of a function taking ``request``'s keys and returning JSON data.
    request
        Its keyword arguments (JSON data).

    Raises
    ------
    RuntimeError
        If the process fails (with the end of its stderr).

    Examples
    --------
    >>> run_isolated("json:dumps", {"obj": [1, 2]})
    '[1, 2]'
    """
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.run([sys.executable, "-m", "elp.bench.harness", function, json.dumps(request)],
                             capture_output=True, text=True, env=env)
    if process.returncode != 0:
        raise RuntimeError(f"bench worker {function} failed (exit {process.returncode}):\n{process.stderr[-4000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def measure_request(settings: dict, candidates: list[dict]) -> list[dict]:
    """:func:`measure` from JSON data (the worker process's entry)."""
    return measure(BenchSettings(**settings), [Candidate(**c) for c in candidates])


def _run(settings: BenchSettings, candidates: list[Candidate]) -> list[dict]:
    if not settings.isolate:
        rows = measure(settings, candidates)
        gc.collect()
        if settings.device == "cuda":
            torch.cuda.empty_cache()
        return rows
    return run_isolated("elp.bench.harness:measure_request",
                        {"settings": asdict(settings), "candidates": [asdict(c) for c in candidates]})


def _run_least_disturbed(settings: BenchSettings, candidates: list[Candidate], log) -> list[dict]:
    best = None
    for _ in range(settings.retries + 1):
        rows = _run(settings, candidates)
        steps = ", ".join(f"{row['key']} step {row['step_s']:.3f} s" for row in rows)
        peak = f", peak +{rows[0]['peak_mib']:.0f} MiB" if rows[0]["peak_mib"] is not None else ""
        log(f"bench: {steps}{peak}, other load {rows[0]['other_load']:.2f}")
        if best is None or rows[0]["other_load"] < best[0]["other_load"]:
            best = rows
        spare_cores = max((os.cpu_count() or 1) - best[0]["threads"], 0)
        if best[0]["other_load"] <= spare_cores + settings.max_other_load:
            break
    return best


# ------------------------------------------------------------------------------ whole benchmark
def run_bench(settings: BenchSettings, candidates: list[Candidate], log=print) -> list[dict]:
    """Measure every candidate (see the module docstring); ratios against the first one.

    Parameters
    ----------
    settings
        What to measure and how (``interleave``, ``isolate``, ``retries``).
    log : Callable[[str], object], optional
        Where progress lines go.

    Returns
    -------
    list[dict]
        One row per candidate (see :func:`measure`) plus ``step_vs_baseline``,
        ``memory_vs_baseline`` (None without memory figures) and ``step_vs_floor`` (the step
        over twice the step of the candidate's ``frozen_forward`` row; None when it has none or
        that row did not run).

    Raises
    ------
    ValueError
        For no candidates, a key given twice or ``repeats`` < 1.
    RuntimeError
        If a worker process fails.

    Examples
    --------
    See the module docstring.
    """
    keys = [c.key for c in candidates]
    if not keys:
        raise ValueError("nothing to benchmark: name at least one variant")
    if len(set(keys)) != len(keys):
        raise ValueError(f"a variant is named twice in {' '.join(keys)}; name each once")
    if settings.repeats < 1:
        raise ValueError(f"repeats must be >= 1 (got {settings.repeats})")
    if settings.interleave and len(candidates) > 1:
        log(f"bench: {' '.join(keys)}, interleaved ...")
        rows = _run_least_disturbed(dataclasses.replace(settings, memory=False), candidates, log)
        if settings.memory:
            memory_settings = dataclasses.replace(settings, repeats=1, profile=False, retries=0)
            for candidate, row in zip(candidates, rows):
                log(f"bench: peak memory of {candidate.key} ...")
                measured = _run(memory_settings, [candidate])[0]
                row.update(peak_mib=measured["peak_mib"], memory_kind=measured["memory_kind"])
    else:
        rows = []
        for candidate in candidates:
            log(f"bench: {candidate.key} ...")
            rows += _run_least_disturbed(settings, [candidate], log)
    baseline = rows[0]
    steps = {row["key"]: row["step_s"] for row in rows}
    for candidate, row in zip(candidates, rows):
        row["step_vs_baseline"] = row["step_s"] / baseline["step_s"]
        row["memory_vs_baseline"] = (row["peak_mib"] / baseline["peak_mib"]
                                     if row["peak_mib"] is not None and baseline["peak_mib"] else None)
        frozen_forward_s = steps.get(candidate.frozen_forward)
        row["step_vs_floor"] = row["step_s"] / (2 * frozen_forward_s) if frozen_forward_s else None
    return rows


# ------------------------------------------------------------------------------------- output
def machine_description(device: str) -> str:
    """CPU model and core count (and the GPU name on CUDA).

    Examples
    --------
    >>> "logical CPUs" in machine_description("cpu")
    True
    """
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{model}, {os.cpu_count()} logical CPUs"
    if device == "cuda" and torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


#: The table: (row key, column title); ``{baseline}`` is the first row's key.
COLUMNS = [("variant", "variant"), ("learnable", "learnable"), ("forward_s", "forward s"),
           ("backward_s", "backward s"), ("optimizer_s", "optimizer s"), ("step_s", "step s"),
           ("step_vs_baseline", "step vs {baseline}"), ("step_vs_floor", "step vs floor"), ("peak_mib", "peak MiB"),
           ("memory_vs_baseline", "memory vs {baseline}"), ("audio_s_per_s", "audio s/s"),
           ("other_load", "other load"), ("lora", "LoRA tensors with gradient")]


def format_cell(row: dict, key: str) -> str:
    """One table cell (``-`` where a row has no value).

    Examples
    --------
    >>> row = {"learnable": 2048, "peak_mib": None, "lora_with_grad": 0, "lora_total": 8}
    >>> format_cell(row, "learnable"), format_cell(row, "peak_mib"), format_cell(row, "lora")
    ('2,048', '-', '0 of 8')
    """
    if key == "lora":
        return "-" if row["lora_total"] is None else f"{row['lora_with_grad']} of {row['lora_total']}"
    value = row[key]
    if value is None:
        return "-"
    if key == "learnable":
        return f"{value:,}"
    if key in ("step_vs_baseline", "step_vs_floor", "memory_vs_baseline"):
        return f"{value:.2f}"
    if key == "peak_mib":
        return f"{value:.0f}"
    if key in ("audio_s_per_s", "other_load"):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_markdown(settings: BenchSettings, rows: list[dict], command: str | None = None) -> str:
    """The result table of :func:`run_bench`'s rows (markdown, ending with a newline).

    The header names the machine, the settings and ``command``, the command line that produced
    the rows.
    """
    first = rows[0]
    weights = f"checkpoint {settings.source}" if settings.source else "random weights"
    overrides = f", config overrides {json.dumps(settings.config_overrides)}" if settings.config_overrides else ""
    schedule = ("variants interleaved round by round in one process, medians of {r} rounds after {w} warm-up rounds"
                if settings.interleave else "medians of {r} steps after {w} warm-up steps, one process per variant"
                if settings.isolate else "medians of {r} steps after {w} warm-up steps, variants one after another")
    if not settings.memory:
        memory = "not measured"
    else:
        steps = f"{settings.warmup + 1} step(s)" if settings.interleave else "the steps"
        where = "a fresh subprocess per variant" if settings.isolate else "this process, after earlier variants"
        memory = f"increment over the built model during {steps}, in {where} ({first['memory_kind']})"
    lines = [f"# elp bench: {settings.name}", "",
             f"- machine: {machine_description(settings.device)}; torch {torch.__version__}; "
             f"{first['threads']} threads",
             f"- backbone {settings.backbone} ({weights}{overrides}), batch {settings.batch_size} x "
             f"{settings.duration:g} s, {settings.precision}, {settings.device}; "
             + schedule.format(r=settings.repeats, w=settings.warmup),
             f"- learnable: trained parameters besides the head (every variant: Linear({settings.num_classes}) "
             "per frame, mean pool, cross-entropy, Adam); ratios against the first row",
             "- step vs floor: the step over twice the step of the row's frozen forward in this run (for elp "
             "variants the weighted_sum row with the same +cnncache/+sdpa/+bf16w flags; - where that row did "
             "not run); the machine's speed cancels out of it",
             f"- peak memory: {memory}",
             "- other load: CPU cores that other processes kept busy while the steps were timed "
             "(rows where other load + threads > CPUs were slowed by contention)",
             "- LoRA tensors with gradient: tensors whose .grad is set and non-zero after one "
             "forward/backward following the timed steps"]
    if command:
        lines.append(f"- command: `{command}`")
    titles = [title.format(baseline=first["key"]) for _, title in COLUMNS]
    lines += ["", "| " + " | ".join(titles) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(format_cell(row, key) for key, _ in COLUMNS) + " |" for row in rows]
    fills = [row for row in rows if "cache_fill_s" in row]
    if fills:
        lines += ["", "Rows that read a cache: step after the first epoch; the first epoch's forward that fills "
                  "the cache took " + ", ".join(f"{row['key']} {row['cache_fill_s']:.3f} s" for row in fills) + "."]
    for row in rows:
        if row.get("profile"):
            lines += ["", f"Top operators of one {row['key']} step (self time):", "",
                      "| op | self ms | calls |", "|---|---|---|"]
            lines += [f"| {e['op']} | {e['self_ms']:.1f} | {e['calls']} |" for e in row["profile"]]
    return "\n".join(lines) + "\n"


def write_results(settings: BenchSettings, rows: list[dict], out_dir: str | os.PathLike,
                  command: str | None = None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<settings.name>.md`` (:func:`format_markdown`) and ``.json``; return both paths.

    ``out_dir`` is created if missing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / f"{settings.name}.md"
    markdown.write_text(format_markdown(settings, rows, command))
    record = {"settings": asdict(settings), "machine": machine_description(settings.device),
              "torch": torch.__version__, "command": command, "baseline": rows[0]["key"], "rows": rows}
    json_file = out_dir / f"{settings.name}.json"
    json_file.write_text(json.dumps(record, indent=2))
    return markdown, json_file


def _worker_main(function: str, request: str) -> None:
    module, name = function.split(":")
    print(json.dumps(getattr(importlib.import_module(module), name)(**json.loads(request))))


if __name__ == "__main__":  # worker process of run_isolated: python -m elp.bench.harness module:name '<json>'
    _worker_main(sys.argv[1], sys.argv[2])
