"""Online DPO's data: pairs the current policy just wrote, labelled by a reward ensemble where its
members agree, and sent to people where they do not; then mixed with people's labels.

A pair is labelled only where the ensemble's bounds agree, as the gate's win rate judges: with
``d_k`` member k's score of the first answer minus the second's, the first is preferred when
``mean(d) - std(d) > 0``, the second when ``mean(d) + std(d) < 0``, and the pair is unsure
otherwise (Coste et al. 2023: trust a reward ensemble only where its members agree). Unsure pairs
are what a person's label teaches most (training.active), so they go to people instead of into
the update.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import TypeVar

from training.active import gap_variance

T = TypeVar("T")
U = TypeVar("U")


def pair_verdicts(member_scores: Sequence[Sequence[float]]) -> list[tuple[int, float]]:
    """``member_scores``: members x answers, the two answers of pair i at 2i and 2i + 1. Returns,
    per pair, 1 (the first answer preferred), -1 (the second) or 0 (unsure), and the variance of
    the members' gaps (how much a person's label would teach)."""
    if not member_scores or len(member_scores[0]) % 2:
        raise ValueError("pair_verdicts needs the scores of at least one member, two answers per pair")
    out = []
    for i in range(0, len(member_scores[0]), 2):
        gaps = [row[i] - row[i + 1] for row in member_scores]
        mean = statistics.fmean(gaps)
        spread = statistics.pstdev(gaps) if len(gaps) > 1 else 0.0
        verdict = 1 if mean - spread > 0 else -1 if mean + spread < 0 else 0
        out.append((verdict, gap_variance([row[i : i + 2] for row in member_scores])))
    return out


def mix_by_share(human: Sequence[T], machine: Sequence[U], share: float, *, seed: int = 0) -> tuple[list[T], list[U]]:
    """Keep as many of each as makes people's pairs ``share`` of the whole, dropping (at random,
    seeded) only from the side there is too much of. 0 keeps the machine's pairs only, 1 people's;
    when one side is empty the other is kept whole (there is nothing to balance it against)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share={share} must be from 0 to 1")
    rng = random.Random(seed)
    if share == 0.0:
        return [], list(machine)
    if share == 1.0:
        return list(human), []
    n_human, n_machine = len(human), len(machine)
    if n_human == 0 or n_machine == 0:  # nothing to balance against: keep what there is
        return list(human), list(machine)
    if n_human / (n_human + n_machine) > share:  # too many of people's
        keep = round(share / (1.0 - share) * n_machine)
        return rng.sample(list(human), min(keep, n_human)), list(machine)
    keep = round((1.0 - share) / share * n_human)
    return list(human), rng.sample(list(machine), min(keep, n_machine))
