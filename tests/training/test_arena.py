"""The arena's Bradley-Terry fit and bootstrap intervals (training.arena)."""

from __future__ import annotations

import math

import pytest

from training.arena import ELO_BASE, ELO_SCALE, bradley_terry, leaderboard


def test_two_players_recover_the_log_odds_of_their_record():
    # a beats b 30 times in 40: without a prior the gap is log(30/10)
    games = [("a", "b", 1.0)] * 30 + [("a", "b", 0.0)] * 10
    theta = bradley_terry(games, prior=0.0)
    assert theta["a"] - theta["b"] == pytest.approx(math.log(3.0), rel=1e-6)
    assert theta["a"] + theta["b"] == pytest.approx(0.0, abs=1e-9)  # centred


def test_ties_count_half_and_sides_do_not_matter():
    one_way = bradley_terry([("a", "b", 1.0), ("a", "b", 0.5), ("b", "a", 0.0)], prior=0.0)
    other = bradley_terry([("b", "a", 0.0), ("b", "a", 0.5), ("a", "b", 1.0)], prior=0.0)
    assert one_way["a"] == pytest.approx(other["a"])
    # 2.5 wins in 3 games: log(2.5 / 0.5)
    assert one_way["a"] - one_way["b"] == pytest.approx(math.log(5.0), rel=1e-6)


def test_an_unbeaten_player_stays_finite_and_on_top():
    theta = bradley_terry([("a", "b", 1.0)] * 5 + [("b", "c", 0.5)] * 4)
    assert all(math.isfinite(t) for t in theta.values())
    assert theta["a"] == max(theta.values()) and theta["a"] - theta["b"] < 10


def test_the_leaderboard_orders_players_with_intervals_that_narrow_with_data():
    few = [("new", "old", 1.0)] * 6 + [("new", "old", 0.0)] * 2
    many = few * 10
    small, large = leaderboard(few, seed=1), leaderboard(many, seed=1)
    assert [r["name"] for r in large] == ["new", "old"]
    top = large[0]
    assert top["low"] <= top["rating"] <= top["high"] and (top["wins"], top["losses"], top["n"]) == (60, 20, 80)
    assert (top["high"] - top["low"]) < (small[0]["high"] - small[0]["low"])
    assert large[1]["high"] < top["low"]  # 80 judgments at 3:1 separate the two
    assert top["rating"] == pytest.approx(ELO_BASE + ELO_SCALE * bradley_terry(many)["new"])


def test_bad_comparisons_are_refused():
    with pytest.raises(ValueError, match="two different players"):
        bradley_terry([("a", "a", 1.0)])
    with pytest.raises(ValueError, match="outcome"):
        bradley_terry([("a", "b", 2.0)])
    assert leaderboard([]) == []
