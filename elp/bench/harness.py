"""Training-cost benchmark: one training step of every method on a random-weight backbone.

Each *variant* is a method name with optional ``+`` flags:

* ``+ckpt``: activation checkpointing of the backbone layers that run with autograd;
* ``+k<N>``: ``e_first_layer=N`` (E-adapters and trainable LNs from layer N up, layers
  below N without autograd);
* ``+cache``: (``weighted_sum``/``l_only`` only) the step reads the backbone's hidden states
  from a :class:`elp.train.feature_cache.HiddenStateCache` filled beforehand, i.e. the cost of
  every epoch after the first.
* ``+cnncache``: (any method) the step reads the frozen CNN's features from a
  :class:`elp.train.feature_cache.CNNFeatureCache` filled beforehand (recipes: ``cnn_cache: true``);
* ``+sdpa``: WavLM's attention through ``scaled_dot_product_attention`` (recipes:
  ``method_options: {sdpa_attention: true}``; wav2vec2 and HuBERT use SDPA already);
* ``+bf16w``: (with ``precision="bf16"``) frozen transformer Linear weights held in bfloat16
  once (recipes: ``method_options: {frozen_dtype: bf16}``).

A step is forward (backbone + method + a small head: per-frame Linear, masked mean pool,
cross-entropy), backward and an Adam step (+ ``zero_grad``). Each part is timed separately
for ``repeats`` steps after ``warmup`` steps; the table shows medians. Peak memory is the
increment over the memory in use after the model, head, optimizer and batch are built: on CPU
the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs`` right before the
steps), on CUDA ``torch.cuda.max_memory_allocated``. By default each variant runs in a fresh
subprocess so that one variant's allocations do not hide another's peak. ``full`` always runs
(first), and every ratio is against ``full`` from the same run.

Examples
--------
A tiny random backbone, measured in this process (timings and memory depend on the machine,
so only the layout is shown):

>>> import tempfile
>>> from elp.core.presets import TINY_CONFIG
>>> settings = BenchSettings(backbone="wavlm", config_overrides=TINY_CONFIG, batch_size=1,
...                          duration=0.5, warmup=1, repeats=1, threads=1)
>>> rows = run_bench(settings, ["el"], isolate=False, log=lambda line: None, retries=0)
>>> [row["variant"] for row in rows], rows[0]["step_vs_full"]
(['full', 'el'], 1.0)
>>> markdown, json_file = write_results(settings, rows, tempfile.mkdtemp())
>>> markdown.name, json_file.name
('wavlm_custom_cpu_fp32_b1x0.5s.md', 'wavlm_custom_cpu_fp32_b1x0.5s.json')
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from elp.core.methods import METHODS

#: Variants run when none are named: every method, plus the cached-hidden-state step of the two
#: methods whose backbone is frozen and un-adapted.
DEFAULT_VARIANTS = [*METHODS, "weighted_sum+cache", "l_only+cache"]


@dataclass
class BenchSettings:
    """What one benchmark run measures.

    Parameters
    ----------
    backbone : str
        Short backbone name (random weights built from its config; nothing downloaded).
    config_overrides : dict
        Config fields to change (e.g. :data:`elp.core.presets.TINY_CONFIG`).
    batch_size : int
        B utterances per step.
    duration : float
        Seconds per utterance (16 kHz, no padding): the batch is [B, 16000 * duration].
    precision : str
        ``"fp32"`` or ``"bf16"`` (``torch.autocast`` around forward and loss).
    device : str
        ``"cpu"`` or ``"cuda"``.
    warmup : int
        Steps before timing.
    repeats : int
        Timed steps.
    threads : int | None
        ``torch.set_num_threads`` in each worker (None: PyTorch's default / $OMP_NUM_THREADS).
    num_classes : int
        Classes of the benchmark head.
    seed : int
        Seed of weights and data.
    profile : bool
        Also record the top operators of one step (torch.profiler).

    Examples
    --------
    >>> BenchSettings(backbone="hubert", batch_size=2, duration=1.5).name
    'hubert_cpu_fp32_b2x1.5s'
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

    @property
    def name(self) -> str:
        """File stem of the outputs, e.g. ``wavlm_plus_cpu_fp32_b4x3s``."""
        tiny = "_custom" if self.config_overrides else ""
        return f"{self.backbone}{tiny}_{self.device}_{self.precision}_b{self.batch_size}x{self.duration:g}s"


@dataclass(frozen=True)
class Variant:
    """A method plus runtime options (see the module docstring for the ``+`` syntax)."""

    label: str
    method: str
    activation_checkpointing: bool = False
    e_first_layer: int = 0
    cache: bool = False
    cnn_cache: bool = False
    sdpa: bool = False
    bf16_weights: bool = False


def parse_variant(label: str) -> Variant:
    """Parse a variant label such as ``"el+ckpt+k4"`` (see the module docstring).

    Parameters
    ----------
    label : str
        A method name from :data:`elp.core.methods.METHODS` followed by ``+ckpt``, ``+k<N>``,
        ``+cache``, ``+cnncache``, ``+sdpa`` and/or ``+bf16w`` flags.

    Returns
    -------
    Variant
        E.g. ``Variant(label="el+ckpt+k4", method="el", activation_checkpointing=True,
        e_first_layer=4)``.

    Raises
    ------
    ValueError
        For an unknown method or flag, ``+cache`` on a method whose backbone needs
        gradients, or ``+cache`` with ``+cnncache``.

    Examples
    --------
    >>> parse_variant("l_only+cache").cache
    True
    >>> parse_variant("el+ckpt+k4").e_first_layer
    4
    >>> v = parse_variant("el+sdpa+cnncache+bf16w")
    >>> v.sdpa, v.cnn_cache, v.bf16_weights
    (True, True, True)
    """
    method, *flags = label.split("+")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} in bench variant {label!r}; choose from {', '.join(METHODS)}")
    options = {}
    for flag in flags:
        if flag == "ckpt":
            options["activation_checkpointing"] = True
        elif flag == "cache":
            if METHODS[method].backbone_needs_grad:
                raise ValueError(f"{label!r}: only methods with a frozen, un-adapted backbone "
                                 "(weighted_sum, l_only) can use the hidden-state cache")
            options["cache"] = True
        elif flag in _SPEED_FLAGS:
            options[_SPEED_FLAGS[flag]] = True
        elif flag.startswith("k") and flag[1:].isdigit():
            options["e_first_layer"] = int(flag[1:])
        else:
            raise ValueError(f"unknown flag {flag!r} in bench variant {label!r}; "
                             "use +ckpt, +k<N>, +cache, +cnncache, +sdpa or +bf16w")
    if options.get("cache") and options.get("cnn_cache"):
        raise ValueError(f"{label!r}: +cache (hidden states) already skips the CNN; drop +cnncache")
    return Variant(label, method, **options)


