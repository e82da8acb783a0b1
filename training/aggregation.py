"""Inter-annotator agreement, label aggregation and annotator quality, over plain Python data.

Raw labels are an iterable of ``(item_id, annotator_id, category)`` triples. Ids and categories
are any hashable values; an annotator may label any subset of the items (missing data), but at
most once per item (a repeated ``(item, annotator)`` pair raises ``ValueError``: keep only the
latest label before calling). Pairwise comparisons for :func:`bradley_terry` are
``(winner, loser)`` pairs.

What is here:

- agreement: :func:`fleiss_kappa` (Fleiss 1971), :func:`krippendorff_alpha` (Krippendorff 2011),
  :func:`pairwise_agreement` and :func:`cohen_kappa` (Cohen 1960);
- aggregation: :func:`majority_vote` and :func:`dawid_skene` (Dawid & Skene 1979);
- annotator quality: :func:`gold_accuracy` and :func:`trust_scores`;
- ranking: :func:`bradley_terry` (Bradley & Terry 1952, MM algorithm of Hunter 2004).

A statistic that is undefined for the data (no item with two labels, or every label in one
category, so that chance agreement is 1) is returned as ``nan``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Label = tuple[Hashable, Hashable, Hashable]
Level = Literal["nominal", "ordinal", "interval"]

__all__ = [
    "DawidSkeneResult",
    "bradley_terry",
    "cohen_kappa",
    "dawid_skene",
    "fleiss_kappa",
    "gold_accuracy",
    "krippendorff_alpha",
    "majority_vote",
    "pairwise_agreement",
    "trust_scores",
]


# --------------------------------------------------------------------------------------------
# helpers


def _by_item(labels: Iterable[Label]) -> dict[Hashable, dict[Hashable, Hashable]]:
    """Group labels as ``{item: {annotator: category}}``, in first-seen order.

    Raises ``ValueError`` if an annotator labelled the same item twice.
    """
    out: dict[Hashable, dict[Hashable, Hashable]] = {}
    for item, annotator, category in labels:
        row = out.setdefault(item, {})
        if annotator in row:
            raise ValueError(f"annotator {annotator!r} labelled item {item!r} more than once")
        row[annotator] = category
    return out


def _ordered(values: Iterable[Hashable]) -> list[Hashable]:
    """Distinct values, sorted when they are mutually comparable, else in first-seen order."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct)  # type: ignore[type-var]
    except TypeError:
        return distinct


def _count_table(by_item: Mapping[Hashable, Mapping[Hashable, Hashable]], min_raters: int = 2) -> np.ndarray:
    """Items x categories table of label counts ``n_ij``, keeping items with >= ``min_raters`` labels."""
    rows = [row for row in by_item.values() if len(row) >= min_raters]
    categories = _ordered(c for row in rows for c in row.values())
    index = {c: k for k, c in enumerate(categories)}
    table = np.zeros((len(rows), len(categories)))
    for i, row in enumerate(rows):
        for category in row.values():
            table[i, index[category]] += 1
    return table


# --------------------------------------------------------------------------------------------
# agreement


def fleiss_kappa(labels: Iterable[Label]) -> float:
    """Fleiss' kappa (Fleiss 1971) for many raters and nominal categories.

    With ``n_ij`` the number of labels of category ``j`` on item ``i`` and ``n_i = sum_j n_ij``::

        P_i   = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1))      agreement on item i
        P_bar = mean_i P_i                                   observed agreement
        p_j   = sum_i n_ij / sum_i n_i                       share of category j
        P_e   = sum_j p_j^2                                  chance agreement
        kappa = (P_bar - P_e) / (1 - P_e)

    Items with fewer than 2 labels are ignored. Unequal numbers of raters per item are handled
    by computing ``P_i`` with each item's own ``n_i`` and pooling the category shares over all
    labels, as above; every item weighs the same in ``P_bar``. When every item has the same
    ``n`` this is exactly Fleiss' formula (``p_j = sum_i n_ij / (N n)``). Returns ``nan`` when
    no item has 2 labels or ``P_e == 1``.
    """
    table = _count_table(_by_item(labels))
    if table.shape[0] == 0:
        return math.nan
    n_i = table.sum(axis=1)
    p_i = (table * (table - 1)).sum(axis=1) / (n_i * (n_i - 1))
    p_bar = float(p_i.mean())
    p_j = table.sum(axis=0) / n_i.sum()
    p_e = float((p_j * p_j).sum())
    if p_e >= 1.0:
        return math.nan
    return (p_bar - p_e) / (1.0 - p_e)


