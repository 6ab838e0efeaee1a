"""Inference cost of N tasks on one shared backbone vs N separate models.

Builds a random-weight backbone of the real architecture (nothing is downloaded), saves it
once as a checkpoint, writes one package per task (a classification head on each method),
then measures, each in a fresh subprocess (:func:`elp.bench.harness.run_isolated`):

* ``shared``: :class:`elp.serve.multitask.MultiTask` over the N packages (CNN once; one shared
  transformer pass for weighted_sum / l_only; own layers for E/P/LoRA methods);
* ``separate``: N :class:`elp.serve.inference.Predictor` objects, each with its own backbone.

Reports audio seconds processed per wall second (all N tasks done), the memory the loaded
models occupy (CPU: resident set after loading minus before; CUDA: allocated) against the
bound "one backbone + every task's learnable tensors", the peak during inference, and
ratios: cost of N tasks over one task (shared), and separate over shared.

With ``--memory``, it measures instead the peak memory of serving ONE input against its
length and the number of tasks (:func:`memory_worker`, each in a fresh process): one package
per task kind (speaker verification, classification, ASR; method ``el``) on inputs of
``--memory-seconds``, and ``--memory-tasks`` routed classification tasks against one on an input
of ``--memory-routed-seconds``. Long inputs are windowed (SV, classification) or chunked (ASR)
by the task's prediction path, so the peak should not grow with the length.

With ``--package-sets``, it measures given packages instead (e.g. the per-task packages of a
joint run with a shared encoder against the same tasks trained one by one), each set in both modes.

Usage::

    OMP_NUM_THREADS=2 elp bench-multitask                       # WavLM Base+ architecture
    elp bench-multitask --package-sets shared=a/adapters,b/adapters own=c/adapters,d/adapters
    elp bench-multitask --mixes l_only l_only,weighted_sum el,elp --duration 4 --repeats 3
    elp bench-multitask --tiny                                  # seconds, for a smoke test
    OMP_NUM_THREADS=2 elp bench-multitask --memory              # peak memory vs length and tasks
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from elp.bench.harness import run_isolated
from elp.runtime import peak_memory_mb
from elp.tasks import CLASSIFY

DEFAULT_MIXES = ["l_only", "l_only,weighted_sum", "l_only,weighted_sum,l_only,weighted_sum",
                 "el", "el,elp", "el,elp,el,elp", "l_only,weighted_sum,el,elp"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``elp bench-multitask`` to ``parser``."""
    parser.add_argument("--backbone", default="wavlm_plus")
    parser.add_argument("--tiny", action="store_true", help="tiny test architecture (smoke test)")
    parser.add_argument("--mixes", nargs="+", default=DEFAULT_MIXES, metavar="M1,M2,...",
                        help="task sets: comma-separated methods, one package per method")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per utterance")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $OMP_NUM_THREADS)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="markdown table (and .json next to it; default "
                        "exp/bench/multitask.md, with --memory exp/bench/serving_memory.md)")
    parser.add_argument("--memory", action="store_true",
                        help="measure peak memory of serving one input against its length and the task count")
    parser.add_argument("--memory-seconds", type=float, nargs="+", default=[30.0, 600.0], metavar="S",
                        help="--memory: input lengths per task kind")
    parser.add_argument("--memory-kinds", nargs="+", default=["sv", "classify", "asr"], metavar="KIND")
    parser.add_argument("--memory-tasks", type=int, default=4, help="--memory: routed tasks against one")
    parser.add_argument("--memory-routed-seconds", type=float, default=120.0)
    parser.add_argument("--package-sets", nargs="+", default=None, metavar="LABEL=DIR,DIR,...",
                        help="measure these package directories (one set per argument) instead of random packages")


