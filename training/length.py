"""Does a reward model learn what people prefer, or only that longer answers win?

Three figures, measured beside a reward model's accuracy and the gate's win rate:

- :func:`longer_wins_accuracy`: the accuracy of the rule "the longer answer wins" on the same
  pairs; a reward model that does no better than it has learnt length, not people;
- :func:`length_correlation`: Pearson's correlation of the scores with the answers' lengths;
- :func:`length_controlled_win_rate`: a win rate with the length difference taken out, as
  AlpacaEval's length-controlled win rate does (Dubois et al. 2024): a logistic model of each
  outcome on ``tanh(length difference / its standard deviation)`` is fitted by maximum likelihood,
  and the win rate is read off it at a length difference of zero.

Lengths are characters of the answer text. Pure Python, no dependency.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def longer_wins_accuracy(chosen: Sequence[str], rejected: Sequence[str]) -> float:
    """Share of pairs whose chosen answer is the longer one; equal lengths count ½."""
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError("longer_wins_accuracy needs as many chosen as rejected answers, at least one")
    hits = [1.0 if len(c) > len(r) else 0.5 if len(c) == len(r) else 0.0 for c, r in zip(chosen, rejected, strict=True)]
    return sum(hits) / len(hits)


def length_correlation(scores: Sequence[float], texts: Sequence[str]) -> float | None:
    """Pearson's correlation of ``scores`` with the length of ``texts``; None when either is constant."""
    if len(scores) != len(texts):
        raise ValueError(f"got {len(scores)} scores for {len(texts)} texts")
    lengths = [float(len(t)) for t in texts]
    if len(scores) < 2 or len(set(lengths)) < 2 or len(set(scores)) < 2:
        return None
    return statistics.correlation([float(s) for s in scores], lengths)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def length_controlled_win_rate(
    outcomes: Sequence[float],
    candidate_lengths: Sequence[int],
    serving_lengths: Sequence[int],
    *,
    l2: float = 0.1,
    steps: int = 50,
) -> float:
    """The candidate's win rate at equal length: ``sigmoid(a)`` of the fitted model
    ``P(win) = sigmoid(a + b * tanh(d / sd))``, ``d`` the candidate's length minus the serving
    one's. ``outcomes``: 1 a win, 0 a loss, ½ undecided (a soft label). Newton's method on the
    log-likelihood, with a small L2 penalty on ``b`` (a few prompts cannot make it infinite).
    Without any length difference it is the plain win rate."""
    n = len(outcomes)
    if n == 0 or len(candidate_lengths) != n or len(serving_lengths) != n:
        raise ValueError("length_controlled_win_rate needs one outcome and two lengths per prompt, at least one")
    if any(not 0.0 <= y <= 1.0 for y in outcomes):
        raise ValueError("outcomes are 1 (win), 0 (loss) or in between (undecided)")
    diffs = [float(c - s) for c, s in zip(candidate_lengths, serving_lengths, strict=True)]
    spread = statistics.pstdev(diffs)
    plain = sum(outcomes) / n
    if spread == 0.0:
        return plain
    xs = [math.tanh(d / spread) for d in diffs]
    clipped = min(max(plain, 1e-3), 1 - 1e-3)
    a, b = math.log(clipped / (1 - clipped)), 0.0
    for _ in range(steps):
        ps = [_sigmoid(a + b * x) for x in xs]
        grad_a = sum(y - p for y, p in zip(outcomes, ps, strict=True))
        grad_b = sum((y - p) * x for y, p, x in zip(outcomes, ps, xs, strict=True)) - l2 * b
        w = [p * (1 - p) for p in ps]
        h_aa = sum(w) + 1e-9
        h_ab = sum(wi * x for wi, x in zip(w, xs, strict=True))
        h_bb = sum(wi * x * x for wi, x in zip(w, xs, strict=True)) + l2
        det = h_aa * h_bb - h_ab * h_ab
        if det <= 0:
            break
        step_a = (h_bb * grad_a - h_ab * grad_b) / det
        step_b = (h_aa * grad_b - h_ab * grad_a) / det
        a, b = a + step_a, b + step_b
        if abs(step_a) < 1e-10 and abs(step_b) < 1e-10:
            break
    return _sigmoid(a)
