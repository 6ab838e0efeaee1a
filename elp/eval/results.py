"""Experiment results: the ``results.json`` schema and writer, RESULTS.md rows, the summary.

Every number a recipe reports goes through :func:`write_results_json` (stage 5) and
:func:`append_results_line` (the recipe's RESULTS.md); ``recipes/summarize.py`` collects them
into one table, JSON and plot.

Usage::

    python recipes/summarize.py --exp-root egs [more roots...] --out exp/summary
    # -> exp/summary.md, exp/summary.json, exp/summary.png

``results.json`` schema (one file per trained and evaluated system, written by the recipe
at the end of its scoring stage; ``write_results_json`` validates and writes one)::

    {
      "benchmark": "ic",              # required: the recipe's benchmark name (free string)
      "corpus": "librispeech",        # required
      "backbone": "wavlm_base_plus",  # required
      "method": "elp",                # required: full, weighted_sum, conventional, lora,
                                      #   prefix, e_only, l_only, p_only, el, elp, ...
      "tag": "",                      # optional: run variant (seed, fold, test set, ...)
      "metric": {                     # required: the primary metric
        "name": "wer",                #   required
        "value": 12.3,                #   required, number (percent for wer/eer/accuracy)
        "higher_is_better": false,    #   required
        "chance": 100.0               #   optional (null): a trivial system's value
      },
      "extra_metrics": {"cer": 4.1},  # optional: name -> number (e.g. min_dcf, ua)
      "learnable_params": 1234567,    # required: int >= 0, trained parameters incl. head
      "train_wall_s": 3600.0,         # required: training wall-clock seconds
      "peak_mem_mb": 2048.0,          # required: peak memory in MB (GPU, else CPU RSS)
      "peak_host_rss_mb": 3100.0,     # optional: peak resident memory of the host process in MB
                                      #   (on every device, next to the accelerator's peak)
      "effective_batch": {            # optional: what one optimizer step saw (train_stats.json)
        "utterances_per_step": 61.2,  #   averages over an epoch: training utterances (and their
        "seconds_per_step": 420.5,    #   audio seconds after training crops) / optimizer steps
        "steps_per_epoch": 467, "world_size": 2, "grad_accumulation_factor": 1,
        "lr_scaling": "none", "lr_scale": 1.0, ...
      },
      "exp_dir": "exp/...",           # optional: where the run lives
      "date": "2026-01-31T12:00:00",  # optional: when it was scored
      "joint": ["er", "ic", "kws"]    # optional: the tasks trained together in one joint run
    }                                 #   (egs/multitask); tables show it after the tag

Unknown extra keys are kept. A malformed file stops the summary with an error naming the
file and the field (``--skip-invalid`` logs and skips such files instead, with a count).
When two files describe the same (benchmark, corpus, backbone, method, tag; a joint run's
tag carries its task set, :func:`tag_label`), the newest file wins and the older one is logged.

``append_results_line(results_md_path, result)`` keeps a recipe's RESULTS.md up to date:
one markdown row per (benchmark, corpus, backbone, method, tag), replaced in place on a rerun.

Examples
--------
>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> result = {"benchmark": "er", "corpus": "iemocap", "backbone": "wavlm_plus", "method": "elp",
...           "metric": {"name": "accuracy", "value": 70.5, "higher_is_better": True},
...           "learnable_params": 9_500_000, "train_wall_s": 5400.0, "peak_mem_mb": 8192.0}
>>> _ = write_results_json(root / "elp" / "results.json", result)
>>> loaded = load_results([root])
>>> [(r["method"], r["metric"]["value"], r["tag"]) for r in loaded]
[('elp', 70.5, '')]
>>> print(summary_markdown(loaded).splitlines()[0])
| benchmark | corpus | backbone | method | tag | metric | value | chance | other metrics | learnable params | share of backbone | train time | peak mem |
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from elp.runtime import configure_logging

logger = logging.getLogger("summarize")

METHOD_ORDER = ["full", "weighted_sum", "conventional", "lora", "prefix",
                "e_only", "l_only", "p_only", "el", "elp"]
KEY_FIELDS = ("benchmark", "corpus", "backbone", "method", "tag")
REQUIRED_STRINGS = ("benchmark", "corpus", "backbone", "method")
REQUIRED_NUMBERS = ("train_wall_s", "peak_mem_mb")
#: what stage 5 copies from ``train_stats.json`` into ``results.json`` besides the required numbers
TRAINING_RECORD_FIELDS = ("peak_host_rss_mb", "effective_batch")


def training_record(train_stats: dict) -> dict:
    """The fields of :data:`TRAINING_RECORD_FIELDS` that a ``train_stats.json`` holds.

    Examples
    --------
    >>> training_record({"peak_host_rss_mb": 812.5, "epochs": 3, "effective_batch": {"steps_per_epoch": 19}})
    {'peak_host_rss_mb': 812.5, 'effective_batch': {'steps_per_epoch': 19}}
    """
    return {key: train_stats[key] for key in TRAINING_RECORD_FIELDS if train_stats.get(key) is not None}


class ResultsError(ValueError):
    """A results.json that does not follow the schema (the message names file and field)."""


# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def validate_result(result: dict, source: str = "<result>") -> dict:
    """Check one result against the module's schema and return a normalised copy.

    The copy has tag "", chance None and extra_metrics {} where they are absent. ``source``
    names where the result comes from in errors.

    Raises
    ------
    ResultsError
        Naming ``source`` and the offending field.
    """
    def fail(message):
        raise ResultsError(f"{source}: {message} (see the schema in elp/eval/results.py)")

    if not isinstance(result, dict):
        fail("the top level must be a JSON object")
    out = dict(result)
    if "benchmark" not in out and "task" in out:  # results.json of elp 0.1 called it "task"
        out["benchmark"] = out.pop("task")
    for field in REQUIRED_STRINGS:
        if not isinstance(out.get(field), str) or not out[field]:
            fail(f"field '{field}' must be a non-empty string, got {out.get(field)!r}")
    tag = out.get("tag")
    out["tag"] = "" if tag is None else str(tag)
    metric = out.get("metric")
    if not isinstance(metric, dict):
        fail("field 'metric' must be an object {name, value, higher_is_better, chance}")
    metric = dict(metric)
    if not isinstance(metric.get("name"), str) or not metric["name"]:
        fail("field 'metric.name' must be a non-empty string")
    if not _is_number(metric.get("value")):
        fail(f"field 'metric.value' must be a finite number, got {metric.get('value')!r}")
    if not isinstance(metric.get("higher_is_better"), bool):
        fail("field 'metric.higher_is_better' must be true or false")
    chance = metric.get("chance")
    if chance is not None and not _is_number(chance):
        fail(f"field 'metric.chance' must be a number or null, got {chance!r}")
    metric["chance"] = chance
    out["metric"] = metric
    params = out.get("learnable_params")
    if not isinstance(params, int) or isinstance(params, bool) or params < 0:
        fail(f"field 'learnable_params' must be an integer >= 0, got {params!r}")
    for field in REQUIRED_NUMBERS:
        if not _is_number(out.get(field)) or out[field] < 0:
            fail(f"field '{field}' must be a number >= 0, got {out.get(field)!r}")
    extra = out.get("extra_metrics") or {}
    if not isinstance(extra, dict) or not all(_is_number(v) for v in extra.values()):
        fail("field 'extra_metrics' must map names to numbers")
    out["extra_metrics"] = extra
    joint = out.get("joint")
    if joint is not None and (not isinstance(joint, list) or not joint
                              or not all(isinstance(t, str) and t for t in joint)):
        fail(f"field 'joint' must be a non-empty list of task names, got {joint!r}")
    return out


def tag_label(result: dict) -> str:
    """The tag as tables show it: with ``[joint a+b+c]`` for a result of joint training.

    Examples
    --------
    >>> tag_label({"tag": "mini_elp", "joint": ["er", "ic", "kws"]}), tag_label({"tag": "mini_elp"})
    ('mini_elp [joint er+ic+kws]', 'mini_elp')
    """
    tag = str(result.get("tag") or "")
    joint = result.get("joint")
    return f"{tag} [joint {'+'.join(joint)}]".strip() if joint else tag


def write_results_json(path, result: dict) -> dict:
    """Validate ``result`` and write it as ``path`` (a results.json; its directory is created).

    Returns the normalised result as written, with ``date`` filled in when absent.

    Raises
    ------
    ResultsError
        If ``result`` does not follow the schema.
    """
    result = validate_result(result, str(path))
    result.setdefault("date", datetime.datetime.now().isoformat(timespec="seconds"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return result


def result_key(result: dict) -> tuple[str, ...]:
    """The identity of a result: its (benchmark, corpus, backbone, method, tag), absent ones ``""``.

    Examples
    --------
    >>> result_key({"benchmark": "kws", "corpus": "speech_commands", "backbone": "wavlm", "method": "lora"})
    ('kws', 'speech_commands', 'wavlm', 'lora', '')
    >>> result_key({"benchmark": "kws", "corpus": "speech_commands", "backbone": "wavlm", "method": "lora",
    ...             "tag": "t", "joint": ["ic", "kws"]})[-1]
    't [joint ic+kws]'
    """
    return tuple(tag_label(result) if field == "tag" else str(result.get(field) or "") for field in KEY_FIELDS)


def _sort_key(result: dict):
    method = result["method"]
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (result["benchmark"], result["corpus"], result["backbone"], rank, method, result["tag"])


# --------------------------------------------------------------------------------------
# Collecting
# --------------------------------------------------------------------------------------
def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path}: not valid JSON ({error})") from error


def load_results(roots: Iterable, skip_invalid: bool = False) -> list[dict]:
    """Read and validate every results.json under the folders ``roots`` (recursively).

    ``skip_invalid`` logs and skips malformed files instead of raising.

    Returns
    -------
    list[dict]
        The results sorted by benchmark, corpus, backbone, method (canonical order), tag;
        each has a ``source`` field with its file path.
    """
    by_key = {}
    skipped = duplicates = 0
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"--exp-root {root} does not exist")
        for path in sorted(root.rglob("results.json")):
            try:
                result = validate_result(_read_json(path), str(path))
            except ResultsError as error:
                if not skip_invalid:
                    raise
                logger.warning("skipping %s: %s", path, error)
                skipped += 1
                continue
            result["source"] = str(path)
            mtime = path.stat().st_mtime
            key = result_key(result)
            if key in by_key:
                duplicates += 1
                old_mtime, old = by_key[key]
                newer, older = (result, old) if mtime >= old_mtime else (old, result)
                logger.warning("%s and %s describe the same run %s; keeping the newer %s",
                               old["source"], path, key, newer["source"])
                if newer is old:
                    continue
            by_key[key] = (mtime, result)
    if skipped:
        logger.warning("skipped %d invalid results.json file(s)", skipped)
    if duplicates:
        logger.warning("dropped %d older duplicate result(s)", duplicates)
    return sorted((result for _, result in by_key.values()), key=_sort_key)


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------
def format_value(value: float | None) -> str:
    """A metric value as text: ``-`` for None, 4 decimals below 1, else 2.

    Examples
    --------
    >>> format_value(None), format_value(0.12345), format_value(12.345)
    ('-', '0.1235', '12.35')
    """
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"


def format_params(count: int) -> str:
    """A parameter count with thousands separators, and millions from 1M on.

    Examples
    --------
    >>> format_params(9_132_556)
    '9,132,556 (9.13M)'
    """
    if count >= 1_000_000:
        return f"{count:,} ({count / 1e6:.2f}M)"
    return f"{count:,}"


def format_duration(seconds: float) -> str:
    """A duration in s below 2 min, min below 2 h, else h.

    Examples
    --------
    >>> format_duration(90), format_duration(600), format_duration(9000)
    ('90 s', '10.0 min', '2.50 h')
    """
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def format_memory(megabytes: float) -> str:
    """A memory size given in MB, as text in MB below 1 GB, else GB.

    Examples
    --------
    >>> format_memory(512), format_memory(2048)
    ('512 MB', '2.00 GB')
    """
    return f"{megabytes / 1024:.2f} GB" if megabytes >= 1024 else f"{megabytes:.0f} MB"


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ").strip() or "-"


def _metric_label(result: dict) -> str:
    metric = result["metric"]
    return f"{metric['name']} {'↑' if metric['higher_is_better'] else '↓'}"


def _extras(result: dict) -> str:
    extra = result.get("extra_metrics") or {}
    return ", ".join(f"{name} {format_value(value)}" for name, value in sorted(extra.items()))


SUMMARY_COLUMNS = ["benchmark", "corpus", "backbone", "method", "tag", "metric", "value", "chance",
                   "other metrics", "learnable params", "share of backbone", "train time", "peak mem"]


def format_share(result: dict) -> str:
    """``learnable_params`` as a percentage of ``backbone_params`` (``-`` when unknown).

    Examples
    --------
    >>> format_share({"learnable_params": 9_132_556, "backbone_params": 94_381_936})
    '9.68%'
    """
    backbone = result.get("backbone_params")
    if not backbone:
        return "-"
    return f"{100.0 * result['learnable_params'] / backbone:.2f}%"


def summary_markdown(results: Sequence[dict]) -> str:
    """One markdown table (benchmark x method); the best value of each (benchmark, corpus, backbone,
    metric) group is bold when the group has several methods.

    ``results`` are validated ones (:func:`load_results`).
    """
    best = {}
    for result in results:
        group = (result["benchmark"], result["corpus"], result["backbone"], result["metric"]["name"])
        sign = 1 if result["metric"]["higher_is_better"] else -1
        best.setdefault(group, []).append(sign * result["metric"]["value"])
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |",
             "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|"]
    for result in results:
        metric = result["metric"]
        group = (result["benchmark"], result["corpus"], result["backbone"], metric["name"])
        sign = 1 if metric["higher_is_better"] else -1
        value = format_value(metric["value"])
        if len(best[group]) > 1 and sign * metric["value"] == max(best[group]):
            value = f"**{value}**"
        cells = [result["benchmark"], result["corpus"], result["backbone"], result["method"],
                 tag_label(result), _metric_label(result), value, format_value(metric["chance"]),
                 _extras(result), format_params(result["learnable_params"]), format_share(result),
                 format_duration(result["train_wall_s"]), format_memory(result["peak_mem_mb"])]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(results: Sequence[dict], png_path) -> None:
    """One subplot per benchmark: metric value vs learnable parameters (log x), one marker per
    method, each point labelled; chance level dashed.

    ``results`` are validated ones (:func:`load_results`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = sorted({r["benchmark"] for r in results})
    methods = sorted({r["method"] for r in results},
                     key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))
    markers = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p"]
    colors = plt.get_cmap("tab10")
    style = {m: (markers[i % len(markers)], colors(i % 10)) for i, m in enumerate(methods)}
    columns = min(3, max(1, len(benchmarks)))
    rows = math.ceil(max(1, len(benchmarks)) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    unplotted = 0
    for ax, benchmark in zip(axes.flat, benchmarks):
        benchmark_results = [r for r in results if r["benchmark"] == benchmark]
        several = {field: len({r[field] for r in benchmark_results}) > 1
                   for field in ("corpus", "backbone", "tag")}
        chances = set()
        for result in benchmark_results:
            if result["learnable_params"] <= 0:
                unplotted += 1
                continue
            marker, color = style[result["method"]]
            x, y = result["learnable_params"], result["metric"]["value"]
            ax.scatter([x], [y], marker=marker, color=color, s=50, zorder=3)
            label = result["method"] + "".join(
                f"/{result[f]}" for f in ("corpus", "backbone", "tag") if several[f] and result[f])
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            if result["metric"]["chance"] is not None:
                chances.add(result["metric"]["chance"])
        for chance in sorted(chances):
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1)
            ax.annotate("chance", (0.01, chance), xycoords=("axes fraction", "data"),
                        fontsize=7, color="grey", xytext=(0, 2), textcoords="offset points")
        names = sorted({_metric_label(r) for r in benchmark_results})
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded 2x10^4 labels
        ax.margins(x=0.2)
        ax.set_xlabel("learnable parameters")
        ax.set_ylabel(", ".join(names))
        ax.set_title(benchmark)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(benchmarks):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], linestyle="", marker=style[m][0], color=style[m][1], label=m)
               for m in methods]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10),
                   fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    if unplotted:
        logger.warning("%d result(s) with 0 learnable parameters left out of the log-x plot",
                       unplotted)


