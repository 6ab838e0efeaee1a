"""elp.eval.significance: the paired bootstrap on constructed systems, and each statistic against
the scorer of elp.eval.scoring at unit weights."""

import numpy as np
import pytest

from elp.eval.scoring import accuracy, equal_error_rate, unweighted_accuracy, word_error_rate
from elp.eval.significance import STATISTICS, paired_bootstrap


def correct_items(rng, n, rate):
    return (rng.random(n) < rate).astype(float)


@pytest.mark.parametrize("statistic", sorted(STATISTICS))
def test_identical_systems_give_p_one(statistic):
    rng = np.random.default_rng(3)
    n = 120
    items = {
        "wer": np.c_[rng.integers(0, 4, n), rng.integers(3, 12, n)],
        "accuracy": correct_items(rng, n, 0.7),
        "ua": np.c_[correct_items(rng, n, 0.7), rng.integers(0, 4, n)],
        "eer": np.c_[rng.normal(size=n), np.r_[np.ones(n // 2), np.zeros(n - n // 2)]],
    }[statistic]
    test = paired_bootstrap(items, items.copy(), statistic, resamples=300, seed=1)
    assert test.p_value == 1.0
    assert test.difference == 0.0 and test.ci_low == 0.0 and test.ci_high == 0.0
    assert test.value_a == test.value_b


def test_clearly_different_accuracy_is_significant():
    rng = np.random.default_rng(0)
    a, b = correct_items(rng, 400, 0.60), correct_items(rng, 400, 0.90)
    test = paired_bootstrap(a, b, "accuracy", resamples=2000, seed=0)
    assert test.p_value < 0.01
    assert test.value_a == pytest.approx(100 * a.mean()) and test.value_b == pytest.approx(100 * b.mean())
    assert test.ci_low > 0 and test.difference == pytest.approx(test.value_b - test.value_a)


def test_clearly_different_wer_and_eer_are_significant():
    rng = np.random.default_rng(1)
    words = rng.integers(5, 20, 300)
    worse = np.c_[rng.binomial(words, 0.30), words]
    better = np.c_[rng.binomial(words, 0.10), words]
    assert paired_bootstrap(worse, better, "wer", resamples=1000).p_value < 0.01
    labels = np.r_[np.ones(200), np.zeros(200)]
    weak = np.c_[rng.normal(labels * 0.5), labels]
    strong = np.c_[rng.normal(labels * 3.0), labels]
    test = paired_bootstrap(weak, strong, "eer", resamples=1000)
    assert test.p_value < 0.01 and test.difference < -10


def test_a_small_difference_is_not_significant():
    rng = np.random.default_rng(2)
    a = correct_items(rng, 200, 0.7)
    b = a.copy()
    b[:2] = 1 - b[:2]  # two items flipped
    assert paired_bootstrap(a, b, "accuracy", resamples=2000).p_value > 0.2


def test_deterministic_with_a_seed():
    rng = np.random.default_rng(4)
    a, b = correct_items(rng, 150, 0.6), correct_items(rng, 150, 0.7)
    first = paired_bootstrap(a, b, "accuracy", resamples=500, seed=7)
    again = paired_bootstrap(a, b, "accuracy", resamples=500, seed=7)
    other = paired_bootstrap(a, b, "accuracy", resamples=500, seed=8)
    assert first == again
    assert other.difference == first.difference
    assert (other.p_value, other.ci_low, other.ci_high) != (first.p_value, first.ci_low, first.ci_high)


def test_unit_weights_equal_the_scorers():
    rng = np.random.default_rng(5)
    ones = lambda n: np.ones((1, n))  # noqa: E731
    refs = ["a b c d", "e f", "g h i"]
    hyps = ["a x c", "e f g", ""]
    per_utt = [word_error_rate([r], [h]) for r, h in zip(refs, hyps)]
    items = np.array([(u["ins"] + u["del"] + u["sub"], u["num_words"]) for u in per_utt])
    assert STATISTICS["wer"](items, ones(3))[0] == pytest.approx(word_error_rate(refs, hyps)["wer"])
    preds, targets = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    correct = (preds == targets).astype(float)
    assert STATISTICS["accuracy"](correct, ones(50))[0] == pytest.approx(accuracy(preds, targets))
    assert STATISTICS["ua"](np.c_[correct, targets], ones(50))[0] == pytest.approx(
        unweighted_accuracy(preds, targets, 4))
    for n in (40, 2500):  # SpeechBrain's path and the sort-based one; rounded scores make ties
        scores = np.round(rng.normal(size=n), 1)
        labels = (rng.random(n) < 0.4).astype(float)
        assert STATISTICS["eer"](np.c_[scores, labels], ones(n))[0] == pytest.approx(
            equal_error_rate(scores, labels)["eer"])


def test_weights_count_repeated_items():
    items = np.array([[0.9, 1], [0.2, 1], [0.4, 0], [0.1, 0]])
    repeated = np.array([[0.9, 1], [0.9, 1], [0.2, 1], [0.4, 0], [0.1, 0], [0.1, 0], [0.1, 0]])
    weighted = STATISTICS["eer"](items, np.array([[2.0, 1.0, 1.0, 3.0]]))[0]
    assert weighted == pytest.approx(equal_error_rate(repeated[:, 0], repeated[:, 1])["eer"])


def test_strata_average_their_values():
    a = np.r_[np.ones(10), np.zeros(30)]        # stratum x: 10/10, stratum y: 0/30
    strata = ["x"] * 10 + ["y"] * 30
    test = paired_bootstrap(a, a, "accuracy", strata=strata, resamples=50)
    assert test.value_a == pytest.approx(50.0)  # the mean of 100 and 0, not 10/40
    assert test.strata == 2 and test.items == 40


def test_bad_input_is_refused():
    items = np.ones(5)
    with pytest.raises(ValueError, match="unknown statistic 'bleu'"):
        paired_bootstrap(items, items, "bleu")
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(items, np.ones(6), "accuracy")
    with pytest.raises(ValueError, match="one label per item"):
        paired_bootstrap(items, items, "accuracy", strata=["a", "b"])
    with pytest.raises(ValueError, match=r"wer takes items \[N, 2\]"):
        paired_bootstrap(items, items, "wer")
