"""How much a gate check's figure can say: exact intervals, one-sided tests and power.

The gate compares a candidate with the version serving on a few noisy held-out pairs or prompts.
Each such check is a paired comparison with three outcomes per item: the candidate is preferred
(a win), the serving version is (a loss), or neither (a tie, or an undecided reward-model verdict).
Ties carry no information on which version is better and are left out, as in the sign test; the
share of wins among the rest estimates `p`, the chance the candidate is preferred, and a candidate
equal to the serving version has p = 0.5.

Non-inferiority as the gate uses it (`decide`): with `confidence` c,

- **worse**: the exact (Clopper-Pearson) one-sided upper bound of p at c is below the threshold
  (0.5 by default): the evidence says the candidate is worse. A candidate equal to the threshold is
  rejected at most 1 - c of the time, whatever the sample size.
- **not worse**: otherwise, when either the lower bound is above threshold - margin (the classical
  non-inferiority test: the data show the candidate is at most `margin` worse), or the check had
  the power to tell: a candidate truly worse by the margin (p = threshold - margin) would have been
  found worse at least `POWER` of the time with this many items. Either way a candidate worse by
  the margin passes at most 1 - POWER of the time (at most 1 - confidence through the first door,
  and only where the second is shut).
- **too thin**: neither: the sample is too small to tell a candidate worse by the margin from an
  equal one, and the gate says so instead of passing it.

Pure Python (`math.lgamma`): no SciPy at run time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

POWER = 0.8  # a "not worse" verdict needs this chance of catching a candidate worse by the margin
WORSE, NOT_WORSE, TOO_THIN = "worse", "not worse", "too thin"


def _log_binom_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, sum(math.exp(_log_binom_pmf(i, n, p)) for i in range(k + 1)))


def upper_bound(wins: int, n: int, confidence: float) -> float:
    """Clopper-Pearson one-sided upper bound of p after `wins` of `n`: the p at which P(X <= wins)
    is 1 - confidence (1.0 when wins == n). Bisection: the CDF falls as p rises."""
    _check(wins, n, confidence)
    if wins >= n:
        return 1.0
    alpha, lo, hi = 1.0 - confidence, wins / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binom_cdf(wins, n, mid) > alpha else (lo, mid)
    return hi


def lower_bound(wins: int, n: int, confidence: float) -> float:
    """Clopper-Pearson one-sided lower bound of p: by symmetry, 1 - the upper bound of the losses."""
    _check(wins, n, confidence)
    return 1.0 - upper_bound(n - wins, n, confidence)


def worst_wins_rejected(n: int, threshold: float, confidence: float) -> int:
    """The most wins out of `n` at which the upper bound is still below `threshold` (-1: none). The
    bound rises with the wins, so a bisection finds it in O(log n) bounds."""
    lo, hi = -1, n  # upper_bound(lo) < threshold holds (vacuously at -1); find the last such k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if upper_bound(mid, n, confidence) < threshold:
            lo = mid
        else:
            hi = mid - 1
    return lo


def power(n: int, *, threshold: float, margin: float, confidence: float) -> float:
    """Chance that a candidate whose true p is `threshold - margin` is found worse with `n` items."""
    if n < 1:
        return 0.0
    k = worst_wins_rejected(n, threshold, confidence)
    return binom_cdf(k, n, max(0.0, threshold - margin)) if k >= 0 else 0.0


@dataclass(frozen=True)
class Evidence:
    """One check's verdict on a paired comparison, with everything a reader needs to weigh it."""

    verdict: str  # WORSE, NOT_WORSE or TOO_THIN
    estimate: float  # wins / (wins + losses); 0.5 where every item was a tie
    low: float  # one-sided bounds at `confidence`, together a (2c - 1) two-sided interval
    high: float
    n: int  # items that decided (wins + losses)
    ties: int
    power: float  # chance this n had of catching a candidate worse by the margin

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "estimate": round(self.estimate, 4),
            "interval": [round(self.low, 4), round(self.high, 4)],
            "n_decided": self.n,
            "ties": self.ties,
            "power": round(self.power, 3),
        }


def decide(*, wins: int, losses: int, ties: int = 0, threshold: float, margin: float, confidence: float) -> Evidence:
    """The non-inferiority verdict on `wins` against `losses` (module docstring)."""
    if wins < 0 or losses < 0 or ties < 0:
        raise ValueError(f"counts must be >= 0, got wins={wins} losses={losses} ties={ties}")
    if not 0 < margin < 1:
        raise ValueError(f"margin={margin!r} must be in (0, 1)")
    n = wins + losses
    if n == 0:
        return Evidence(TOO_THIN, 0.5, 0.0, 1.0, 0, ties, 0.0)
    high, low = upper_bound(wins, n, confidence), lower_bound(wins, n, confidence)
    strength = power(n, threshold=threshold, margin=margin, confidence=confidence)
    if high < threshold:
        verdict = WORSE
    elif low > threshold - margin or strength >= POWER:
        verdict = NOT_WORSE
    else:
        verdict = TOO_THIN
    return Evidence(verdict, wins / n, low, high, n, ties, strength)


def _check(wins: int, n: int, confidence: float) -> None:
    if n < 1 or not 0 <= wins <= n:
        raise ValueError(f"need 0 <= wins <= n and n >= 1, got wins={wins} n={n}")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be in (0.5, 1)")
