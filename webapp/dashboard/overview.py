"""The dashboard's overview: labels per day by kind and by project, the open queue, who is
annotating, and the serving version, each in a query or two that stays fast at a million labels
(days before today are counted once and kept; today's are read over the label time index)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from django.core.cache import cache
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from webapp.feedback.models import Label, Project, Task

OVERVIEW_DAYS = 14


def _days(today: date, n: int) -> list[date]:
    return [today - timedelta(days=n - 1 - i) for i in range(n)]


def _day_counts(since: datetime, until: datetime | None) -> list[tuple[str, str, int, int]]:
    labels = Label.objects.filter(created_at__gte=since)
    if until is not None:
        labels = labels.filter(created_at__lt=until)
    rows = (
        labels.annotate(day=TruncDate("created_at"))
        .values_list("day", "kind", "task__project_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    return [(day.isoformat(), kind, project, n) for day, kind, project, n in rows]


def labels_per_day(*, days: int = OVERVIEW_DAYS) -> dict[str, Any]:
    """Label counts for each of the last `days` days (today included), split by kind and by
    project, as the overview's two stacked charts draw them.

    Days before today do not change (labels are not backdated), so their counts are kept in the
    cache for an hour (which bounds how long a deleted label is still counted); only today's are
    counted at each request, over the label time index.
    """
    today = timezone.localdate()
    midnight = timezone.make_aware(datetime.combine(today, time.min))
    since = midnight - timedelta(days=days - 1)
    key = f"prefloop:labels-per-day:{today.isoformat()}:{days}"
    past = cache.get(key)
    if past is None:
        past = _day_counts(since, midnight)
        cache.set(key, past, 3600)
    axis = _days(today, days)
    index = {d.isoformat(): i for i, d in enumerate(axis)}
    by_kind: dict[str, list[int]] = {}
    by_project: dict[int, list[int]] = {}
    for day, kind, project, n in [*past, *_day_counts(midnight, None)]:
        i = index.get(day)
        if i is None:
            continue
        by_kind.setdefault(kind, [0] * days)[i] += n
        by_project.setdefault(project, [0] * days)[i] += n
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