def _coincidences(
    by_item: Mapping[Hashable, Mapping[Hashable, Hashable]], categories: Sequence[Hashable]
) -> np.ndarray:
    """Krippendorff's coincidence matrix ``o_ck = sum_u (#pairs (c, k) in unit u) / (m_u - 1)``.

    Pairs are ordered pairs of labels from different annotators on the same unit; units with
    fewer than 2 labels are not pairable and are left out.
    """
    index = {c: k for k, c in enumerate(categories)}
    o = np.zeros((len(categories), len(categories)))
    for row in by_item.values():
        m_u = len(row)
        if m_u < 2:
            continue
        counts = np.zeros(len(categories))
        for category in row.values():
            counts[index[category]] += 1
        # n_uc n_uk ordered pairs for c != k, n_uc (n_uc - 1) for c == k
        o += (np.outer(counts, counts) - np.diag(counts)) / (m_u - 1)
    return o


def _distance(level: Level, categories: Sequence[Hashable], n_c: np.ndarray) -> np.ndarray:
    """Squared difference ``delta^2_ck`` for Krippendorff's alpha (Krippendorff 2011, sec. 4).

    nominal: ``0`` if ``c == k`` else ``1``; ordinal (ranks in ``categories`` order):
    ``(sum_{g=c..k} n_g - (n_c + n_k) / 2)^2``; interval: ``(c - k)^2`` for numeric categories.
    """
    size = len(categories)
    if level == "nominal":
        return 1.0 - np.eye(size)
    if level == "ordinal":
        cumulative = np.concatenate([[0.0], np.cumsum(n_c)])
        d = np.zeros((size, size))
        for c in range(size):
            for k in range(size):
                lo, hi = min(c, k), max(c, k)
                d[c, k] = (cumulative[hi + 1] - cumulative[lo] - (n_c[c] + n_c[k]) / 2.0) ** 2
        return d
    if level == "interval":
        values = np.asarray(categories, dtype=float)
        return (values[:, None] - values[None, :]) ** 2
    raise ValueError(f"unknown level {level!r}; use 'nominal', 'ordinal' or 'interval'")


def krippendorff_alpha(
    labels: Iterable[Label], level: Level = "nominal", order: Sequence[Hashable] | None = None
) -> float:
    """Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's alpha-reliability").

    From the coincidence matrix ``o_ck`` (see :func:`_coincidences`), its marginals
    ``n_c = sum_k o_ck`` and ``n = sum_c n_c`` (the number of pairable labels)::

        alpha = 1 - D_o / D_e = 1 - (n - 1) sum_ck o_ck delta_ck / sum_ck n_c n_k delta_ck

    Missing labels are allowed; units with a single label are not pairable and are ignored.
    ``level`` is ``"nominal"``, ``"ordinal"`` (categories ranked in ``order``, or sorted when
    ``order`` is None) or ``"interval"`` (numeric categories). Returns ``nan`` when there are no
    pairable labels or no expected disagreement.
    """
    by_item = _by_item(labels)
    seen = _ordered(c for row in by_item.values() for c in row.values())
    if order is not None:
        missing = [c for c in seen if c not in set(order)]
        if missing:
            raise ValueError(f"categories {missing!r} are not in order")
        categories: list[Hashable] = list(order)
    else:
        categories = seen
    o = _coincidences(by_item, categories)
    n_c = o.sum(axis=1)
    n = float(n_c.sum())
    if n < 2:
        return math.nan
    delta = _distance(level, categories, n_c)
    expected = float((np.outer(n_c, n_c) * delta).sum())
    if expected == 0.0:
        return math.nan
    return 1.0 - (n - 1.0) * float((o * delta).sum()) / expected


def pairwise_agreement(labels: Iterable[Label]) -> dict[Hashable, float]:
    """For each annotator, the share of (item, other annotator) pairs with the same label.

    ``agreement(a) = sum_i sum_{b != a on i} [y_ia == y_ib] / #(i, b)``, over the items ``a``
    labelled. Annotators who never share an item with someone else are left out.
    """
    agree: Counter[Hashable] = Counter()
    total: Counter[Hashable] = Counter()
    for row in _by_item(labels).values():
        counts = Counter(row.values())
        m = len(row)
        for annotator, category in row.items():
            agree[annotator] += counts[category] - 1
            total[annotator] += m - 1
    return {a: agree[a] / total[a] for a in total if total[a] > 0}


