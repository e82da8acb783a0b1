"""A leaderboard of policy versions from blind comparisons: a Bradley-Terry model with bootstrap
intervals, as Chatbot Arena ranks models.

Each comparison is ``(a, b, outcome)``: ``outcome`` is 1 when people preferred ``a``'s answer, 0
when they preferred ``b``'s and ½ for a tie. The model: ``P(a beats b) = sigmoid(θ_a - θ_b)``,
fitted by maximum likelihood (Newton's method) with a small Gaussian prior on each ``θ`` (it keeps
a version that won or lost every comparison finite). Ratings are on the Elo scale,
``1000 + 400 θ / ln 10``, centred on the mean version. The 95% interval of each rating comes from
refitting on comparisons drawn with replacement (the bootstrap).

Pure Python; a few dozen versions at most.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

ELO_SCALE = 400.0 / math.log(10.0)
ELO_BASE = 1000.0


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the Hessian is small and positive definite)."""
    n = len(vector)
    a = [[*row, v] for row, v in zip(matrix, vector, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        for row in range(col + 1, n):
            factor = a[row][col] / a[col][col]
            for k in range(col, n + 1):
                a[row][k] -= factor * a[col][k]
    out = [0.0] * n
    for row in range(n - 1, -1, -1):
        out[row] = (a[row][n] - sum(a[row][k] * out[k] for k in range(row + 1, n))) / a[row][row]
    return out


def bradley_terry(
    comparisons: Sequence[tuple[str, str, float]], *, prior: float = 0.1, steps: int = 100
) -> dict[str, float]:
    """Each player's strength ``θ`` (natural log-odds scale, mean 0) from ``comparisons``."""
    players = sorted({p for a, b, _ in comparisons for p in (a, b)})
    if not players:
        return {}
    for a, b, outcome in comparisons:
        if a == b:
            raise ValueError(f"a comparison needs two different players, got {a!r} twice")
        if not 0.0 <= outcome <= 1.0:
            raise ValueError(f"an outcome is 1 (a won), 0 (b won) or 0.5 (a tie), got {outcome}")
    index = {p: i for i, p in enumerate(players)}
    theta = [0.0] * len(players)
    for _ in range(steps):
        grad = [-prior * t for t in theta]
        # the fit only sees differences: a ridge of at least 1e-8 keeps the Hessian invertible
        ridge = max(prior, 1e-8)
        hess = [[ridge if i == j else 0.0 for j in range(len(players))] for i in range(len(players))]
        for a, b, outcome in comparisons:
            i, j = index[a], index[b]
            p = _sigmoid(theta[i] - theta[j])
            grad[i] += outcome - p
            grad[j] -= outcome - p
            w = p * (1.0 - p)
            hess[i][i] += w
            hess[j][j] += w
            hess[i][j] -= w
            hess[j][i] -= w
        step = _solve(hess, grad)
        theta = [t + s for t, s in zip(theta, step, strict=True)]
        if max(abs(s) for s in step) < 1e-9:
            break
    mean = sum(theta) / len(theta)
    return {p: theta[index[p]] - mean for p in players}


def to_elo(theta: float) -> float:
    return ELO_BASE + ELO_SCALE * theta


def leaderboard(
    comparisons: Sequence[tuple[str, str, float]],
    *,
    rounds: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per player, best first: ``name``, ``rating`` (Elo scale), ``low`` and ``high`` (the
    bootstrap interval), ``n`` comparisons, ``wins``, ``ties``, ``losses``."""
    if not comparisons:
        return []
    fitted = bradley_terry(comparisons)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {p: [] for p in fitted}
    for _ in range(rounds):
        drawn = [comparisons[rng.randrange(len(comparisons))] for _ in comparisons]
        refit = bradley_terry(drawn)
        for player in fitted:
            if player in refit:  # a player can miss a resample; it is simply not counted there
                samples[player].append(refit[player])
    tail = (1.0 - confidence) / 2.0
    rows = []
    for player, theta in fitted.items():
        mine = [c for c in comparisons if player in c[:2]]
        outcomes = [o if a == player else 1.0 - o for a, _, o in mine]
        values = sorted(samples[player]) or [theta]
        low = values[math.floor(tail * (len(values) - 1))]
        high = values[math.ceil((1.0 - tail) * (len(values) - 1))]
        rows.append(
            {
                "name": player,
                "rating": to_elo(theta),
                "low": to_elo(low),
                "high": to_elo(high),
                "n": len(mine),
                "wins": sum(1 for o in outcomes if o == 1.0),
                "ties": sum(1 for o in outcomes if o == 0.5),
                "losses": sum(1 for o in outcomes if o == 0.0),
            }
        )
    return sorted(rows, key=lambda r: -r["rating"])