#: Variant flags that switch on a recipe speed option -> Variant field.
_SPEED_FLAGS = {"cnncache": "cnn_cache", "sdpa": "sdpa", "bf16w": "bf16_weights"}


def build_variant_model(variant: Variant, backbone, precision: str):
    """The adapted model of a variant, with its speed options applied.

    Parameters
    ----------
    variant : Variant
        From :func:`parse_variant`.
    backbone : elp.core.backbones.SSLBackbone
        A freshly loaded backbone (the model takes it over).
    precision : str
        ``"fp32"`` or ``"bf16"``; ``+bf16w`` needs ``"bf16"``.

    Returns
    -------
    elp.core.model.AdaptedSSL
        On the backbone's device, in train mode.

    Raises
    ------
    ValueError
        For ``+bf16w`` without bf16 precision.

    Examples
    --------
    >>> from elp.core.backbones import load_backbone
    >>> from elp.core.presets import TINY_CONFIG
    >>> backbone = load_backbone("wavlm", pretrained=False, config_overrides=TINY_CONFIG)
    >>> model = build_variant_model(parse_variant("el+bf16w"), backbone, "bf16")
    >>> model.backbone.model.encoder.layers[0].feed_forward.output_dense.weight.dtype
    torch.bfloat16
    """
    from elp.core.model import AdaptedSSL

    if variant.bf16_weights and precision != "bf16":
        raise ValueError(f"bench variant {variant.label!r}: +bf16w holds frozen weights in bfloat16 and "
                         "needs --precision bf16")
    model = AdaptedSSL(backbone, variant.method, e_first_layer=variant.e_first_layer,
                       activation_checkpointing=variant.activation_checkpointing).train()
    if variant.sdpa:
        model.backbone.set_sdpa_attention(True)
    if variant.bf16_weights:
        model.cast_frozen_(torch.bfloat16)
    return model


