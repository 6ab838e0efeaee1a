"""elp.eval.scoring against hand-computed values (the computation is written next to each)."""
import numpy as np
import pytest
import torch

from elp.eval import scoring
from elp.eval.scoring import (
    accuracy,
    character_error_rate,
    cosine_scores,
    equal_error_rate,
    min_dcf,
    s_norm,
    unweighted_accuracy,
    word_error_rate,
)

# Verification example used below (4 target, 4 non-target trials):
#   target scores     0.9 0.8 0.6 0.3
#   non-target scores 0.7 0.4 0.2 0.1
# Decision: accept when score > t. P_miss(t) = #target <= t / 4, P_fa(t) = #nontarget > t / 4
#   t in [0.1, 0.2): P_miss 0,   P_fa 3/4
#   t in [0.2, 0.3): P_miss 0,   P_fa 2/4
#   t in [0.3, 0.4): P_miss 1/4, P_fa 2/4
#   t in [0.4, 0.6): P_miss 1/4, P_fa 1/4   <- equal: EER = 25 %, first threshold 0.4
#   t in [0.6, 0.7): P_miss 2/4, P_fa 1/4
#   t in [0.7, 0.8): P_miss 2/4, P_fa 0
#   t in [0.8, 0.9): P_miss 3/4, P_fa 0
#   t >= 0.9:        P_miss 1,   P_fa 0
SCORES = [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1]
LABELS = [1, 1, 1, 1, 0, 0, 0, 0]


def test_word_error_rate_counts_ins_del_sub():
    # ref: one two three four five six        (6 words)
    # hyp: zero one two tree four five
    # alignment: +zero (ins), one, two, three->tree (sub), four, five, -six (del)
    # any alignment without the ins/del pair needs >= 6 substitutions, so it is unique.
    # WER = (1 + 1 + 1) / 6 = 50 %
    out = word_error_rate(["one two three four five six"], ["zero one two tree four five"])
    assert out == {"wer": 50.0, "ins": 1, "del": 1, "sub": 1, "num_words": 6, "num_utts": 1}


def test_word_error_rate_pools_over_utterances_and_accepts_dicts(tmp_path):
    # u1: "a b c" vs "a b c" -> 0 errors / 3; u2: "d e" vs "d" -> 1 deletion / 2
    # corpus WER = 1 / 5 = 20 % (errors pooled, not a mean of per-utterance rates)
    refs = {"u1": "a b c", "u2": "d e"}
    hyps = {"u2": "d", "u1": "a b c"}
    out = word_error_rate(refs, hyps, alignment_file=tmp_path / "wer_details.txt")
    assert out["wer"] == pytest.approx(20.0)
    assert (out["ins"], out["del"], out["sub"], out["num_words"]) == (0, 1, 0, 5)
    assert "u2" in (tmp_path / "wer_details.txt").read_text()


def test_word_error_rate_names_missing_hypothesis():
    with pytest.raises(ValueError, match="'u2'"):
        word_error_rate({"u1": "a", "u2": "b"}, {"u1": "a"})
    with pytest.raises(ValueError, match="pair up"):
        word_error_rate(["a", "b"], ["a"])


def test_character_error_rate_counts_spaces():
    # "ab cd" = a b _ c d (5 characters), "ab d" = a b _ d: c deleted -> 1 / 5 = 20 %
    out = character_error_rate(["ab cd"], ["ab d"])
    assert out["cer"] == pytest.approx(20.0)
    assert (out["ins"], out["del"], out["sub"], out["num_chars"]) == (0, 1, 0, 5)


def test_equal_error_rate_hand_computed():
    out = equal_error_rate(SCORES, LABELS)  # see the table at the top: 25 % at t = 0.4
    assert out["eer"] == pytest.approx(25.0)
    assert out["threshold"] == pytest.approx(0.4)


