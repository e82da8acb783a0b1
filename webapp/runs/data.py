"""What a training run trains on: one project's labels, through its recipe.

- Only the project's labels are read.
- Gold items never train (they measure annotators).
- Annotators whose trust is below the recipe's floor are left out.
- A fixed share of the labels, chosen by a stable hash of the label's id, is held out for the
  evaluation gate and never trained on; the same label is held out in every run.
- Raw labels: each label as given. Weighted: each label as given, counting in the loss by its
  annotator's trust (`trust_weight`); labels that would count for nothing are left out. Aggregated:
  one Dawid-Skene label per pairwise item that more than one person judged (items judged once pass
  as they are).
- Pairwise labels give pairs; ties and "both bad" give ties (for the reward model's tie loss);
  rankings give lists (for LiPO and the reward model's Plackett-Luce loss) and pairs (for DPO);
  a critique's rewrite is preferred to the critiqued answer.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q

from training.examples import Examples, label_examples
from webapp.feedback.followups import followups_scored
from webapp.feedback.models import Adjudication, Label, MessageFeedback, Project, Prompt, Task
from webapp.feedback.selectors import context_before, slots_prefetch
from webapp.runs.recipe import Recipe

EXCLUDED_GOLD = "gold item"
EXCLUDED_TRUST = "annotator below the trust floor"
EXCLUDED_HELD_OUT = "held out for the gate"
EXCLUDED_AGGREGATED = "merged into an aggregate label"
EXCLUDED_ADJUDICATED = "replaced by a reviewer's final answer"
EXCLUDED_NO_PREFERENCE = "expresses no preference"
EXCLUDED_TRAINED = "already trained the starting version"
EXCLUDED_WEIGHTLESS = "annotator's trust gives it no weight (trust at most 0.5)"


def trust_weight(trust: float) -> float:
    """How much a label counts when its annotator is right with chance `trust`: ``2·trust - 1``,
    the share of it that is signal. A sure annotator's label counts 1; a coin-flipper's nothing
    (and one who is worse than a coin is not trusted to be reliably wrong either)."""
    return max(0.0, min(1.0, 2.0 * trust - 1.0))


def is_held_out(label_id: int, share: float) -> bool:
    """Whether a label is held out for the gate: a stable hash of its id, so it never moves."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"prefloop-label-{label_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


@dataclass
class TrainingData:
    pairs: list[dict[str, Any]] = field(default_factory=list)  # label_id, annotator, prompt, chosen, rejected, strength
    ties: list[dict[str, Any]] = field(default_factory=list)  # label_id, annotator, prompt, chosen, rejected
    rankings: list[dict[str, Any]] = field(default_factory=list)  # label_id, annotator, prompt, completions, ranks
    kto: list[dict[str, Any]] = field(default_factory=list)  # label_id, annotator, prompt, completion, desirable
    thumbs: list[dict[str, Any]] = field(default_factory=list)  # prompt, completion, desirable
    held_out_pairs: list[dict[str, Any]] = field(default_factory=list)
    held_out_prompts: list[list[dict[str, str]]] = field(default_factory=list)
    label_ids: list[int] = field(default_factory=list)  # the labels that train, in id order
    # the prompts of every label that trains this run or trained its lineage (json keys): never gate prompts
    trained_prompts: set[str] = field(default_factory=set)
    excluded: dict[str, int] = field(default_factory=dict)  # why -> how many labels
    n_labels: int = 0  # the project's labels, all of them
    # "weighted" labels: each annotator's weight (mean 1 over the training labels); empty otherwise
    weights: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What the run will train on, for the form and the run's record."""
        return {
            "labels": self.n_labels,
            "training_labels": len(self.label_ids),
            "pairs": len(self.pairs),
            "ties": len(self.ties),
            "lists": len(self.rankings),
            "liked_or_disliked": len(self.kto),
            "thumbs": len(self.thumbs),
            "held_out_pairs": len(self.held_out_pairs),
            "held_out_prompts": len(self.held_out_prompts),
            "left_out": dict(sorted(self.excluded.items())),
            **({"weights": dict(sorted(self.weights.items()))} if self.weights else {}),
        }


def annotator_trust(project: Project) -> dict[str, float | None]:
    from webapp.feedback.quality import project_quality

    return {a["username"]: a["trust"] for a in project_quality(project=project)["annotators"]}


def lineage_label_ids(version: Any) -> set[int]:
    """The labels that trained `version` (a ModelVersion) and its ancestors."""
    seen: set[int] = set()
    while version is not None:
        seen.update(version.label_ids or [])
        version = version.parent
    return seen


def training_data(*, project: Project, recipe: Recipe, trained: set[int] | None = None) -> TrainingData:
    """Everything a run of `project` under `recipe` trains on and is gated on. With the recipe's
    label scope "new", the labels in `trained` (those that trained the starting version's lineage)
    are left out of training."""
    trained = trained if recipe.label_scope == "new" and trained else set()
    data = TrainingData()
    labels = list(
        Label.objects.filter(task__project=project)
        .select_related("task__prompt", "annotator")
        .prefetch_related(slots_prefetch("task__slots"))
        .order_by("id")
    )
    data.n_labels = len(labels)
    excluded: Counter[str] = Counter()
    weighted = recipe.labels == "weighted"
    trust = annotator_trust(project) if recipe.trust_floor > 0 or weighted else {}
    weights = _annotator_weights(trust) if weighted else {}
    kept: list[Label] = []
    held_out: list[Label] = []
    lineage: list[Label] = []
    for label in labels:
        if label.task.is_gold:
            excluded[EXCLUDED_GOLD] += 1
        elif is_held_out(label.pk, recipe.held_out_share):
            excluded[EXCLUDED_HELD_OUT] += 1
            held_out.append(label)
        elif label.pk in trained:
            excluded[EXCLUDED_TRAINED] += 1
            lineage.append(label)
        elif recipe.trust_floor > 0 and (trust.get(label.annotator.username) or 0.0) < recipe.trust_floor:
            excluded[EXCLUDED_TRUST] += 1
        elif weighted and weights.get(label.annotator.username, 1.0) <= 0:
            excluded[EXCLUDED_WEIGHTLESS] += 1
        else:
            kept.append(label)
    if recipe.labels == "aggregated":
        kept, merged = _aggregate(kept)
        excluded[EXCLUDED_AGGREGATED] += merged
    elif recipe.labels == "adjudicated":
        kept, replaced = _adjudicated(kept)
        excluded[EXCLUDED_ADJUDICATED] += replaced
    for label in kept:
        texts, order = _slots(label)
        before = len(data.pairs) + len(data.ties) + len(data.rankings) + len(data.kto)
        _add_label(data, label, texts, order)
        if len(data.pairs) + len(data.ties) + len(data.rankings) + len(data.kto) > before:
            data.label_ids.append(label.pk)
            data.trained_prompts.add(_key(label.task.prompt.messages))
        else:
            excluded[EXCLUDED_NO_PREFERENCE] += 1
    if weighted:
        _apply_weights(data, weights)
    for label in lineage:  # what trained the starting version is not a gate prompt either
        scratch = TrainingData()
        _add_label(scratch, label, *_slots(label))
        if scratch.pairs or scratch.ties or scratch.rankings or scratch.kto:
            data.trained_prompts.add(_key(label.task.prompt.messages))
    for label in held_out:
        texts, order = _slots(label)
        data.held_out_pairs += _pairs(label, texts, order)
    data.held_out_prompts = _distinct_prompts([label.task.prompt.messages for label in held_out])
    if project.name == _default_project_name():  # the chat's thumbs belong to the chat's project
        data.thumbs = _thumbs()
        if recipe.followup_margin > 0:  # and so do its answers scored by the user's next message
            data.thumbs += _followup_thumbs(margin=recipe.followup_margin)
    data.excluded = dict(excluded)
    return data


def _annotator_weights(trust: dict[str, float | None]) -> dict[str, float]:
    """`trust_weight` per annotator; one whose trust is not known yet counts as the known ones on
    average (as everyone, when nobody's is known)."""
    known = {name: trust_weight(t) for name, t in trust.items() if t is not None}
    fallback = sum(known.values()) / len(known) if known else 1.0
    return {name: known.get(name, fallback) for name in trust}


def _apply_weights(data: TrainingData, weights: dict[str, float]) -> None:
    """Put each row's weight on it, scaled so that the training labels' mean weight is 1 (the
    recipe's learning rate keeps its meaning), and record each annotator's."""
    rows = [*data.pairs, *data.ties, *data.rankings, *data.kto]
    by_label = {r["label_id"]: weights.get(r["annotator"], 1.0) for r in rows}  # a label's rows share one
    if not by_label:
        return
    scale = len(by_label) / sum(by_label.values())
    for row in rows:
        row["weight"] = round(weights.get(row["annotator"], 1.0) * scale, 6)
    data.weights = {name: round(weights.get(name, 1.0) * scale, 4) for name in {r["annotator"] for r in rows}}


def _default_project_name() -> str:
    from webapp.feedback.projects import DEFAULT_PROJECT_NAME

    return DEFAULT_PROJECT_NAME


def _slots(label: Label) -> tuple[dict[int, str], list[int]]:
    slots = sorted(label.task.slots.all(), key=lambda s: s.position)
    return {s.candidate_id: s.candidate.text for s in slots}, [s.candidate_id for s in slots]


def _row(label: Label, **fields: Any) -> dict[str, Any]:
    return {"label_id": label.pk, "annotator": label.annotator.username, "prompt": label.task.prompt.messages, **fields}


def _examples(label: Label, texts: dict[int, str], order: list[int]) -> Examples:
    """What the label teaches, through the one converter every export uses too (training.examples)."""
    index = {candidate_id: i for i, candidate_id in enumerate(order)}
    ranking = [[index[c] for c in group if c in index] for group in label.ranking] if label.ranking else None
    return label_examples(
        kind=label.kind, answers=[texts[c] for c in order], choice=label.choice or None, strength=label.strength,
        ranking=ranking, rewrite=label.rewrite or None,
    )  # fmt: skip


def _pairs(label: Label, texts: dict[int, str], order: list[int]) -> list[dict[str, Any]]:
    """The label's strict preferences as (chosen, rejected) pairs of different texts."""
    found = _examples(label, texts, order)
    return [_row(label, chosen=c, rejected=r, strength=s or 1) for c, r, s in found.pairs]


def _add_label(data: TrainingData, label: Label, texts: dict[int, str], order: list[int]) -> None:
    found = _examples(label, texts, order)
    data.pairs += [_row(label, chosen=c, rejected=r, strength=s or 1) for c, r, s in found.pairs]
    data.ties += [_row(label, chosen=a, rejected=b) for a, b in found.ties]
    if found.ranking is not None:
        completions, ranks = found.ranking
        data.rankings.append(_row(label, completions=completions, ranks=ranks))
    data.kto += [_row(label, completion=text, desirable=liked) for text, liked in found.kto]


def _aggregate(labels: list[Label]) -> tuple[list[Label], int]:
    """One Dawid-Skene label per pairwise item judged by more than one person; return the labels to
    train on and how many were merged away. The kept label is one that agrees with the aggregate."""
    from training.aggregation import dawid_skene

    by_task: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        if label.kind == Task.Kind.PAIRWISE:
            by_task[label.task_id].append(label)
    overlapped = {t: ls for t, ls in by_task.items() if len(ls) > 1}
    if not overlapped:
        return labels, 0
    triples = [(t, label.annotator.username, label.choice) for t, ls in overlapped.items() for label in ls]
    result = dawid_skene(triples)
    keep: set[int] = set()
    for task_id, task_labels in overlapped.items():
        verdict = result.labels.get(task_id)
        agreeing = [label for label in task_labels if label.choice == verdict]
        if agreeing:
            keep.add(agreeing[0].pk)
    drop = {label.pk for ls in overlapped.values() for label in ls} - keep
    return [label for label in labels if label.pk not in drop], len(drop)


def _adjudicated(labels: list[Label]) -> tuple[list[Label], int]:
    """Each adjudicated item's labels become one label holding the reviewer's final answer (by the
    reviewer, numbered as the item's first label, so held-out splits and lineages stay as they were);
    return the labels to train on and how many were replaced."""
    by_task: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        by_task[label.task_id].append(label)
    settled = {a.task_id: a for a in Adjudication.objects.filter(task_id__in=by_task).select_related("reviewer")}
    if not settled:
        return labels, 0
    out: list[Label] = []
    replaced = 0
    for label in labels:
        adjudication = settled.get(label.task_id)
        if adjudication is None:
            out.append(label)
            continue
        first = by_task[label.task_id][0]
        if label is first:
            final = Label(pk=first.pk, task=first.task, kind=first.kind, annotator=adjudication.reviewer,
                          source=first.source, **adjudication.answer)  # fmt: skip
            out.append(final)
        replaced += 1
    return out, replaced - len(settled)


def _key(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, sort_keys=True)


def _distinct_prompts(prompts: list[list[dict[str, str]]]) -> list[list[dict[str, str]]]:
    seen: set[str] = set()
    out = []
    for messages in prompts:
        key = _key(messages)
        if messages and messages[-1].get("role") == "user" and key not in seen:
            seen.add(key)
            out.append(messages)
    return out


def held_out_prompts(*, project: Project, data: TrainingData, limit: int) -> list[list[dict[str, str]]]:
    """Prompts for the gate's win rate and KL: those of `data`'s held-out labels first, then the
    project's prompts that no label has touched, never a prompt that trained."""
    prompts = [p for p in data.held_out_prompts if _key(p) not in data.trained_prompts]
    if len(prompts) < limit:
        fresh = Prompt.objects.filter(project=project, tasks__labels__isnull=True).order_by("-id")[: limit * 4]
        prompts = _distinct_prompts(prompts + [p.messages for p in fresh])
        prompts = [p for p in prompts if _key(p) not in data.trained_prompts]
    return prompts[:limit]


def training_preview(*, project: Project, recipe: Recipe) -> dict[str, Any]:
    """What a run of `project` queued now would train on (its form and its API show it)."""
    from webapp.runs.selectors import version_serving

    return training_data(project=project, recipe=recipe, trained=lineage_label_ids(version_serving())).summary()


def _thumbs() -> list[dict[str, Any]]:
    """KTO examples from the chat's thumbs: the answer after its context, liked or not."""
    feedback = MessageFeedback.objects.select_related("message__conversation").order_by("id")
    return [row for f in feedback if (row := _answer_example(f.message, f.value == "up")) is not None]


def _followup_thumbs(*, margin: float) -> list[dict[str, Any]]:
    """KTO examples from the chat's answers scored by the user's next message beyond `margin`:
    liked above it, disliked below minus it; those in between say too little to train on."""
    scored = followups_scored().filter(Q(followup_score__gt=margin) | Q(followup_score__lt=-margin))
    examples = [_answer_example(a, float(a.followup_score or 0.0) > 0) for a in scored]
    return [row for row in examples if row is not None]


def _answer_example(message: Any, desirable: bool) -> dict[str, Any] | None:
    """A chat answer after its context, liked or not; None when it has no text or no user turn before it."""
    context = context_before(message=message)
    if not message.content.strip() or not context or context[-1]["role"] != "user":
        return None
    return {"prompt": context, "completion": message.content, "desirable": desirable}


def preview_figure(project: Project, recipe: dict[str, Any]) -> dict[str, Any]:
    """`training_preview` of a stored recipe, as a stored figure (webapp.feedback.figures)."""
    return training_preview(project=project, recipe=Recipe.from_dict(recipe))
