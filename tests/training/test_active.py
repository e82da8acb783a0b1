"""Active selection's disagreement score (training.active): pure arithmetic, checked by hand."""

from __future__ import annotations

import pytest

from training.active import gap_variance, item_disagreements


def test_members_that_agree_on_the_gap_give_no_disagreement_even_when_their_scales_differ():
    # every member puts answer 0 two points above answer 1, from different baselines
    assert gap_variance([[3.0, 1.0], [10.0, 8.0], [-1.0, -3.0]]) == pytest.approx(0.0)


def test_the_variance_of_the_gaps_across_members():
    # gaps: 2, 0, -2 -> mean 0, population variance 8/3
    assert gap_variance([[2.0, 0.0], [1.0, 1.0], [0.0, 2.0]]) == pytest.approx(8 / 3)


def test_a_ranking_item_averages_over_its_pairs_of_answers():
    members = [[0.0, 1.0, 2.0], [0.0, 3.0, 2.0]]
    # pairs (0,1): gaps -1, -3 -> var 1; (0,2): -2, -2 -> 0; (1,2): -1, 1 -> 1
    assert gap_variance(members) == pytest.approx(2 / 3)


def test_one_member_or_one_answer_cannot_disagree():
    assert gap_variance([[0.3, 2.0]]) == 0.0
    assert gap_variance([[0.3], [5.0]]) == 0.0


def test_items_of_different_sizes_are_cut_out_of_one_scoring_pass():
    members = [[2.0, 0.0, 0.0, 1.0, 2.0], [0.0, 2.0, 0.0, 3.0, 2.0]]  # a pair, then a list of three
    assert item_disagreements(members, [2, 3]) == pytest.approx([4.0, 2 / 3])


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same answers"):
        gap_variance([[1.0, 2.0], [1.0]])
    with pytest.raises(ValueError, match="at least one member"):
        gap_variance([])
    with pytest.raises(ValueError, match="the items have 3"):
        item_disagreements([[1.0, 2.0]], [3])
