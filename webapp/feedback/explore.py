"""Looking through the data and settling disagreements: the explorer's query (search, filters,
sorts, keyset pages), each item's label statistics kept as labels arrive, and reviewers' final
answers (adjudications), stored beside the raw labels."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet, TextField
from django.db.models.functions import Cast

from webapp.accounts.models import User
from webapp.core.parsing import parse_id
from webapp.feedback.figures import figures_changed
from webapp.feedback.gold import gold_correct
from webapp.feedback.models import Adjudication, Assignment, Candidate, Label, Project, ProjectMember, Prompt, Task
from webapp.feedback.quality import label_category
from webapp.feedback.validation import clean_label

PAGE_SIZE = 50
SORTS = {
    "newest": ("-id",),
    "disagreement": ("-disagreement", "-id"),
    "uncertainty": ("-priority", "-id"),
}
REVIEW_ROLES = (ProjectMember.Role.REVIEWER, ProjectMember.Role.ADMIN)


def disagreement_of(categories: list[Any]) -> float:
    """1 - the share of the most common answer among those given (0 with fewer than two)."""
    given = [c for c in categories if c is not None]
    if len(given) < 2:
        return 0.0
    return round(1.0 - Counter(given).most_common(1)[0][1] / len(given), 6)


def task_stats_refresh(task_ids: Iterable[int]) -> dict[int, int]:
    """Count each item's labels and measure how much they disagree (what the explorer sorts by);
    return each item's count of labels."""
    ids = sorted(set(task_ids))
    if not ids:
        return {}
    answers: dict[int, list[Any]] = {pk: [] for pk in ids}
    rows = Label.objects.filter(task_id__in=ids).values_list("task_id", "kind", "choice", "rating", "ranking")
    for task_id, kind, choice, rating, ranking in rows:
        answers[task_id].append(label_category(kind, choice, rating, ranking))
    for task_id, categories in answers.items():
        Task.objects.filter(pk=task_id).update(n_labels=len(categories), disagreement=disagreement_of(categories))
    return {task_id: len(categories) for task_id, categories in answers.items()}


def reviewable_projects(user: User) -> QuerySet[Project]:
    """Projects whose data this person may look through and settle: all for admins; for others, the
    unarchived ones where they are a reviewer or the project's admin."""
    if user.is_prefloop_admin:
        return Project.objects.all()
    return Project.objects.filter(
        memberships__user=user, memberships__role__in=REVIEW_ROLES, archived_at__isnull=True
    ).distinct()


@dataclass
class Filters:
    """The explorer's query, as its form and its URL carry it."""

    q: str = ""
    project: int | None = None
    kind: str = ""
    annotator: str = ""
    version: int | None = None
    gold: str = ""  # "yes", "no" or "" (either)
    skipped: bool = False
    disagreement: bool = False
    adjudicated: str = ""  # "yes", "no" or ""
    sort: str = "newest"
    after: str = ""  # the keyset cursor: the last row's sort value and id
    errors: dict[str, str] = field(default_factory=dict)


def filters_from(params: Any) -> Filters:
    """Read the explorer's query from GET parameters; what cannot be read is named in `errors`."""
    f = Filters(q=params.get("q", "").strip()[:200], kind=params.get("kind", ""),
                annotator=params.get("annotator", "").strip(), gold=params.get("gold", ""),
                skipped=params.get("skipped") == "1", disagreement=params.get("disagreement") == "1",
                adjudicated=params.get("adjudicated", ""), sort=params.get("sort") or "newest",
                after=params.get("after", ""))  # fmt: skip
    for name in ("project", "version"):
        value = params.get(name, "")
        if value:
            number = parse_id(value)
            if number is None:
                f.errors[name] = f"{value!r} is not a number"
            setattr(f, name, number)
    if f.kind and f.kind not in Task.Kind.values:
        f.errors["kind"] = f"one of {', '.join(Task.Kind.values)}"
    if f.sort not in SORTS:
        f.errors["sort"] = f"one of {', '.join(SORTS)}"
        f.sort = "newest"
    for name in ("gold", "adjudicated"):
        if getattr(f, name) not in ("", "yes", "no"):
            f.errors[name] = "yes, no or empty"
    if f.after and _cursor(f.after, f.sort) is None:
        f.errors["after"] = "not a page cursor of this sort"
    return f