def cohen_kappa(labels: Iterable[Label], a1: Hashable, a2: Hashable) -> float:
    """Cohen's kappa (Cohen 1960) between annotators ``a1`` and ``a2`` on the items both labelled.

    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the share of shared items with equal labels
    and ``p_e = sum_c p_1(c) p_2(c)`` from each annotator's own category shares on those items.
    Returns ``nan`` with no shared item or when ``p_e == 1``.
    """
    pairs = [(row[a1], row[a2]) for row in _by_item(labels).values() if a1 in row and a2 in row]
    if not pairs:
        return math.nan
    n = len(pairs)
    p_o = sum(x == y for x, y in pairs) / n
    first = Counter(x for x, _ in pairs)
    second = Counter(y for _, y in pairs)
    p_e = sum(first[c] * second[c] for c in first) / (n * n)
    if p_e >= 1.0:
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


# --------------------------------------------------------------------------------------------
# aggregation


def majority_vote(
    labels: Iterable[Label], tie_break: Sequence[Hashable] | None = None
) -> dict[Hashable, Hashable | None]:
    """The most frequent category per item.

    Where several categories share the top count the result is ``None``, unless ``tie_break``
    is given: then the tied category that comes first in ``tie_break`` wins (still ``None`` if
    no tied category is listed there).
    """
    rank = {c: r for r, c in enumerate(tie_break or ())}
    out: dict[Hashable, Hashable | None] = {}
    for item, row in _by_item(labels).items():
        counts = Counter(row.values())
        top = max(counts.values())
        tied = [c for c, k in counts.items() if k == top]
        if len(tied) == 1:
            out[item] = tied[0]
        else:
            listed = [c for c in tied if c in rank]
            out[item] = min(listed, key=rank.__getitem__) if listed else None
    return out


@dataclass
class DawidSkeneResult:
    """Output of :func:`dawid_skene`.

    ``confusion[a][t][g]`` is the estimated probability that annotator ``a`` gives ``g`` when
    the true category is ``t``; ``annotator_accuracy[a] = sum_t priors[t] confusion[a][t][t]``.
    """

    posteriors: dict[Hashable, dict[Hashable, float]]
    labels: dict[Hashable, Hashable]
    confusion: dict[Hashable, dict[Hashable, dict[Hashable, float]]]
    priors: dict[Hashable, float]
    annotator_accuracy: dict[Hashable, float]
    n_iter: int
    converged: bool


