"""Active selection: how much a person's label of an item would teach the reward model.

An item shows K answers to one prompt. Each member of the reward ensemble scores every answer; for
each pair of answers the members' score gaps (answer i minus answer j) are compared. Where the
members agree on the gap, a label mostly confirms what the ensemble knows; where their gaps spread,
the ensemble is unsure which answer people prefer, and a label settles it. The disagreement of an
item is the mean, over its pairs of answers, of the variance of the members' gaps (query by
committee on the Bradley-Terry gap).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations


def gap_variance(member_scores: Sequence[Sequence[float]]) -> float:
    """``member_scores``: members x answers. The mean over answer pairs of the population variance,
    across members, of the score gap; 0 for one member or one answer."""
    if not member_scores:
        raise ValueError("gap_variance needs the scores of at least one member")
    n_answers = len(member_scores[0])
    if any(len(row) != n_answers for row in member_scores):
        raise ValueError("every member must score the same answers")
    pairs = list(combinations(range(n_answers), 2))
    if len(member_scores) < 2 or not pairs:
        return 0.0
    total = 0.0
    for i, j in pairs:
        gaps = [row[i] - row[j] for row in member_scores]
        mean = sum(gaps) / len(gaps)
        total += sum((g - mean) ** 2 for g in gaps) / len(gaps)
    return total / len(pairs)


def item_disagreements(member_scores: Sequence[Sequence[float]], sizes: Sequence[int]) -> list[float]:
    """``member_scores``: members x all answers of several items, one item after another;
    ``sizes``: each item's number of answers. Returns each item's :func:`gap_variance`."""
    if member_scores and any(len(row) != sum(sizes) for row in member_scores):
        raise ValueError(f"the members scored {len(member_scores[0])} answers, the items have {sum(sizes)}")
    out, start = [], 0
    for size in sizes:
        out.append(gap_variance([row[start : start + size] for row in member_scores]))
        start += size
    return out
