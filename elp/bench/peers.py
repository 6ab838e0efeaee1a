"""Peer benchmark: elp's methods next to SpeechBrain's and HF PEFT's own code, on one checkpoint.

One random-weight WavLM checkpoint is saved in HF format to a local directory (nothing is
downloaded) and every variant loads it from there:

* ``sb_full``: SpeechBrain's HF wrapper ``speechbrain.integrations.huggingface.wavlm.WavLM``,
  full fine-tuning with the CNN frozen (``freeze_feature_extractor=True``);
* ``sb_weighted_sum``: SpeechBrain's ``WeightedSSLModel`` with ``freeze=True`` (learnable layer
  weights over the frozen backbone's hidden states);
* ``peft_lora``: HF PEFT ``LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])``
  on ``transformers.WavLMModel`` (optional extra ``pip install -e .[peers]``);
* ``elp:<variant>``: ``elp.core.backbones.load_backbone(..., source=dir)`` + ``elp.core.model.AdaptedSSL``
  with the method (and ``+ckpt`` / ``+k<N>`` flags of :func:`elp.bench.harness.parse_variant`).

Every variant gets the same batch and the same head (:class:`elp.bench.harness.BenchHead`: per-frame
Linear, masked mean pool, cross-entropy) and one Adam optimizer over its learnable parameters
and the head. A step is forward + loss (inside ``torch.autocast`` for ``bf16``), backward,
``optimizer.step()`` and ``zero_grad``. The peer modules are put in ``train()`` mode, as
SpeechBrain's ``Brain.fit`` does at every epoch; elp's models keep their frozen parts in eval
mode themselves. SpeechBrain's and PEFT's code runs as installed, unpatched.

Timing: all variants are built once in this process and run interleaved, one step each per
round, the order rotated every round, so that a slow phase of a shared machine hits every
variant alike; each variant's step time is the median over the timed rounds.
Peak memory cannot be told apart per variant inside one process (the allocator keeps what one
variant freed and hands it to the next), so it is measured in a fresh subprocess per variant
(build, then ``warmup + 1`` steps; increment of the peak RSS over the built model, as
:mod:`elp.bench.harness` does).

LoRA tensors with a gradient: after the timed rounds (so at least one optimizer step has made
``B`` non-zero), one more forward/backward counts the LoRA tensors whose ``.grad`` is set and
non-zero. HF's WavLM attention reads ``q_proj.weight`` / ``v_proj.weight`` directly inside
``F.multi_head_attention_forward``, so PEFT's wrapped modules may never be called; the count
shows whether they are.

Examples
--------
>>> from elp.testing import TINY_CONFIG
>>> settings = PeerSettings(config_overrides=dict(TINY_CONFIG, num_hidden_layers=2), batch_size=2,
...                         duration=0.5, warmup=0, repeats=1, memory=False)
>>> rows = run_peer_bench(settings, ["weighted_sum"], log=lambda line: None)
>>> [row["key"] for row in rows if row["key"] != "peft_lora"]
['sb_full', 'sb_weighted_sum', 'elp:weighted_sum']
>>> rows[0]["step_vs_sb_full"]
1.0
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from elp.bench.harness import BenchSettings
from elp.bench.harness import (BenchHead, _busy_seconds, _MemoryProbe, build_variant_model, machine_description,
                       parse_variant, timed_step, variant_forward)
from elp.bench.harness import write_results as bench_write_results

#: Peer variants, always run first, in this order (``sb_full`` is the reference of every ratio).
PEERS = {
    "sb_full": "SpeechBrain WavLM, full FT, CNN frozen",
    "sb_weighted_sum": "SpeechBrain WeightedSSLModel, frozen",
    "peft_lora": "HF PEFT LoRA r8 q,v",
}

#: elp variants run when none are named.
DEFAULT_ELP_METHODS = ["full", "weighted_sum", "lora", "el", "elp"]

#: The PEFT release the ``peers`` extra pins (setup.py).
PEFT_VERSION = "0.21.2"

#: What to do when PEFT is missing (printed once, the row is skipped).
PEFT_MISSING = (f"HF PEFT is not installed: skipping the '{PEERS['peft_lora']}' row; install it with "
                f"`pip install -e .[peers]` (or `pip install peft=={PEFT_VERSION}`)")

#: Hyper-parameters of the PEFT LoRA peer (the same as elp's lora method).
LORA_RANK, LORA_ALPHA, LORA_TARGETS = 8, 16.0, ("q_proj", "v_proj")


@dataclass
class PeerSettings(BenchSettings):
    """What one peer benchmark run measures.

    Parameters
    ----------
    backbone : str
        Short backbone name whose architecture is saved (WavLM family only: the SpeechBrain
        peers are WavLM wrappers).
    config_overrides : dict
        Config fields to change (e.g. a tiny test architecture).
    batch_size : int
        B utterances per step.
    duration : float
        Seconds per utterance (16 kHz, no padding).
    precision : str
        ``"fp32"`` or ``"bf16"`` (``torch.autocast`` around forward and loss).
    device : str
        ``"cpu"`` or ``"cuda"``.
    warmup, repeats : int
        Untimed rounds, then timed rounds (one step of every variant per round).
    threads : int | None
        ``torch.set_num_threads`` (None: PyTorch's default).
    num_classes : int
        Classes of the head.
    seed : int
        Seed of the weights and the batch.
    memory : bool
        Measure peak memory in one subprocess per variant.
    """

    warmup: int = 1
    profile: bool = False
    memory: bool = True

    @property
    def name(self) -> str:
        """File stem of the outputs, e.g. ``peers_wavlm_plus_cpu_fp32_b4x3s``."""
        return f"peers_{super().name}"


# ------------------------------------------------------------------------------ checkpoint
def save_random_checkpoint(directory: str | os.PathLike, backbone: str = "wavlm_plus",
                           config_overrides: dict | None = None, seed: int = 0) -> Path:
    """Save a random-weight WavLM checkpoint in HF format (config, weights, feature extractor).

    Parameters
    ----------
    directory : str | os.PathLike
        Where to write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``
        (SpeechBrain's wrapper reads the latter).
    backbone : str
        Short name of a WavLM backbone (:data:`elp.core.backbones.BACKBONES`).
    config_overrides : dict | None
        Config fields to change.
    seed : int
        Seed of the random weights.

    Returns
    -------
    Path
        ``directory``.

    Examples
    --------
    >>> import tempfile
    >>> from elp.testing import TINY_CONFIG
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_random_checkpoint(tmp, config_overrides=TINY_CONFIG)
    ...     sorted(p.name for p in path.iterdir())
    ['config.json', 'model.safetensors', 'preprocessor_config.json']
    """
    import transformers

    from elp.core.backbones import BACKBONES, backbone_config

    if backbone not in BACKBONES or BACKBONES[backbone].family != "wavlm":
        wavlm = [name for name, spec in BACKBONES.items() if spec.family == "wavlm"]
        raise ValueError(f"peer benchmark backbone {backbone!r}: the SpeechBrain peers wrap WavLM; "
                         f"choose one of {', '.join(wavlm)}")
    # backbone_config switches layerdrop and SpecAugment masking off: every variant reads this
    # config.json, so no variant skips layers or masks frames the others compute
    config = backbone_config(backbone, **(config_overrides or {}))
    torch.manual_seed(seed)
    model = transformers.WavLMModel(config)
    directory = Path(directory)
    model.save_pretrained(directory)
    transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0,
        do_normalize=bool(config.do_stable_layer_norm), return_attention_mask=True,
    ).save_pretrained(directory)
    return directory


# -------------------------------------------------------------------------------- variants
@dataclass
class BuiltVariant:
    """One model ready to train: its forward, head, optimizer and the tensors it trains."""

    key: str
    label: str
    modules: list[nn.Module]
    forward: object  # (wavs [B, T], wav_lens [B]) -> (feats [B, F, D], frame_mask [B, F] | None)
    head: BenchHead
    learnable: list[nn.Parameter]
    lora: dict[str, nn.Parameter]
    optimizer: torch.optim.Optimizer | None = None


def import_peft():
    """``peft``, or None when it is not installed."""
    try:
        import peft
    except ImportError:
        return None
    return peft


def _build_sb(key: str, source: Path, work_dir: Path):
    if key == "sb_full":
        from speechbrain.integrations.huggingface.wavlm import WavLM

        module = WavLM(str(source), save_path=str(work_dir / "speechbrain"), freeze=False,
                       freeze_feature_extractor=True)

        def forward(wavs, wav_lens):
            return module(wavs, wav_lens), None
    else:
        from speechbrain.integrations.huggingface.weighted_ssl import WeightedSSLModel

        module = WeightedSSLModel(str(source), save_path=str(work_dir / "speechbrain"), freeze=True)

        def forward(wavs, wav_lens):
            return module(wavs, wav_lens), None
    return [module], forward, [p for p in module.parameters() if p.requires_grad], {}, module.model.config.hidden_size


def _build_peft(source: Path):
    peft = import_peft()
    if peft is None:
        return None
    import transformers

    base = transformers.WavLMModel.from_pretrained(str(source))
    config = peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=list(LORA_TARGETS),
                             lora_dropout=0.0, bias="none")
    module = peft.get_peft_model(base, config)

    def forward(wavs, wav_lens):
        return module(input_values=wavs).last_hidden_state, None
    lora = {name: p for name, p in module.named_parameters() if "lora_" in name}
    learnable = [p for p in module.parameters() if p.requires_grad]
    return [module], forward, learnable, lora, base.config.hidden_size


def _build_elp(label: str, settings: PeerSettings, source: Path, work_dir: Path):
    from elp.core.backbones import load_backbone

    variant = parse_variant(label)
    model = build_variant_model(variant, load_backbone(settings.backbone, source=str(source)), settings.precision)
    cache_dir = work_dir / f"cache-{label}"
    forward = variant_forward(variant, model, cache_dir)
    learnable = model.learnable_parameters()
    lora = {name: p for name, p in learnable.items() if ".lora_a" in name or ".lora_b" in name}
    return [model], forward, list(learnable.values()), lora, model.output_dim


def variant_label(key: str) -> str:
    """Table label of a variant key.

    Parameters
    ----------
    key : str
        A key of :data:`PEERS` or ``"elp:<variant>"``.

    Returns
    -------
    str
        The peer's description, or ``"elp <variant>"``.

    Examples
    --------
    >>> variant_label("elp:el"), variant_label("sb_full")
    ('elp el', 'SpeechBrain WavLM, full FT, CNN frozen')
    """
    return PEERS.get(key) or "elp " + key.split(":", 1)[1]


def build_variant(key: str, settings: PeerSettings, source: str | os.PathLike,
                  work_dir: str | os.PathLike) -> BuiltVariant | None:
    """Build one variant from the checkpoint in ``source``; None for ``peft_lora`` without PEFT.

    Parameters
    ----------
    key : str
        A key of :data:`PEERS` or ``"elp:<variant>"``.
    settings : PeerSettings
        Device, seed and head size.
    source : str | os.PathLike
        Checkpoint directory written by :func:`save_random_checkpoint`.
    work_dir : str | os.PathLike
        Scratch directory (SpeechBrain's ``save_path``).

    Returns
    -------
    BuiltVariant | None
        The model in train mode with its head and Adam optimizer.
    """
    source, work_dir = Path(source), Path(work_dir)
    torch.manual_seed(settings.seed)
    if key in ("sb_full", "sb_weighted_sum"):
        built = _build_sb(key, source, work_dir)
    elif key == "peft_lora":
        built = _build_peft(source)
        if built is None:
            return None
    elif key.startswith("elp:"):
        built = _build_elp(key.split(":", 1)[1], settings, source, work_dir)
    else:
        raise ValueError(f"unknown peer benchmark variant {key!r}; use one of {', '.join(PEERS)} "
                         "or elp:<method>")
    modules, forward, learnable, lora, dim = built
    head = BenchHead(dim, settings.num_classes)
    for module in [*modules, head]:
        module.to(settings.device)
        module.train()
    optimizer = torch.optim.Adam(learnable + list(head.parameters()), lr=1e-4)
    return BuiltVariant(key, variant_label(key), modules, forward, head, learnable, lora, optimizer)


def make_batch(settings: PeerSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The benchmark batch (seeded by ``settings.seed``).

    Parameters
    ----------
    settings : PeerSettings
        Device, precision and batch settings.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor, torch.Tensor]
        wavs [B, T], wav_lens [B] (all 1.0) and labels [B].

    Examples
    --------
    >>> wavs, wav_lens, labels = make_batch(PeerSettings(batch_size=2, duration=0.5))
    >>> tuple(wavs.shape), wav_lens.tolist(), tuple(labels.shape)
    ((2, 8000), [1.0, 1.0], (2,))
    """
    generator = torch.Generator().manual_seed(settings.seed)
    num_samples = int(round(settings.duration * 16000))
    wavs = 0.1 * torch.randn(settings.batch_size, num_samples, generator=generator)
    labels = torch.randint(0, settings.num_classes, (settings.batch_size,), generator=generator)
    device = settings.device
    return wavs.to(device), torch.ones(settings.batch_size, device=device), labels.to(device)


def variant_loss(variant: BuiltVariant, settings: PeerSettings, batch) -> torch.Tensor:
    """Forward + head loss of one batch (inside autocast for bf16).

    Parameters
    ----------
    variant : BuiltVariant
        From :func:`build_variant`.
    settings : PeerSettings
        Device, precision and batch settings.
    batch : tuple[torch.Tensor, torch.Tensor, torch.Tensor]
        From :func:`make_batch`.

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    wavs, wav_lens, labels = batch
    with torch.autocast(device_type=settings.device, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
        feats, frame_mask = variant.forward(wavs, wav_lens)
        if frame_mask is None:  # the peers return every frame (the batch has no padding)
            frame_mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        return variant.head(feats, frame_mask, labels)


def train_step(variant: BuiltVariant, settings: PeerSettings, batch) -> dict[str, float]:
    """One timed training step.

    Parameters
    ----------
    variant : BuiltVariant
        From :func:`build_variant`.
    settings : PeerSettings
        Device, precision and batch settings.
    batch : tuple[torch.Tensor, torch.Tensor, torch.Tensor]
        From :func:`make_batch`.

    Returns
    -------
    dict[str, float]
        Seconds: ``forward_s``, ``backward_s``, ``optimizer_s``, ``step_s``.
    """
    _, seconds = timed_step(lambda: variant_loss(variant, settings, batch), variant.optimizer, settings.device)
    return seconds


def count_lora_gradients(variant: BuiltVariant, settings: PeerSettings, batch) -> tuple[int, int]:
    """Count the LoRA tensors that receive a gradient.

    The gradients are cleared again; no optimizer step is taken.

    Parameters
    ----------
    variant : BuiltVariant
        From :func:`build_variant`.
    settings : PeerSettings
        Device, precision and batch settings.
    batch : tuple[torch.Tensor, torch.Tensor, torch.Tensor]
        From :func:`make_batch`.

    Returns
    -------
    tuple[int, int]
        LoRA tensors with a set, non-zero gradient after one forward/backward, and all LoRA
        tensors ((0, 0) for a variant without LoRA).
    """
    if not variant.lora:
        return 0, 0
    variant.optimizer.zero_grad(set_to_none=True)
    variant_loss(variant, settings, batch).backward()
    with_grad = sum(1 for p in variant.lora.values() if p.grad is not None and bool(p.grad.ne(0).any()))
    variant.optimizer.zero_grad(set_to_none=True)
    return with_grad, len(variant.lora)


# ---------------------------------------------------------------------------- the benchmark
def variant_keys(elp_variants: list[str] | None = None) -> list[str]:
    """Peers first, then ``elp:<variant>`` for each elp variant.

    Parameters
    ----------
    elp_variants : list[str] | None, optional
        elp variant labels (checked with :func:`elp.bench.harness.parse_variant`); default
        :data:`DEFAULT_ELP_METHODS`.

    Returns
    -------
    list[str]
        Variant keys in run order.

    Raises
    ------
    ValueError
        For a bad variant label.

    Examples
    --------
    >>> variant_keys(["el+ckpt"])
    ['sb_full', 'sb_weighted_sum', 'peft_lora', 'elp:el+ckpt']
    """
    elp_variants = list(DEFAULT_ELP_METHODS if elp_variants is None else elp_variants)
    for label in elp_variants:
        parse_variant(label)  # fail early on a typo
    return [*PEERS, *(f"elp:{label}" for label in elp_variants)]


def run_peer_bench(settings: PeerSettings, elp_variants: list[str] | None = None,
                   source: str | os.PathLike | None = None, log=print) -> list[dict]:
    """Time every variant interleaved in this process; then measure each one's peak memory
    (CPU: in a subprocess per variant; CUDA: one after the other in this process).

    Parameters
    ----------
    settings : PeerSettings
        What to measure.
    elp_variants : list[str] | None
        elp methods / variants (:func:`elp.bench.harness.parse_variant`); default
        :data:`DEFAULT_ELP_METHODS`.
    source : str | os.PathLike | None
        An existing WavLM checkpoint directory (with ``preprocessor_config.json``); default: a
        random one saved by :func:`save_random_checkpoint` to a temporary directory.
    log : Callable[[str], object]
        Where progress lines (and the missing-PEFT line) go.

    Returns
    -------
    list[dict]
        One row per variant: ``key``, ``variant`` (label), ``learnable``, medians
        ``forward_s`` / ``backward_s`` / ``optimizer_s`` / ``step_s``, ``step_vs_sb_full``,
        ``peak_mib`` / ``memory_vs_sb_full`` (None without ``settings.memory``),
        ``lora_with_grad`` / ``lora_total`` (None for variants without LoRA), and run-wide
        ``other_load``, ``loadavg_start``, ``loadavg_end``, ``threads``, ``wall_s``.
    """
    keys = variant_keys(elp_variants)
    if settings.repeats < 1:
        raise ValueError(f"peer benchmark: repeats must be >= 1 (got {settings.repeats})")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda given but torch.cuda.is_available() is False")
    wall_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="elp-peers-") as tmp:
        tmp = Path(tmp)
        if source is None:
            source = save_random_checkpoint(tmp / "checkpoint", settings.backbone, settings.config_overrides,
                                            settings.seed)
        source = Path(source)
        if not (source / "preprocessor_config.json").exists():
            raise FileNotFoundError(f"{source}: no preprocessor_config.json (SpeechBrain's WavLM wrapper "
                                    "reads it); save one with transformers.Wav2Vec2FeatureExtractor(...)"
                                    ".save_pretrained(dir) or let the benchmark save a random checkpoint")
        variants = []
        for key in keys:
            built = build_variant(key, settings, source, tmp)
            if built is None:
                log(PEFT_MISSING)
                continue
            variants.append(built)
        batch = make_batch(settings)
        times = {v.key: [] for v in variants}
        loadavg_start = os.getloadavg()
        for round_index in range(settings.warmup + settings.repeats):
            timed = round_index >= settings.warmup
            if round_index == settings.warmup:
                busy_start, own_start, timed_start = *_busy_seconds(), time.perf_counter()
            shift = round_index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                measured = train_step(variant, settings, batch)
                if timed:
                    times[variant.key].append(measured)
            log(f"peers: round {round_index + 1}/{settings.warmup + settings.repeats}"
                f"{'' if timed else ' (warm-up)'}: "
                + ", ".join(f"{v.key} {times[v.key][-1]['step_s']:.3f} s" if timed else v.key for v in variants))
        busy_end, own_end, timed_end = *_busy_seconds(), time.perf_counter()
        other_load = max(0.0, ((busy_end - busy_start) - (own_end - own_start)) / (timed_end - timed_start))
        loadavg_end = os.getloadavg()
        rows = []
        for variant in variants:
            with_grad, total = count_lora_gradients(variant, settings, batch)
            row = {"key": variant.key, "variant": variant.label,
                   "learnable": sum(p.numel() for p in variant.learnable)}
            for part in ("forward_s", "backward_s", "optimizer_s", "step_s"):
                row[part] = statistics.median(t[part] for t in times[variant.key])
            row["step_min_s"] = min(t["step_s"] for t in times[variant.key])
            row["lora_with_grad"], row["lora_total"] = (with_grad, total) if total else (None, None)
            rows.append(row)
        variant = None  # noqa: F841  (the loop variable kept the last model alive)
        del variants
        for row in rows:
            row["peak_mib"] = None
            if settings.memory:
                # CUDA counts allocations, which a variant built before does not disturb once freed;
                # CPU RSS needs a fresh process per variant
                isolated = settings.device != "cuda"
                log(f"peers: peak memory of {row['key']}{' (subprocess)' if isolated else ''} ...")
                measure = _measure_memory_isolated if isolated else measure_memory
                row["peak_mib"], row["memory_kind"] = measure(settings, row["key"], source)
                if not isolated:
                    gc.collect()
                    torch.cuda.empty_cache()
    reference = rows[0]
    for row in rows:
        row["step_vs_sb_full"] = row["step_s"] / reference["step_s"]
        row["memory_vs_sb_full"] = (row["peak_mib"] / reference["peak_mib"]
                                    if row["peak_mib"] is not None and reference["peak_mib"] else None)
        row.update(other_load=other_load, loadavg_start=loadavg_start, loadavg_end=loadavg_end,
                   threads=torch.get_num_threads(), wall_s=time.perf_counter() - wall_start)
    return rows


def measure_memory(settings: PeerSettings, key: str, source: str | os.PathLike) -> tuple[float, str]:
    """Peak memory increment of ``warmup + 1`` steps of one variant built in this process.

    Parameters
    ----------
    settings : PeerSettings
        Device, precision and batch settings.
    key : str
        Variant key.
    source : str | os.PathLike
        The checkpoint directory.

    Returns
    -------
    tuple[float, str]
        The increment in MiB and what was measured (peak RSS or CUDA allocations).
    """
    if settings.threads:
        torch.set_num_threads(settings.threads)
    with tempfile.TemporaryDirectory(prefix="elp-peers-mem-") as tmp:
        variant = build_variant(key, settings, source, tmp)
        if variant is None:
            raise RuntimeError(PEFT_MISSING)
        batch = make_batch(settings)
        probe = _MemoryProbe(settings.device)
        probe.start()
        for _ in range(settings.warmup + 1):
            train_step(variant, settings, batch)
        return probe.stop()


def _measure_memory_isolated(settings: PeerSettings, key: str, source: Path) -> tuple[float, str]:
    payload = json.dumps({"settings": asdict(settings), "key": key, "source": str(source)})
    process = subprocess.run([sys.executable, "-m", "elp.bench.peers", payload], capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"peer memory worker for {key!r} failed (exit {process.returncode}):\n"
                           f"{process.stderr[-4000:]}")
    peak, kind = json.loads(process.stdout.strip().splitlines()[-1])
    return peak, kind


# --------------------------------------------------------------------------------- output
COLUMNS = [("variant", "variant"), ("learnable", "learnable"), ("forward_s", "forward s"),
           ("backward_s", "backward s"), ("optimizer_s", "optimizer s"), ("step_s", "step s"),
           ("step_vs_sb_full", "step vs SpeechBrain full FT"), ("peak_mib", "peak MiB"),
           ("memory_vs_sb_full", "memory vs SpeechBrain full FT"), ("lora", "LoRA tensors with gradient")]


def _cell(row: dict, key: str) -> str:
    if key == "lora":
        return "-" if row["lora_total"] is None else f"{row['lora_with_grad']} of {row['lora_total']}"
    value = row[key]
    if value is None:
        return "-"
    if key == "learnable":
        return f"{value:,}"
    if key in ("step_vs_sb_full", "memory_vs_sb_full"):
        return f"{value:.2f}"
    if key == "peak_mib":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_markdown(settings: PeerSettings, rows: list[dict], command: str | None = None) -> str:
    """The result table (markdown) with a header naming the machine, settings and load.

    Parameters
    ----------
    settings : PeerSettings
        The settings the rows were measured with.
    rows : list[dict]
        Output of :func:`run_peer_bench`.
    command : str | None, optional
        The command line that produced them.

    Returns
    -------
    str
        Markdown text.
    """
    first = rows[0]
    memory = (f"increment of a fresh subprocess per variant over its built model "
              f"({first.get('memory_kind', '')})" if settings.memory else "not measured")
    load = (f"load average {first['loadavg_start'][0]:.2f} at the start, {first['loadavg_end'][0]:.2f} at the end; "
            f"other processes kept {first['other_load']:.1f} cores busy while timing")
    lines = [f"# elp bench --peers: {settings.name}", "",
             f"- machine: {machine_description(settings.device)}; torch {torch.__version__}; "
             f"{first['threads']} threads; {load}",
             f"- backbone {settings.backbone} architecture, random weights saved in HF format"
             f"{', config overrides ' + json.dumps(settings.config_overrides) if settings.config_overrides else ''}; "
             f"batch {settings.batch_size} x {settings.duration:g} s, {settings.precision}, {settings.device}; "
             f"variants interleaved round by round in one process, medians of {settings.repeats} rounds "
             f"after {settings.warmup} warm-up rounds ({first['wall_s']:.0f} s in all)",
             f"- learnable: trained parameters besides the head (every variant: Linear({settings.num_classes}) "
             "per frame, mean pool, cross-entropy, Adam)",
             f"- peak memory: {memory}",
             "- LoRA tensors with gradient: tensors whose .grad is set and non-zero after one "
             "forward/backward following the timed rounds"]
    if command:
        lines.append(f"- command: `{command}`")
    lines += ["", "| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row, key) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(settings: PeerSettings, rows: list[dict], out_dir: str | os.PathLike,
                  command: str | None = None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<settings.name>.md`` and ``.json``.

    Parameters
    ----------
    settings : PeerSettings
        The settings the rows were measured with.
    rows : list[dict]
        Output of :func:`run_peer_bench`.
    out_dir : str | os.PathLike
        Output folder (created if missing).
    command : str | None, optional
        The command line that produced the rows.

    Returns
    -------
    tuple[Path, Path]
        The markdown and JSON files.
    """
    return bench_write_results(settings, rows, out_dir, command, formatter=format_markdown)


if __name__ == "__main__":  # memory worker: python -m elp.bench.peers '<json>'
    request = json.loads(sys.argv[1])
    print(json.dumps(measure_memory(PeerSettings(**request["settings"]), request["key"], request["source"])))
