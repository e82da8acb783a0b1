"""Tests for training.aggregation: agreement statistics, label aggregation, trust, Bradley-Terry."""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from training.aggregation import (
    DawidSkeneResult,
    bradley_terry,
    cohen_kappa,
    dawid_skene,
    fleiss_kappa,
    gold_accuracy,
    krippendorff_alpha,
    majority_vote,
    pairwise_agreement,
    trust_scores,
)

DATA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
PANDALM = DATA_DIR / "pandalm-testset-v1.json"
PANDALM_ANNOTATORS = ("annotator1", "annotator2", "annotator3")

Triple = tuple[Hashable, Hashable, Hashable]

# Wikipedia, "Fleiss' kappa", worked example: 10 items, 14 raters, 5 categories.
WIKI_FLEISS = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", sec. C: 4 observers,
# 12 units, missing values as None. Published: nominal .743, ordinal .815, interval .849.
KRIPP_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _table_to_labels(table: list[list[int]]) -> list[Triple]:
    """Count table (items x categories) to triples, raters numbered within each item."""
    labels: list[Triple] = []
    for item, row in enumerate(table):
        rater = 0
        for category, count in enumerate(row):
            for _ in range(count):
                labels.append((item, rater, category))
                rater += 1
    return labels


def _matrix_to_labels(matrix: list[list[int | None]]) -> list[Triple]:
    """Annotators x items matrix (None missing) to triples."""
    return [(u, a, v) for a, row in enumerate(matrix) for u, v in enumerate(row) if v is not None]


@cache
def _pandalm_rows() -> tuple[tuple[int, ...], ...]:
    if not PANDALM.is_file():
        pytest.skip(f"real data not found: {PANDALM} (needs the shared data folder next to the project)")
    records = json.loads(PANDALM.read_text(encoding="utf-8"))
    return tuple(tuple(int(r[a]) for a in PANDALM_ANNOTATORS) for r in records)


def _pandalm_labels(drop: float = 0.0, seed: int = 0) -> tuple[list[Triple], np.ndarray]:
    """PandaLM labels as triples (categories "0" tie, "1", "2") and as a raters x items float array.

    With ``drop > 0`` that share of the labels is removed at random (NaN in the array).
    """
    matrix = np.array(_pandalm_rows(), dtype=float).T  # raters x items
    if drop:
        mask = np.random.default_rng(seed).random(matrix.shape) < drop
        matrix[mask] = np.nan
    labels = [
        (item, PANDALM_ANNOTATORS[r], str(int(matrix[r, item])))
        for r in range(matrix.shape[0])
        for item in range(matrix.shape[1])
        if not np.isnan(matrix[r, item])
    ]
    return labels, matrix


# ------------------------------------------------------------------ Fleiss' kappa


def test_fleiss_kappa_wikipedia_example() -> None:
    labels = _table_to_labels(WIKI_FLEISS)
    table = np.array(WIKI_FLEISS, dtype=float)
    p_bar = ((table * (table - 1)).sum(1) / (14 * 13)).mean()
    p_e = ((table.sum(0) / 140) ** 2).sum()
    assert fleiss_kappa(labels) == pytest.approx((p_bar - p_e) / (1 - p_e), abs=1e-12)
    assert fleiss_kappa(labels) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_perfect_and_undefined() -> None:
    perfect = [(i, r, "a" if i % 2 else "b") for i in range(6) for r in range(3)]
    assert fleiss_kappa(perfect) == pytest.approx(1.0)
    one_category = [(i, r, "a") for i in range(4) for r in range(3)]
    assert math.isnan(fleiss_kappa(one_category))
    assert math.isnan(fleiss_kappa([("x", "r1", "a")]))


def test_fleiss_kappa_unequal_raters_and_single_labels() -> None:
    # item 0: a a a (P=1), item 1: a b (P=0), item 2: single label, ignored.
    labels = [(0, 1, "a"), (0, 2, "a"), (0, 3, "a"), (1, 1, "a"), (1, 2, "b"), (2, 1, "b")]
    p_bar = (1.0 + 0.0) / 2
    p_e = (4 / 5) ** 2 + (1 / 5) ** 2
    assert fleiss_kappa(labels) == pytest.approx((p_bar - p_e) / (1 - p_e), abs=1e-12)