def variant_forward(variant: Variant, model, cache_dir: str | os.PathLike | None = None):
    """The forward a variant's step calls: ``forward(wavs, wav_lens) -> (feats, frame_mask)``.

    Parameters
    ----------
    variant : Variant
        From :func:`parse_variant`.
    model : elp.core.model.AdaptedSSL
        Its model (:func:`build_variant_model`).
    cache_dir : str | os.PathLike, optional
        Where ``+cache`` / ``+cnncache`` keep their cache (needed for those flags). The
        first call for a batch fills the cache; later calls read it.

    Returns
    -------
    Callable
        ``forward(wavs [B, T], wav_lens [B]) -> (feats [B, F, D], frame_mask [B, F])``.

    Examples
    --------
    >>> import tempfile
    >>> from elp.core.backbones import load_backbone
    >>> from elp.core.presets import TINY_CONFIG
    >>> variant = parse_variant("el+cnncache")
    >>> model = build_variant_model(variant, load_backbone("wavlm", pretrained=False,
    ...                             config_overrides=TINY_CONFIG), "fp32").eval()
    >>> forward = variant_forward(variant, model, tempfile.mkdtemp())
    >>> wavs = torch.randn(2, 8000)
    >>> first, _ = forward(wavs, torch.ones(2))   # fills the cache
    >>> again, _ = forward(wavs, torch.ones(2))   # reads it
    >>> torch.equal(first, again)
    True
    """
    from elp.train.feature_cache import CNNFeatureCache, HiddenStateCache, cached_cnn_forward, cached_forward

    if variant.cache or variant.cnn_cache:
        if cache_dir is None:
            raise ValueError(f"bench variant {variant.label!r} needs a cache directory")
        if variant.cache:
            cache = HiddenStateCache(cache_dir, "bench")
            return lambda wavs, wav_lens: cached_forward(model, cache, None, wavs, wav_lens)
        cnn_cache = CNNFeatureCache.for_model(cache_dir, model)
        return lambda wavs, wav_lens: cached_cnn_forward(model, cnn_cache, None, wavs, wav_lens)
    return lambda wavs, wav_lens: model(wavs, wav_lens)


