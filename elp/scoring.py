"""Scoring: error rates, verification metrics, classification accuracy, cosine scoring.

Thin glue over ``speechbrain.utils.metric_stats`` with one convention for units:

* ``wer``, ``cer``, ``eer``, ``accuracy`` and ``unweighted_accuracy`` are **percentages**
  (0-100), as reported in papers and in ``results.json``;
* ``min_dcf`` is the **normalised** detection cost (unitless; 1.0 = a system that always
  rejects), as reported for VoxCeleb/NIST. SpeechBrain's ``minDCF`` returns the raw cost
  ``c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)``; we divide it by
  ``c_def = min(c_miss * p_target, c_fa * (1 - p_target))`` and return the raw value too.

Verification labels: 1 (or True) = target trial (same speaker), 0 = non-target trial.

Example
-------
>>> word_error_rate(["a b c"], ["a x c d"])["wer"]
66.66666666666667
>>> equal_error_rate([0.9, 0.2], [1, 0])["eer"]
0.0
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from speechbrain.utils.metric_stats import EER, ErrorRateStats, minDCF

ArrayLike = Union[Sequence[float], np.ndarray, torch.Tensor]
Transcripts = Union[Sequence[Union[str, Sequence[str]]], Mapping[str, Union[str, Sequence[str]]]]

# SpeechBrain's minDCF materialises [num_thresholds, num_trials] float matrices (2 N^2 floats:
# about 11 GB for the 37,611 VoxCeleb1-O trials) and its EER loops over 2 N thresholds in
# Python. Above this many trials we use an exact sort-based computation with the same
# thresholds (all scores and the midpoints between consecutive distinct scores), the same
# decision rule (miss: target score <= t; false alarm: non-target score > t) and the same
# tie rule (the first, i.e. lowest, threshold that reaches the minimum).
# tests/test_scoring.py checks both paths agree.
SPEECHBRAIN_MAX_TRIALS = 2000


# --------------------------------------------------------------------------------------
# Error rates (ASR)
# --------------------------------------------------------------------------------------
def _aligned_token_lists(refs: Transcripts, hyps: Transcripts, split_words: bool):
    """Pairs refs and hyps (lists in order, or dicts keyed by utterance id) as token lists."""
    if isinstance(refs, Mapping):
        if not isinstance(hyps, Mapping):
            raise TypeError("refs is a dict keyed by utterance id, so hyps must be one too")
        missing = [utt for utt in refs if utt not in hyps]
        if missing:
            raise ValueError(
                f"{len(missing)} reference utterance(s) have no hypothesis, e.g. "
                f"'{missing[0]}'; decode every utterance (or score an empty string for it)"
            )
        extra = [utt for utt in hyps if utt not in refs]
        if extra:
            raise ValueError(
                f"{len(extra)} hypothesis utterance(s) have no reference, e.g. '{extra[0]}'"
            )
        ids = list(refs)
        ref_list = [refs[u] for u in ids]
        hyp_list = [hyps[u] for u in ids]
    else:
        if isinstance(hyps, Mapping):
            raise TypeError("hyps is a dict but refs is not; pass both as dicts or lists")
        ref_list, hyp_list = list(refs), list(hyps)
        if len(ref_list) != len(hyp_list):
            raise ValueError(
                f"{len(ref_list)} references but {len(hyp_list)} hypotheses; they must pair up"
            )
        ids = [f"utt{i}" for i in range(len(ref_list))]

    def tokens(text):
        words = text.split() if isinstance(text, str) else [str(w) for w in text]
        return list(" ".join(words)) if split_words else words

    return ids, [tokens(t) for t in ref_list], [tokens(t) for t in hyp_list]


def _error_rate(refs, hyps, split_words: bool, alignment_file) -> dict:
    ids, ref_tokens, hyp_tokens = _aligned_token_lists(refs, hyps, split_words)
    stats = ErrorRateStats()
    stats.append(ids=ids, predict=hyp_tokens, target=ref_tokens)
    summary = stats.summarize()
    if alignment_file is not None:
        Path(alignment_file).parent.mkdir(parents=True, exist_ok=True)
        with open(alignment_file, "w", encoding="utf-8") as stream:
            stats.write_stats(stream)
    return {
        "rate": float(summary["WER"]),
        "ins": int(summary["insertions"]),
        "del": int(summary["deletions"]),
        "sub": int(summary["substitutions"]),
        "num_tokens": int(summary["num_scored_tokens"]),
        "num_utts": int(summary["num_scored_sents"]),
    }


def word_error_rate(
    refs: Transcripts, hyps: Transcripts, alignment_file: Optional[Union[str, Path]] = None
) -> dict:
    """Word error rate with its insertions, deletions and substitutions (SpeechBrain's
    ``ErrorRateStats``, Kaldi-compatible alignment).

    Arguments
    ---------
    refs : list of str (or of word lists), or dict utt_id -> str
        Reference transcripts; words are whitespace-separated.
    hyps : same type as refs
        Hypotheses, paired by position (lists) or by utterance id (dicts).
    alignment_file : path, optional
        Where to write SpeechBrain's per-utterance alignments.

    Returns
    -------
    dict with ``wer`` (percent), ``ins``, ``del``, ``sub``, ``num_words``, ``num_utts``.

    Example
    -------
    >>> r = word_error_rate(["the cat sat"], ["the cat sat down"])
    >>> r["wer"], r["ins"], r["num_words"]
    (33.333333333333336, 1, 3)
    """
    out = _error_rate(refs, hyps, split_words=False, alignment_file=alignment_file)
    return {"wer": out["rate"], "ins": out["ins"], "del": out["del"], "sub": out["sub"],
            "num_words": out["num_tokens"], "num_utts": out["num_utts"]}


def character_error_rate(
    refs: Transcripts, hyps: Transcripts, alignment_file: Optional[Union[str, Path]] = None
) -> dict:
    """Character error rate; words are joined by single spaces and the spaces count as
    characters (SpeechBrain's ``split_tokens`` convention).

    Returns
    -------
    dict with ``cer`` (percent), ``ins``, ``del``, ``sub``, ``num_chars``, ``num_utts``.

    Example
    -------
    >>> character_error_rate(["ab cd"], ["ab d"])["cer"]
    20.0
    """
    out = _error_rate(refs, hyps, split_words=True, alignment_file=alignment_file)
    return {"cer": out["rate"], "ins": out["ins"], "del": out["del"], "sub": out["sub"],
            "num_chars": out["num_tokens"], "num_utts": out["num_utts"]}


# --------------------------------------------------------------------------------------
# Verification (speaker)
# --------------------------------------------------------------------------------------
def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _split_trials(scores: ArrayLike, labels: ArrayLike):
    """Returns (target scores, non-target scores) as float64 numpy arrays."""
    scores_np = _to_numpy(scores).astype(np.float64).reshape(-1)
    labels_np = _to_numpy(labels).reshape(-1)
    if scores_np.shape != labels_np.shape:
        raise ValueError(f"{scores_np.size} scores but {labels_np.size} labels")
    if not np.isin(labels_np, [0, 1]).all():
        raise ValueError("labels must be 1 (target trial) or 0 (non-target trial)")
    if not np.isfinite(scores_np).all():
        raise ValueError(f"{int((~np.isfinite(scores_np)).sum())} scores are NaN or infinite")
    target = scores_np[labels_np == 1]
    nontarget = scores_np[labels_np == 0]
    if target.size == 0 or nontarget.size == 0:
        raise ValueError(
            f"need both target and non-target trials, got {target.size} target and "
            f"{nontarget.size} non-target"
        )
    return target, nontarget


def _operating_points(target: np.ndarray, nontarget: np.ndarray):
    """Miss and false-alarm rates at SpeechBrain's candidate thresholds (exact, O(N log N))."""
    distinct = np.unique(np.concatenate([target, nontarget]))
    thresholds = np.sort(np.concatenate([distinct, (distinct[:-1] + distinct[1:]) / 2]))
    p_miss = np.searchsorted(np.sort(target), thresholds, side="right") / target.size
    p_fa = 1.0 - np.searchsorted(np.sort(nontarget), thresholds, side="right") / nontarget.size
    return thresholds, p_miss, p_fa


def equal_error_rate(scores: ArrayLike, labels: ArrayLike) -> dict:
    """Equal error rate (SpeechBrain's ``EER``; exact sort-based path above
    ``SPEECHBRAIN_MAX_TRIALS`` trials).

    At the threshold where |P_fa - P_miss| is smallest the EER is (P_fa + P_miss) / 2.

    Arguments
    ---------
    scores : array-like [N]
        Trial scores, higher = more likely the same speaker.
    labels : array-like [N]
        1 = target trial, 0 = non-target trial.

    Returns
    -------
    dict with ``eer`` (percent) and ``threshold``.

    Example
    -------
    >>> equal_error_rate([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1], [1, 1, 1, 1, 0, 0, 0, 0])
    {'eer': 25.0, 'threshold': 0.4}
    """
    target, nontarget = _split_trials(scores, labels)
    if target.size + nontarget.size <= SPEECHBRAIN_MAX_TRIALS:
        _, threshold = EER(torch.from_numpy(target), torch.from_numpy(nontarget))
        # SpeechBrain's rates are float32; recount them in float64 at its threshold
        p_miss, p_fa = np.mean(target <= threshold), np.mean(nontarget > threshold)
        eer = (p_miss + p_fa) / 2
    else:
        thresholds, p_miss, p_fa = _operating_points(target, nontarget)
        best = int(np.argmin(np.abs(p_fa - p_miss)))
        eer, threshold = (p_fa[best] + p_miss[best]) / 2, thresholds[best]
    return {"eer": 100.0 * float(eer), "threshold": float(threshold)}


def min_dcf(
    scores: ArrayLike,
    labels: ArrayLike,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> dict:
    """Minimum normalised detection cost function (SpeechBrain's ``minDCF``, normalised).

    C_det(t) = c_miss * P_miss(t) * p_target + c_fa * P_fa(t) * (1 - p_target);
    minDCF = min_t C_det(t) / min(c_miss * p_target, c_fa * (1 - p_target)).

    Arguments
    ---------
    scores : array-like [N]
        Trial scores.
    labels : array-like [N]
        1 = target trial, 0 = non-target trial.
    p_target, c_miss, c_fa : float
        Prior of a target trial and the two error costs (VoxCeleb: 0.01 / 1 / 1; SRE: 0.05).

    Returns
    -------
    dict with ``min_dcf`` (normalised), ``c_det`` (unnormalised minimum, what SpeechBrain
    returns) and ``threshold``.

    Example
    -------
    >>> min_dcf([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1], [1, 1, 1, 1, 0, 0, 0, 0])["min_dcf"]
    0.5
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    target, nontarget = _split_trials(scores, labels)
    if target.size + nontarget.size <= SPEECHBRAIN_MAX_TRIALS:
        _, threshold = minDCF(
            torch.from_numpy(target), torch.from_numpy(nontarget),
            c_miss=c_miss, c_fa=c_fa, p_target=p_target,
        )
        # SpeechBrain's cost is float32; recount it in float64 at its threshold
        p_miss, p_fa = np.mean(target <= threshold), np.mean(nontarget > threshold)
        c_det = c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)
    else:
        thresholds, p_miss, p_fa = _operating_points(target, nontarget)
        costs = c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)
        best = int(np.argmin(costs))
        c_det, threshold = costs[best], thresholds[best]
    c_def = min(c_miss * p_target, c_fa * (1 - p_target))
    return {"min_dcf": float(c_det) / c_def, "c_det": float(c_det), "threshold": float(threshold)}


def cosine_scores(
    enroll_emb: torch.Tensor, test_emb: torch.Tensor, all_pairs: bool = False
) -> torch.Tensor:
    """Cosine similarity between embeddings.

    Arguments
    ---------
    enroll_emb : torch.Tensor [N, D] (or [D])
    test_emb : torch.Tensor [N, D] (or [D]); [M, D] when ``all_pairs``
    all_pairs : bool
        False: row i of enroll against row i of test (one score per trial) -> [N].
        True: every enroll row against every test row -> [N, M] (cohort scoring).

    Example
    -------
    >>> cosine_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
    tensor([0.7071])
    """
    enroll = torch.nn.functional.normalize(torch.atleast_2d(enroll_emb).float(), dim=-1)
    test = torch.nn.functional.normalize(torch.atleast_2d(test_emb).float(), dim=-1)
    if enroll.shape[-1] != test.shape[-1]:
        raise ValueError(f"embedding sizes differ: {enroll.shape[-1]} vs {test.shape[-1]}")
    if all_pairs:
        return enroll @ test.T
    if enroll.shape != test.shape:
        raise ValueError(
            f"paired scoring needs equal shapes, got {tuple(enroll.shape)} and "
            f"{tuple(test.shape)}; use all_pairs=True for a score matrix"
        )
    return (enroll * test).sum(dim=-1)


def s_norm(
    scores: torch.Tensor,
    enroll_cohort_scores: torch.Tensor,
    test_cohort_scores: torch.Tensor,
    top_k: Optional[int] = None,
) -> torch.Tensor:
    """Symmetric score normalisation (S-norm; adaptive S-norm with ``top_k``).

    s' = ((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2, where mu_e, sd_e are the mean and
    the (unbiased, ``torch.std``) standard deviation of the enrolment embedding's scores
    against the cohort, and mu_t, sd_t those of the test embedding. With ``top_k`` only
    the k highest cohort scores of each side are used (as SpeechBrain's VoxCeleb recipe).

    Arguments
    ---------
    scores : torch.Tensor [N]
        Raw trial scores.
    enroll_cohort_scores : torch.Tensor [N, C]
        Scores of each trial's enrolment side against the C cohort embeddings.
    test_cohort_scores : torch.Tensor [N, C]
        Scores of each trial's test side against the cohort.
    top_k : int, optional
        Keep the top_k highest cohort scores per row (2 <= top_k <= C).

    Returns
    -------
    torch.Tensor [N], normalised scores.

    Example
    -------
    >>> s_norm(torch.tensor([0.5]), torch.tensor([[0.1, 0.3, 0.5]]),
    ...        torch.tensor([[0.0, 0.2, 0.4]]))
    tensor([1.2500])
    """
    scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    enroll_c = torch.as_tensor(enroll_cohort_scores, dtype=torch.float32)
    test_c = torch.as_tensor(test_cohort_scores, dtype=torch.float32)
    for name, cohort in (("enroll_cohort_scores", enroll_c), ("test_cohort_scores", test_c)):
        if cohort.dim() != 2 or cohort.shape[0] != scores.shape[0]:
            raise ValueError(
                f"{name} must be [N={scores.shape[0]}, C], got {tuple(cohort.shape)}"
            )
    if enroll_c.shape[1] != test_c.shape[1]:
        raise ValueError(
            f"enroll and test cohort scores use different cohort sizes "
            f"({enroll_c.shape[1]} vs {test_c.shape[1]}); score both against the same cohort"
        )
    if top_k is not None:
        if not 2 <= top_k <= enroll_c.shape[1]:
            raise ValueError(f"top_k must be in [2, C={enroll_c.shape[1]}], got {top_k}")
        enroll_c = enroll_c.topk(top_k, dim=1).values
        test_c = test_c.topk(top_k, dim=1).values
    elif enroll_c.shape[1] < 2:
        raise ValueError("S-norm needs a cohort of at least 2 embeddings")
    norm_e = (scores - enroll_c.mean(dim=1)) / enroll_c.std(dim=1)
    norm_t = (scores - test_c.mean(dim=1)) / test_c.std(dim=1)
    return (norm_e + norm_t) / 2


# --------------------------------------------------------------------------------------
# Classification (emotion, intent)
# --------------------------------------------------------------------------------------
def _class_indices(values: ArrayLike, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values).detach().cpu()
    if tensor.dim() == 2:  # logits or probabilities [N, C]
        tensor = tensor.argmax(dim=-1)
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be class indices [N] or scores [N, C]")
    return tensor.long()


def accuracy(preds: ArrayLike, targets: ArrayLike) -> float:
    """Weighted accuracy (WA): percent of correctly classified items.

    Arguments
    ---------
    preds : array-like [N] class indices, or [N, C] scores (argmax taken)
    targets : array-like [N] class indices

    Example
    -------
    >>> accuracy([0, 1, 1, 2], [0, 1, 2, 2])
    75.0
    """
    pred_idx, target_idx = _class_indices(preds, "preds"), _class_indices(targets, "targets")
    if pred_idx.shape != target_idx.shape or target_idx.numel() == 0:
        raise ValueError(f"{pred_idx.numel()} predictions for {target_idx.numel()} targets")
    return 100.0 * float((pred_idx == target_idx).float().mean())


def unweighted_accuracy(preds: ArrayLike, targets: ArrayLike, num_classes: int) -> float:
    """Unweighted accuracy (UA): mean over classes of the per-class recall, in percent.

    Classes that do not occur in ``targets`` have no recall and are **excluded** from the
    mean (a fold without e.g. any 'sad' utterance averages over the other classes).

    Example
    -------
    >>> unweighted_accuracy([0, 0, 0, 0, 1], [0, 0, 0, 1, 1], num_classes=3)
    75.0
    """
    pred_idx, target_idx = _class_indices(preds, "preds"), _class_indices(targets, "targets")
    if pred_idx.shape != target_idx.shape or target_idx.numel() == 0:
        raise ValueError(f"{pred_idx.numel()} predictions for {target_idx.numel()} targets")
    if int(target_idx.max()) >= num_classes or int(target_idx.min()) < 0:
        raise ValueError(f"targets must lie in [0, {num_classes - 1}]")
    recalls = []
    for cls in range(num_classes):
        in_class = target_idx == cls
        if in_class.any():
            recalls.append(float((pred_idx[in_class] == cls).float().mean()))
    return 100.0 * math.fsum(recalls) / len(recalls)
