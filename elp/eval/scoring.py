"""Scoring: error rates, verification metrics, classification accuracy, cosine scoring, and the
check that stage 4's decode files cover exactly the test set they are scored against.

Thin glue over ``speechbrain.utils.metric_stats`` with one convention for units:

* ``wer``, ``cer``, ``eer``, ``accuracy`` and ``unweighted_accuracy`` are **percentages**
  (0-100), as reported in papers and in ``results.json``;
* ``min_dcf`` is the **normalised** detection cost (unitless; 1.0 = a system that always
  rejects), as reported for VoxCeleb/NIST. SpeechBrain's ``minDCF`` returns the raw cost
  ``c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)``; we divide it by
  ``c_def = min(c_miss * p_target, c_fa * (1 - p_target))`` and return the raw value too.

Verification labels: 1 (or True) = target trial (same speaker), 0 = non-target trial.

Examples
--------
>>> word_error_rate(["a b c"], ["a x c d"])["wer"]
66.66666666666667
>>> equal_error_rate([0.9, 0.2], [1, 0])["eer"]
0.0
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from speechbrain.utils.metric_stats import EER, ErrorRateStats, minDCF

from elp.runtime import UserError

ArrayLike = Sequence[float] | np.ndarray | torch.Tensor
Transcripts = Sequence[str | Sequence[str]] | Mapping[str, str | Sequence[str]]

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
    refs: Transcripts, hyps: Transcripts, alignment_file: str | Path | None = None
) -> dict:
    """Word error rate with its insertions, deletions and substitutions (SpeechBrain's
    ``ErrorRateStats``, Kaldi-compatible alignment).

    Parameters
    ----------
    refs
        Reference transcripts: a list of str (or of word lists), or a dict utt_id -> str;
        words are whitespace-separated.
    hyps
        Hypotheses, of the same type as ``refs``, paired by position (lists) or by utterance
        id (dicts).
    alignment_file
        Where to write SpeechBrain's per-utterance alignments (None: nowhere).

    Returns
    -------
    dict
        ``wer`` (percent), ``ins``, ``del``, ``sub``, ``num_words``, ``num_utts``.

    Examples
    --------
    >>> r = word_error_rate(["the cat sat"], ["the cat sat down"])
    >>> r["wer"], r["ins"], r["num_words"]
    (33.333333333333336, 1, 3)
    """
    out = _error_rate(refs, hyps, split_words=False, alignment_file=alignment_file)
    return {"wer": out["rate"], "ins": out["ins"], "del": out["del"], "sub": out["sub"],
            "num_words": out["num_tokens"], "num_utts": out["num_utts"]}


def character_error_rate(
    refs: Transcripts, hyps: Transcripts, alignment_file: str | Path | None = None
) -> dict:
    """Character error rate; words are joined by single spaces and the spaces count as
    characters (SpeechBrain's ``split_tokens`` convention).

    Arguments as in :func:`word_error_rate`.

    Returns
    -------
    dict
        ``cer`` (percent), ``ins``, ``del``, ``sub``, ``num_chars``, ``num_utts``.

    Examples
    --------
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

    Parameters
    ----------
    scores
        [N] trial scores, higher = more likely the same speaker.
    labels
        [N] 1 = target trial, 0 = non-target trial.

    Returns
    -------
    dict
        ``eer`` (percent) and ``threshold``.

    Examples
    --------
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

    Parameters
    ----------
    scores, labels
        As in :func:`equal_error_rate`.
    p_target, c_miss, c_fa
        Prior of a target trial and the two error costs (VoxCeleb: 0.01 / 1 / 1; SRE: 0.05).

    Returns
    -------
    dict
        ``min_dcf`` (normalised), ``c_det`` (unnormalised minimum, what SpeechBrain
        returns) and ``threshold``.

    Examples
    --------
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

    Parameters
    ----------
    enroll_emb
        [N, D] (or [D]).
    test_emb
        [N, D] (or [D]); [M, D] when ``all_pairs``.
    all_pairs
        False: row i of enroll against row i of test (one score per trial) -> [N].
        True: every enroll row against every test row -> [N, M] (cohort scoring).

    Examples
    --------
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
    top_k: int | None = None,
) -> torch.Tensor:
    """Symmetric score normalisation (S-norm; adaptive S-norm with ``top_k``).

    s' = ((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2, where mu_e, sd_e are the mean and
    the (unbiased, ``torch.std``) standard deviation of the enrolment embedding's scores
    against the cohort, and mu_t, sd_t those of the test embedding. With ``top_k`` only
    the k highest cohort scores of each side are used (as SpeechBrain's VoxCeleb recipe).

    Parameters
    ----------
    scores
        [N] raw trial scores.
    enroll_cohort_scores
        [N, C] scores of each trial's enrolment side against the C cohort embeddings.
    test_cohort_scores
        [N, C] scores of each trial's test side against the cohort.
    top_k
        Keep the top_k highest cohort scores per row (2 <= top_k <= C).

    Returns
    -------
    torch.Tensor
        [N] normalised scores.

    Examples
    --------
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
# Streaming S-norm with a speaker-balanced cohort
# --------------------------------------------------------------------------------------
#: Rows of embeddings scored against the cohort at once by :func:`cohort_statistics`: the
#: largest temporary is a [SNORM_CHUNK_SIZE, C] float32 matrix (docs/SCALING.md section 5).
SNORM_CHUNK_SIZE = 1024


def select_cohort(
    embeddings: Mapping[str, torch.Tensor],
    utt2spk: Mapping[str, str],
    size: int,
    mode: str = "speaker_mean",
    seed: int = 0,
) -> tuple[torch.Tensor, list[str]]:
    """A speaker-balanced S-norm cohort, deterministic for a given ``seed``.

    * ``mode="speaker_mean"``: one embedding per speaker, the mean of that speaker's
      L2-normalised utterance embeddings; with more speakers than ``size``, ``size`` speakers
      are drawn at random (seeded); with fewer, every speaker is used (the cohort is then
      smaller than ``size``).
    * ``mode="utterances"``: ``size`` single utterances spread over all speakers: speakers
      and each speaker's utterances are shuffled (seeded), then utterances are taken in
      rounds (the first of every speaker, then the second of every speaker, ...), so no
      speaker has two more cohort entries than another while it still has utterances left.

    Taking the first ``size`` sorted utterance ids instead would fill the cohort with the
    first few speakers of the corpus (VoxCeleb1 ids start with the speaker id).

    Parameters
    ----------
    embeddings
        utt id -> embedding [D] (e.g. the training set's, from the SV Brain's ``predict``).
    utt2spk
        utt id -> speaker id; every utterance of ``embeddings`` must have one.
    size
        Number of cohort entries wanted (>= 2).
    mode
        ``"speaker_mean"`` or ``"utterances"``.

    Returns
    -------
    tuple[torch.Tensor, list[str]]
        The cohort [C, D] (float32) and the id of each row: speaker ids
        (``speaker_mean``) or utterance ids (``utterances``).

    Examples
    --------
    >>> emb = {"a1": torch.tensor([1.0, 0.0]), "a2": torch.tensor([0.0, 2.0]),
    ...        "b1": torch.tensor([3.0, 0.0])}
    >>> spk = {"a1": "a", "a2": "a", "b1": "b"}
    >>> cohort, ids = select_cohort(emb, spk, size=10)
    >>> sorted(ids), cohort[ids.index("a")].tolist()
    (['a', 'b'], [0.5, 0.5])
    >>> len(select_cohort(emb, spk, size=2, mode="utterances")[1])
    2
    """
    if mode not in ("speaker_mean", "utterances"):
        raise ValueError(f"cohort mode must be 'speaker_mean' or 'utterances', got {mode!r}")
    if size < 2:
        raise ValueError(f"the S-norm cohort size must be >= 2 (snorm_cohort), got {size}")
    missing = [u for u in embeddings if u not in utt2spk]
    if missing:
        raise ValueError(
            f"{len(missing)} cohort utterance(s) have no speaker in utt2spk, e.g. "
            f"'{missing[0]}'; pass the utt2spk of the data dir the embeddings come from"
        )
    by_speaker: dict[str, list[str]] = {}
    for utt in sorted(embeddings):
        by_speaker.setdefault(utt2spk[utt], []).append(utt)
    speakers = sorted(by_speaker)
    generator = torch.Generator().manual_seed(seed)

    def shuffled(items: list[str]) -> list[str]:
        return [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]

    speakers = shuffled(speakers)
    if mode == "speaker_mean":
        chosen = speakers[:size]
        rows = []
        for spk in chosen:
            stacked = torch.stack([torch.as_tensor(embeddings[u]).float() for u in by_speaker[spk]])
            rows.append(torch.nn.functional.normalize(stacked, dim=-1).mean(dim=0))
        if len(rows) < 2:
            raise ValueError(
                f"the cohort has {len(rows)} speaker(s); speaker_mean needs >= 2 speakers "
                f"(use a cohort set with more speakers)"
            )
        return torch.stack(rows), chosen
    queues = [shuffled(by_speaker[spk]) for spk in speakers]
    chosen_utts: list[str] = []
    depth = 0
    while len(chosen_utts) < size and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(chosen_utts) < size:
                chosen_utts.append(queue[depth])
        depth += 1
    if len(chosen_utts) < 2:
        raise ValueError(f"the cohort has {len(chosen_utts)} utterance(s); S-norm needs >= 2")
    return torch.stack([torch.as_tensor(embeddings[u]).float() for u in chosen_utts]), chosen_utts


def cohort_utterance_ids(
    utt2spk: Mapping[str, str], num_speakers: int, per_speaker: int, seed: int = 0
) -> list[str]:
    """The utterances to embed for a speaker-balanced cohort, chosen from ``utt2spk`` alone.

    Embedding a whole training set only to keep a few thousand cohort entries costs a full
    pass over it (docs/SCALING.md section 5); pick the ids first, embed those, then call
    :func:`select_cohort` on their embeddings (``size >= num_speakers`` keeps every chosen
    speaker). Returns sorted utterance ids.

    Parameters
    ----------
    utt2spk
        utt id -> speaker id of the cohort set (e.g. the training data dir).
    num_speakers
        Speakers drawn at random (seeded); all of them when there are fewer.
    per_speaker
        Utterances drawn at random (seeded) per chosen speaker (all when it has fewer).

    Examples
    --------
    >>> spk = {"a1": "a", "a2": "a", "a3": "a", "b1": "b"}
    >>> ids = cohort_utterance_ids(spk, num_speakers=5, per_speaker=2)
    >>> len(ids), sum(u.startswith("a") for u in ids), "b1" in ids
    (3, 2, True)
    """
    if num_speakers < 1 or per_speaker < 1:
        raise ValueError(f"num_speakers and per_speaker must be >= 1, got {num_speakers} and {per_speaker}")
    by_speaker: dict[str, list[str]] = {}
    for utt in sorted(utt2spk):
        by_speaker.setdefault(utt2spk[utt], []).append(utt)
    generator = torch.Generator().manual_seed(seed)
    speakers = sorted(by_speaker)
    speakers = [speakers[i] for i in torch.randperm(len(speakers), generator=generator).tolist()][:num_speakers]
    chosen = []
    for spk in speakers:
        utts = by_speaker[spk]
        chosen += [utts[i] for i in torch.randperm(len(utts), generator=generator).tolist()[:per_speaker]]
    return sorted(chosen)


def cohort_statistics(
    embeddings: torch.Tensor,
    cohort: torch.Tensor,
    top_k: int | None = None,
    chunk_size: int = SNORM_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each embedding's cosine scores against the cohort
    (the top ``top_k`` scores only for adaptive S-norm), computed ``chunk_size`` rows at a
    time: memory O(chunk_size x C), never [N x C].

    Parameters
    ----------
    embeddings
        [N, D] enrolment or test embeddings (not necessarily normalised).
    cohort
        [C, D] cohort embeddings (not necessarily normalised).
    top_k
        Keep the k highest cohort scores of each row (2 <= top_k <= C).

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        mean [N] and unbiased standard deviation [N] (float32), the statistics
        :func:`s_norm` computes from a dense [N, C] score matrix.

    Examples
    --------
    >>> mean, std = cohort_statistics(torch.tensor([[1.0, 0.0]]),
    ...                               torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    >>> mean, std
    (tensor([0.]), tensor([1.]))
    """
    embeddings = torch.nn.functional.normalize(torch.atleast_2d(embeddings).float(), dim=-1)
    cohort = torch.nn.functional.normalize(torch.atleast_2d(cohort).float(), dim=-1)
    if embeddings.shape[-1] != cohort.shape[-1]:
        raise ValueError(
            f"embedding sizes differ: {embeddings.shape[-1]} (embeddings) vs "
            f"{cohort.shape[-1]} (cohort); the cohort must come from the same model"
        )
    num_cohort = cohort.shape[0]
    if top_k is not None and not 2 <= top_k <= num_cohort:
        raise ValueError(f"top_k must be in [2, C={num_cohort}], got {top_k} (snorm_top_k)")
    if top_k is None and num_cohort < 2:
        raise ValueError("S-norm needs a cohort of at least 2 embeddings")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    means, stds = [], []
    for start in range(0, embeddings.shape[0], chunk_size):
        block = embeddings[start:start + chunk_size] @ cohort.T  # [chunk, C]
        if top_k is not None:
            block = block.topk(top_k, dim=1).values
        means.append(block.mean(dim=1))
        stds.append(block.std(dim=1))
    if not means:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(means), torch.cat(stds)


