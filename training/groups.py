"""Groups of people who prefer differently: a mixture of Bradley-Terry models fitted by EM over annotators.

Annotators do not share one preference (MaxMin-RLHF, Chakraborty et al. 2024). Each of k groups has
its own linear Bradley-Terry reward ``r_g(y) = w_g · φ(y)`` over answer features φ; every annotator
belongs to one group, unknown, and all of an annotator's labels come from that group's model:

    P(labels of annotator a) = Σ_g π_g Π_{(chosen, rejected) of a} sigmoid(w_g · (φ(chosen) - φ(rejected)))

EM (`fit_groups`): the E-step gives each annotator's responsibility per group from the likelihood of
all of their labels; the M-step refits each group's weights by logistic regression on every label,
weighted by its annotator's responsibility, under a Gaussian prior on the weights, and the mixing
shares π. Several seeded
starts; the one with the highest likelihood is kept. `choose_groups` compares k by BIC, so one
population is not split for nothing.

Features (`text_features`): hashed words of the answer (unigrams, signed hashing, counts on a log
scale) and its log length: no model, no download, the same on every machine; a caller may pass its
own feature vectors (sentence embeddings, say) instead.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

WORD = re.compile(r"[a-z0-9']+")


def text_features(text: str, dims: int = 128) -> np.ndarray:
    """Hashed bag of words (log counts, signed) plus log(1 + words) in the last slot: ``(dims + 1,)``."""
    vector = np.zeros(dims + 1)
    words = WORD.findall(text.lower())
    counts: dict[str, int] = {}
    for word in words:
        counts[word] = counts.get(word, 0) + 1
    for word, count in counts.items():
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "little") % dims
        sign = 1.0 if digest[4] & 1 else -1.0
        vector[slot] += sign * math.log1p(count)
    vector[dims] = math.log1p(len(words))
    return vector


@dataclass(frozen=True)
class GroupFit:
    """The fitted mixture: who is in which group and what each group prefers."""

    k: int
    annotators: list[str]
    responsibilities: np.ndarray  # (annotators, k)
    weights: np.ndarray  # (k, features): each group's linear reward
    shares: np.ndarray  # (k,) mixing shares π
    log_likelihood: float
    bic: float
    iterations: int
    history: list[float] = field(default_factory=list)

    def group_of(self) -> dict[str, int]:
        """Each annotator's most likely group."""
        return {a: int(np.argmax(self.responsibilities[i])) for i, a in enumerate(self.annotators)}

    def members(self) -> list[list[str]]:
        """The annotators of each group, in order (a group may be empty)."""
        assigned = self.group_of()
        return [[a for a in self.annotators if assigned[a] == g] for g in range(self.k)]


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _fit_weights(diffs: np.ndarray, sample_weight: np.ndarray, l2: float, start: np.ndarray) -> np.ndarray:
    """Weighted logistic regression of "chosen beats rejected" on the feature differences, with a Gaussian
    prior (``l2 / 2 · |w|²``, not scaled by the data: a group with few labels is held nearer 0 than one
    with many, so one annotator alone does not make a group of their own), by Newton steps."""
    w = start.copy()
    for _ in range(25):
        margin = diffs @ w  # (labels,)
        p = 1.0 / (1.0 + np.exp(-margin))
        gradient = -(diffs.T @ (sample_weight * (1.0 - p))) + l2 * w
        curvature = (diffs.T * (sample_weight * p * (1.0 - p))) @ diffs + l2 * np.eye(len(w))
        step = np.linalg.solve(curvature, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-6:
            break
    return w


def fit_groups(
    annotators: Sequence[str],
    chosen: np.ndarray,
    rejected: np.ndarray,
    k: int,
    *,
    l2: float = 1.0,
    starts: int = 8,
    iterations: int = 100,
    seed: int = 0,
) -> GroupFit:
    """EM for a k-group mixture of Bradley-Terry models over annotators (module docstring).

    ``annotators[i]`` labelled pair i, whose answers have features ``chosen[i]`` and ``rejected[i]``
    (``(labels, features)`` arrays)."""
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    if len(annotators) != len(chosen) or chosen.shape != rejected.shape or chosen.ndim != 2:
        raise ValueError("need one annotator and one (chosen, rejected) feature row per label")
    if not len(annotators):
        raise ValueError("fit_groups needs at least one label")
    names = sorted(set(annotators))
    if k > len(names):
        raise ValueError(f"{k} groups need at least {k} annotators, got {len(names)}")
    who = np.array([names.index(a) for a in annotators])  # (labels,)
    diffs = np.asarray(chosen, dtype=float) - np.asarray(rejected, dtype=float)  # (labels, features)
    rng = np.random.default_rng(seed)
    # each annotator's own reward, to start from groups of annotators whose rewards point alike
    own = np.stack([_fit_weights(diffs[who == a], np.ones(int((who == a).sum())), l2, np.zeros(diffs.shape[1]))
                    for a in range(len(names))])  # fmt: skip
    own /= np.linalg.norm(own, axis=1, keepdims=True) + 1e-12
    best: GroupFit | None = None
    for start in range(starts):
        # half the starts from k-means++ on those directions, half from random partitions
        labels = _kmeans(own, k, rng) if start % 2 == 0 else rng.integers(0, k, size=len(names))
        resp = np.full((len(names), k), 0.1 / max(k - 1, 1))  # (annotators, k): a soft start near the partition
        resp[np.arange(len(names)), labels] = 0.9 if k > 1 else 1.0
        weights = np.zeros((k, diffs.shape[1]))
        history: list[float] = []
        loglik = -math.inf
        for it in range(iterations):  # noqa: B007 (its last value is the iteration count)
            shares = np.clip(resp.mean(axis=0), 1e-6, None)
            shares /= shares.sum()
            for g in range(k):  # M-step: each group's reward from the labels of its (soft) members
                weights[g] = _fit_weights(diffs, resp[who, g], l2, weights[g])
            per_label = _log_sigmoid(diffs @ weights.T)  # (labels, k)
            per_annotator = np.zeros((len(names), k))
            np.add.at(per_annotator, who, per_label)
            joint = per_annotator + np.log(shares)  # (annotators, k)
            norm = np.logaddexp.reduce(joint, axis=1, keepdims=True)
            resp = np.exp(joint - norm)  # E-step
            new = float(norm.sum()) - 0.5 * l2 * float((weights**2).sum())  # the MAP objective EM climbs
            history.append(new)
            if abs(new - loglik) < 1e-6 * max(1.0, abs(new)):
                loglik = new
                break
            loglik = new
        n_params = k * diffs.shape[1] + (k - 1)
        bic = n_params * math.log(len(annotators)) - 2 * loglik
        fit = GroupFit(k, names, resp, weights.copy(), shares, loglik, bic, it + 1, history)
        if best is None or fit.log_likelihood > best.log_likelihood:
            best = fit
    assert best is not None
    return _ordered(best)


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, rounds: int = 20) -> np.ndarray:
    """k-means++ seeding and a few Lloyd rounds; each point's cluster."""
    centres = [points[rng.integers(len(points))]]
    while len(centres) < k:
        distance = np.min([((points - c) ** 2).sum(axis=1) for c in centres], axis=0)
        total = float(distance.sum())
        pick = rng.choice(len(points), p=distance / total) if total > 0 else rng.integers(len(points))
        centres.append(points[pick])
    centre = np.stack(centres)
    for _ in range(rounds):
        labels = np.argmin(((points[:, None, :] - centre[None]) ** 2).sum(axis=2), axis=1)
        for g in range(k):
            if (labels == g).any():
                centre[g] = points[labels == g].mean(axis=0)
    return labels