def dawid_skene(
    labels: Iterable[Label],
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.01,
    *,
    gold: Mapping[Hashable, Hashable] | None = None,
) -> DawidSkeneResult:
    """Noise-aware aggregation by Dawid & Skene (1979), "Maximum likelihood estimation of
    observer error-rates using the EM algorithm".

    Model: item ``i`` has a hidden true category ``t`` with prior ``pi_t``; annotator ``a``
    reports ``g`` with probability ``theta_a[t, g]`` independently of the others. EM:

    - start: ``T_it`` = share of item ``i``'s labels that are ``t`` (soft majority vote);
    - M-step: ``pi_t ∝ sum_i T_it + s``, ``theta_a[t, g] ∝ sum_{i: a labelled g} T_it + s``
      (``s = smoothing`` is a pseudo-count keeping every probability positive);
    - E-step: ``T_it ∝ pi_t prod_{(a, g) on i} theta_a[t, g]``;

    until the largest change of any ``T_it`` is below ``tol`` (``converged``) or ``max_iter``
    M/E rounds. Items in ``gold`` (optional) have ``T`` fixed to their known category
    (semi-supervised). ``labels`` of the result is the argmax of the posteriors, ties going to
    the first category in sorted order.
    """
    by_item = _by_item(labels)
    gold = dict(gold or {})
    items = list(by_item)
    annotators = _ordered(a for row in by_item.values() for a in row)
    categories = _ordered([*(c for row in by_item.values() for c in row.values()), *gold.values()])
    if not items:
        return DawidSkeneResult({}, {}, {}, {}, {}, 0, True)
    item_ix = {x: i for i, x in enumerate(items)}
    ann_ix = {a: j for j, a in enumerate(annotators)}
    cat_ix = {c: k for k, c in enumerate(categories)}
    n_items, n_ann, n_cat = len(items), len(annotators), len(categories)

    triples = [(item_ix[x], ann_ix[a], cat_ix[c]) for x, row in by_item.items() for a, c in row.items()]
    li, la, lc = (np.fromiter((t[p] for t in triples), dtype=np.intp, count=len(triples)) for p in range(3))
    gold_rows = np.array([item_ix[x] for x in gold if x in item_ix], dtype=np.intp)
    gold_cols = np.array([cat_ix[gold[x]] for x in gold if x in item_ix], dtype=np.intp)

    def clamp(t: np.ndarray) -> np.ndarray:
        if gold_rows.size:
            t[gold_rows] = 0.0
            t[gold_rows, gold_cols] = 1.0
        return t

    posterior = np.zeros((n_items, n_cat))
    np.add.at(posterior, (li, lc), 1.0)
    posterior = clamp(posterior / posterior.sum(axis=1, keepdims=True))

    converged = False
    n_iter = 0
    for iteration in range(1, max_iter + 1):
        n_iter = iteration
        # M-step
        priors = posterior.sum(axis=0) + smoothing
        priors /= priors.sum()
        counts = np.full((n_ann, n_cat, n_cat), smoothing)  # annotator x given x true
        np.add.at(counts, (la, lc), posterior[li])
        confusion = counts.transpose(0, 2, 1)  # annotator x true x given
        confusion = confusion / confusion.sum(axis=2, keepdims=True)
        # E-step, in logs
        log_post = np.tile(np.log(priors), (n_items, 1))
        np.add.at(log_post, li, np.log(confusion[la, :, lc]))
        log_post -= log_post.max(axis=1, keepdims=True)
        new = np.exp(log_post)
        new = clamp(new / new.sum(axis=1, keepdims=True))
        change = float(np.abs(new - posterior).max())
        posterior = new
        if change < tol:
            converged = True
            break

    accuracy = np.einsum("t,att->a", priors, confusion)
    best = posterior.argmax(axis=1)
    return DawidSkeneResult(
        posteriors={x: {c: float(posterior[i, k]) for k, c in enumerate(categories)} for i, x in enumerate(items)},
        labels={x: categories[best[i]] for i, x in enumerate(items)},
        confusion={
            a: {
                t: {g: float(confusion[j, kt, kg]) for kg, g in enumerate(categories)}
                for kt, t in enumerate(categories)
            }
            for j, a in enumerate(annotators)
        },
        priors={c: float(priors[k]) for k, c in enumerate(categories)},
        annotator_accuracy={a: float(accuracy[j]) for j, a in enumerate(annotators)},
        n_iter=n_iter,
        converged=converged,
    )


# --------------------------------------------------------------------------------------------
# annotator quality


def gold_accuracy(labels: Iterable[Label], gold: Mapping[Hashable, Hashable]) -> dict[Hashable, tuple[int, int]]:
    """``(correct, total)`` per annotator over the items in ``gold`` they labelled.

    Every annotator in ``labels`` is listed, with ``(0, 0)`` if they labelled no gold item.
    """
    out: dict[Hashable, list[int]] = {}
    for item, row in _by_item(labels).items():
        for annotator, category in row.items():
            tally = out.setdefault(annotator, [0, 0])
            if item in gold:
                tally[0] += int(category == gold[item])
                tally[1] += 1
    return {a: (c, t) for a, (c, t) in out.items()}


