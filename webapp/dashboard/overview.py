"""The dashboard's overview: labels per day by kind and by project, the open queue, who is
annotating, and the serving version, each in a query or two that stays fast at a million labels
(the day counts read the label time index over the window only)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from webapp.feedback.models import Label, Project, Task

OVERVIEW_DAYS = 14


def _days(today: date, n: int) -> list[date]:
    return [today - timedelta(days=n - 1 - i) for i in range(n)]


def labels_per_day(*, days: int = OVERVIEW_DAYS) -> dict[str, Any]:
    """Label counts for each of the last `days` days (today included), split by kind and by
    project, as the overview's two stacked charts draw them."""
    today = timezone.localdate()
    since = timezone.make_aware(datetime.combine(today - timedelta(days=days - 1), time.min))
    rows = (
        Label.objects.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day", "kind", "task__project_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    axis = _days(today, days)
    index = {d: i for i, d in enumerate(axis)}
    by_kind: dict[str, list[int]] = {}
    by_project: dict[int, list[int]] = {}
    for row in rows:
        i = index.get(row["day"])
        if i is None:
            continue
        by_kind.setdefault(row["kind"], [0] * days)[i] += row["n"]
        by_project.setdefault(row["task__project_id"], [0] * days)[i] += row["n"]
    names = dict(Project.objects.filter(pk__in=list(by_project)).values_list("pk", "name"))
    return {
        "days": [d.isoformat() for d in axis],
        "by_kind": [{"name": k, "counts": v} for k, v in sorted(by_kind.items())],
        "by_project": [
            {"name": names.get(pk, f"project {pk}"), "counts": v}
            for pk, v in sorted(by_project.items(), key=lambda kv: -sum(kv[1]))
        ],
        "total": sum(sum(v) for v in by_kind.values()),
    }


def queue_depth() -> list[dict[str, Any]]:
    """Per open project: items still wanting labels, and the labels they still want."""
    open_items = Task.objects.filter(project__archived_at__isnull=True, is_gold=False, taken__lt=F("required_labels"))
    rows = (
        open_items.values("project_id", "project__name")
        .annotate(items=Count("id"), wanted=Sum(F("required_labels") - F("taken")))
        .order_by("-wanted")
    )
    return [{"project": r["project__name"], "project_id": r["project_id"], "items": r["items"], "wanted": r["wanted"]}
            for r in rows]  # fmt: skip


def active_annotators() -> dict[str, int]:
    """How many people labelled in the last day and in the last week."""
    now = timezone.now()
    return Label.objects.filter(created_at__gte=now - timedelta(days=7)).aggregate(
        day=Count("annotator", distinct=True, filter=Q(created_at__gte=now - timedelta(days=1))),
        week=Count("annotator", distinct=True),
    )