class BenchHead(nn.Module):
    """Per-frame Linear, mean over valid frames, cross-entropy: the loss of the benchmark step."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, num_classes)

    def forward(self, feats: torch.Tensor, frame_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """feats [B, F, D], frame_mask [B, F], labels [B] -> scalar loss."""
        mask = frame_mask[..., None].to(feats.dtype)
        pooled = (self.proj(feats) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return nn.functional.cross_entropy(pooled.float(), labels)


# --------------------------------------------------------------------------- memory probes
def _proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class _MemoryProbe:
    """Peak memory increment from :meth:`start` to :meth:`stop`, in MiB."""

    def __init__(self, device: str):
        self.device = device

    def start(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            self.resettable = _reset_peak_rss()
            self.baseline = _proc_status_kib("VmRSS") * 1024
            self.baseline_peak = _proc_status_kib("VmHWM") * 1024

    def stop(self) -> tuple[float, str]:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.baseline) / 2**20, "cuda max_memory_allocated"
        peak = _proc_status_kib("VmHWM") * 1024
        if self.resettable:
            return (peak - self.baseline) / 2**20, "RSS peak (VmHWM after clear_refs)"
        # without clear_refs the peak may predate the start; only a rise above it is visible
        return (max(peak - self.baseline_peak, 0)) / 2**20, "RSS peak above pre-start peak (lower bound)"


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


# ------------------------------------------------------------------------------- one variant
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_variant(settings: BenchSettings, variant: Variant) -> dict:
    """Build one model and time its training steps in this process.

    Parameters
    ----------
    settings : BenchSettings
        What to measure.
    variant : Variant
        The method and runtime options (from :func:`parse_variant`).

    Returns
    -------
    dict
        ``variant``, ``method``, ``learnable``, medians ``forward_s``, ``backward_s``,
        ``optimizer_s``, ``step_s``, ``peak_mib``, ``audio_s_per_s`` (+ ``cache_fill_s`` and
        ``profile`` where they apply).
    """
    from elp.core.backbones import load_backbone

    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = settings.device
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda given but torch.cuda.is_available() is False")
    torch.manual_seed(settings.seed)
    backbone = load_backbone(settings.backbone, pretrained=False, config_overrides=settings.config_overrides)
    model = build_variant_model(variant, backbone, settings.precision).to(device)
    head = BenchHead(model.output_dim, settings.num_classes).to(device)
    head.train()
    learnable = list(model.learnable_parameters().values())
    optimizer = torch.optim.Adam(learnable + list(head.parameters()), lr=1e-4)
    generator = torch.Generator().manual_seed(settings.seed)
    num_samples = int(round(settings.duration * 16000))
    wavs = (0.1 * torch.randn(settings.batch_size, num_samples, generator=generator)).to(device)
    wav_lens = torch.ones(settings.batch_size, device=device)
    labels = torch.randint(0, settings.num_classes, (settings.batch_size,), generator=generator).to(device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=settings.precision == "bf16")

    result: dict = {}
    tmp_dir = tempfile.TemporaryDirectory(prefix="elp-bench-cache-") if variant.cache or variant.cnn_cache else None
    forward_of_batch = variant_forward(variant, model, tmp_dir.name if tmp_dir else None)
    if tmp_dir is not None:
        start = time.perf_counter()
        with autocast, torch.no_grad():  # the first epoch: compute and store
            forward_of_batch(wavs, wav_lens)
        _sync(device)
        result["cache_fill_s"] = time.perf_counter() - start

    def forward():
        return forward_of_batch(wavs, wav_lens)

    def loss_of_batch():
        with autocast:
            feats, frame_mask = forward()
            return head(feats, frame_mask, labels)

    def step(times: dict | None):
        loss, seconds = timed_step(loss_of_batch, optimizer, device)
        if times is not None:
            for key, value in seconds.items():
                times[key].append(value)
        return float(loss.detach())

    probe = _MemoryProbe(device)
    probe.start()
    for _ in range(settings.warmup):
        step(None)
    times = {key: [] for key in ("forward_s", "backward_s", "optimizer_s", "step_s")}
    busy_start, own_start, wall_start = *_busy_seconds(), time.perf_counter()
    for _ in range(settings.repeats):
        step(times)
    busy_end, own_end, wall_end = *_busy_seconds(), time.perf_counter()
    peak_mib, memory_kind = probe.stop()
    # CPU cores other processes kept busy while we timed (a shared machine skews timings)
    result["other_load"] = max(0.0, ((busy_end - busy_start) - (own_end - own_start)) / (wall_end - wall_start))
    if settings.profile:
        result["profile"] = _profile_step(step, device)
    if tmp_dir is not None:
        tmp_dir.cleanup()
    step_s = statistics.median(times["step_s"])
    result.update(
        variant=variant.label, method=variant.method,
        learnable=sum(p.numel() for p in learnable),
        **{key: statistics.median(values) for key, values in times.items()},
        peak_mib=peak_mib, memory_kind=memory_kind,
        step_min_s=min(times["step_s"]),
        audio_s_per_s=settings.batch_size * settings.duration / step_s,
        threads=torch.get_num_threads())
    return result


def timed_step(loss_fn, optimizer: torch.optim.Optimizer, device: str) -> tuple[torch.Tensor, dict[str, float]]:
    """One training step (forward, backward, optimizer), each phase timed after a device sync.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn() -> loss`` (the forward pass, under autocast if wanted).
    optimizer : torch.optim.Optimizer
        Stepped once, then its gradients are cleared.
    device : str
        ``"cpu"`` or ``"cuda"`` (CUDA is synchronised before each clock reading).

    Returns
    -------
    tuple[torch.Tensor, dict[str, float]]
        The loss and the seconds ``forward_s``, ``backward_s``, ``optimizer_s``, ``step_s``.

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


