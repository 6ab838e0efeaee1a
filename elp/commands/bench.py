"""Training-cost benchmark of every method: step time, peak memory, ratios against full.

Builds the backbone from its config with random weights (nothing is downloaded), attaches
each method and a small classification head, and times forward / backward / optimizer over
a few steps. Each variant runs in a fresh subprocess. Writes markdown and JSON to
``<out-dir>/<backbone>_<device>_<precision>_b<B>x<dur>s.{md,json}`` and prints the table.

Variants: a method name, optionally with ``+ckpt`` (activation checkpointing), ``+k<N>``
(E-adapters and trainable LNs from layer N up; lower layers without autograd), ``+cache``
(weighted_sum / l_only reading cached hidden states: the cost after epoch 1), and the recipe
speed options ``+cnncache`` (CNN features cached), ``+sdpa`` (WavLM attention through SDPA) and
``+bf16w`` (frozen weights held in bf16; with ``--precision bf16``).

With ``--peers`` the rows of peer toolkits come first (:mod:`elp.bench.sources.peer_variants`):
SpeechBrain's own WavLM wrapper (full fine-tuning, CNN frozen; frozen ``WeightedSSLModel``) and
HF PEFT LoRA (optional extra: ``pip install -e .[peers]``), then elp's methods (``--methods``,
default full weighted_sum lora el elp), all on one locally saved random WavLM checkpoint
(``--source``: an existing one), interleaved round by round in one process; ratios against
SpeechBrain's full fine-tuning; peak memory from one run per variant. Writes
``<out-dir>/peers_<...>.{md,json}``. Both use the one harness of :mod:`elp.bench.harness`, with
the same columns.

Usage::

    OMP_NUM_THREADS=2 elp bench --batch-size 4 --duration 3 --precision bf16
    elp bench --peers --threads 2 --batch-size 4 --duration 3 --precision fp32 bf16
    elp bench --methods full el el+ckpt el+k6 l_only+cache --repeats 3
    elp bench --device cuda --batch-size 8 --duration 16 --precision bf16
    elp bench --peers --device cuda --precision bf16 --methods el el+sdpa+cnncache+bf16w
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
from pathlib import Path

from elp.bench.harness import BenchSettings, Candidate, format_markdown, run_bench, write_results
from elp.bench.sources import elp_variants, peer_variants
from elp.core.backbones import BACKBONES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``elp bench`` to ``parser``."""
    parser.add_argument("--backbone", default="wavlm_plus", choices=list(BACKBONES))
    parser.add_argument("--tiny", action="store_true",
                        help="use the tiny test architecture (elp.core.presets.TINY_CONFIG) of the backbone")
    parser.add_argument("--methods", nargs="+", default=None, metavar="VARIANT",
                        help="methods/variants to run (default: all methods + weighted_sum+cache, l_only+cache; "
                             f"with --peers: {' '.join(peer_variants.DEFAULT_ELP_METHODS)}); without --peers, full "
                             "always runs, first")
    parser.add_argument("--peers", action="store_true",
                        help="peer benchmark: SpeechBrain's WavLM wrappers and HF PEFT LoRA next to elp's "
                             "methods, interleaved in one process, ratios against SpeechBrain full FT")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory measurement")
    parser.add_argument("--source", default=None,
                        help="a HF checkpoint directory every variant loads (default: random weights; "
                             "with --peers a random WavLM checkpoint saved to a temporary directory)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per utterance")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                        help="bf16 = torch.autocast(bfloat16) around forward and loss; several: one run each")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per worker (default: $OMP_NUM_THREADS / PyTorch's default)")
    parser.add_argument("--profile", action="store_true", help="add each variant's top operators to the report")
    parser.add_argument("--in-process", action="store_true",
                        help="run every measurement in this process (faster; peak memory less reliable)")
    parser.add_argument("--max-other-load", type=float, default=0.25,
                        help="re-measure when other processes kept more CPU cores busy than this")
    parser.add_argument("--retries", type=int, default=2, help="re-measurements per disturbed measurement")
    parser.add_argument("--out-dir", default="exp/bench")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or the peer benchmark) once per precision; print and write the tables.

    Raises
    ------
    SystemExit
        On a non-positive size or count, a bad variant label or a missing ``--source``.

    Examples
    --------
    The tiny architecture, in this process (the table's figures depend on the machine):

    >>> import contextlib, io, tempfile
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> args = parser.parse_args(["--backbone", "wavlm", "--tiny", "--methods", "l_only", "--batch-size", "1",
    ...                           "--duration", "0.5", "--warmup", "0", "--repeats", "1", "--threads", "1",
    ...                           "--in-process", "--retries", "0", "--out-dir", tempfile.mkdtemp()])
    >>> with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
    ...     status = run(args)
    >>> status, out.getvalue().splitlines()[0]
    (0, '# elp bench: wavlm_custom_cpu_fp32_b1x0.5s')
    >>> run(parser.parse_args(["--batch-size", "0"]))
    Traceback (most recent call last):
    ...
    SystemExit: elp bench: --batch-size must be positive (got 0)
    """
    overrides = {}
    if args.tiny:
        from elp.core.presets import TINY_CONFIG

        overrides = dict(TINY_CONFIG)
    for name, value in (("--batch-size", args.batch_size), ("--duration", args.duration),
                        ("--repeats", args.repeats)):
        if value <= 0:
            raise SystemExit(f"elp bench: {name} must be positive (got {value})")
    command = _command_line()
    with tempfile.TemporaryDirectory(prefix="elp-bench-checkpoint-") as tmp:
        source = args.source
        try:
            if args.peers:
                source = source or peer_variants.save_random_checkpoint(
                    Path(tmp) / "wavlm", args.backbone, overrides)
                peer_variants.check_checkpoint(source)
            for precision in args.precision:
                settings = BenchSettings(
                    backbone=args.backbone, config_overrides=overrides, batch_size=args.batch_size,
                    duration=args.duration, precision=precision, device=args.device, warmup=args.warmup,
                    repeats=args.repeats, threads=args.threads, profile=args.profile, memory=not args.no_memory,
                    source=str(source) if source else None, tag="peers" if args.peers else "",
                    interleave=args.peers, isolate=not args.in_process, max_other_load=args.max_other_load,
                    retries=args.retries)
                if args.peers:
                    candidates = (peer_variants.candidates(log=_log)
                                  + elp_variants.candidates(args.methods or peer_variants.DEFAULT_ELP_METHODS,
                                                            precision, prefix="elp "))
                else:
                    candidates = elp_variants.candidates(args.methods, precision, full_first=True)
                rows = run_bench(settings, with_frozen_forwards(candidates), log=_log)
                markdown, json_file = write_results(settings, rows, args.out_dir, command)
                print(format_markdown(settings, rows, command))
                print(f"wrote {markdown} and {json_file}", file=sys.stderr)
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"elp bench{' --peers' if args.peers else ''}: {err}")
    return 0


def with_frozen_forwards(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates, each elp variant naming the row of its frozen forward (``Candidate.frozen_forward``).

    An elp variant's frozen forward is the ``weighted_sum`` row with the same ``+cnncache``,
    ``+sdpa`` and ``+bf16w`` flags: its step is one forward of the same backbone path without
    autograd (plus the head). Rows that read cached hidden states (``+cache``) and peer rows
    get none; neither does a variant whose ``weighted_sum`` counterpart is not among the
    candidates.

    Examples
    --------
    >>> rows = with_frozen_forwards(elp_variants.candidates(
    ...     ["el+sdpa+cnncache", "weighted_sum+cnncache+sdpa", "weighted_sum", "el+ckpt", "el+cnncache",
    ...      "l_only+cache"], "fp32"))
    >>> for row in rows:
    ...     print(row.key, "->", row.frozen_forward)
    el+sdpa+cnncache -> weighted_sum+cnncache+sdpa
    weighted_sum+cnncache+sdpa -> weighted_sum+cnncache+sdpa
    weighted_sum -> weighted_sum
    el+ckpt -> weighted_sum
    el+cnncache -> None
    l_only+cache -> None
    """
    def forward_path(variant):
        return variant.cnn_cache, variant.sdpa, variant.bf16_weights

    variants = {c.key: elp_variants.parse_variant(c.key) for c in candidates if c.source == elp_variants.__name__}
    frozen = {}
    for key, variant in variants.items():
        if (variant.method == "weighted_sum" and not variant.cache and not variant.activation_checkpointing
                and not variant.e_first_layer):
            frozen.setdefault(forward_path(variant), key)
    return [dataclasses.replace(c, frozen_forward=None if c.key not in variants or variants[c.key].cache
                                else frozen.get(forward_path(variants[c.key])))
            for c in candidates]


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _command_line() -> str | None:
    return "elp bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