def test_duplicate_label_raises() -> None:
    with pytest.raises(ValueError, match="more than once"):
        fleiss_kappa([(0, "r", "a"), (0, "r", "b")])


# ------------------------------------------------------------------ Krippendorff's alpha


@pytest.mark.parametrize(("level", "published"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_published_example(level: str, published: float) -> None:
    assert krippendorff_alpha(_matrix_to_labels(KRIPP_2011), level) == pytest.approx(published, abs=5e-4)


def test_krippendorff_alpha_nominal_exact_small() -> None:
    # Two coders, 4 units: (a,a) (a,b) (b,b) (b,b). o_aa=2, o_ab=o_ba=1, o_bb=4; n_a=3, n_b=5, n=8.
    labels = [(0, 1, "a"), (0, 2, "a"), (1, 1, "a"), (1, 2, "b"), (2, 1, "b"), (2, 2, "b"), (3, 1, "b"), (3, 2, "b")]
    assert krippendorff_alpha(labels) == pytest.approx(1 - 7 * 2 / (2 * 3 * 5), abs=1e-12)
    assert krippendorff_alpha([(i, r, i % 3) for i in range(6) for r in range(2)]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha([(0, 1, "a"), (1, 2, "b")]))  # nothing pairable


def test_krippendorff_alpha_bad_arguments() -> None:
    labels = _matrix_to_labels(KRIPP_2011)
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(labels, "ratio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not in order"):
        krippendorff_alpha(labels, "ordinal", order=[1, 2, 3])


# ------------------------------------------------------------------ pairwise agreement, Cohen's kappa


def test_pairwise_agreement_hand_example() -> None:
    labels = [(1, "a", "x"), (1, "b", "x"), (1, "c", "y"), (2, "a", "x"), (2, "b", "y"), (3, "d", "x")]
    assert pairwise_agreement(labels) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 0.0})


def test_cohen_kappa_wikipedia_example() -> None:
    # 50 items: both yes 20, A yes B no 5, A no B yes 10, both no 15 -> p_o .7, p_e .5, kappa .4.
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    labels = [(i, who, lab) for i, pair in enumerate(pairs) for who, lab in zip("AB", pair, strict=True)]
    labels.append((99, "A", "y"))  # not shared, ignored
    assert cohen_kappa(labels, "A", "B") == pytest.approx(0.4, abs=1e-12)
    assert math.isnan(cohen_kappa(labels, "A", "nobody"))


# ------------------------------------------------------------------ majority vote


def test_majority_vote_ties_and_tie_break() -> None:
    labels = [(1, "a", "x"), (1, "b", "x"), (1, "c", "y"), (2, "a", "x"), (2, "b", "y"), (3, "a", "tie")]
    assert majority_vote(labels) == {1: "x", 2: None, 3: "tie"}
    assert majority_vote(labels, tie_break=["y", "x"])[2] == "y"
    assert majority_vote(labels, tie_break=["tie"])[2] is None


# ------------------------------------------------------------------ Dawid-Skene


def _synthetic_crowd(seed: int = 0) -> tuple[list[Triple], dict[int, int], list[float]]:
    """400 items, 3 categories; 7 annotators of known accuracy, two of them adversarial.

    An honest annotator is right with probability ``acc`` and otherwise uniform over the other
    categories; an adversarial one gives ``(t + 1) % 3`` with probability ``1 - acc``.
    Each annotator labels each item with probability 0.7.
    """
    rng = np.random.default_rng(seed)
    n_items, k = 400, 3
    accuracies = [0.95, 0.8, 0.65, 0.5, 0.35, 0.2, 0.05]
    adversarial = {5, 6}
    truth = {i: int(t) for i, t in enumerate(rng.choice(k, size=n_items, p=[0.5, 0.3, 0.2]))}
    labels: list[Triple] = []
    for i, t in truth.items():
        for a, acc in enumerate(accuracies):
            if rng.random() > 0.7:
                continue
            if rng.random() < acc:
                given = t
            elif a in adversarial:
                given = (t + 1) % k
            else:
                given = int(rng.choice([c for c in range(k) if c != t]))
            labels.append((i, f"ann{a}", given))
    return labels, truth, accuracies


