"""bench/gate_sim.py: its exact figures agree with its label-flipping simulation, and the printed
table and closing line come out (the figures themselves are in docs/benchmarks.md)."""

from __future__ import annotations

import math
import random

import pytest

from tests.bench import load_script
from training.evidence import NOT_WORSE, TOO_THIN, WORSE

gate_sim = load_script("gate_sim")


def test_label_noise_squeezes_accuracy_towards_a_half():
    assert gate_sim.observed(0.5, 0.25) == 0.5
    assert gate_sim.observed(1.0, 0.25) == 0.75 and gate_sim.observed(0.8, 0.25) == pytest.approx(0.65)


@pytest.mark.parametrize("clean", [0.5, 0.2])
def test_the_exact_sums_match_a_simulation_that_flips_labels(clean: float):
    rule = lambda k, n: gate_sim.verdict(k, n, 0.15, 0.95)  # noqa: E731
    exact = gate_sim.exact(30, gate_sim.observed(clean, 0.25), rule)
    assert sum(exact.values()) == pytest.approx(1.0)
    reps = 3000
    simulated = gate_sim.monte_carlo(30, clean, 0.25, rule, reps, random.Random(1))
    for verdict in (WORSE, NOT_WORSE, TOO_THIN):
        se = math.sqrt(max(exact[verdict] * (1 - exact[verdict]), 1e-4) / reps)
        assert abs(simulated[verdict] - exact[verdict]) < 4 * se, (verdict, exact, simulated)


def test_the_older_point_rule_rejects_an_equal_candidate_often(capsys):
    assert gate_sim.exact(10, 0.5, gate_sim.point_rule)[WORSE] > 0.3  # what the new rule replaces
    gate_sim.main(["--sizes", "10,30", "--reps", "0"])
    out = capsys.readouterr().out
    assert "| 10 | equal | 0.500 | non-inferiority |" in out
    assert out.strip().splitlines()[-1].startswith("non-inferiority: an equal candidate is rejected at most")