def test_equal_error_rate_perfect_separation_and_bad_input():
    assert equal_error_rate(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 1, 0]))["eer"] == 0
    with pytest.raises(ValueError, match="non-target"):
        equal_error_rate([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="labels"):
        equal_error_rate([0.1, 0.2], [1, 2])


def test_min_dcf_hand_computed():
    # p_target = 0.01: c_def = min(0.01, 0.99) = 0.01, so
    # minDCF = min_t (0.01 P_miss + 0.99 P_fa) / 0.01 = min_t P_miss + 99 P_fa.
    # Every P_fa > 0 costs >= 99/4; with P_fa = 0 the smallest P_miss is 2/4 (t in [0.7, 0.8)).
    # -> minDCF = 0.5 (raw cost 0.005), first threshold 0.7.
    out = min_dcf(SCORES, LABELS, p_target=0.01)
    assert out["min_dcf"] == pytest.approx(0.5)
    assert out["c_det"] == pytest.approx(0.005)
    assert out["threshold"] == pytest.approx(0.7)
    # p_target = 0.5: c_def = 0.5, minDCF = min_t P_miss + P_fa = 1/2, first reached at
    # t = 0.2 (P_miss 0, P_fa 2/4).
    out = min_dcf(SCORES, LABELS, p_target=0.5)
    assert out["min_dcf"] == pytest.approx(0.5)
    assert out["threshold"] == pytest.approx(0.2)
    # c_miss = 10, p_target = 0.5: c_def = 0.5; cost / 0.5 = 10 P_miss + P_fa,
    # minimum 0.5 at P_miss 0, P_fa 2/4.
    assert min_dcf(SCORES, LABELS, p_target=0.5, c_miss=10)["min_dcf"] == pytest.approx(0.5)


def test_large_trial_lists_match_speechbrain(monkeypatch):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=400)
    scores = np.round(rng.normal(size=400) + 1.5 * labels, 2)  # rounding creates ties
    reference_eer = equal_error_rate(scores, labels)
    reference_dcf = min_dcf(scores, labels)
    monkeypatch.setattr(scoring, "SPEECHBRAIN_MAX_TRIALS", 10)  # force the sort-based path
    fast_eer = equal_error_rate(scores, labels)
    fast_dcf = min_dcf(scores, labels)
    assert fast_eer["eer"] == pytest.approx(reference_eer["eer"])
    assert fast_eer["threshold"] == pytest.approx(reference_eer["threshold"])
    assert fast_dcf["min_dcf"] == pytest.approx(reference_dcf["min_dcf"])
    assert fast_dcf["threshold"] == pytest.approx(reference_dcf["threshold"])


def test_accuracy_vs_unweighted_accuracy_on_imbalanced_data():
    # 8 items of class 0, 2 of class 1; the classifier always answers 0.
    # WA = 8 / 10 = 80 %; recall(0) = 8/8 = 1, recall(1) = 0/2 = 0 -> UA = 50 %.
    targets = [0] * 8 + [1] * 2
    preds = [0] * 10
    assert accuracy(preds, targets) == pytest.approx(80.0)
    assert unweighted_accuracy(preds, targets, num_classes=2) == pytest.approx(50.0)
    # Logits are accepted (argmax). Class 2 is absent from targets and excluded from UA:
    # recall(0) = 1, recall(1) = 1/2 -> UA = 75 %; WA = 9/10 = 90 %.
    logits = torch.nn.functional.one_hot(torch.tensor([0] * 8 + [1, 2]), 3).float()
    assert accuracy(logits, targets) == pytest.approx(90.0)
    assert unweighted_accuracy(logits, targets, num_classes=3) == pytest.approx(75.0)


def test_cosine_scores_paired_and_all_pairs():
    enroll = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    test = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # pairs: cos(e0, t0) = 1; cos(e1, t1) = 2 / (2 * sqrt 2) = 0.7071
    assert torch.allclose(cosine_scores(enroll, test), torch.tensor([1.0, 0.70710677]))
    # matrix [[cos(e0,t0), cos(e0,t1)], [cos(e1,t0), cos(e1,t1)]] = [[1, .7071], [0, .7071]]
    expected = torch.tensor([[1.0, 0.70710677], [0.0, 0.70710677]])
    assert torch.allclose(cosine_scores(enroll, test, all_pairs=True), expected)
    with pytest.raises(ValueError, match="all_pairs"):
        cosine_scores(enroll, test[:1])