def s_norm_trials(
    embeddings: Mapping[str, torch.Tensor],
    trials: Sequence,
    cohort: torch.Tensor | None = None,
    top_k: int | None = None,
    chunk_size: int = SNORM_CHUNK_SIZE,
) -> torch.Tensor:
    """Cosine scores of a trial list, S-normalised against ``cohort`` when one is given.

    The cohort statistics are computed once per distinct enrolment/test utterance, in
    chunks (:func:`cohort_statistics`); the result equals :func:`s_norm` on the dense
    [trials x cohort] matrices, which are never built (their size on VoxCeleb:
    docs/SCALING.md section 5).

    Parameters
    ----------
    embeddings
        utt id -> embedding [D].
    trials
        (enroll, test) pairs, or objects with ``.enroll`` and ``.test``
        (:class:`elp.data.kaldi_dir.Trial`).
    cohort
        [C, D] the S-norm cohort (:func:`select_cohort`); None gives raw cosine scores.
    top_k
        Adaptive S-norm: statistics over the k highest cohort scores.
    chunk_size
        Utterances scored against the cohort at once.

    Returns
    -------
    torch.Tensor
        [T] one score per trial, in trial order.

    Examples
    --------
    >>> emb = {"e": torch.tensor([1.0, 0.0]), "t": torch.tensor([1.0, 1.0])}
    >>> s_norm_trials(emb, [("e", "t")])
    tensor([0.7071])
    >>> cohort = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> s_norm_trials(emb, [("e", "t")], cohort).shape
    torch.Size([1])
    """
    pairs = [(t.enroll, t.test) if hasattr(t, "enroll") else tuple(t) for t in trials]
    missing = sorted({u for pair in pairs for u in pair if u not in embeddings})
    if missing:
        raise ValueError(
            f"{len(missing)} trial utterance(s) have no embedding, e.g. '{missing[0]}'; "
            f"the trials file must only name utterances of the test data dir"
        )
    utts = sorted({u for pair in pairs for u in pair})
    index = {u: i for i, u in enumerate(utts)}
    if not pairs:
        return torch.zeros(0)
    matrix = torch.stack([torch.as_tensor(embeddings[u]).float() for u in utts])
    enroll_idx = torch.tensor([index[e] for e, _ in pairs])
    test_idx = torch.tensor([index[t] for _, t in pairs])
    scores = torch.empty(len(pairs))
    for start in range(0, len(pairs), chunk_size * 16):
        end = start + chunk_size * 16
        scores[start:end] = cosine_scores(matrix[enroll_idx[start:end]], matrix[test_idx[start:end]])
    if cohort is None:
        return scores
    mean, std = cohort_statistics(matrix, cohort, top_k=top_k, chunk_size=chunk_size)
    norm_e = (scores - mean[enroll_idx]) / std[enroll_idx]
    norm_t = (scores - mean[test_idx]) / std[test_idx]
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

    Parameters
    ----------
    preds
        [N] class indices, or [N, C] scores (argmax taken).
    targets
        [N] class indices.

    Examples
    --------
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

    ``preds`` and ``targets`` as in :func:`accuracy`.

    Examples
    --------
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


