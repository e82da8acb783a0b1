"""Groups of annotators from their labels: EM over a mixture of Bradley-Terry models (training.groups)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from training.groups import choose_groups, fit_groups, group_agreement, text_features

SKY = "sun moon star sky blue water river light".split()
FOOD = "cheese bread tea coffee apple honey butter soup".split()
FILLER = "the a is on of and it was very so".split()


def _taste(text: str, words: list[str]) -> int:
    return sum(1 if w in words else -1 if w in SKY + FOOD else 0 for w in text.split())


def _labels(groups: dict[str, list[str]], *, per_annotator: int = 30, flip: float = 0.1, seed: int = 0):
    """Each annotator of a group prefers answers with more of its words and fewer of the other group's
    (Bradley-Terry), 10% flipped: the groups want opposite things, as in MaxMin-RLHF's setting."""
    rng = random.Random(seed)

    def answer() -> str:
        return " ".join(rng.choice(SKY + FOOD + FILLER) for _ in range(rng.randint(3, 9)))

    annotators, chosen, rejected = [], [], []
    for words, names in ((SKY, groups.get("sky", [])), (FOOD, groups.get("food", []))):
        for name in names:
            for _ in range(per_annotator):
                x, y = answer(), answer()
                gap = _taste(x, words) - _taste(y, words)
                if rng.random() > 1 / (1 + math.exp(-gap)):
                    x, y = y, x
                if rng.random() < flip:
                    x, y = y, x
                annotators.append(name)
                chosen.append(text_features(x))
                rejected.append(text_features(y))
    return annotators, np.array(chosen), np.array(rejected)


def test_two_known_groups_are_found_from_their_labels():
    truth = {"sky": [f"s{i}" for i in range(7)], "food": [f"f{i}" for i in range(3)]}  # 70% and 30%
    annotators, chosen, rejected = _labels(truth)
    fit, heldout = choose_groups(annotators, chosen, rejected, max_k=3)
    assert fit.k == 2 and heldout[2] > heldout[1], heldout
    assert [sorted(m) for m in fit.members()] == [sorted(truth["sky"]), sorted(truth["food"])]  # majority first
    assert fit.shares[0] == pytest.approx(0.7, abs=0.05)
    agreement = group_agreement(fit, annotators, chosen, rejected)
    assert all(a is not None and a > 0.7 for a in agreement)
    # each group's reward points its own way: the sky group's likes sky words, the food group's does not
    sky, food = text_features("sun moon star sky"), text_features("cheese bread tea soup")
    assert fit.weights[0] @ (sky - food) > 0 > fit.weights[1] @ (sky - food)


def test_one_population_is_not_split():
    annotators, chosen, rejected = _labels({"sky": [f"s{i}" for i in range(8)]}, seed=1)
    fit, heldout = choose_groups(annotators, chosen, rejected, max_k=3)
    assert fit.k == 1 and fit.members() == [sorted(set(annotators))], heldout


def test_em_increases_the_likelihood_and_refuses_bad_input():
    annotators, chosen, rejected = _labels({"sky": ["a", "b"], "food": ["c", "d"]}, per_annotator=20, seed=2)
    fit = fit_groups(annotators, chosen, rejected, 2, starts=1)
    assert all(later >= earlier - 1e-6 for earlier, later in zip(fit.history, fit.history[1:], strict=False))
    assert fit.responsibilities.shape == (4, 2) and np.allclose(fit.responsibilities.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="need at least 5 annotators"):
        fit_groups(annotators, chosen, rejected, 5)
    with pytest.raises(ValueError, match="one annotator and one"):
        fit_groups(annotators[:-1], chosen, rejected, 2)


def test_text_features_are_hashed_words_and_length():
    a, b = text_features("The sky is blue"), text_features("the SKY is blue")
    assert np.array_equal(a, b) and a[-1] == pytest.approx(math.log1p(4))
    assert not np.array_equal(a, text_features("cheese"))
