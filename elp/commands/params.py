"""Learnable parameters per method for a backbone config (no weights needed).

What each method counts is documented in :mod:`elp.core.methods`; ``full`` counts the transformer
layers and the encoder LayerNorm (CNN, feature projection and positional conv stay frozen).
The task head is not counted.
"""

from __future__ import annotations

import argparse
import json

from elp.core.backbones import BACKBONES
from elp.core.methods import METHODS, default_options
from elp.core.params import parameter_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``elp params`` to ``parser``."""
    parser.add_argument("--backbone", nargs="+", default=["wavlm_plus"], choices=list(BACKBONES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    defaults = default_options()  # the adapter kinds' own defaults
    parser.add_argument("--prompt-frames", type=int, default=defaults["prompt_frames"], help="K of the P-adapter")
    parser.add_argument("--prefix-frames", type=int, default=defaults["prefix_frames"], help="K of prefix tuning")
    parser.add_argument("--lora-rank", type=int, default=defaults["lora_rank"], help="r of LoRA")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--options", action="store_true",
                        help="list the method options (method_options in a recipe) and their defaults instead")


def format_table(rows: list[dict]) -> str:
    """Markdown table: backbone, method, learnable total and per-group counts.

    Parameters
    ----------
    rows
        Rows of :func:`elp.core.params.parameter_table` (``backbone``, ``method``, ``total``,
        ``groups``).

    Returns
    -------
    str
        The table, one column per group that any row has.

    Examples
    --------
    >>> print(format_table([{"backbone": "b", "method": "m", "total": 1200, "groups": {"e": 1200}}]))
    | backbone | method | learnable | e |
    |---|---|---|---|
    | b | m | 1,200 | 1,200 |
    """
    groups = list(dict.fromkeys(g for row in rows for g in row["groups"]))
    header = ["backbone", "method", "learnable", *groups]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["backbone"], row["method"], f"{row['total']:,}"]
        cells += [f"{row['groups'][g]:,}" if g in row["groups"] else "" for g in groups]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the parameter table (markdown, or JSON with ``--json``).

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> run(parser.parse_args(["--backbone", "hubert", "--methods", "weighted_sum", "l_only"]))
    | backbone | method | learnable | l |
    |---|---|---|---|
    | hubert | weighted_sum | 13 | 13 |
    | hubert | l_only | 4,737,036 | 4,737,036 |
    0
    """
    if args.options:
        print(options_table())
        return 0
    for flag, value in (("--prompt-frames", args.prompt_frames), ("--prefix-frames", args.prefix_frames),
                        ("--lora-rank", args.lora_rank)):
        if value < 1:
            raise SystemExit(f"elp params: {flag} {value}: must be at least 1")
    rows = parameter_table(args.backbone, args.methods, prompt_frames=args.prompt_frames,
                           prefix_frames=args.prefix_frames, lora_rank=args.lora_rank)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def options_table() -> str:
    """Markdown table of every option a recipe's ``method_options`` takes, with its default: the
    adapter kinds' options (:func:`elp.core.methods.default_options`) and the runtime knobs of
    :class:`elp.core.model.AdaptedSSL`, which change speed or memory but not what is learned.

    Examples
    --------
    >>> print(options_table().splitlines()[2])
    | activation | gelu | adapter kinds |
    """
    from elp.core.model import RUNTIME_KNOBS

    lines = ["| option | default | declared by |", "|---|---|---|"]
    for name, value in default_options().items():
        shown = ", ".join(value) if isinstance(value, (list, tuple)) else value
        lines.append(f"| {name} | {shown} | adapter kinds |")
    for name, value in RUNTIME_KNOBS.items():
        lines.append(f"| {name} | {value} | runtime knob |")
    return "\n".join(lines)