# --------------------------------------------------------------------------------------
# Stage 4's outputs against the test set
# --------------------------------------------------------------------------------------
class DecodeCoverageError(UserError):
    """A decode file of stage 4 does not cover exactly the test set it is scored against."""


def check_decode_coverage(
    path: str | Path,
    rows: Sequence[tuple[str, str | None]],
    expected: Sequence[tuple[str, str | None]],
    reference: str,
    what: str = "utterances",
    examples: int = 3,
) -> None:
    """Refuse to score a decode file unless it holds each item of the test set exactly once.

    Stage 5 scores what stage 4 wrote; a file cut short, appended to, or written for another
    version of the test set would give a number over the wrong items. The items are
    compared as multisets (an item the test set lists twice must be there twice); where
    both sides carry a value (the reference transcript, label or trial target that stage 4
    copied), the values must agree too.

    Parameters
    ----------
    path
        The decode file (named in the message).
    rows
        ``(item, value)`` of each of its lines, in file order; value None: not compared.
    expected
        ``(item, value)`` of the test set, as its data dir defines it (``text``,
        ``utt2label``, ``trials``); value None: not compared.
    reference
        The data-dir file that defines the test set (named in the message).
    what
        What the items are (``utterances``, ``trials``).
    examples
        How many ids of each kind of mismatch the message names.

    Raises
    ------
    DecodeCoverageError
        One line: the file, the counts and first ids of missing, extra, repeated and
        differing items, and the fix (rerun stage 4).

    Examples
    --------
    >>> check_decode_coverage("hyp.txt", [("u1", None), ("u2", None)], [("u1", None), ("u2", None)], "test/text")
    >>> check_decode_coverage("hyp.txt", [("u1", None), ("u1", None), ("x", None)],
    ...                       [("u1", None), ("u2", None), ("u3", None)], "test/text")
    Traceback (most recent call last):
    ...
    elp.eval.scoring.DecodeCoverageError: hyp.txt does not cover the 3 utterances of test/text: 2 missing (u2, u3), 1 not in the test set (x), 1 listed more than once (u1); rerun stage 4 (inference) for this test set
    """
    found: dict[str, int] = {}
    for item, _ in rows:
        found[item] = found.get(item, 0) + 1
    wanted: dict[str, int] = {}
    reference_value: dict[str, str | None] = {}
    for item, value in expected:
        wanted[item] = wanted.get(item, 0) + 1
        reference_value.setdefault(item, value)
    missing = [item for item in wanted if found.get(item, 0) < wanted[item]]
    extra = [item for item in found if item not in wanted]
    repeated = [item for item in found if item in wanted and found[item] > wanted[item]]
    differing = list(dict.fromkeys(
        item for item, value in rows
        if value is not None and reference_value.get(item) is not None and value != reference_value[item]))
    parts = []
    for items, description in ((missing, "missing"), (extra, "not in the test set"),
                               (repeated, "listed more than once"),
                               (differing, f"with another reference than {reference}")):
        if items:
            shown = ", ".join(items[:examples]) + (", ..." if len(items) > examples else "")
            parts.append(f"{len(items)} {description} ({shown})")
    if parts:
        raise DecodeCoverageError(
            f"{path} does not cover the {len(expected)} {what} of {reference}: {', '.join(parts)}; "
            "rerun stage 4 (inference) for this test set")