def memory_worker(spec: dict) -> dict:
    """Measure the peak memory of serving one input in this process.

    ``spec`` holds ``dirs`` (packages), ``seconds`` (input length), ``threads`` (int or None)
    and ``device``.

    Returns
    -------
    dict
        ``loaded_mb`` (memory in use after loading), ``peak_mb`` (the process's peak while
        serving, loading included), ``run_peak_mb`` (the peak above ``loaded_mb``) and ``wall_s``.
    """
    import warnings

    import numpy as np
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from elp.serve.multitask import MultiTask

    tasks = MultiTask(spec["dirs"], device=spec["device"])
    wave = (np.random.default_rng(0).standard_normal(int(spec["seconds"] * 16000)) * 0.1).astype(np.float32)
    loaded = peak_memory_mb(spec["device"], reset=True)
    start = time.perf_counter()
    tasks.outputs([wave], sample_rate=16000, progress=False)
    return {"loaded_mb": loaded, "peak_mb": peak_memory_mb(spec["device"]),
            "run_peak_mb": peak_memory_mb(spec["device"]) - loaded, "wall_s": time.perf_counter() - start}


def run_memory(args: argparse.Namespace, threads: int | None) -> int:
    """Write and print the ``--memory`` report: peak memory against input length and routed task count."""
    import torch

    from elp.core.backbones import load_backbone
    from elp.core.presets import TINY_CONFIG
    from elp.serve.random_package import make_tiny_package

    rows = []
    with tempfile.TemporaryDirectory(prefix="elp_bench_mem_") as tmp:
        torch.manual_seed(0)
        ssl = load_backbone(args.backbone, pretrained=False, config_overrides=dict(TINY_CONFIG) if args.tiny else None)
        ckpt = Path(tmp) / "backbone"
        ssl.model.save_pretrained(ckpt)
        del ssl
        options = {} if args.tiny else {"l_dim": 256, "e_dim": 256}
        packages = {kind: make_tiny_package(Path(tmp) / kind, task=kind, method="el", backbone_dir=ckpt,
                                            backbone=args.backbone, **options) for kind in args.memory_kinds}
        routed = [make_tiny_package(Path(tmp) / f"routed{i}", task=CLASSIFY, method="el", backbone_dir=ckpt,
                                    backbone=args.backbone, seed=i, **options) for i in range(args.memory_tasks)]

        def measure(label, dirs, seconds):
            spec = dict(dirs=[str(d) for d in dirs], seconds=seconds, threads=threads, device=args.device)
            try:
                result = run_isolated("elp.commands.bench_multitask:memory_worker", {"spec": spec})
            except RuntimeError as err:
                raise SystemExit(f"elp bench-multitask: memory worker failed for {label} {seconds} s: {err}")
            rows.append({"label": label, "tasks": len(dirs), "seconds": seconds, **result})
            print(f"{label:12s} {len(dirs)} task(s) {seconds:7.1f} s: peak {result['peak_mb']:.0f} MiB "
                  f"(loaded {result['loaded_mb']:.0f}, run +{result['run_peak_mb']:.0f}) {result['wall_s']:.0f} s",
                  file=sys.stderr, flush=True)

        for kind, directory in packages.items():
            for seconds in args.memory_seconds:
                measure(kind, [directory], seconds)
        for count in (1, args.memory_tasks):
            measure("routed", routed[:count], args.memory_routed_seconds)
    lines = [f"Peak memory of serving one input (`elp bench-multitask --memory`): backbone {args.backbone}"
             f"{' (tiny)' if args.tiny else ''}, random weights, method el, {args.device}, threads "
             f"{threads or 'default'}; each row a fresh process. peak = the process's peak resident set while "
             "serving (loading included); ratio = peak / the first row of the same kind.", "",
             "| kind | tasks | input s | peak MiB | loaded MiB | run peak MiB | ratio | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    first: dict = {}
    for row in rows:
        base = first.setdefault(row["label"], row["peak_mb"])
        lines.append(f"| {row['label']} | {row['tasks']} | {row['seconds']:g} | {row['peak_mb']:.0f} "
                     f"| {row['loaded_mb']:.0f} | {row['run_peak_mb']:.0f} | {row['peak_mb'] / base:.2f} "
                     f"| {row['wall_s']:.0f} |")
    table = "\n".join(lines) + "\n"
    out = Path(args.out or "exp/bench/serving_memory.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows}, indent=2))
    print(table)
    return 0


def worker(spec: dict) -> dict:
    """Measure one (mix, mode) in this process.

    Parameters
    ----------
    spec
        ``dirs`` (package directories), ``mode`` (``"shared"``: one :class:`MultiTask`;
        ``"separate"``: one :class:`Predictor` per package), ``duration`` (seconds per
        utterance), ``batch_size``, ``warmup``, ``repeats``, ``threads`` (int or None) and
        ``device``.

    Returns
    -------
    dict
        ``audio_s_per_s`` and ``audio_s_per_cpu_s`` (best step), ``step_s``, ``model_mb``
        (memory of the loaded models), ``tensor_mb`` (their distinct tensor storages),
        ``run_peak_mb`` (peak during inference above them) and ``learnable_mb`` (shared mode:
        the tasks' learnable tensors; 0 otherwise).
    """
    import warnings

    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from elp.serve.inference import Predictor
    from elp.serve.multitask import MultiTask, unique_tensor_bytes

    device = spec["device"]
    dirs = spec["dirs"]
    import gc

    import elp.core.heads  # noqa: F401  (imports that loading pulls in are not model memory)
    from transformers import HubertModel, Wav2Vec2Model, WavLMModel  # noqa: F401

    gc.collect()
    before = peak_memory_mb(device, reset=True)  # memory in use now
    if spec["mode"] == "shared":
        tasks = MultiTask(dirs, device=device)
        run = lambda waves: tasks.forward_batch(waves)  # noqa: E731
        learnable = sum(tasks.learnable_tensor_bytes())
        tensors = tasks.tensor_bytes()
    else:
        predictors = [Predictor.from_package(d, device=device) for d in dirs]
        run = lambda waves: [p.forward_batch(waves) for p in predictors]  # noqa: E731
        learnable = 0
        tensors = unique_tensor_bytes([m for p in predictors for m in (p.package.model, p.package.head)])
    gc.collect()
    start_mem = peak_memory_mb(device, reset=True)
    loaded = start_mem - before  # the models as they sit in memory
    torch.manual_seed(0)
    samples = int(spec["duration"] * 16000)
    waves = [torch.randn(samples) * 0.1 for _ in range(spec["batch_size"])]
    for _ in range(spec["warmup"]):
        run(waves)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times, cpu_times = [], []
    for _ in range(spec["repeats"]):
        start, cpu_start = time.perf_counter(), time.process_time()
        run(waves)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    best = min(times)
    audio = spec["batch_size"] * spec["duration"]
    return {"audio_s_per_s": audio / best, "step_s": best, "audio_s_per_cpu_s": audio / min(cpu_times),
            "model_mb": loaded, "tensor_mb": tensors / 2**20, "run_peak_mb": peak_memory_mb(device) - start_mem,
            "learnable_mb": learnable / 2**20}


def _measure(spec: dict) -> dict:
    try:
        return run_isolated("elp.commands.bench_multitask:worker", {"spec": spec})
    except RuntimeError as err:
        raise SystemExit(f"elp bench-multitask: worker failed for {spec['mode']} {spec['dirs']}: {err}")


def build_packages(root: Path, backbone: str, tiny: bool, methods: set[str]) -> dict[str, Path]:
    """Write one classification package per method on one saved random backbone; return method -> directory.

    ``root`` receives ``backbone/`` and one package folder per method; ``tiny`` uses the tiny
    test architecture (:data:`elp.core.presets.TINY_CONFIG`) and tiny adapters.
    """
    import torch

    from elp.core.backbones import load_backbone
    from elp.core.presets import TINY_CONFIG
    from elp.serve.random_package import make_tiny_package

    torch.manual_seed(0)
    ssl = load_backbone(backbone, pretrained=False, config_overrides=dict(TINY_CONFIG) if tiny else None)
    ckpt = root / "backbone"
    ssl.model.save_pretrained(ckpt)
    del ssl
    options = {} if tiny else {"l_dim": 256, "e_dim": 256, "prompt_frames": 10}
    return {method: make_tiny_package(root / method, task=CLASSIFY, method=method, backbone_dir=ckpt,
                                      backbone=backbone, seed=i, **options)
            for i, method in enumerate(sorted(methods))}


def run(args: argparse.Namespace) -> int:
    """Measure every mix in both modes, print and write the table (see the module docstring), return 0.

    Raises
    ------
    SystemExit
        If a worker process fails.

    Examples
    --------
    One measurement in this process on the tiny architecture (figures depend on the machine):

    >>> packages = build_packages(Path(tempfile.mkdtemp()), "wavlm", True, {"l_only", "el"})
    >>> sorted(packages)
    ['el', 'l_only']
    >>> spec = dict(dirs=[str(packages["l_only"]), str(packages["el"])], mode="shared", duration=0.5,
    ...             batch_size=1, warmup=0, repeats=1, threads=1, device="cpu")
    >>> sorted(worker(spec))
    ['audio_s_per_cpu_s', 'audio_s_per_s', 'learnable_mb', 'model_mb', 'run_peak_mb', 'step_s', 'tensor_mb']
    """
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None
    if args.memory:
        return run_memory(args, threads)
    if args.package_sets:
        return run_package_sets(args, threads)
    mixes = [m.split(",") for m in args.mixes]
    rows = []
    with tempfile.TemporaryDirectory(prefix="elp_bench_mt_") as tmp:
        packages = build_packages(Path(tmp), args.backbone, args.tiny, {m for mix in mixes for m in mix})
        backbone_mb = sum(f.stat().st_size for f in (Path(tmp) / "backbone").glob("*.safetensors")) / 2**20
        single = {}
        for mix in mixes:
            dirs = [str(packages[m]) for m in mix]
            result = {"mix": ",".join(mix), "n": len(mix)}
            for mode in ("shared", "separate"):
                spec = dict(dirs=dirs, mode=mode, duration=args.duration, batch_size=args.batch_size,
                            warmup=args.warmup, repeats=args.repeats, threads=threads, device=args.device)
                result[mode] = _measure(spec)
                print(f"{result['mix']:45s} {mode:8s} {result[mode]['audio_s_per_s']:8.2f} audio s/s "
                      f"models {result[mode]['model_mb']:8.0f} MB, run peak +{result[mode]['run_peak_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
            if len(mix) == 1:
                single[mix[0]] = result["shared"]
            rows.append(result)
    table = format_table(rows, single, backbone_mb, args, threads)
    out = Path(args.out or "exp/bench/multitask.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "backbone_mb": backbone_mb}, indent=2))
    print(table)
    return 0


def parse_package_sets(items: list[str]) -> list[tuple[str, list[str]]]:
    """``LABEL=DIR,DIR,...`` arguments -> (label, directories), in order.

    Raises
    ------
    SystemExit
        For an argument without ``=`` or a directory without ``package.json``.

    Examples
    --------
    >>> parse_package_sets(["a=x,y"])
    Traceback (most recent call last):
    ...
    SystemExit: elp bench-multitask: --package-sets a=x,y: x has no package.json (pass model package directories)
    """
    sets = []
    for item in items:
        label, sep, dirs = item.partition("=")
        if not sep or not label or not dirs:
            raise SystemExit(f"elp bench-multitask: --package-sets {item}: expected LABEL=DIR,DIR,...")
        directories = dirs.split(",")
        for directory in directories:
            if not (Path(directory) / "package.json").is_file():
                raise SystemExit(f"elp bench-multitask: --package-sets {item}: {directory} has no package.json "
                                 "(pass model package directories)")
        sets.append((label, directories))
    return sets


def run_package_sets(args: argparse.Namespace, threads: int | None) -> int:
    """Measure every ``--package-sets`` set in both modes; print and write the table; return 0."""
    from elp.serve.package import read_package_config

    rows = []
    sets = parse_package_sets(args.package_sets)
    for label, dirs in sets:
        result = {"mix": label, "n": len(dirs)}
        for mode in ("shared", "separate"):
            spec = dict(dirs=dirs, mode=mode, duration=args.duration, batch_size=args.batch_size,
                        warmup=args.warmup, repeats=args.repeats, threads=threads, device=args.device)
            result[mode] = _measure(spec)
            print(f"{label:45s} {mode:8s} {result[mode]['audio_s_per_s']:8.2f} audio s/s", file=sys.stderr, flush=True)
        rows.append(result)
    entry = read_package_config(sets[0][1][0])["backbone"]
    folder = Path(sets[0][1][0]) / entry["stored"] if entry.get("stored") else Path(entry.get("source") or ".")
    backbone_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
    table = format_table(rows, {}, backbone_mb, args, threads)
    out = Path(args.out or "exp/bench/multitask_packages.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "sets": sets, "backbone_mb": backbone_mb}, indent=2))
    print(table)
    return 0


def format_table(rows, single, backbone_mb, args, threads) -> str:
    """Return the markdown report of :func:`run` (ending with a newline).

    Parameters
    ----------
    rows : list[dict]
        Per mix: ``mix``, ``n`` and the :func:`worker` results under ``shared`` and ``separate``.
    single : dict[str, dict]
        Method -> shared result of its one-task mix (for "cost vs 1 task").
    backbone_mb : float
        Size of the backbone's weight files in MiB.
    args : argparse.Namespace
        The command's options (backbone, tiny, device, batch size, duration, repeats, warmup).
    threads : int | None
        Torch threads the workers used.
    """
    arch = f"{args.backbone}{' (tiny)' if args.tiny else ''}, random weights"
    if getattr(args, "package_sets", None):
        arch = "of the given packages"
    lines = [f"Backbone {arch} ({backbone_mb:.0f} MiB of weights), {args.device}, threads {threads or 'default'}, "
             f"batch {args.batch_size} x {args.duration:g} s, best of {args.repeats} after {args.warmup} warm-up.",
             "",
             "* audio s/s: seconds of audio per wall second with ALL N tasks done (in brackets: per CPU second of",
             "  the process, which a busy shared machine disturbs far less; the ratios use it on CPU);",
             "* separate time / shared time: N separate models over one shared backbone;",
             "* cost vs 1 task: time of the N tasks (shared) / time of the mix's first method alone (shared);",
             "* models MiB: memory the loaded models occupy (RSS after loading minus before; CUDA: allocated);",
             "  bound = backbone weights + all tasks' learnable tensors (what one backbone + N tasks should cost);",
             "* shared tensors MiB: the distinct tensor storages the shared models hold (the bound in tensor terms;",
             "  models MiB above it is allocator and Python overhead);",
             "* run peak MiB: peak memory during inference above the loaded models.", "",
             "| tasks | N | shared audio s/s | separate audio s/s | separate time / shared time | cost vs 1 task "
             "| shared models MiB | shared tensors MiB | separate models MiB | bound MiB | shared run peak MiB "
             "| separate run peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        shared, separate = row["shared"], row["separate"]
        first = single.get(row["mix"].split(",")[0])
        key = "audio_s_per_cpu_s" if args.device == "cpu" else "audio_s_per_s"
        cost = f"{first[key] / shared[key]:.2f}x" if first else "-"
        bound = backbone_mb + shared["learnable_mb"]
        lines.append(f"| {row['mix']} | {row['n']} | {shared['audio_s_per_s']:.2f} ({shared.get('audio_s_per_cpu_s', 0):.2f}) "
                     f"| {separate['audio_s_per_s']:.2f} ({separate.get('audio_s_per_cpu_s', 0):.2f}) "
                     f"| {shared[key] / separate[key]:.2f}x | {cost} | {shared['model_mb']:.0f} "
                     f"| {shared.get('tensor_mb', float('nan')):.0f} "
                     f"| {separate['model_mb']:.0f} | {bound:.0f} | {shared['run_peak_mb']:.0f} "
                     f"| {separate['run_peak_mb']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
