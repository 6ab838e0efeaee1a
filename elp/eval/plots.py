"""Figures of a recipe run (stage 5) and of a model package (``elp inspect``).

Each ``plot_*`` function writes one PNG (matplotlib, Agg backend) to ``path``, creating its
parent directories, and returns that path; ``title`` replaces the default figure title.

* :func:`plot_training_curves` -- loss and validation metrics per epoch from SpeechBrain's
  ``train_log.txt``;
* :func:`plot_det_curve` -- SV detection error trade-off with the EER and minDCF points;
* :func:`plot_confusion_matrix` -- classification confusion matrix (row-normalised, counts
  printed);
* :func:`plot_wer_by_length` -- ASR WER per utterance-length bin;
* :func:`plot_layer_weights` -- softmax layer weights of L-adapters / weighted sum;
* :func:`plot_metric_vs_params` -- each task's metric against learnable parameters, mean and
  standard deviation over seeds (a protocol's comparison).

Examples
--------
>>> import tempfile, os
>>> log = os.path.join(tempfile.mkdtemp(), "train_log.txt")
>>> _ = open(log, "w").write(
...     "epoch: 1, lr_head: 5.00e-04 - train loss: 2.10 - valid loss: 1.90, valid error: 60.0\\n"
...     "epoch: 2, lr_head: 5.00e-04 - train loss: 1.50 - valid loss: 1.70, valid error: 45.0\\n")
>>> parse_train_log(log)["valid error"]
[60.0, 45.0]
>>> plot_training_curves(log, log.replace(".txt", ".png")).suffix
'.png'
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_FIELD = re.compile(r"^\s*(?P<key>[A-Za-z][\w ]*?)\s*:\s*(?P<value>[-+0-9.eE]+|nan|inf)\s*$")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def parse_train_log(path: str | os.PathLike) -> dict[str, list[float]]:
    """SpeechBrain ``FileTrainLogger`` lines -> statistic name -> values per epoch.

    Lines look like ``epoch: 1, lr_head: 5e-04 - train loss: 2.1 - valid loss: 1.9, valid wer: 80``;
    ``epoch loaded: ... - test ...`` lines are skipped. A resumed run's repeated epochs keep
    the last value. Statistic names are e.g. ``"train loss"``, ``"valid wer"`` (example in
    the module docstring).
    """
    rows: dict[int, dict[str, float]] = {}
    for line in Path(path).read_text().splitlines():
        if not line.startswith("epoch:"):
            continue
        fields = {}
        for part in re.split(r",| - ", line):
            match = _FIELD.match(part)
            if match:
                fields[match["key"].strip()] = float(match["value"])
        if "epoch" in fields:
            rows[int(fields.pop("epoch"))] = fields
    if not rows:
        raise ValueError(f"{path}: no 'epoch: N, ...' lines (is it a SpeechBrain train_log.txt?)")
    epochs = sorted(rows)
    keys = sorted({k for r in rows.values() for k in r})
    table = {"epoch": [float(e) for e in epochs]}
    for key in keys:
        table[key] = [rows[e].get(key, float("nan")) for e in epochs]
    return table


def plot_training_curves(train_log: str | os.PathLike, path: str | os.PathLike, title: str | None = None) -> Path:
    """Loss curves (left) and validation metrics (right) per epoch of a ``train_log.txt``.

    The log is read by :func:`parse_train_log` (example in the module docstring).
    """
    plt = _pyplot()
    table = parse_train_log(train_log)
    epochs = table["epoch"]
    losses = [k for k in table if k.endswith("loss")]
    metrics = [k for k in table if k not in losses and k != "epoch" and not k.startswith("lr")]
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(10 if metrics else 5, 3.6), squeeze=False)
    for key in losses:
        axes[0, 0].plot(epochs, table[key], marker="o", label=key)
    axes[0, 0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[0, 0].legend()
    if metrics:
        for key in metrics:
            axes[0, 1].plot(epochs, table[key], marker="o", label=key)
        axes[0, 1].set(xlabel="epoch", title="validation")
        axes[0, 1].legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def det_points(scores: Sequence[float], labels: Sequence[int]):
    """(P_fa, P_miss) at every threshold: what a DET curve draws.

    ``scores`` [N] are trial scores, ``labels`` [N] 1 = target, 0 = non-target.

    Returns
    -------
    p_fa : numpy.ndarray
        False-alarm rates (non-target score > threshold), one per distinct score.
    p_miss : numpy.ndarray
        Miss rates (target score <= threshold), one per distinct score.

    Raises
    ------
    ValueError
        Without both target and non-target trials.

    Examples
    --------
    >>> p_fa, p_miss = det_points([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    >>> p_fa.tolist(), p_miss.tolist()
    ([0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.5, 1.0])
    """
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    target, nontarget = np.sort(scores[labels == 1]), np.sort(scores[labels == 0])
    if target.size == 0 or nontarget.size == 0:
        raise ValueError("a DET curve needs target and non-target trials")
    thresholds = np.unique(scores)
    p_miss = np.searchsorted(target, thresholds, side="right") / target.size
    p_fa = 1.0 - np.searchsorted(nontarget, thresholds, side="right") / nontarget.size
    return p_fa, p_miss


def plot_det_curve(scores: Sequence[float], labels: Sequence[int], path: str | os.PathLike,
                   p_target: float = 0.01, title: str | None = None) -> Path:
    """DET curve on normal-deviate axes with the EER point and the minDCF operating point.

    ``scores`` and ``labels`` as in :func:`det_points`; ``p_target`` is the target prior of the
    minDCF point.

    Examples
    --------
    >>> import tempfile
    >>> plot_det_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], Path(tempfile.mkdtemp()) / "det.png").name
    'det.png'
    """
    from scipy.stats import norm

    from elp.eval.scoring import equal_error_rate, min_dcf

    plt = _pyplot()
    p_fa, p_miss = det_points(scores, labels)
    eps = 1e-4
    probit = lambda p: norm.ppf(np.clip(p, eps, 1 - eps))  # noqa: E731
    eer = equal_error_rate(scores, labels)
    dcf = min_dcf(scores, labels, p_target=p_target)
    s, lab = np.asarray(scores, dtype=float), np.asarray(labels)
    dcf_fa = float(np.mean(s[lab == 0] > dcf["threshold"]))
    dcf_miss = float(np.mean(s[lab == 1] <= dcf["threshold"]))
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    ax.plot(probit(p_fa), probit(p_miss), color="C0", label="DET")
    e = eer["eer"] / 100
    ax.plot([probit(e)], [probit(e)], "o", color="C3", label=f"EER {eer['eer']:.2f}%")
    ax.plot([probit(dcf_fa)], [probit(dcf_miss)], "s", color="C2",
            label=f"minDCF(p={p_target}) {dcf['min_dcf']:.3f}")
    ticks = [0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95]
    ax.set_xticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.plot(probit([eps, 1 - eps]), probit([eps, 1 - eps]), color="0.8", lw=0.8)
    lo = min(probit(0.0005), probit(max(min(dcf_fa, dcf_miss, e), eps)) - 0.2)
    hi = probit(0.98)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set(xlabel="false alarm rate (%)", ylabel="miss rate (%)", title=title or "DET")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion_matrix(references: Sequence[str], predictions: Sequence[str], path: str | os.PathLike,
                          labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Confusion matrix (rows = reference, colour = row-normalised rate, numbers = counts).

    ``labels`` gives the class order (default: the sorted labels seen); the default title is
    the accuracy.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "confusion.png"
    >>> plot_confusion_matrix(["a", "b", "b"], ["a", "a", "b"], out) == out
    True
    """
    plt = _pyplot()
    labels = list(labels) if labels is not None else sorted(set(references) | set(predictions))
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=int)
    for ref, hyp in zip(references, predictions):
        counts[index[ref], index[hyp]] += 1
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(3.5, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 30:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    accuracy = 100.0 * np.trace(counts) / max(counts.sum(), 1)
    ax.set(xlabel="predicted", ylabel="reference", title=title or f"accuracy {accuracy:.1f}%")
    fig.colorbar(image, ax=ax, fraction=0.046, label="rate per reference")
    return _save(fig, path)


def wer_by_length(refs: dict[str, str], hyps: dict[str, str], durations: dict[str, float],
                  num_bins: int = 5) -> list[dict]:
    """WER per utterance-duration bin (quantile bins).

    ``refs``, ``hyps`` and ``durations`` (seconds) are keyed by utterance id; a missing
    hypothesis counts as empty. The ``num_bins`` bins hold (nearly) equal utterance counts.

    Returns
    -------
    list[dict]
        Per bin, shortest first: ``lo`` and ``hi`` (seconds), ``wer`` (%) and ``num_utts``.

    Raises
    ------
    ValueError
        Without utterances.

    Examples
    --------
    >>> refs = {"u1": "a b", "u2": "a b", "u3": "c d"}
    >>> rows = wer_by_length(refs, {"u1": "a b", "u2": "a x", "u3": ""}, {"u1": 1.0, "u2": 2.0, "u3": 3.0},
    ...                      num_bins=2)
    >>> [(row["lo"], row["hi"], row["wer"], row["num_utts"]) for row in rows]
    [(1.0, 2.0, 25.0, 2), (3.0, 3.0, 100.0, 1)]
    """
    from elp.eval.scoring import word_error_rate

    utts = sorted(refs, key=lambda u: durations[u])
    if not utts:
        raise ValueError("no utterances to score")
    bins = np.array_split(np.array(utts, dtype=object), min(num_bins, len(utts)))
    rows = []
    for group in bins:
        group = list(group)
        result = word_error_rate({u: refs[u] for u in group}, {u: hyps.get(u, "") for u in group})
        rows.append({"lo": durations[group[0]], "hi": durations[group[-1]], "wer": result["wer"],
                     "num_utts": len(group)})
    return rows


def plot_wer_by_length(refs: dict[str, str], hyps: dict[str, str], durations: dict[str, float],
                       path: str | os.PathLike, num_bins: int = 5, title: str | None = None) -> Path:
    """Bar chart of WER per utterance-length bin; arguments as in :func:`wer_by_length`."""
    plt = _pyplot()
    rows = wer_by_length(refs, hyps, durations, num_bins)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    names = [f"{r['lo']:.1f}-{r['hi']:.1f}s\n({r['num_utts']})" for r in rows]
    bars = ax.bar(names, [r["wer"] for r in rows], color="C0")
    for bar, row in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{row['wer']:.1f}", ha="center",
                va="bottom", fontsize=8)
    ax.set(xlabel="utterance length (utterances)", ylabel="WER (%)", title=title or "WER by utterance length")
    return _save(fig, path)


