"""Paired significance tests of two systems scored on the same test items.

:func:`paired_bootstrap` draws the test items with replacement (the same draw for both
systems, so the comparison is paired), recomputes each system's metric on every draw, and
reports the observed difference, its confidence interval and a two-sided p-value. Each
statistic takes per-item columns and is evaluated on *weights* (how often each item was
drawn), so a draw never copies the items:

============== ================================== ==========================================
statistic      item columns                        value
============== ================================== ==========================================
``wer``        word errors, reference words        100 * sum(errors) / sum(words)
``accuracy``   correct (1/0)                       100 * mean(correct)
``ua``         correct (1/0), class index          mean over the classes present of the recall
``eer``        score, label (1 target, 0 non)      equal error rate in percent (over trials)
============== ================================== ==========================================

At unit weights each statistic equals the corresponding scorer of :mod:`elp.eval.scoring`
(``eer`` uses the same candidate thresholds and tie rule as
:func:`elp.eval.scoring.equal_error_rate`).

Strata (e.g. one per seed and fold) are drawn independently; the value of a system is the mean
over strata of its metric, so with one stratum per seed it is the mean over seeds that a
results table reports.

The p-value is that of the shifted (null-centred) bootstrap: the share of draws whose
difference lies at least as far from the observed difference as the observed difference lies
from zero, ``(1 + #{|d* - d| >= |d|}) / (1 + resamples)``. Identical systems give p = 1.

Examples
--------
>>> import numpy as np
>>> a = np.array([1, 0, 1, 1, 0, 1, 1, 1] * 25)      # 75 % correct
>>> b = np.array([1, 1, 1, 1, 1, 1, 1, 0] * 25)      # 87.5 % correct
>>> test = paired_bootstrap(a, b, "accuracy", resamples=2000, seed=0)
>>> round(test.value_a, 1), round(test.value_b, 1), round(test.difference, 1), test.p_value < 0.01
(75.0, 87.5, 12.5, True)
>>> paired_bootstrap(a, a, "accuracy", resamples=200).p_value
1.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def _columns(items: np.ndarray, count: int, name: str) -> list[np.ndarray]:
    items = np.asarray(items, dtype=np.float64)
    if items.ndim == 1:
        items = items[:, None]
    if items.ndim != 2 or items.shape[1] != count:
        raise ValueError(f"{name} takes items [N, {count}], got shape {tuple(items.shape)}")
    return [items[:, k] for k in range(count)]


def wer_statistic(items: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Word error rate (percent) of weighted utterances.

    Parameters
    ----------
    items
        [N, 2]: word errors (insertions + deletions + substitutions) and reference words of
        each utterance.
    weights
        [B, N]: how often each utterance counts in each of B draws.

    Returns
    -------
    numpy.ndarray
        [B] WER of each draw.

    Examples
    --------
    >>> wer_statistic(np.array([[1, 4], [0, 6]]), np.array([[1, 1], [2, 0]]))
    array([10., 25.])
    """
    errors, words = _columns(items, 2, "wer")
    return 100.0 * (weights @ errors) / np.maximum(weights @ words, 1e-12)


