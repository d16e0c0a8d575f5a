"""Intervals, the paired difference, McNemar's test and the verdict they give."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from transfer_lab.uncertainty import (
    Bootstrap,
    Difference,
    format_p,
    holm,
    mcnemar_exact,
    outcome,
    paired_difference,
    summarise_accuracy,
    verdict,
    wilson_interval,
)


def test_bootstrap_interval_covers_a_known_proportion_about_95_percent_of_the_time():
    """200 simulated test sets of 300 images from a classifier that is right with p = 0.85."""
    rng = np.random.default_rng(1)
    p, n, draws = 0.85, 300, 200
    covered = 0
    for seed in range(draws):
        correct = rng.random(n) < p
        s = summarise_accuracy(correct, Bootstrap(resamples=1000, seed=seed))
        assert s.low <= s.mean <= s.high
        covered += s.low <= p <= s.high
    assert 0.90 <= covered / draws <= 0.99, covered / draws


def test_interval_width_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(0)
    small = summarise_accuracy(rng.random(400) < 0.9)
    large = summarise_accuracy(rng.random(6400) < 0.9)
    # Binomial standard error x 3.92 for 95%: ~0.059 at n = 400, ~0.015 at n = 6400.
    assert (small.high - small.low) == pytest.approx(3.92 * np.sqrt(0.09 / 400), rel=0.2)
    assert (large.high - large.low) == pytest.approx(3.92 * np.sqrt(0.09 / 6400), rel=0.2)


def test_same_seed_same_interval_and_another_seed_another():
    correct = np.random.default_rng(3).random(500) < 0.7
    a, b = summarise_accuracy(correct, Bootstrap(seed=5)), summarise_accuracy(correct, Bootstrap(seed=5))
    assert (a.mean, a.low, a.high) == (b.mean, b.low, b.high)
    c = summarise_accuracy(correct, Bootstrap(seed=6))
    assert (c.low, c.high) != (a.low, a.high)


def test_all_right_falls_back_to_the_wilson_interval():
    s = summarise_accuracy(np.ones((2, 50), dtype=bool))
    assert s.mean == 1.0 and s.high == 1.0
    assert (s.low, s.high) == wilson_interval(50, 50, 0.95)
    assert 0.9 < s.low < 0.95  # Wilson at 50/50: 0.929
    none = summarise_accuracy(np.zeros((1, 50), dtype=bool))
    assert none.low == 0.0 and 0.05 < none.high < 0.1


def test_wilson_matches_its_formula_at_an_interior_point():
    # 81 of 100 at 95%: the textbook value [0.7222, 0.8749].
    low, high = wilson_interval(81, 100, 0.95)
    assert low == pytest.approx(0.7222, abs=1e-4) and high == pytest.approx(0.8749, abs=1e-4)


def test_repeats_give_mean_and_sd_and_their_spread_widens_the_interval():
    rng = np.random.default_rng(0)
    n = 1000
    # Three training runs that differ by several points: the pooled interval must hold that spread.
    runs = np.stack([rng.random(n) < p for p in (0.80, 0.86, 0.92)])
    s = summarise_accuracy(runs)
    accuracies = runs.mean(axis=1)
    assert s.repeats == 3
    assert s.mean == pytest.approx(accuracies.mean())
    assert s.sd == pytest.approx(accuracies.std(ddof=1))
    one = summarise_accuracy(runs[1])
    assert np.isnan(one.sd)
    assert (s.high - s.low) > 1.5 * (one.high - one.low)


def test_no_images_gives_nan():
    s = summarise_accuracy(np.zeros((1, 0), dtype=bool))
    assert np.isnan(s.mean) and np.isnan(s.low) and np.isnan(s.high)


@pytest.mark.parametrize("only_first, only_second, both, neither", [
    (0, 0, 50, 10), (3, 0, 40, 2), (12, 5, 300, 20), (40, 61, 800, 99), (7, 7, 10, 0), (1500, 1400, 100, 0),
])
def test_mcnemar_equals_scipys_binomial_test_on_the_discordant_pairs(only_first, only_second, both, neither):
    first = np.array([True] * only_first + [False] * only_second + [True] * both + [False] * neither)
    second = np.array([False] * only_first + [True] * only_second + [True] * both + [False] * neither)
    order = np.random.default_rng(0).permutation(len(first))
    p = mcnemar_exact(first[order], second[order])
    n = only_first + only_second
    expected = binomtest(only_first, n, 0.5).pvalue if n else 1.0
    assert p == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert p == mcnemar_exact(second[order], first[order])  # symmetric


def test_paired_interval_is_narrower_than_the_unpaired_one():
    """Two classifiers that share most of their errors: the pairing cancels image difficulty."""
    rng = np.random.default_rng(2)
    n = 2000
    hard = rng.random(n) < 0.15
    a = ~hard & (rng.random(n) < 0.99)
    b = ~hard & (rng.random(n) < 0.97)
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(a.mean() - b.mean())
    assert d.low < d.mean < d.high
    sa, sb = summarise_accuracy(a), summarise_accuracy(b)
    unpaired = np.hypot(sa.high - sa.low, sb.high - sb.low)
    assert (d.high - d.low) < 0.6 * unpaired


def test_identical_classifiers_differ_by_exactly_zero():
    correct = np.random.default_rng(0).random(300) < 0.8
    d = paired_difference(correct, correct)
    assert (d.mean, d.low, d.high) == (0.0, 0.0, 0.0)
    assert mcnemar_exact(correct, correct) == 1.0


def test_paired_difference_refuses_different_images():
    with pytest.raises(ValueError, match="same images"):
        paired_difference(np.ones(10, bool), np.ones(11, bool))


def _pair(rng, n, p_first, p_second):
    base = rng.random(n)
    return base < p_first, base < p_second


def test_verdict_says_who_beats_whom_and_when_they_are_tied():
    rng = np.random.default_rng(0)
    a, b = _pair(rng, 2000, 0.90, 0.85)  # b's errors include all of a's: 5 points, clearly
    v = verdict("A", "B", a, b)
    assert v.outcome == "better" and v.p < 0.001
    assert v.sentence.startswith(f"A beats B by {100 * (a.mean() - b.mean()):.1f} points [")
    assert v.sentence.endswith("(p < 0.001)")
    w = verdict("B", "A", b, a)
    assert w.outcome == "worse" and w.sentence.startswith("A beats B by ")
    assert w.difference.mean == pytest.approx(-v.difference.mean)
    # The example: close accuracies on 359 images are a tie, said with the p-value.
    c, d = _pair(rng, 359, 0.944, 0.941)
    t = verdict("A", "B", c, d)
    assert t.outcome == "tied"
    assert t.sentence.startswith("A and B are tied (difference ")
    assert t.sentence.endswith(f", {format_p(t.p)})")
    assert t.difference.low <= 0 <= t.difference.high or t.p >= 0.05


def test_verdict_needs_both_the_interval_and_the_test():
    """McNemar alone or the interval alone is not enough: a borderline pair is tied."""
    rng = np.random.default_rng(11)
    for _ in range(50):
        a = rng.random(200) < 0.8
        b = rng.random(200) < 0.75
        v = verdict("A", "B", a, b)
        decisive = v.p < 0.05 and (v.difference.low > 0 or v.difference.high < 0)
        assert (v.outcome != "tied") == decisive


def test_format_p():
    assert format_p(0.8) == "p = 0.8"
    assert format_p(0.0123) == "p = 0.012"
    assert format_p(1.0) == "p = 1"
    assert format_p(0.0004) == "p < 0.001"


def test_holm_on_known_values():
    # By hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max
    # 0.02, 0.03, 0.06, 0.06; back in the given order. (statsmodels' multipletests(method="holm")
    # gives the same; it is not installed here.)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.2, 0.6, 0.9]), [0.6, 1.0, 1.0])  # capped at 1
    assert holm([0.037]).tolist() == [0.037]  # one comparison: the identity
    assert holm([]).shape == (0,)


def test_holm_gives_equal_p_values_equal_adjustments_and_leaves_nan_out():
    np.testing.assert_allclose(holm([0.01, 0.01, 0.02]), [0.03, 0.03, 0.03])
    np.testing.assert_allclose(holm([0.02, 0.01, 0.01]), [0.03, 0.03, 0.03])
    out = holm([0.01, np.nan, 0.04])  # two comparisons, not three
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04])


def test_holm_equals_the_closed_test_of_bonferroni_tests():
    """Holm is the closed testing procedure whose local tests are Bonferroni's, so its adjusted
    p for hypothesis i is the largest, over every set S holding i, of min(1, |S| min_{j in S} p_j):
    a definition independent of the sorting that holm() does."""
    from itertools import combinations

    rng = np.random.default_rng(3)
    for _ in range(30):
        m = int(rng.integers(1, 7))
        p = rng.random(m) ** 3  # many small ones
        brute = [max(min(1.0, len(s) * min(p[list(s)])) for k in range(1, m + 1)
                     for s in combinations(range(m), k) if i in s) for i in range(m)]
        np.testing.assert_allclose(holm(p), brute)
        assert np.all(holm(p) >= p)


def test_outcome_needs_the_p_value_and_the_interval_on_one_side():
    assert outcome(Difference(0.05, 0.01, 0.09), 0.01, 0.05) == "better"
    assert outcome(Difference(-0.05, -0.09, -0.01), 0.01, 0.05) == "worse"
    assert outcome(Difference(0.05, 0.01, 0.09), 0.06, 0.05) == "tied"   # e.g. after Holm
    assert outcome(Difference(0.05, -0.01, 0.09), 0.01, 0.05) == "tied"