def test_s_norm_hand_computed():
    # trial 0: s = 0.5; enroll cohort [0.1, 0.3, 0.5]: mean 0.3, sample std
    #   sqrt((0.04 + 0 + 0.04) / 2) = 0.2 -> (0.5 - 0.3) / 0.2 = 1.0
    #   test cohort [0.0, 0.2, 0.4]: mean 0.2, std 0.2 -> (0.5 - 0.2) / 0.2 = 1.5
    #   s_norm = (1.0 + 1.5) / 2 = 1.25
    # trial 1: s = 0.0; enroll cohort [0.2, 0.2, 0.6]: mean 1/3, deviations -2/15, -2/15,
    #   4/15, std sqrt((4 + 4 + 16) / 225 / 2) = sqrt(12) / 15 = 0.23094
    #   -> (0 - 1/3) / 0.23094 = -1.44338
    #   test cohort [-0.2, 0.0, 0.2]: mean 0, std 0.2 -> 0
    #   s_norm = -1.44338 / 2 = -0.72169
    scores = torch.tensor([0.5, 0.0])
    enroll_c = torch.tensor([[0.1, 0.3, 0.5], [0.2, 0.2, 0.6]])
    test_c = torch.tensor([[0.0, 0.2, 0.4], [-0.2, 0.0, 0.2]])
    expected = torch.tensor([1.25, -0.72169])
    assert torch.allclose(s_norm(scores, enroll_c, test_c), expected, atol=1e-5)
    # top_k = 2 keeps the 2 highest per row. trial 0: enroll [0.5, 0.3] mean 0.4,
    # std sqrt(0.02) = 0.14142 -> 0.7071; test [0.4, 0.2] mean 0.3 -> 1.4142;
    # s_norm = (0.7071 + 1.4142) / 2 = 1.06066
    top2 = s_norm(scores, enroll_c, test_c, top_k=2)
    assert top2[0].item() == pytest.approx(1.06066, abs=1e-4)
    with pytest.raises(ValueError, match="top_k"):
        s_norm(scores, enroll_c, test_c, top_k=5)


# ---------------------------------------------------------------- streaming S-norm, cohort
from elp.eval.scoring import cohort_statistics, s_norm_trials, select_cohort  # noqa: E402


def _dense_s_norm(embeddings, pairs, cohort, top_k):
    """The previous recipe code: [utts x C] matrix, then rows gathered per trial."""
    utts = sorted(embeddings)
    index = {u: i for i, u in enumerate(utts)}
    matrix = torch.stack([embeddings[u] for u in utts])
    against = cosine_scores(matrix, cohort, all_pairs=True)
    raw = cosine_scores(torch.stack([embeddings[e] for e, _ in pairs]),
                        torch.stack([embeddings[t] for _, t in pairs]))
    return s_norm(raw, against[[index[e] for e, _ in pairs]], against[[index[t] for _, t in pairs]],
                  top_k=top_k)


@pytest.mark.parametrize("top_k", [None, 2, 7])
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_streaming_s_norm_equals_dense(top_k, chunk_size):
    gen = torch.Generator().manual_seed(0)
    embeddings = {f"u{i:02d}": torch.randn(6, generator=gen) for i in range(13)}
    cohort = torch.randn(9, 6, generator=gen)
    utts = sorted(embeddings)
    pairs = [(utts[i], utts[j]) for i in range(13) for j in range(13) if (i * 5 + j) % 4 == 0]
    dense = _dense_s_norm(embeddings, pairs, cohort, top_k)
    streamed = s_norm_trials(embeddings, pairs, cohort, top_k=top_k, chunk_size=chunk_size)
    assert streamed.shape == (len(pairs),)
    assert torch.allclose(streamed, dense, atol=1e-6, rtol=0)
    # without a cohort: plain cosine scores in trial order
    raw = s_norm_trials(embeddings, pairs)
    assert torch.allclose(raw, torch.stack([
        torch.nn.functional.cosine_similarity(embeddings[e], embeddings[t], dim=0) for e, t in pairs]),
        atol=1e-6)


def test_streaming_s_norm_accepts_trial_objects_and_names_missing_utterances():
    from elp.data.kaldi_dir import Trial

    embeddings = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0])}
    cohort = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    as_objects = s_norm_trials(embeddings, [Trial("a", "b", False)], cohort)
    assert torch.equal(as_objects, s_norm_trials(embeddings, [("a", "b")], cohort))
    with pytest.raises(ValueError, match="'zz'"):
        s_norm_trials(embeddings, [("a", "zz")], cohort)


def test_cohort_statistics_chunked_memory_and_values():
    # embedding e = (1, 0); cohort scores 1, 0, -1, 0 (cosines) -> mean 0,
    # unbiased std sqrt((1 + 0 + 1 + 0) / 3) = 0.8165; top_k = 2: [1, 0] -> mean 0.5,
    # std sqrt((0.25 + 0.25) / 1) = 0.7071
    cohort = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -3.0]])
    mean, std = cohort_statistics(torch.tensor([[1.0, 0.0]]), cohort)
    assert mean.item() == pytest.approx(0.0, abs=1e-7) and std.item() == pytest.approx(0.8164966)
    mean, std = cohort_statistics(torch.tensor([[1.0, 0.0]]), cohort, top_k=2)
    assert mean.item() == pytest.approx(0.5) and std.item() == pytest.approx(0.7071068)
    with pytest.raises(ValueError, match="top_k"):
        cohort_statistics(torch.ones(1, 2), cohort, top_k=5)
    with pytest.raises(ValueError, match="same model"):
        cohort_statistics(torch.ones(1, 3), cohort)


