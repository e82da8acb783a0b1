"""The evaluation gate's verdict: the figures a candidate reached, held to its project's recipe.

Under the default rule, `non_inferiority` (training.evidence), each check is a test with its
estimate, its interval and its sample size: a candidate is rejected only when the evidence says it
is worse than the serving version at the recipe's confidence, and a check passes only when its
sample was large enough to have caught a candidate worse by the recipe's margin. A check whose
sample was too small says so. The KL check is a trust region: it fails when its lower bound is
above `max_kl`.

Verdicts: "rejected" (a check failed), "waiting" (a required check could not run or decide), "passed" (a
check of the candidate's quality — held-out accuracy or reward-model win rate — passed), else
"unchecked": no check could judge the candidate's quality, and the recipe's `gate_unchecked` decides
whether it serves. An unchecked candidate is never shown as passed.

The `threshold` rule is the older one: each figure against its threshold, point for point.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from training.evidence import NOT_WORSE, TOO_THIN, WORSE, decide
from webapp.runs.recipe import GATE_CHECKS, Recipe

CHECK_NAMES = {"heldout_accuracy": "held-out preference accuracy", "win_rate": "reward-model win rate", "kl": "KL"}
QUALITY_CHECKS = ("heldout_accuracy", "win_rate")  # KL bounds the step; it says nothing of better or worse


def gate_judge(
    figures: dict[str, dict[str, Any]], recipe: Recipe, *, against: str, skipped: dict[str, str]
) -> dict[str, Any]:
    """One entry per check: its figure, the threshold it was held to and whether it passed (True,
    False, or None when it could not run or could not tell), with its interval and sample size.
    Verdict as in the module docstring."""
    thresholds = {"heldout_accuracy": recipe.min_heldout_accuracy, "win_rate": recipe.min_win_rate, "kl": recipe.max_kl}
    checks = []
    for name in GATE_CHECKS:
        threshold = thresholds[name]
        label = CHECK_NAMES[name]
        entry: dict[str, Any] = {"name": name, "threshold": threshold, "required": name in recipe.required_checks}
        if name in figures:
            figure = figures[name]
            value = float(figure["value"])
            controlled = figure.get("length_controlled")
            aside = f" (length-controlled {controlled:.3f})" if controlled is not None else ""
            entry.update(
                value=round(value, 4),
                n=figure.get("n"),
                detail={k: v for k, v in figure.items() if k not in ("value", "n")},
            )
            if recipe.gate_rule == "threshold":
                passed = value <= threshold if name == "kl" else value >= threshold
                sign = ("<=" if passed else ">") if name == "kl" else (">=" if passed else "<")
                entry.update(passed=passed, summary=f"{label} {value:.3f} {sign} {threshold:g}{aside}")
            else:
                entry.update(_evidence(name, figure, threshold, recipe, label=label, aside=aside))
        else:
            why = skipped.get(name, "not measured")
            entry.update(value=None, passed=None, skipped=why, summary=f"{label} not checked: {why}")
        checks.append(entry)
    failed = [c["summary"] for c in checks if c["passed"] is False]
    # a required check that could not run, or ran on too little evidence to decide, holds the candidate
    waiting = [c["summary"] for c in checks if c["passed"] is None and c["required"]]
    judged = [c for c in checks if c["name"] in QUALITY_CHECKS and c["passed"]]
    if failed:
        verdict, reason = "rejected", "; ".join(failed)
    elif waiting:
        verdict, reason = "waiting", "a required check could not decide: " + "; ".join(waiting)
    elif judged:
        verdict, reason = "passed", "; ".join(c["summary"] for c in checks if c["passed"])
    else:
        verdict = "unchecked"
        reason = "no check could judge its quality: " + "; ".join(c["summary"] for c in checks)
    gate = {"verdict": verdict, "against": against, "reason": reason, "checks": checks, "rule": recipe.gate_rule}
    if verdict == "unchecked":
        gate["unchecked"] = recipe.gate_unchecked  # what the recipe does with it: serve, wait or arena
    return gate


def _evidence(
    name: str, figure: dict[str, Any], threshold: float, recipe: Recipe, *, label: str, aside: str
) -> dict[str, Any]:
    """A check under the non-inferiority rule: passed, its interval, and a summary that says why."""
    level = f"{recipe.gate_confidence:.0%}"
    if name == "kl":
        mean, low, high = float(figure["value"]), float(figure["value"]), float(figure["value"])
        if figure.get("sd") is not None and int(figure.get("n") or 0) > 1:
            spread = NormalDist().inv_cdf(recipe.gate_confidence) * float(figure["sd"]) / math.sqrt(int(figure["n"]))
            low, high = mean - spread, mean + spread
        passed = low <= threshold
        summary = (
            f"{label} {mean:.3f} nats, {level} interval [{low:.3f}, {high:.3f}] (n={figure.get('n')}) "
            + ("within" if passed else "beyond")
            + f" {threshold:g}"
        )
        return {"passed": passed, "interval": [round(low, 4), round(high, 4)], "summary": summary}
    wins = int(figure["wins"])
    losses = int(figure["losses"])
    ties = int(figure.get("ties", figure.get("undecided", 0)))
    evidence = decide(
        wins=wins,
        losses=losses,
        ties=ties,
        threshold=threshold,
        margin=recipe.gate_margin,
        confidence=recipe.gate_confidence,
    )
    outcome = {WORSE: False, NOT_WORSE: True, TOO_THIN: None}[evidence.verdict]
    said = {
        WORSE: f"below {threshold:g}: worse than {against_word(threshold)}",
        NOT_WORSE: f"not worse than {against_word(threshold)} by {recipe.gate_margin:g}",
        TOO_THIN: f"too few to tell a candidate worse by {recipe.gate_margin:g} "
        f"(it would catch one {evidence.power:.0%} of the time)",
    }[evidence.verdict]
    summary = (
        f"{label} {evidence.estimate:.3f}, {level} interval [{evidence.low:.3f}, {evidence.high:.3f}] "
        f"on {evidence.n} pairs ({evidence.ties} tied){aside}: {said}"
    )
    return {"passed": outcome, "interval": [round(evidence.low, 4), round(evidence.high, 4)],
            "evidence": evidence.as_dict(), "summary": summary}  # fmt: skip


def against_word(threshold: float) -> str:
    return "the serving version" if threshold == 0.5 else f"the threshold {threshold:g}"


def reward_gate_judge(
    *, candidate: list[float], serving: list[float] | None, longer_chosen: list[bool | None], recipe: Recipe,
    against: str,
) -> dict[str, Any]:  # fmt: skip
    """A candidate reward model against the serving one on the project's held-out pairs: each list
    holds, per pair, s(chosen) - s(rejected) under that model (a positive margin is right);
    `longer_chosen` whether the chosen answer is the longer one (None: same length).

    - Accuracy: a paired test on the pairs the two models order differently (training.evidence,
      non-inferiority at the recipe's confidence and margin): rejected when the candidate is worse
      on evidence; "unchecked" when too few pairs tell them apart.
    - Calibration: the mean log loss, -log sigmoid(margin), of each; rejected when the candidate's
      is higher by more than two standard errors of the paired difference.
    - The length rule ("the longer answer wins") on the same pairs, beside them, for reading.

    With no serving reward model the candidate serves ("first")."""
    n = len(candidate)
    right = [m > 0 for m in candidate]
    accuracy = sum(0.5 if m == 0 else float(m > 0) for m in candidate) / n if n else None
    decided = [c for c in longer_chosen if c is not None]
    length_rule = sum(decided) / len(decided) if decided else None
    loss = [_log_loss(m) for m in candidate]
    gate: dict[str, Any] = {
        "against": against,
        "n": n,
        "accuracy": _round(accuracy),
        "log_loss": _round(sum(loss) / n if n else None),
        "length_rule_accuracy": _round(length_rule),
        "checks": [],
    }
    if serving is None:
        return {**gate, "verdict": "passed", "reason": "the project's first reward model"}
    serving_loss = [_log_loss(m) for m in serving]
    gate.update(
        serving_accuracy=_round(sum(0.5 if m == 0 else float(m > 0) for m in serving) / n if n else None),
        serving_log_loss=_round(sum(serving_loss) / n if n else None),
    )
    if n < recipe.min_heldout_pairs:
        why = f"{n} held-out pairs, fewer than {recipe.min_heldout_pairs}: no check could judge it"
        return {**gate, "verdict": "unchecked", "reason": why}
    wins = sum(1 for c, s in zip(right, serving, strict=True) if c and not s > 0)
    losses = sum(1 for c, s in zip(right, serving, strict=True) if s > 0 and not c)
    evidence = decide(wins=wins, losses=losses, ties=n - wins - losses, threshold=0.5, margin=recipe.gate_margin,
                      confidence=recipe.gate_confidence)  # fmt: skip
    accuracy_check = {
        "name": "heldout_accuracy",
        "summary": f"ordered right {wins} held-out pairs the serving model got wrong, and wrong {losses} it got right",
        "passed": {WORSE: False, NOT_WORSE: True, TOO_THIN: None}[evidence.verdict],
        **evidence.as_dict(),
    }
    diffs = [c - s for c, s in zip(loss, serving_loss, strict=True)]
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else 0.0
    worse_calibrated = mean > 2 * se and mean > 0
    calibration_check = {
        "name": "calibration",
        "summary": f"log loss {mean:+.3f} ± {se:.3f} against the serving model's",
        "passed": not worse_calibrated,
    }
    gate["checks"] = [accuracy_check, calibration_check]
    if accuracy_check["passed"] is False or worse_calibrated:
        failed = [c["summary"] for c in gate["checks"] if c["passed"] is False]
        return {**gate, "verdict": "rejected", "reason": f"worse than {against}: " + "; ".join(failed)}
    if accuracy_check["passed"] is None:
        return {**gate, "verdict": "unchecked", "reason": f"too few held-out pairs tell it from {against}"}
    return {**gate, "verdict": "passed", "reason": f"not worse than {against} on {n} held-out pairs"}


def _log_loss(margin: float) -> float:
    return math.log1p(math.exp(-margin)) if margin > -30 else -margin


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
