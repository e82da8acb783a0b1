"""Length figures beside reward-model accuracy and the gate's win rate (training.length)."""

from __future__ import annotations

import statistics

import pytest

from training.length import length_controlled_win_rate, length_correlation, longer_wins_accuracy


def test_the_longer_answer_rule_counts_equal_lengths_as_half():
    assert longer_wins_accuracy(["long one", "ab", "same"], ["short", "abc", "four"]) == pytest.approx(1.5 / 3)
    with pytest.raises(ValueError):
        longer_wins_accuracy(["a"], [])


def test_the_correlation_of_scores_with_length():
    texts = ["a", "abc", "abcdef", "ab"]
    scores = [0.1, 0.5, 0.2, 0.9]
    assert length_correlation(scores, texts) == pytest.approx(statistics.correlation(scores, [1, 3, 6, 2]))
    assert length_correlation([1.0, 2.0, 3.0], ["a", "bb", "ccc"]) == pytest.approx(1.0)
    assert length_correlation([1.0, 2.0], ["same", "four"]) is None  # lengths do not vary
    with pytest.raises(ValueError):
        length_correlation([1.0], ["a", "b"])


def test_without_a_length_difference_it_is_the_plain_win_rate():
    assert length_controlled_win_rate([1, 0, 0.5, 1], [5, 5, 5, 5], [5, 5, 5, 5]) == pytest.approx(0.625)


def test_wins_that_only_follow_length_are_brought_back_to_even():
    # a win wherever the candidate is longer and a loss wherever it is shorter, with more longer
    # answers than shorter ones: plain 0.75, at equal length about a coin toss
    outcomes = [1, 1, 1, 1, 1, 1, 0, 0]
    cand = [40, 50, 45, 60, 55, 42, 10, 12]
    serv = [20, 20, 20, 20, 20, 20, 30, 30]
    controlled = length_controlled_win_rate(outcomes, cand, serv)
    assert sum(outcomes) / len(outcomes) == 0.75 and 0.35 < controlled < 0.65


def test_wins_that_do_not_depend_on_length_keep_their_rate():
    outcomes = [1, 1, 1, 0] * 4
    cand = [30, 10, 30, 10, 10, 30, 10, 30] * 2
    serv = [20] * 16
    assert length_controlled_win_rate(outcomes, cand, serv) == pytest.approx(0.75, abs=0.03)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        length_controlled_win_rate([], [], [])
    with pytest.raises(ValueError):
        length_controlled_win_rate([2], [1], [1])