def _cursor(after: str, sort: str) -> tuple[float, int] | None:
    value, _, raw_pk = after.rpartition(":")
    pk = parse_id(raw_pk)
    try:
        number = float(value) if sort != "newest" else 0.0
    except ValueError:
        return None
    return (number, pk) if pk is not None and math.isfinite(number) else None


def _search(tasks: QuerySet[Task], q: str) -> QuerySet[Task]:
    """Items whose prompt, answers or labels' rationales hold `q`: PostgreSQL's full-text search
    (web-search syntax, English stemming; GIN indexes on the same expressions), or a
    case-insensitive substring on SQLite."""
    if connection.vendor == "postgresql":
        from django.contrib.postgres.search import SearchQuery, SearchVector

        query = SearchQuery(q, config="english", search_type="websearch")

        def matching(model: Any, expression: Any) -> QuerySet[Any]:
            return model.objects.annotate(found=SearchVector(expression, config="english")).filter(found=query)

        prompts: QuerySet[Any, Any] = matching(Prompt, Cast("messages", TextField())).values("pk")
        answers: QuerySet[Any, Any] = matching(Candidate, "text").values("prompt_id")
        rationales: QuerySet[Any, Any] = matching(Label, "rationale").values("task_id")
    else:
        prompts = Prompt.objects.annotate(t=Cast("messages", TextField())).filter(t__icontains=q).values("pk")
        answers = Candidate.objects.filter(text__icontains=q).values("prompt_id")
        rationales = Label.objects.filter(rationale__icontains=q).values("task_id")
    return tasks.filter(Q(prompt_id__in=prompts) | Q(prompt_id__in=answers) | Q(pk__in=rationales))


def explore(*, user: User, filters: Filters) -> tuple[list[Task], str]:
    """One page of items matching `filters` in the chosen order, and the cursor of the next page
    ("" on the last). Keyset pages: each page reads from an index, however deep it is."""
    tasks = Task.objects.filter(project__in=reviewable_projects(user))
    f = filters
    if f.project is not None:
        tasks = tasks.filter(project_id=f.project)
    if f.kind:
        tasks = tasks.filter(kind=f.kind)
    if f.annotator:
        tasks = tasks.filter(Exists(Label.objects.filter(task=OuterRef("pk"), annotator__username=f.annotator)))
    if f.version is not None:
        on_version = Candidate.objects.filter(tasks=OuterRef("pk"), policy_version__number=f.version)
        tasks = tasks.filter(Exists(on_version))
    if f.gold:
        tasks = tasks.filter(is_gold=f.gold == "yes")
    if f.skipped:
        skipped = Assignment.objects.filter(task=OuterRef("pk"), status=Assignment.Status.SKIPPED)
        tasks = tasks.filter(Exists(skipped))
    if f.disagreement:
        tasks = tasks.filter(disagreement__gt=0)
    if f.adjudicated:
        tasks = tasks.filter(adjudication__isnull=f.adjudicated == "no")
    if f.q:
        tasks = _search(tasks, f.q)
    cursor = _cursor(f.after, f.sort) if f.after else None
    if cursor is not None:
        value, pk = cursor
        if f.sort == "newest":
            tasks = tasks.filter(pk__lt=pk)
        else:
            column = SORTS[f.sort][0].lstrip("-")
            tasks = tasks.filter(Q(**{f"{column}__lt": value}) | Q(**{column: value, "pk__lt": pk}))
    rows = list(
        tasks.order_by(*SORTS[f.sort]).select_related("project", "prompt", "adjudication")[: PAGE_SIZE + 1]
    )  # fmt: skip
    if len(rows) <= PAGE_SIZE:
        return rows, ""
    rows = rows[:PAGE_SIZE]
    last = rows[-1]
    value = 0.0 if f.sort == "newest" else getattr(last, SORTS[f.sort][0].lstrip("-"))
    return rows, f"{value!r}:{last.pk}"