def accuracy_statistic(items: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Accuracy (percent) of weighted items.

    Parameters
    ----------
    items
        [N] or [N, 1]: 1 where the item is classified correctly, else 0.
    weights
        [B, N] draw counts.

    Returns
    -------
    numpy.ndarray
        [B] accuracy of each draw.

    Examples
    --------
    >>> accuracy_statistic(np.array([1, 0, 1, 1]), np.ones((1, 4)))
    array([75.])
    """
    (correct,) = _columns(items, 1, "accuracy")
    return 100.0 * (weights @ correct) / np.maximum(weights.sum(axis=1), 1e-12)


def unweighted_accuracy_statistic(items: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Unweighted accuracy (percent): the mean over classes of the per-class recall.

    A class with no weight in a draw is left out of that draw's mean, as
    :func:`elp.eval.scoring.unweighted_accuracy` leaves out classes absent from the targets.

    Parameters
    ----------
    items
        [N, 2]: correct (1/0) and the reference class index of each item.
    weights
        [B, N] draw counts.

    Returns
    -------
    numpy.ndarray
        [B] unweighted accuracy of each draw.

    Examples
    --------
    >>> items = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 1]])   # class 0: 3/3, class 1: 1/2
    >>> unweighted_accuracy_statistic(items, np.ones((1, 5)))
    array([75.])
    """
    correct, classes = _columns(items, 2, "ua")
    recalls = []
    for cls in np.unique(classes):
        member = classes == cls
        total = weights[:, member].sum(axis=1)
        hits = weights[:, member] @ correct[member]
        recalls.append(np.where(total > 0, hits / np.where(total > 0, total, 1.0), np.nan))
    return 100.0 * np.nanmean(np.stack(recalls, axis=1), axis=1)


def eer_statistic(items: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Equal error rate (percent) of weighted verification trials.

    The candidate thresholds are the distinct scores (a miss: target score <= threshold; a
    false alarm: non-target score > threshold); at the first threshold where
    |P_fa - P_miss| is smallest the EER is (P_fa + P_miss) / 2, as in
    :func:`elp.eval.scoring.equal_error_rate` (whose midpoint thresholds give the same rates
    as the score below them). O(N) per draw after one sort.

    Parameters
    ----------
    items
        [N, 2]: score and label (1 target trial, 0 non-target trial) of each trial.
    weights
        [B, N] draw counts.

    Returns
    -------
    numpy.ndarray
        [B] EER of each draw.

    Examples
    --------
    >>> trials = np.array([[0.9, 1], [0.8, 1], [0.6, 1], [0.3, 1], [0.7, 0], [0.4, 0], [0.2, 0], [0.1, 0]])
    >>> eer_statistic(trials, np.ones((1, 8)))
    array([25.])
    """
    scores, labels = _columns(items, 2, "eer")
    if not np.isin(labels, [0, 1]).all():
        raise ValueError("eer: labels must be 1 (target trial) or 0 (non-target trial)")
    order = np.argsort(scores, kind="stable")
    sorted_scores, target = scores[order], labels[order] == 1
    w = weights[:, order]
    target_le = np.cumsum(w * target, axis=1)   # weight of target trials scoring <= each score
    all_le = np.cumsum(w, axis=1)
    last = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]  # the last trial of each distinct score
    if not last.all():
        target_le, all_le = target_le[:, last], all_le[:, last]
    nontarget_le = all_le - target_le
    p_miss = target_le / np.maximum(target_le[:, -1:], 1e-12)
    p_fa = 1.0 - nontarget_le / np.maximum(nontarget_le[:, -1:], 1e-12)
    best = np.argmin(np.abs(p_fa - p_miss), axis=1)
    rows = np.arange(w.shape[0])
    return 100.0 * (p_fa[rows, best] + p_miss[rows, best]) / 2


#: statistic name -> function(items, weights [B, N]) -> [B]
STATISTICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "wer": wer_statistic,
    "accuracy": accuracy_statistic,
    "ua": unweighted_accuracy_statistic,
    "eer": eer_statistic,
}

#: what one bootstrap item is, per statistic (for the test's description)
ITEM_NAMES = {"wer": "utterances", "accuracy": "utterances", "ua": "utterances", "eer": "trials"}


@dataclass(frozen=True)
class PairedBootstrap:
    """The result of :func:`paired_bootstrap` (values in the metric's unit, percent).

    ``difference`` is ``value_b - value_a``; ``ci_low``/``ci_high`` bound it at
    ``confidence``; ``items`` counts the test items over all strata.
    """

    statistic: str
    value_a: float
    value_b: float
    difference: float
    p_value: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int
    items: int
    strata: int
    seed: int

    def describe(self) -> str:
        """One line: the test, its size and its p-value.

        Examples
        --------
        >>> PairedBootstrap("wer", 8.0, 7.0, -1.0, 0.004, -1.6, -0.4, 0.95, 10000, 2620, 1, 0).describe()
        'paired bootstrap over 2,620 utterances (10,000 resamples): difference -1.00 [-1.60, -0.40], p = 0.004'
        """
        strata = f" in {self.strata} strata" if self.strata > 1 else ""
        return (f"paired bootstrap over {self.items:,} {ITEM_NAMES.get(self.statistic, 'items')}{strata} "
                f"({self.resamples:,} resamples): difference {self.difference:+.2f} "
                f"[{self.ci_low:+.2f}, {self.ci_high:+.2f}], p = {format_p_value(self.p_value)}")

    def as_dict(self) -> dict:
        """The fields as a JSON-able dict, with ``test`` naming the test."""
        return {"test": "paired bootstrap (shifted, two-sided)", **self.__dict__}


def format_p_value(p_value: float) -> str:
    """A p-value with 2 significant digits, ``< 0.001`` below that.

    Examples
    --------
    >>> format_p_value(0.04321), format_p_value(1.0), format_p_value(0.0001)
    ('0.043', '1', '< 0.001')
    """
    if p_value < 0.001:
        return "< 0.001"
    return f"{p_value:.2g}"


def _draw_counts(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """[size, count] how often each of ``count`` items is drawn in ``size`` draws of ``count``
    items with replacement."""
    drawn = rng.integers(0, count, size=(size, count)) + count * np.arange(size)[:, None]
    return np.bincount(drawn.ravel(), minlength=size * count).reshape(size, count).astype(np.float64)


def paired_bootstrap(items_a: np.ndarray, items_b: np.ndarray, statistic: str,
                     strata: Sequence | None = None, resamples: int = 10000, seed: int = 0,
                     confidence: float = 0.95, chunk: int = 250) -> PairedBootstrap:
    """Paired bootstrap test of system B against system A on the same test items.

    Parameters
    ----------
    items_a, items_b
        [N, k] per-item columns of the two systems (see :data:`STATISTICS`), row i of both
        describing the same test item.
    statistic
        A key of :data:`STATISTICS`.
    strata
        [N] stratum label of each item (e.g. ``"seed1986/fold1"``); items are drawn within
        their stratum and the value is the mean of the per-stratum values. None: one stratum.
    resamples
        Number of bootstrap draws B.
    seed
        Seed of the draws (the same seed gives the same result).
    confidence
        Coverage of the percentile interval of the difference.
    chunk
        Draws evaluated at once (memory: ``chunk x N`` floats).

    Returns
    -------
    PairedBootstrap
        Observed values, difference (B - A), its interval and the p-value.

    Raises
    ------
    ValueError
        On an unknown statistic, items of different lengths, or no items.

    Examples
    --------
    >>> a = np.array([[2, 10], [1, 10], [0, 10], [3, 10]])
    >>> test = paired_bootstrap(a, a, "wer", resamples=100)
    >>> test.value_a, test.difference, test.p_value
    (15.0, 0.0, 1.0)
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; known: {', '.join(STATISTICS)}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    function = STATISTICS[statistic]
    items_a, items_b = np.asarray(items_a, dtype=np.float64), np.asarray(items_b, dtype=np.float64)
    if items_a.shape != items_b.shape:
        raise ValueError(f"the two systems must be scored on the same items: shapes {items_a.shape} "
                         f"and {items_b.shape}")
    if len(items_a) == 0:
        raise ValueError("no test items")
    labels = np.zeros(len(items_a), dtype=int) if strata is None else np.asarray(strata)
    if labels.shape != (len(items_a),):
        raise ValueError(f"strata must have one label per item ({len(items_a)}), got shape {labels.shape}")
    groups = [np.flatnonzero(labels == label) for label in dict.fromkeys(labels.tolist())]
    rng = np.random.default_rng(seed)

    def per_stratum(weights_of: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        values_a, values_b = [], []
        for index in groups:
            weights = weights_of(index)
            values_a.append(function(items_a[index], weights))
            values_b.append(function(items_b[index], weights))
        return np.mean(values_a, axis=0), np.mean(values_b, axis=0)

    observed_a, observed_b = per_stratum(lambda index: np.ones((1, len(index))))
    observed = float(observed_b[0] - observed_a[0])
    differences = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        draw_a, draw_b = per_stratum(lambda index: _draw_counts(rng, len(index), size))
        differences.append(draw_b - draw_a)
    differences = np.concatenate(differences)
    # identical systems: every difference is exactly 0 and so is the observed one -> p = 1
    extreme = np.abs(differences - observed) >= abs(observed) - 1e-12
    p_value = float((1 + extreme.sum()) / (1 + resamples))
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(differences, [tail, 1.0 - tail])
    return PairedBootstrap(statistic=statistic, value_a=float(observed_a[0]), value_b=float(observed_b[0]),
                           difference=observed, p_value=p_value, ci_low=float(low), ci_high=float(high),
                           confidence=confidence, resamples=resamples, items=len(items_a), strata=len(groups),
                           seed=seed)