def plot_layer_weights(weights: dict[str, Sequence[float]], path: str | os.PathLike, title: str | None = None,
                       first_layer: int = 0) -> Path:
    """Bar plot of softmax layer weights, one group of bars per model (name -> weights).

    ``first_layer`` is the layer number of the first weight (1 for L-adapters, which read
    layer outputs 1..L; 0 for a weighted sum that includes the input embedding).

    Examples
    --------
    >>> import tempfile
    >>> plot_layer_weights({"l_only": [0.2, 0.5, 0.3]}, Path(tempfile.mkdtemp()) / "w.png", first_layer=1).name
    'w.png'
    """
    plt = _pyplot()
    names = list(weights)
    num_layers = max(len(w) for w in weights.values())
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * num_layers + 2), 3.6))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = list(weights[name])
        ax.bar(np.arange(len(values)) + k * width - 0.4 + width / 2, values, width, label=name)
    ax.set_xticks(range(num_layers), [str(first_layer + i) for i in range(num_layers)])
    ax.set(xlabel="layer", ylabel="softmax weight", title=title or "learned layer weights")
    if len(names) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_metric_vs_params(rows: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """One panel per (task, metric): the metric against learnable parameters (log x), one marker
    per method with the standard deviation over seeds as an error bar.

    ``rows`` are dicts with ``label`` (the panel, e.g. the task), ``metric``,
    ``higher_is_better``, ``method``, ``learnable_params``, ``mean`` and ``std`` (None: no bar).
    Rows with no learnable parameter cannot sit on a log axis and are left out.

    Examples
    --------
    >>> import tempfile
    >>> rows = [{"label": "ic", "metric": "accuracy", "higher_is_better": True, "method": m,
    ...          "learnable_params": p, "mean": v, "std": 1.5} for m, p, v in [("full", 3e5, 74.0), ("elp", 6e4, 61.0)]]
    >>> plot_metric_vs_params(rows, Path(tempfile.mkdtemp()) / "cmp.png").name
    'cmp.png'
    """
    plt = _pyplot()
    panels = list(dict.fromkeys((r["label"], r["metric"]) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = plt.get_cmap("tab10")
    markers = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">"]
    columns = min(3, max(1, len(panels)))
    count = (max(1, len(panels)) + columns - 1) // columns
    fig, axes = plt.subplots(count, columns, figsize=(5.0 * columns, 3.8 * count), squeeze=False)
    for ax, (label, metric) in zip(axes.flat, panels):
        panel = [r for r in rows if (r["label"], r["metric"]) == (label, metric) and r["learnable_params"] > 0]
        for row in panel:
            k = methods.index(row["method"])
            ax.errorbar([row["learnable_params"]], [row["mean"]], yerr=None if row["std"] is None else [row["std"]],
                        fmt=markers[k % len(markers)], color=colors(k % 10), capsize=3, label=row["method"])
            ax.annotate(row["method"], (row["learnable_params"], row["mean"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        better = "higher" if panel and panel[0]["higher_is_better"] else "lower"
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # no crowded 3x10^4 labels
        ax.margins(x=0.25)
        ax.set(xlabel="learnable parameters", ylabel=f"{metric} ({better} is better)", title=label)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)

