"""The evaluation gate's verdict: the figures a candidate reached, held to its project's recipe."""

from __future__ import annotations

from typing import Any

from webapp.runs.recipe import GATE_CHECKS, Recipe

CHECK_NAMES = {"heldout_accuracy": "held-out preference accuracy", "win_rate": "reward-model win rate", "kl": "KL"}


def gate_judge(
    figures: dict[str, dict[str, Any]], recipe: Recipe, *, against: str, skipped: dict[str, str]
) -> dict[str, Any]:
    """One entry per check: its figure, the threshold it was held to and whether it passed, or why
    it could not run. Verdict: "rejected" when a check failed, "waiting" when a check the recipe
    requires could not run, else "passed"."""
    thresholds = {"heldout_accuracy": recipe.min_heldout_accuracy, "win_rate": recipe.min_win_rate, "kl": recipe.max_kl}
    checks = []
    for name in GATE_CHECKS:
        threshold = thresholds[name]
        label = CHECK_NAMES[name]
        entry: dict[str, Any] = {"name": name, "threshold": threshold, "required": name in recipe.required_checks}
        if name in figures:
            value = float(figures[name]["value"])
            passed = value <= threshold if name == "kl" else value >= threshold
            sign = ("<=" if passed else ">") if name == "kl" else (">=" if passed else "<")
            controlled = figures[name].get("length_controlled")
            aside = f" (length-controlled {controlled:.3f})" if controlled is not None else ""
            entry.update(
                value=round(value, 4),
                passed=passed,
                n=figures[name].get("n"),
                detail={k: v for k, v in figures[name].items() if k not in ("value", "n")},
                summary=f"{label} {value:.3f} {sign} {threshold:g}{aside}",
            )
        else:
            why = skipped.get(name, "not measured")
            entry.update(value=None, passed=None, skipped=why, summary=f"{label} not checked: {why}")
        checks.append(entry)
    failed = [c["summary"] for c in checks if c["passed"] is False]
    waiting = [c["summary"] for c in checks if c["passed"] is None and c["required"]]
    if failed:
        verdict, reason = "rejected", "; ".join(failed)
    elif waiting:
        verdict, reason = "waiting", "a required check could not run: " + "; ".join(waiting)
    else:
        ran = [c["summary"] for c in checks if c["passed"]]
        verdict, reason = "passed", "; ".join(ran) if ran else "no check could run"
    return {"verdict": verdict, "against": against, "reason": reason, "checks": checks}