def test_cohort_statistics_never_builds_the_full_matrix(monkeypatch):
    # every [rows x C] product is at most chunk_size rows
    seen = []
    real_topk = torch.Tensor.topk

    def spy(self, k, dim=-1, *args, **kwargs):
        seen.append(tuple(self.shape))
        return real_topk(self, k, dim, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "topk", spy)
    cohort_statistics(torch.randn(50, 4), torch.randn(30, 4), top_k=5, chunk_size=8)
    assert seen and max(rows for rows, _ in seen) == 8 and len(seen) == 7  # ceil(50 / 8)


def _speaker_corpus(num_speakers=6, utts_per_speaker=(5, 1, 3, 4, 2, 6)):
    gen = torch.Generator().manual_seed(1)
    embeddings, utt2spk = {}, {}
    for s in range(num_speakers):
        for u in range(utts_per_speaker[s]):
            utt = f"spk{s}-{u:02d}"
            embeddings[utt] = torch.randn(4, generator=gen)
            utt2spk[utt] = f"spk{s}"
    return embeddings, utt2spk


def test_select_cohort_speaker_mean_is_balanced_and_deterministic():
    embeddings, utt2spk = _speaker_corpus()
    cohort, ids = select_cohort(embeddings, utt2spk, size=4, seed=3)
    assert cohort.shape == (4, 4) and len(set(ids)) == 4
    again, again_ids = select_cohort(embeddings, utt2spk, size=4, seed=3)
    assert again_ids == ids and torch.equal(again, cohort)
    # another seed draws other speakers (6 choose 4 = 15 sets; seeds 0..9 give > 1 set)
    assert len({tuple(sorted(select_cohort(embeddings, utt2spk, 4, seed=s)[1])) for s in range(10)}) > 1
    # each row is the mean of the speaker's L2-normalised utterance embeddings
    spk = ids[0]
    members = [torch.nn.functional.normalize(e, dim=0) for u, e in embeddings.items() if utt2spk[u] == spk]
    assert torch.allclose(cohort[0], torch.stack(members).mean(0), atol=1e-7)
    # more cohort entries than speakers: every speaker once
    _, all_ids = select_cohort(embeddings, utt2spk, size=100)
    assert sorted(all_ids) == [f"spk{s}" for s in range(6)]


def test_select_cohort_utterances_spreads_over_speakers():
    embeddings, utt2spk = _speaker_corpus()
    _, ids = select_cohort(embeddings, utt2spk, size=12, mode="utterances", seed=0)
    assert len(ids) == len(set(ids)) == 12
    counts = {}
    for u in ids:
        counts[utt2spk[u]] = counts.get(utt2spk[u], 0) + 1
    # 6 speakers with 5, 1, 3, 4, 2, 6 utterances; rounds of one per speaker:
    # round 1: 6 (all), round 2: 5 (spk1 exhausted) -> 11, round 3: 1 more -> 12.
    assert len(counts) == 6 and counts["spk1"] == 1
    assert sorted(counts.values()) == [1, 2, 2, 2, 2, 3]
    # the first sorted ids (the old cohort) would be spk0's 5 and spk1's 1 and spk2's ...
    with pytest.raises(ValueError, match="utt2spk"):
        select_cohort({"x": torch.ones(2), **embeddings}, utt2spk, size=4)
    with pytest.raises(ValueError, match="mode"):
        select_cohort(embeddings, utt2spk, size=4, mode="first")


def test_cohort_utterance_ids_then_select_cohort():
    from elp.eval.scoring import cohort_utterance_ids

    embeddings, utt2spk = _speaker_corpus()
    ids = cohort_utterance_ids(utt2spk, num_speakers=4, per_speaker=2, seed=5)
    assert ids == cohort_utterance_ids(utt2spk, num_speakers=4, per_speaker=2, seed=5)
    speakers = {utt2spk[u] for u in ids}
    assert len(speakers) == 4
    assert all(sum(utt2spk[u] == s for u in ids) == min(2, sum(v == s for v in utt2spk.values()))
               for s in speakers)
    cohort, rows = select_cohort({u: embeddings[u] for u in ids}, utt2spk, size=4, seed=5)
    assert sorted(rows) == sorted(speakers) and cohort.shape == (4, 4)