def _profile_step(step, device: str, top: int = 15) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        step(None)
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"op": e.key, "self_ms": getattr(e, key) / 1000, "calls": e.count} for e in events]


# ----------------------------------------------------------------------------- whole bench
def run_bench(settings: BenchSettings, variants: list[str] | None = None, isolate: bool = True,
              log=print, max_other_load: float = 0.25, retries: int = 2) -> list[dict]:
    """Measure every variant (``full`` first, always) and add ratios against ``full``.

    Parameters
    ----------
    settings : BenchSettings
        What to measure.
    variants : list[str] | None, optional
        Labels (see :func:`parse_variant`); default :data:`DEFAULT_VARIANTS`.
    isolate : bool, optional
        Run each variant in a fresh subprocess (robust peak memory); False runs them in
        this process (faster; peak memory then also sees earlier variants' leftovers).
    log : Callable[[str], object], optional
        Where progress lines go.
    max_other_load : float, optional
        On a shared machine, a variant timed while other processes kept more than this
        many of the cores it uses busy (beyond the cores its threads leave free) is
        measured again; the least disturbed measurement is kept.
    retries : int, optional
        How many more times such a disturbed variant is measured at most.

    Returns
    -------
    list[dict]
        One dict per variant (see :func:`measure_variant`), ``full`` first, plus
        ``step_vs_full`` and ``memory_vs_full``.

    Raises
    ------
    ValueError
        For a bad variant label (before anything is measured).
    RuntimeError
        If an isolated worker process fails.

    Examples
    --------
    See the module docstring.
    """
    labels = list(variants or DEFAULT_VARIANTS)
    for label in labels:
        parse_variant(label)  # fail early on a typo
    labels = ["full"] + [label for label in labels if label != "full"]
    rows = []
    for label in labels:
        log(f"bench: {label} ...")
        for attempt in range(retries + 1):
            measured = _measure_isolated(settings, label) if isolate else measure_variant(settings, parse_variant(label))
            log(f"bench: {label}: step {measured['step_s']:.3f} s, peak +{measured['peak_mib']:.0f} MiB, "
                f"other load {measured['other_load']:.2f}")
            if attempt == 0 or measured["other_load"] < row["other_load"]:
                row = measured
            spare_cores = max((os.cpu_count() or 1) - row["threads"], 0)
            if row["other_load"] <= spare_cores + max_other_load:
                break
        rows.append(row)
    full = rows[0]
    for row in rows:
        row["step_vs_full"] = row["step_s"] / full["step_s"]
        row["memory_vs_full"] = row["peak_mib"] / full["peak_mib"] if full["peak_mib"] > 0 else float("nan")
    return rows