def summarize(roots: Sequence, out_prefix, skip_invalid: bool = False) -> list[dict]:
    """Write ``<out_prefix>.md``, ``.json`` and ``.png``; return the results.

    ``roots``, ``skip_invalid`` and the returned list are as in :func:`load_results`; a
    ``.md``/``.json``/``.png`` suffix of ``out_prefix`` is dropped.
    """
    results = load_results(roots, skip_invalid=skip_invalid)
    out_prefix = Path(out_prefix)
    if out_prefix.suffix in (".md", ".json", ".png"):
        out_prefix = out_prefix.with_suffix("")
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    md_path, json_path, png_path = (Path(f"{out_prefix}{ext}") for ext in (".md", ".json",
                                                                          ".png"))
    md_path.write_text(
        f"# Results summary\n\n{len(results)} result(s) from "
        f"{', '.join(str(r) for r in roots)}; "
        "↓ lower is better, ↑ higher is better, bold = best of its benchmark/corpus/backbone.\n\n"
        + summary_markdown(results), encoding="utf-8")
    json_path.write_text(json.dumps({
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "roots": [str(r) for r in roots],
        "num_results": len(results),
        "results": results,
    }, indent=2) + "\n", encoding="utf-8")
    plot_summary(results, png_path)
    logger.info("%d result(s) -> %s, %s, %s", len(results), md_path, json_path, png_path)
    return results


