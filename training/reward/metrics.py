"""Accuracy of a reward model on held-out pairs: overall, per group (annotator, task, source...), per
ensemble member, with the ECE (:func:`evaluate_pairs`, :func:`pairwise_metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.length import length_correlation, longer_wins_accuracy
from training.reward.calibration import expected_calibration_error, preference_probabilities
from training.reward.examples import PreferenceExample
from training.reward.scoring import RewardEnsemble


def pairwise_accuracy(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float:
    """Share of pairs where the chosen answer scores higher; an exact tie of scores counts ½."""
    if len(chosen_scores) != len(rejected_scores):
        raise ValueError(f"got {len(chosen_scores)} chosen scores but {len(rejected_scores)} rejected scores")
    if not chosen_scores:
        raise ValueError("pairwise_accuracy needs at least one pair")
    hits = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    return sum(hits) / len(hits)


def accuracy_by_group(
    chosen_scores: Sequence[float], rejected_scores: Sequence[float], groups: Sequence[str | None]
) -> dict[str, dict[str, float]]:
    """Pairwise accuracy within each group: ``{group: {"accuracy", "n"}}``; pairs without a group are skipped."""
    if not len(chosen_scores) == len(rejected_scores) == len(groups):
        raise ValueError(
            f"got {len(chosen_scores)} chosen scores, {len(rejected_scores)} rejected scores and {len(groups)} groups"
        )
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if g is not None:
            members.setdefault(g, []).append(i)
    return {
        g: {
            "accuracy": pairwise_accuracy([chosen_scores[i] for i in idx], [rejected_scores[i] for i in idx]),
            "n": len(idx),
        }
        for g, idx in sorted(members.items())
    }


def pairwise_metrics(
    chosen_scores: Sequence[float], rejected_scores: Sequence[float], groups: Sequence[str | None] | None = None
) -> dict[str, Any]:
    """``{"n", "accuracy", "ece", "by_group"}`` for pairs scored (chosen, rejected)."""
    groups = list(groups) if groups is not None else [None] * len(chosen_scores)
    return {
        "n": len(chosen_scores),
        "accuracy": pairwise_accuracy(chosen_scores, rejected_scores),
        "ece": expected_calibration_error(preference_probabilities(chosen_scores, rejected_scores)),
        "by_group": accuracy_by_group(chosen_scores, rejected_scores, groups),
    }


def evaluate_pairs(
    ensemble: RewardEnsemble, examples: Sequence[PreferenceExample], *, mode: str = "mean"
) -> dict[str, Any]:
    """Accuracy, ECE and per-group accuracy of ``ensemble`` (its ``mode`` score) on the non-tie pairs.

    Returns :func:`pairwise_metrics` plus ``"members"``: the same metrics for each member alone
    (without ``by_group``), ``"longer_wins_accuracy"`` (the length rule's accuracy on the same
    pairs) and ``"score_length_correlation"`` (of the scores with the answers' lengths; None when
    either is constant).
    """
    pairs = [e for e in examples if isinstance(e, PreferenceExample) and not e.tie]
    if not pairs:
        raise ValueError("evaluate_pairs needs at least one non-tie PreferenceExample")
    prompts = [p.prompt for p in pairs] * 2
    scored = ensemble.score(prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    if mode not in scored or mode == "members":
        raise ValueError(f"mode={mode!r} must be one of ('mean', 'std', 'min', 'uwo')")
    n = len(pairs)
    combined = scored[mode]
    metrics = pairwise_metrics(combined[:n], combined[n:], [p.group for p in pairs])
    # has it learnt people or length? the rule "the longer answer wins" on the same pairs, and how
    # much the scores follow length (training.length)
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]
    metrics["longer_wins_accuracy"] = longer_wins_accuracy(chosen, rejected)
    metrics["score_length_correlation"] = length_correlation(combined, chosen + rejected)
    metrics["members"] = [
        {k: v for k, v in pairwise_metrics(s[:n], s[n:]).items() if k != "by_group"} for s in scored["members"]
    ]
    return metrics