def adjudicate(
    *, task: Task, reviewer: User, data: dict[str, Any], note: str = "", make_gold: bool = False
) -> tuple[Adjudication, bool]:
    """Record (or change) the final answer for `task`; its raw labels stay as they are. The answer
    is checked as a label of the item's kind is (ValidationError names what is wrong). With
    `make_gold` (an admin's only: PermissionDenied otherwise) it becomes the item's gold answer."""
    if make_gold and not reviewer.is_prefloop_admin:
        raise PermissionDenied("Only an admin makes gold items.")
    slots = list(task.slots.order_by("position").values_list("candidate_id", flat=True))
    answer = clean_label(kind=task.kind, data=data, candidate_ids=slots, allow_partial_ranking=False)
    answer.pop("rationale", None)
    with transaction.atomic():
        adjudication, created = Adjudication.objects.update_or_create(
            task=task, defaults={"reviewer": reviewer, "answer": answer, "note": note.strip()[:5000]}
        )
        if make_gold:
            task_gold_set(task=task, gold=gold_from_answer(task, answer))
    figures_changed()  # a changed final answer changes what a run would train on
    return adjudication, created


def gold_from_answer(task: Task, answer: dict[str, Any]) -> dict[str, Any]:
    """A final answer (a label's fields) as the task's gold answer: rankings by answer position."""
    if task.kind in (Task.Kind.PAIRWISE, Task.Kind.THUMBS):
        return {"choice": answer["choice"]}
    if task.kind == Task.Kind.RANKING:
        position = dict(task.slots.values_list("candidate_id", "position"))
        return {"ranking": [[position[c] for c in group] for group in answer["ranking"]]}
    if task.kind == Task.Kind.RATING:
        return {"rating": answer["rating"]}
    raise ValidationError(f"a {task.kind} item has no gold answer to score")


@transaction.atomic
def task_gold_set(*, task: Task, gold: dict[str, Any] | None) -> int:
    """Make `task` a gold item with answer `gold` (None: no longer gold), and score its labels
    against it again; return how many labels were scored."""
    from training.feedback_io import validate_gold

    if gold is not None:
        try:
            validate_gold(task.kind, gold, task.slots.count())
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
    task.is_gold, task.gold = gold is not None, gold
    task.save(update_fields=["is_gold", "gold"])
    labels = list(Label.objects.filter(task=task))
    for label in labels:
        label.gold_correct = gold_correct(
            task, {"choice": label.choice, "ranking": label.ranking, "rating": label.rating}
        )
    Label.objects.bulk_update(labels, ["gold_correct"])
    figures_changed()
    return len(labels)


ANSWER_LETTERS = "ABCDEFGHI"
THUMBS_TEXT = {"up": "a good answer", "down": "a bad answer"}


def gold_text(task: Task) -> str:
    """A gold answer as people read it: "a", "B > A = C" (answers by letter, best first), "rated 4"."""
    gold = task.gold or {}
    if gold.get("ranking"):
        return " > ".join(" = ".join(ANSWER_LETTERS[p] for p in group) for group in gold["ranking"])
    if gold.get("rating"):
        return f"rated {gold['rating']}"
    return {"a": "A is better", "b": "B is better", "tie": "a tie", "both_bad": "both bad", **THUMBS_TEXT}.get(
        str(gold.get("choice")), ""
    )


def gold_results(*, project: Project, annotator: User, judged: Label | None = None) -> dict[str, Any]:
    """How a person did on a project's gold items: matched of answered, and, when `judged` (the
    label just given) was on a gold item, whether it matched and the item's answer."""
    scored = Label.objects.filter(task__project=project, annotator=annotator, gold_correct__isnull=False)
    total = scored.count()
    result: dict[str, Any] = {"total": total, "correct": scored.filter(gold_correct=True).count() if total else 0}
    if judged is not None and judged.gold_correct is not None:
        result["last"] = {"correct": judged.gold_correct, "answer": gold_text(judged.task)}
    return result