def test_dawid_skene_beats_majority_vote_and_ranks_annotators() -> None:
    labels, truth, accuracies = _synthetic_crowd()
    result = dawid_skene(labels)
    assert isinstance(result, DawidSkeneResult)
    assert result.converged and result.n_iter < 100
    mv = majority_vote(labels)
    ds_acc = np.mean([result.labels[i] == t for i, t in truth.items()])
    mv_acc = np.mean([mv[i] == t for i, t in truth.items()])  # unresolved ties count as wrong
    assert ds_acc >= mv_acc + 0.05, (ds_acc, mv_acc)
    assert ds_acc >= 0.9
    estimated = [result.annotator_accuracy[f"ann{a}"] for a in range(len(accuracies))]
    assert list(np.argsort(estimated)) == list(np.argsort(accuracies))
    assert np.max(np.abs(np.array(estimated) - accuracies)) < 0.1
    observed: dict[Hashable, list[bool]] = {}  # each annotator's actual share of correct labels in this sample
    for item, annotator, given in labels:
        observed.setdefault(annotator, []).append(given == truth[item])
    for annotator, hits in observed.items():
        assert result.annotator_accuracy[annotator] == pytest.approx(np.mean(hits), abs=0.05)
    # the adversarial annotator's confusion is learned: truth 0 is mostly reported as 1
    assert result.confusion["ann6"][0][1] > 0.8


def test_dawid_skene_structure_and_unanimous_input() -> None:
    labels = [(i, a, "x" if i < 3 else "y") for i in range(5) for a in ("p", "q", "r")]
    result = dawid_skene(labels)
    assert result.labels == {0: "x", 1: "x", 2: "x", 3: "y", 4: "y"}
    for post in result.posteriors.values():
        assert sum(post.values()) == pytest.approx(1.0)
    for rows in result.confusion.values():
        for row in rows.values():
            assert sum(row.values()) == pytest.approx(1.0)
    assert result.priors["x"] == pytest.approx(3 / 5, abs=0.01)
    assert all(acc > 0.95 for acc in result.annotator_accuracy.values())
    assert dawid_skene([]).labels == {}


def test_dawid_skene_gold_items_are_clamped() -> None:
    labels = [(0, "a", "x"), (0, "b", "x"), (0, "c", "y"), (1, "a", "y"), (1, "b", "y")]
    result = dawid_skene(labels, gold={0: "y"})
    assert result.labels[0] == "y"
    assert result.posteriors[0]["y"] == 1.0


# ------------------------------------------------------------------ gold accuracy, trust


def test_gold_accuracy_counts() -> None:
    labels = [(1, "a", "x"), (2, "a", "y"), (3, "a", "x"), (1, "b", "y"), (3, "c", "x")]
    assert gold_accuracy(labels, {1: "x", 2: "x"}) == {"a": (1, 2), "b": (0, 1), "c": (0, 0)}


def test_trust_scores_gold_path_is_shrunk_gold_accuracy() -> None:
    gold = {i: "x" for i in range(10)}
    labels = [(i, "good", "x") for i in range(10)] + [(i, "bad", "x" if i < 4 else "y") for i in range(10)]
    scores = trust_scores(labels, gold, min_gold=5, prior_strength=10.0)
    mu = (10 * 1.0 + 10 * 0.4) / 20
    assert scores["good"] == pytest.approx((10 * 1.0 + 10 * mu) / 20)
    assert scores["bad"] == pytest.approx((10 * 0.4 + 10 * mu) / 20)
    assert scores["good"] > scores["bad"]


def test_trust_scores_without_gold_shrinks_small_samples() -> None:
    labels, truth, accuracies = _synthetic_crowd()
    # a newcomer with 3 labels, all equal to the true category of those items
    labels = labels + [(i, "newcomer", truth[i]) for i in range(3)]
    scores = trust_scores(labels)
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    ranked = sorted(range(len(accuracies)), key=lambda a: scores[f"ann{a}"])
    assert ranked == list(np.argsort(accuracies))
    ds = dawid_skene(labels)
    # with 3 labels the newcomer stays much closer to the mean than the raw estimate
    mean = np.mean(list(scores.values()))
    assert abs(scores["newcomer"] - mean) < 0.5 * abs(ds.annotator_accuracy["newcomer"] - mean)