def trust_scores(
    labels: Iterable[Label],
    gold: Mapping[Hashable, Hashable] | None = None,
    *,
    min_gold: int = 5,
    prior_strength: float = 10.0,
) -> dict[Hashable, float]:
    """A trust score in [0, 1] per annotator: an estimate of the chance that their label is right.

    Raw accuracy ``r_a`` with evidence count ``n_a``:

    - annotators with at least ``min_gold`` gold items: accuracy on those items
      (:func:`gold_accuracy`), ``n_a`` = number of gold items;
    - everyone else: the Dawid-Skene estimated accuracy (:func:`dawid_skene`, with the gold
      items clamped), ``n_a`` = number of labels they gave.

    The score shrinks ``r_a`` toward the population mean ``mu = sum_a n_a r_a / sum_a n_a``::

        score_a = (n_a r_a + m mu) / (n_a + m),   m = prior_strength

    which is the posterior mean of a Beta prior with mean ``mu`` and ``m`` pseudo-labels
    (empirical Bayes). Why: an annotator with 3 labels that happen to match the consensus would
    otherwise score 1.0 and outrank one with 95% on 500 labels; shrinking by the amount of
    evidence keeps small samples near the average until they have earned a distinct score.
    """
    label_list = list(labels)
    by_item = _by_item(label_list)
    if not by_item:
        return {}
    n_labels = Counter(a for row in by_item.values() for a in row)
    tallies = gold_accuracy(label_list, gold or {})
    raw: dict[Hashable, float] = {}
    weight: dict[Hashable, float] = {}
    need_ds = [a for a in n_labels if tallies[a][1] < min_gold]
    ds = dawid_skene(label_list, gold=gold) if need_ds else None
    for annotator in n_labels:
        correct, total = tallies[annotator]
        if total >= min_gold:
            raw[annotator], weight[annotator] = correct / total, float(total)
        else:
            assert ds is not None
            raw[annotator], weight[annotator] = ds.annotator_accuracy[annotator], float(n_labels[annotator])
    mu = sum(weight[a] * raw[a] for a in raw) / sum(weight.values())
    return {
        a: min(1.0, max(0.0, (weight[a] * raw[a] + prior_strength * mu) / (weight[a] + prior_strength))) for a in raw
    }


# --------------------------------------------------------------------------------------------
# ranking


def bradley_terry(
    comparisons: Iterable[tuple[Hashable, Hashable]],
    ties: Iterable[tuple[Hashable, Hashable]] = (),
    *,
    prior: float = 1.0,
    max_iter: int = 10_000,
    tol: float = 1e-10,
) -> dict[Hashable, float]:
    """Bradley-Terry log-strengths ``log gamma_i``, centred at 0, from ``(winner, loser)`` pairs.

    Model (Bradley & Terry 1952): ``P(i beats j) = gamma_i / (gamma_i + gamma_j)``. A pair in
    ``ties`` counts as one comparison with half a win to each side. Fitted by the MM algorithm
    of Hunter (2004), "MM algorithms for generalized Bradley-Terry models", eq. (3)::

        gamma_i <- W_i / sum_j n_ij / (gamma_i + gamma_j)

    with ``W_i`` the wins of ``i`` and ``n_ij`` the comparisons between ``i`` and ``j``. To keep
    every score finite (an item that never lost would otherwise go to infinity), each item also
    plays ``prior`` virtual drawn games against a fixed reference of strength 1, i.e. ``W_i``
    gets ``prior / 2`` and the sum gets ``prior / (gamma_i + 1)``. Iterates until the largest
    change of a log-strength is below ``tol`` or ``max_iter`` rounds.
    """
    if prior <= 0:
        raise ValueError("prior must be positive to keep the scores finite")
    pair_count: Counter[tuple[Hashable, Hashable]] = Counter()
    wins: defaultdict[Hashable, float] = defaultdict(float)
    order: dict[Hashable, None] = {}

    def add(a: Hashable, b: Hashable, win_a: float) -> None:
        if a == b:
            raise ValueError(f"item {a!r} compared with itself")
        order.setdefault(a)
        order.setdefault(b)
        key = (a, b) if (a, b) in pair_count or (b, a) not in pair_count else (b, a)
        pair_count[key] += 1
        wins[a] += win_a
        wins[b] += 1.0 - win_a

    for winner, loser in comparisons:
        add(winner, loser, 1.0)
    for a, b in ties:
        add(a, b, 0.5)
    items = list(order)
    if not items:
        return {}
    ix = {x: i for i, x in enumerate(items)}
    left = np.array([ix[a] for a, _ in pair_count], dtype=np.intp)
    right = np.array([ix[b] for _, b in pair_count], dtype=np.intp)
    n_pair = np.array(list(pair_count.values()), dtype=float)
    w = np.array([wins[x] for x in items], dtype=float) + prior / 2.0

    log_gamma = np.zeros(len(items))
    for _ in range(max_iter):
        gamma = np.exp(log_gamma)
        per_pair = n_pair / (gamma[left] + gamma[right])
        denom = (
            prior / (gamma + 1.0) + np.bincount(left, per_pair, len(items)) + np.bincount(right, per_pair, len(items))
        )
        new = np.log(w / denom)
        change = float(np.abs(new - log_gamma).max())
        log_gamma = new
        if change < tol:
            break
    log_gamma -= log_gamma.mean()
    return {x: float(log_gamma[i]) for i, x in enumerate(items)}
