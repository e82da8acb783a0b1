"""The gate's statistics against independent references (statsmodels, exact binomial sums)."""

from __future__ import annotations

import math

import pytest
from statsmodels.stats.proportion import proportion_confint

from training.evidence import NOT_WORSE, TOO_THIN, WORSE, binom_cdf, decide, lower_bound, power, upper_bound


@pytest.mark.parametrize(("wins", "n"), [(0, 10), (3, 10), (5, 10), (9, 10), (41, 100), (150, 300)])
def test_bounds_match_clopper_pearson(wins: int, n: int):
    # a one-sided bound at 95% is an edge of the two-sided 90% Clopper-Pearson ("beta") interval
    low, high = proportion_confint(wins, n, alpha=0.10, method="beta")
    assert upper_bound(wins, n, 0.95) == pytest.approx(high, abs=1e-6)
    assert lower_bound(wins, n, 0.95) == pytest.approx(low if wins else 0.0, abs=1e-6)


def test_binomial_cdf_is_the_exact_sum():
    n, p = 12, 0.3
    for k in range(n + 1):
        exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
        assert binom_cdf(k, n, p) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("n", [10, 30, 100])
def test_an_equal_candidate_is_rejected_at_most_one_minus_the_confidence(n: int):
    rejected = sum(
        math.comb(n, k) * 0.5**n
        for k in range(n + 1)
        if decide(wins=k, losses=n - k, threshold=0.5, margin=0.15, confidence=0.95).verdict == WORSE
    )
    assert 0 < rejected <= 0.05


@pytest.mark.parametrize("n", [10, 30, 100, 300])
def test_one_worse_by_the_margin_passes_at_most_one_time_in_five(n: int):
    p = 0.35
    passed = sum(
        math.comb(n, k) * p**k * (1 - p) ** (n - k)
        for k in range(n + 1)
        if decide(wins=k, losses=n - k, threshold=0.5, margin=0.15, confidence=0.95).verdict == NOT_WORSE
    )
    assert passed <= 0.2


def test_power_grows_with_the_sample_and_thin_samples_say_so():
    figures = [power(n, threshold=0.5, margin=0.15, confidence=0.95) for n in (10, 30, 100)]
    assert figures[0] < figures[1] < figures[2] and figures[2] > 0.8 > figures[1]
    thin = decide(wins=5, losses=5, threshold=0.5, margin=0.15, confidence=0.95)
    assert thin.verdict == TOO_THIN and thin.estimate == 0.5 and thin.low < 0.35 < 0.5 < thin.high
    none = decide(wins=0, losses=0, ties=7, threshold=0.5, margin=0.15, confidence=0.95)
    assert none.verdict == TOO_THIN and none.n == 0 and none.ties == 7


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="margin"):
        decide(wins=1, losses=1, threshold=0.5, margin=0.0, confidence=0.95)
    with pytest.raises(ValueError, match="confidence"):
        upper_bound(1, 2, 1.0)
    with pytest.raises(ValueError, match="wins"):
        upper_bound(3, 2, 0.95)
