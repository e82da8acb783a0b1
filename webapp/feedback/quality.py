"""Annotation quality of a project, derived from the raw labels (nothing here is stored).

Agreement is computed per label kind over the categories people chose: the choice for pairwise
labels, the rating for ratings, and the top group for rankings. Critiques are free text and have
no category. Gold items are kept out of agreement and scored separately.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable
from typing import Any

from training import aggregation
from webapp.feedback.models import Label, Project, Task

AGREEMENT_KINDS = (Task.Kind.PAIRWISE, Task.Kind.RATING, Task.Kind.RANKING, Task.Kind.THUMBS)


def label_category(kind: str, choice: str, rating: int | None, ranking: Any) -> Hashable | None:
    """What a label answered, as a category two labels can agree on (None: free text, no category)."""
    if kind in (Task.Kind.PAIRWISE, Task.Kind.THUMBS):
        return choice or None
    if kind == Task.Kind.RATING:
        return rating
    if kind == Task.Kind.RANKING and ranking:
        return tuple(sorted(ranking[0]))
    return None


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def quality_figure(project: Project) -> dict[str, Any]:
    """The quality report as a stored figure (webapp.feedback.figures)."""
    return project_quality(project=project)


def project_quality(*, project: Project) -> dict[str, Any]:
    """Agreement per kind, aggregates, and each annotator's agreement, gold accuracy and trust."""
    rows = Label.objects.filter(task__project=project).values_list(
        "task_id", "annotator__username", "kind", "choice", "rating", "ranking", "task__is_gold", "gold_correct"
    )
    by_kind: dict[str, list[tuple[Hashable, Hashable, Hashable]]] = defaultdict(list)
    gold: dict[str, list[bool]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for task_id, user, kind, choice, rating, ranking, is_gold, gold_correct in rows:
        counts[user] += 1
        if is_gold:
            if gold_correct is not None:
                gold[user].append(bool(gold_correct))
            continue
        category = label_category(kind, choice, rating, ranking)
        if category is not None and kind in AGREEMENT_KINDS:
            by_kind[kind].append((task_id, user, category))

    kinds: dict[str, Any] = {}
    agreement: dict[Hashable, list[float]] = defaultdict(list)
    all_triples: list[tuple[Hashable, Hashable, Hashable]] = []
    for kind, triples in by_kind.items():
        per_item: dict[Hashable, int] = defaultdict(int)
        for item, _, _ in triples:
            per_item[item] += 1
        level: aggregation.Level = "ordinal" if kind == Task.Kind.RATING else "nominal"
        majority = aggregation.majority_vote(triples)
        kinds[kind] = {
            "labels": len(triples),
            "items": len(per_item),
            "items_with_overlap": sum(1 for n in per_item.values() if n >= 2),
            "fleiss_kappa": _finite(aggregation.fleiss_kappa(triples)),
            "krippendorff_alpha": _finite(aggregation.krippendorff_alpha(triples, level=level)),
            "majority_decided": sum(1 for v in majority.values() if v is not None),
        }
        for rater, value in aggregation.pairwise_agreement(triples).items():
            if not math.isnan(value):
                agreement[rater].append(value)
        all_triples += [((kind, item), user, (kind, cat)) for item, user, cat in triples]

    trust = aggregation.trust_scores(all_triples) if all_triples else {}
    annotators = []
    for user in sorted(counts):
        correct = sum(gold[user])
        annotators.append(
            {
                "username": user,
                "labels": counts[user],
                "agreement": _finite(sum(agreement[user]) / len(agreement[user])) if agreement[user] else None,
                "gold_correct": correct,
                "gold_total": len(gold[user]),
                "gold_accuracy": round(correct / len(gold[user]), 4) if gold[user] else None,
                "trust": _finite(_blend_trust(trust.get(user), gold[user])),
            }
        )
    return {"project": project.name, "kinds": kinds, "annotators": annotators}


def _blend_trust(estimated: float | None, gold_hits: list[bool]) -> float:
    """Gold accuracy where there are at least 5 gold labels, else the Dawid-Skene-based trust."""
    if len(gold_hits) >= 5:
        return sum(gold_hits) / len(gold_hits)
    return float("nan") if estimated is None else estimated