# ------------------------------------------------------------------ Bradley-Terry


def test_bradley_terry_two_items_closed_form() -> None:
    scores = bradley_terry([("A", "B")] * 3 + [("B", "A")], prior=1e-8)
    assert scores["A"] - scores["B"] == pytest.approx(math.log(3), abs=1e-5)
    assert scores["A"] + scores["B"] == pytest.approx(0.0, abs=1e-12)
    tied = bradley_terry([], ties=[("A", "B")] * 4)
    assert tied["A"] == pytest.approx(0.0, abs=1e-9) and tied["B"] == pytest.approx(0.0, abs=1e-9)


def test_bradley_terry_prior_keeps_unbeaten_item_finite() -> None:
    scores = bradley_terry([("A", "B"), ("A", "C"), ("B", "C")])
    assert all(math.isfinite(s) for s in scores.values())
    assert scores["A"] > scores["B"] > scores["C"]
    with pytest.raises(ValueError):
        bradley_terry([("A", "A")])


def test_bradley_terry_recovers_synthetic_order() -> None:
    rng = np.random.default_rng(1)
    true_log = np.linspace(-2.0, 2.0, 9)
    rng.shuffle(true_log)
    comparisons: list[tuple[Hashable, Hashable]] = []
    for _ in range(3000):
        i, j = rng.choice(len(true_log), size=2, replace=False)
        p = 1.0 / (1.0 + math.exp(true_log[j] - true_log[i]))
        comparisons.append((f"m{i}", f"m{j}") if rng.random() < p else (f"m{j}", f"m{i}"))
    scores = bradley_terry(comparisons)
    estimated = np.array([scores[f"m{i}"] for i in range(len(true_log))])
    assert list(np.argsort(estimated)) == list(np.argsort(true_log))
    assert np.max(np.abs(estimated - (true_log - true_log.mean()))) < 0.25


# ------------------------------------------------------------------ real data: PandaLM


def test_pandalm_fleiss_kappa_matches_statsmodels() -> None:
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    labels, matrix = _pandalm_labels()
    table, _ = inter_rater.aggregate_raters(matrix.T.astype(int))
    ours = fleiss_kappa(labels)
    assert ours == pytest.approx(inter_rater.fleiss_kappa(table, method="fleiss"), abs=1e-9)
    assert 0.0 < ours < 1.0


def test_pandalm_cohen_kappa_matches_statsmodels() -> None:
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    labels, matrix = _pandalm_labels()
    confusion = np.zeros((3, 3))
    np.add.at(confusion, (matrix[0].astype(int), matrix[1].astype(int)), 1)
    expected = inter_rater.cohens_kappa(confusion, return_results=False)
    assert cohen_kappa(labels, "annotator1", "annotator2") == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("drop", [0.0, 0.2])
def test_pandalm_krippendorff_alpha_matches_reference(drop: float) -> None:
    krippendorff = pytest.importorskip("krippendorff")
    labels, matrix = _pandalm_labels(drop=drop)
    if drop:
        assert 0.15 < np.isnan(matrix).mean() < 0.25
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    assert krippendorff_alpha(labels, "nominal") == pytest.approx(expected, abs=1e-9)
    # ordinal, with the categories ranked "response1 better" < "tie" < "response2 better"
    rank = {1.0: 0.0, 0.0: 1.0, 2.0: 2.0}
    ranked = np.vectorize(lambda v: rank.get(v, np.nan))(matrix)
    expected_ord = krippendorff.alpha(reliability_data=ranked, level_of_measurement="ordinal")
    assert krippendorff_alpha(labels, "ordinal", order=["1", "0", "2"]) == pytest.approx(expected_ord, abs=1e-9)


def test_pandalm_aggregation_is_sane() -> None:
    labels, _ = _pandalm_labels()
    result = dawid_skene(labels)
    assert result.converged
    mv = majority_vote(labels)
    resolved = {i: c for i, c in mv.items() if c is not None}
    agree = np.mean([result.labels[i] == c for i, c in resolved.items()])
    assert agree > 0.9
    assert all(0.5 < acc < 1.0 for acc in result.annotator_accuracy.values())
    assert set(pairwise_agreement(labels)) == set(PANDALM_ANNOTATORS)