# --------------------------------------------------------------------------------------
# RESULTS.md of a recipe
# --------------------------------------------------------------------------------------
RESULTS_COLUMNS = ["benchmark", "corpus", "backbone", "method", "tag", "metric", "value",
                   "other metrics", "learnable params", "train time", "peak mem", "date"]
RESULTS_HEADER = "| " + " | ".join(RESULTS_COLUMNS) + " |"
RESULTS_RULE = "|" + "|".join("---" for _ in RESULTS_COLUMNS) + "|"


def _split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def append_results_line(results_md_path, result_dict: dict) -> str:
    """Add or update the row of ``result_dict`` in a recipe's RESULTS.md.

    One row per (benchmark, corpus, backbone, method, tag): a rerun replaces its row in place.
    The table (header and rule) is appended when the file or the table is absent; other
    content of the file is kept. The file is locked while it is rewritten. ``result_dict``
    is validated against the results.json schema. Returns the markdown row written.
    """
    result = validate_result(result_dict, f"result for {results_md_path}")
    date = result.get("date") or datetime.datetime.now().isoformat(timespec="seconds")
    cells = [result["benchmark"], result["corpus"], result["backbone"], result["method"],
             tag_label(result), _metric_label(result), format_value(result["metric"]["value"]),
             _extras(result), format_params(result["learnable_params"]),
             format_duration(result["train_wall_s"]), format_memory(result["peak_mem_mb"]),
             str(date)]
    cells = [_cell(c) for c in cells]
    row = "| " + " | ".join(cells) + " |"
    key = cells[:len(KEY_FIELDS)]
    path = Path(results_md_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)
        stream.seek(0)
        lines = stream.read().splitlines()
        try:
            header_at = lines.index(RESULTS_HEADER)
        except ValueError:
            if lines and lines[-1].strip():
                lines.append("")
            lines += [RESULTS_HEADER, RESULTS_RULE]
            header_at = len(lines) - 2
        end = header_at + 2
        while end < len(lines) and lines[end].lstrip().startswith("|"):
            end += 1
        for index in range(header_at + 2, end):
            if _split_row(lines[index])[:len(KEY_FIELDS)] == key:
                lines[index] = row
                break
        else:
            lines.insert(end, row)
        stream.seek(0)
        stream.truncate()
        stream.write("\n".join(lines) + "\n")
    return row