def _ordered(fit: GroupFit) -> GroupFit:
    """Groups by size, largest first, so that group 0 is the majority on every run."""
    order = np.argsort(-fit.responsibilities.sum(axis=0), kind="stable")
    return GroupFit(
        fit.k,
        fit.annotators,
        fit.responsibilities[:, order],
        fit.weights[order],
        fit.shares[order],
        fit.log_likelihood,
        fit.bic,
        fit.iterations,
        fit.history,
    )


def choose_groups(
    annotators: Sequence[str],
    chosen: np.ndarray,
    rejected: np.ndarray,
    *,
    max_k: int,
    seed: int = 0,
    holdout_every: int = 5,
    min_gain: float = 1.0,
) -> tuple[GroupFit, dict[int, float]]:
    """How many groups the labels show: for k = 1..max_k (at most one group per annotator), fit on all
    but every `holdout_every`-th label of each annotator and score the held-out labels by the mixture's
    prediction (each annotator's group posterior from their other labels). A k wins over a smaller one
    only where its held-out log-likelihood is at least `min_gain` nats higher; the winner is refitted
    on every label. Returns it and each k's held-out figure.
    (BIC would count every feature weight of every group as a free parameter, though the weights are
    regularised, and so never split a population of a few hundred labels.)"""
    names = np.array(list(annotators))
    seen: dict[str, int] = {}
    held = np.zeros(len(names), dtype=bool)
    for i, a in enumerate(names):
        seen[a] = seen.get(a, 0) + 1
        held[i] = seen[a] % holdout_every == 0
    diffs = np.asarray(chosen, dtype=float) - np.asarray(rejected, dtype=float)
    scores: dict[int, float] = {}
    for k in range(1, min(max_k, len(set(annotators))) + 1):
        fit = fit_groups(list(names[~held]), chosen[~held], rejected[~held], k, seed=seed)
        index = {a: i for i, a in enumerate(fit.annotators)}
        total = 0.0
        for row in np.flatnonzero(held):
            posterior = fit.responsibilities[index[names[row]]] if names[row] in index else fit.shares
            p_groups = 1.0 / (1.0 + np.exp(-(fit.weights @ diffs[row])))  # (k,)
            total += math.log(max(float(posterior @ p_groups), 1e-12))
        scores[k] = total
    best_k = 1
    for k in sorted(scores):  # more groups only for a clear gain on the held-out labels
        if scores[k] > scores[best_k] + min_gain:
            best_k = k
    return fit_groups(annotators, chosen, rejected, best_k, seed=seed), scores


def group_agreement(
    fit: GroupFit, annotators: Sequence[str], chosen: np.ndarray, rejected: np.ndarray
) -> list[float | None]:
    """Per group, the share of its members' labels its own reward agrees with (None for an empty group)."""
    assigned = fit.group_of()
    diffs = np.asarray(chosen, dtype=float) - np.asarray(rejected, dtype=float)
    out: list[float | None] = []
    for g in range(fit.k):
        rows = [i for i, a in enumerate(annotators) if assigned[a] == g]
        out.append(float(np.mean(diffs[rows] @ fit.weights[g] > 0)) if rows else None)
    return out
