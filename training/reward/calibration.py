"""Calibration: the model's probability of each pair's outcome, the expected calibration error (ECE) of
those probabilities, and temperature scaling (:func:`fit_temperature`), fitted on held-out pairs after
training (``RewardConfig.calibrate``) and saved with each model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.reward.config import CALIBRATION_MIN_PAIRS, REWARD_META_FILE
from training.reward.examples import PreferenceExample
from training.reward.scoring import RewardScorer, _column_means

TEMPERATURE_RANGE = (1e-6, 1e6)  # where fit_temperature looks (a barely trained model can need T near 0.01)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def preference_probabilities(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> list[float]:
    """The model's probability that chosen beats rejected, ``sigmoid(r_c - r_r)``, for each pair."""
    if len(chosen_scores) != len(rejected_scores):
        raise ValueError(f"got {len(chosen_scores)} chosen scores but {len(rejected_scores)} rejected scores")
    return [_sigmoid(float(c) - float(r)) for c, r in zip(chosen_scores, rejected_scores, strict=True)]


def expected_calibration_error(probabilities: Sequence[float], n_bins: int = 10) -> float:
    """ECE of pairwise predictions ``p = sigmoid(r_c - r_r)`` (each pair's true winner is the chosen side).

    Every label is "chosen wins", so the plain binary ECE would only measure how close ``p`` is to 1.
    This is the usual top-label ECE instead: the model predicts the side it favours, with confidence
    ``max(p, 1 - p)``, and is right when ``p > ½`` (½ credit at ``p = ½``). Confidences fall in
    ``n_bins`` equal bins over [½, 1]; ECE = Σ_bins (n_bin / n) · |accuracy_bin - mean confidence_bin|.
    0 is perfectly calibrated; a model that says 0.9 and is right 60% of the time scores 0.3.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r} must be a positive integer")
    if not probabilities:
        raise ValueError("expected_calibration_error needs at least one probability")
    bins: list[list[tuple[float, float]]] = [[] for _ in range(n_bins)]
    for p in probabilities:
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probabilities must be in [0, 1], got {p!r}")
        confidence = max(p, 1.0 - p)
        correct = 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
        index = min(int((confidence - 0.5) * 2 * n_bins), n_bins - 1)
        bins[index].append((confidence, correct))
    n = len(probabilities)
    return sum(len(b) / n * abs(sum(c for _, c in b) / len(b) - sum(conf for conf, _ in b) / len(b)) for b in bins if b)


def _pins_temperature(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> bool:
    """Whether the pairs have a best temperature: some ranked right and some wrong. Ranked all right,
    the loss keeps falling as T goes to 0 (all wrong: to infinity), and the pairs say nothing about
    how confident the model should be."""
    return len({c > r for c, r in zip(chosen_scores, rejected_scores, strict=True) if c != r}) == 2


def fit_temperature(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float:
    """Temperature scaling (Guo et al. 2017) for a reward model: the ``T`` that minimises the
    held-out pairs' mean ``-log sigmoid((r_c - r_r) / T)``.

    The loss is convex in ``1 / T``, so unimodal in ``log(1 / T)``, which is found by golden-section
    search over ``TEMPERATURE_RANGE`` on a log scale: an overconfident model gets ``T > 1``, an
    underconfident one ``T < 1``. Pairs that the model ranks all right, or all wrong, have no
    minimum (see :func:`_pins_temperature`) and are refused.
    """
    if len(chosen_scores) != len(rejected_scores):
        raise ValueError(f"got {len(chosen_scores)} chosen scores but {len(rejected_scores)} rejected scores")
    gaps = [float(c) - float(r) for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    if not gaps:
        raise ValueError("fit_temperature needs at least one pair")
    if not all(math.isfinite(g) for g in gaps):
        raise ValueError("fit_temperature needs finite scores")
    if not _pins_temperature(chosen_scores, rejected_scores):
        raise ValueError("fit_temperature needs pairs ranked some right and some wrong; these have no best temperature")

    def loss(log_inverse: float) -> float:  # mean -log sigmoid(gap / T), computed stably, at log(1 / T)
        inverse = math.exp(log_inverse)
        return sum(max(-inverse * g, 0.0) + math.log1p(math.exp(-abs(inverse * g))) for g in gaps) / len(gaps)

    low, high = -math.log(TEMPERATURE_RANGE[1]), -math.log(TEMPERATURE_RANGE[0])  # the range of log(1 / T)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(80):  # the bracket shrinks by 0.618 per step: 80 steps take it below 1e-16 of its width
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return math.exp(-(low + high) / 2.0)


def _calibrate_members(
    paths: Sequence[str], eval_examples: Sequence[PreferenceExample], batch_size: int
) -> dict[str, Any]:
    """Fit each saved model's temperature on the held-out pairs and record it in its metadata file.

    Returns ``temperatures`` (one per model, fitted on all the pairs) and the held-out pairs' ECE of
    the ensemble's mean score before (``ece_before``) and after (``ece_after``); or, with fewer than
    ``CALIBRATION_MIN_PAIRS`` non-tie pairs, or pairs that a model ranks all right (or all wrong), only
    ``skipped`` (why), and the models keep temperature 1.
    So that ``ece_after`` is not read on the very pairs a temperature was fitted on, it is
    cross-fitted: the even-numbered pairs are scaled by temperatures fitted on the odd-numbered
    ones, and the other way round (by the full fit where a half alone pins nothing down).
    """
    pairs = [e for e in eval_examples if isinstance(e, PreferenceExample) and not e.tie]
    if len(pairs) < CALIBRATION_MIN_PAIRS:
        return {"skipped": f"{len(pairs)} held-out pairs, fewer than the {CALIBRATION_MIN_PAIRS} a temperature needs"}
    prompts = [p.prompt for p in pairs] * 2
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    n = len(pairs)
    before, after, temperatures = [], [], []
    halves = [list(range(0, n, 2)), list(range(1, n, 2))]
    for path in paths:
        scorer = RewardScorer.load(path, batch_size=batch_size)
        scorer.temperature = 1.0  # fit on the model's own outputs, even if it was calibrated before
        scores = scorer.score(prompts, completions)
        if not _pins_temperature(scores[:n], scores[n:]):
            return {"skipped": f"the {n} held-out pairs do not pin a temperature down (the model ranks all one way)"}
        temperature = fit_temperature(scores[:n], scores[n:])
        crossed = list(scores)
        for fit_on, apply_to in (halves, halves[::-1]):
            chosen, rejected = [scores[i] for i in fit_on], [scores[n + i] for i in fit_on]
            # a half the model ranks all one way has no fit of its own: the other half takes the full one
            t = fit_temperature(chosen, rejected) if _pins_temperature(chosen, rejected) else temperature
            for i in apply_to:
                crossed[i], crossed[n + i] = scores[i] / t, scores[n + i] / t
        temperatures.append(temperature)
        before.append(scores)
        after.append(crossed)
    # written only once every model has a temperature: a skip above leaves all of them at 1
    for path, temperature in zip(paths, temperatures, strict=True):
        meta_file = Path(path) / REWARD_META_FILE
        meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "temperature": temperature}, indent=2))

    def mean_ece(per_model: list[list[float]]) -> float:
        mean = _column_means(per_model)
        return expected_calibration_error(preference_probabilities(mean[:n], mean[n:]))

    return {"temperatures": temperatures, "ece_before": mean_ece(before), "ece_after": mean_ece(after), "n_pairs": n}
