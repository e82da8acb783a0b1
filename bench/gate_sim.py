"""How often does the gate get it wrong? Its held-out check, measured on simulated candidates.

A held-out pair has a true preference; the candidate's implicit reward agrees with it with
probability `a` (its clean accuracy); the stored label is then flipped with probability `noise`
(25%: the closed-loop benchmark's annotators). The gate sees only whether the candidate favours the
label, which happens with p = a(1 - noise) + (1 - a)noise: an equal candidate (a = 0.5) has p = 0.5,
and label noise squeezes every gap towards 0.5 (a clean gap of 0.3 is 0.15 on noisy labels).

For each number of held-out pairs (10, 30, 100) and each candidate (equal, better, worse by half
the margin, worse by the margin) the bench prints how often the gate rejects it, passes it, and
finds the evidence too thin (the candidate is then "unchecked", and the recipe decides), under the
default rule (`non_inferiority`, training.evidence) and under the older point threshold (accuracy
below 0.5 rejects; under 10 pairs the check was skipped). The probabilities are exact sums over the
binomial distribution of wins; a Monte Carlo run that flips labels one by one checks them
(`--reps`, with its standard error). The reward-model win rate is the same test on prompts (its
undecided prompts, like ties, left out), so these figures hold for it too.

    python bench/gate_sim.py                # the table in docs/benchmarks.md
    python bench/gate_sim.py --margin 0.1   # another margin
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.evidence import NOT_WORSE, TOO_THIN, WORSE, decide


def observed(clean: float, noise: float) -> float:
    """The chance the candidate favours the stored label, given its clean accuracy."""
    return clean * (1 - noise) + (1 - clean) * noise


@cache
def verdict(wins: int, n: int, margin: float, confidence: float) -> str:
    return decide(wins=wins, losses=n - wins, threshold=0.5, margin=margin, confidence=confidence).verdict


def point_rule(wins: int, n: int) -> str:
    """The older gate: accuracy below 0.5 rejects, anything else passes; under 10 pairs, not checked."""
    if n < 10:
        return TOO_THIN
    return WORSE if wins / n < 0.5 else NOT_WORSE


def exact(n: int, p: float, rule) -> dict[str, float]:
    """P(verdict) when each of `n` pairs is a win with probability p."""
    out = {WORSE: 0.0, NOT_WORSE: 0.0, TOO_THIN: 0.0}
    for k in range(n + 1):
        out[rule(k, n)] += math.comb(n, k) * p**k * (1 - p) ** (n - k)
    return out


def monte_carlo(n: int, clean: float, noise: float, rule, reps: int, rng: random.Random) -> dict[str, float]:
    """The same by simulation: a true preference, the candidate's view of it, a flipped label."""
    counts = {WORSE: 0, NOT_WORSE: 0, TOO_THIN: 0}
    for _ in range(reps):
        wins = 0
        for _ in range(n):
            agrees = rng.random() < clean  # the candidate favours the truly better answer
            flipped = rng.random() < noise  # the annotator's label says the other one
            wins += agrees != flipped
        counts[rule(wins, n)] += 1
    return {k: v / reps for k, v in counts.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,30,100", help="held-out pairs")
    parser.add_argument("--noise", type=float, default=0.25, help="share of labels flipped")
    parser.add_argument("--margin", type=float, default=0.15, help="the recipe's gate_margin (noisy-label units)")
    parser.add_argument("--confidence", type=float, default=0.95, help="the recipe's gate_confidence")
    parser.add_argument("--reps", type=int, default=4000, help="Monte Carlo repetitions per cell (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    clean_gap = args.margin / (1 - 2 * args.noise)  # the clean-accuracy gap the margin stands for
    candidates = {
        "equal": 0.5,
        f"better by {clean_gap:.2f} clean": 0.5 + clean_gap,
        f"worse by {clean_gap / 2:.2f} clean (half the margin)": 0.5 - clean_gap / 2,
        f"worse by {clean_gap:.2f} clean (the margin)": 0.5 - clean_gap,
    }
    ni = lambda k, n: verdict(k, n, args.margin, args.confidence)  # noqa: E731
    rng = random.Random(args.seed)
    print(f"noise {args.noise:.0%}, margin {args.margin} on noisy labels ({clean_gap:.2f} clean), "
          f"confidence {args.confidence:.0%}; exact probabilities, Monte Carlo check, {args.reps} reps")  # fmt: skip
    print()
    print(
        "| pairs | candidate | p (noisy) | rule | rejected | passed | too thin (unchecked) | MC rejected | MC passed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    worst_equal_reject, worst_margin_pass = 0.0, 0.0
    for n in sizes:
        for name, clean in candidates.items():
            p = observed(clean, args.noise)
            for rule_name, rule in (("non-inferiority", ni), ("point 0.5", point_rule)):
                got = exact(n, p, rule)
                mc = monte_carlo(n, clean, args.noise, rule, args.reps, rng) if args.reps else None
                se = lambda q: math.sqrt(max(q * (1 - q), 1e-12) / args.reps)  # noqa: E731
                mc_text = (
                    f"{mc[WORSE]:.3f} ± {se(mc[WORSE]):.3f} | {mc[NOT_WORSE]:.3f} ± {se(mc[NOT_WORSE]):.3f}"
                    if mc
                    else "- | -"
                )
                print(f"| {n} | {name} | {p:.3f} | {rule_name} | {got[WORSE]:.3f} | {got[NOT_WORSE]:.3f} | "
                      f"{got[TOO_THIN]:.3f} | {mc_text} |")  # fmt: skip
                if rule_name == "non-inferiority":
                    if name == "equal":
                        worst_equal_reject = max(worst_equal_reject, got[WORSE])
                    if name.endswith("(the margin)"):
                        worst_margin_pass = max(worst_margin_pass, got[NOT_WORSE])
    print()
    print(
        f"non-inferiority: an equal candidate is rejected at most {worst_equal_reject:.1%} of the time "
        f"(target <= 5%); one worse by the margin passes at most {worst_margin_pass:.1%} (target <= 20%)"
    )


if __name__ == "__main__":
    main()