def _measure_isolated(settings: BenchSettings, label: str) -> dict:
    payload = json.dumps({"settings": asdict(settings), "variant": label})
    process = subprocess.run([sys.executable, "-m", "elp.bench.harness", payload], capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"bench worker for {label!r} failed (exit {process.returncode}):\n{process.stderr[-4000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def machine_description(device: str) -> str:
    """CPU model and core count (and the GPU name on CUDA).

    Parameters
    ----------
    device : str
        ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    str
        E.g. ``"<CPU model>, 16 logical CPUs; GPU <name>"``.

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


COLUMNS = [("variant", "method"), ("learnable", "learnable"), ("forward_s", "forward s"),
           ("backward_s", "backward s"), ("optimizer_s", "optimizer s"), ("step_s", "step s"),
           ("step_vs_full", "step vs full"), ("peak_mib", "peak MiB"), ("memory_vs_full", "memory vs full"),
           ("audio_s_per_s", "audio s/s"), ("other_load", "other load")]


def format_markdown(settings: BenchSettings, rows: list[dict], command: str | None = None) -> str:
    """The result table (markdown) with a header naming the machine and the settings.

    Parameters
    ----------
    settings : BenchSettings
        The settings the rows were measured with.
    rows : list[dict]
        Output of :func:`run_bench`.
    command : str | None, optional
        The command line that produced them (added to the header).

    Returns
    -------
    str
        Markdown text ending with a newline.
    """
    threads = rows[0].get("threads") if rows else None
    lines = [f"# elp bench: {settings.name}", "",
             f"- machine: {machine_description(settings.device)}; torch {torch.__version__}; "
             f"{threads} threads",
             f"- backbone {settings.backbone} (random weights{', config overrides ' + json.dumps(settings.config_overrides) if settings.config_overrides else ''}), "
             f"batch {settings.batch_size} x {settings.duration:g} s, {settings.precision}, {settings.device}, "
             f"medians of {settings.repeats} steps after {settings.warmup} warm-up steps",
             f"- peak memory: increment over the built model ({rows[0]['memory_kind'] if rows else ''})",
             "- other load: CPU cores that other processes kept busy while the steps were timed "
             "(rows where other load + threads > CPUs were slowed by contention)"]
    if command:
        lines.append(f"- command: `{command}`")
    lines += ["", "| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for key, _ in COLUMNS:
            value = row[key]
            if key == "learnable":
                cells.append(f"{value:,}")
            elif key in ("step_vs_full", "memory_vs_full"):
                cells.append(f"{value:.2f}")
            elif key == "peak_mib":
                cells.append(f"{value:.0f}")
            elif key in ("audio_s_per_s", "other_load"):
                cells.append(f"{value:.1f}")
            elif isinstance(value, float):
                cells.append(f"{value:.3f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    fills = [row for row in rows if "cache_fill_s" in row]
    if fills:
        lines += ["", "`+cache` rows: step after the first epoch; the first epoch's forward that fills the "
                  "cache took " + ", ".join(f"{row['variant']} {row['cache_fill_s']:.3f} s" for row in fills) + "."]
    for row in rows:
        if row.get("profile"):
            lines += ["", f"Top operators of one {row['variant']} step (self time):", "",
                      "| op | self ms | calls |", "|---|---|---|"]
            lines += [f"| {e['op']} | {e['self_ms']:.1f} | {e['calls']} |" for e in row["profile"]]
    return "\n".join(lines) + "\n"


def write_results(settings: BenchSettings, rows: list[dict], out_dir: str | os.PathLike,
                  command: str | None = None, formatter=None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<settings.name>.md`` and ``.json``.

    Parameters
    ----------
    settings : BenchSettings
        The settings the rows were measured with.
    rows : list[dict]
        Output of :func:`run_bench`.
    out_dir : str | os.PathLike
        Output folder (created if missing).
    command : str | None, optional
        The command line that produced the rows.

    formatter : callable, optional
        ``formatter(settings, rows, command) -> str``, the markdown table (default
        :func:`format_markdown`; the peer benchmark passes its own).

    Returns
    -------
    tuple[Path, Path]
        The markdown and JSON files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / f"{settings.name}.md"
    markdown.write_text((formatter or format_markdown)(settings, rows, command))
    record = {"settings": asdict(settings), "machine": machine_description(settings.device),
              "torch": torch.__version__, "command": command, "rows": rows}
    json_file = out_dir / f"{settings.name}.json"
    json_file.write_text(json.dumps(record, indent=2))
    return markdown, json_file


def _worker_main(payload: str) -> None:
    request = json.loads(payload)
    settings = BenchSettings(**request["settings"])
    row = measure_variant(settings, parse_variant(request["variant"]))
    print(json.dumps(row))


if __name__ == "__main__":
    _worker_main(sys.argv[1])