# --------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``recipes/summarize.py`` (``argv`` None: ``sys.argv[1:]``).

    Returns the exit status: 0, or 1 on a reported error or when no result was found.
    """
    parser = argparse.ArgumentParser(
        description="Summarise every results.json under the given roots into "
                    "<out>.md, <out>.json and <out>.png.")
    parser.add_argument("--exp-root", nargs="+", action="extend", required=True,
                        help="folders searched recursively for results.json (repeatable)")
    parser.add_argument("--out", default="exp/summary",
                        help="output prefix (default exp/summary)")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="log and skip malformed results.json instead of failing")
    args = parser.parse_args(argv)
    configure_logging("summarize.py")
    try:
        results = summarize(args.exp_root, args.out, skip_invalid=args.skip_invalid)
    except (FileNotFoundError, ResultsError) as error:
        logger.error("%s", error)
        return 1
    if not results:
        logger.error("no results.json found under %s", " ".join(args.exp_root))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def backbone_label(hparams: dict) -> str:
    """How results name a backbone: ``wavlm_plus``, ``wavlm_plus[tiny]`` (random weights of a
    named architecture) or ``wavlm_plus@<dir>`` (weights from a local directory).

    ``hparams`` holds ``backbone`` and optionally ``backbone_arch`` / ``backbone_source``.

    Examples
    --------
    >>> backbone_label({"backbone": "wavlm_plus"}), backbone_label({"backbone": "wavlm_plus", "backbone_arch": "tiny"})
    ('wavlm_plus', 'wavlm_plus[tiny]')
    """
    label = hparams["backbone"]
    if hparams.get("backbone_arch"):
        return f"{label}[{hparams['backbone_arch']}]"
    source = hparams.get("backbone_source")
    if source and Path(source).is_dir():
        return f"{label}@{Path(source).name}"
    return label
