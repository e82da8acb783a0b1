"""The annotation queue: serve the next task under a lease, take a judgment, skip, expire.

Rules (each one a test in tests/webapp/feedback/test_assignments.py):
- an item is served to at most `required_labels` people at once (leased or submitted);
- never the same item twice to one person (a database constraint), nor a chat of their own;
- leases expire; an expired lease frees its slot for someone else;
- gold items are mixed in at the project's rate and scored when judged;
- a second submit of the same assignment returns the first label.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Max, Min, QuerySet
from django.utils import timezone

from webapp.accounts.models import User
from webapp.feedback.models import Assignment, Label, Project, Task
from webapp.feedback.services import (
    label_create,  # written there; still importable from here (apis, tests)
    task_taken_add,
)

OPEN_STATUSES = (Assignment.Status.LEASED, Assignment.Status.SUBMITTED)


def leases_expire(*, now: Any = None) -> int:
    """Mark every lease past its time as expired (freeing its slot); return how many."""
    now = now or timezone.now()
    expired = Assignment.objects.filter(status=Assignment.Status.LEASED, expires_at__lt=now)
    if not expired.exists():  # the usual case, read over the (status, expires_at) index: no transaction
        return 0
    with transaction.atomic():
        rows = list(
            Assignment.objects.select_for_update(skip_locked=True)
            .filter(status=Assignment.Status.LEASED, expires_at__lt=now)
            .values_list("id", "task_id")
        )
        if not rows:
            return 0
        Assignment.objects.filter(pk__in=[pk for pk, _ in rows]).update(
            status=Assignment.Status.EXPIRED, finished_at=now
        )
        task_taken_add([task_id for _, task_id in rows], -1)
    return len(rows)


def _servable(*, project: Project, annotator: User, gold: bool) -> QuerySet[Task]:
    """Tasks this person may be served now: not seen by them, not their own chat, with a free slot."""
    tasks = (
        Task.objects.filter(project=project, is_gold=gold)
        .exclude(assignments__annotator=annotator)
        .exclude(labels__annotator=annotator)
        .exclude(prompt__conversation__owner=annotator)
        .exclude(created_by=annotator, message__isnull=False)
    )
    if not gold:  # gold items may be served to everyone; the others to `required_labels` people
        tasks = tasks.filter(taken__lt=F("required_labels"))  # the open-queue index
    return tasks


def assignment_current(*, project: Project, annotator: User) -> Assignment | None:
    """The person's unexpired lease in this project, if any (a reload shows the same task)."""
    return (
        Assignment.objects.filter(
            task__project=project, annotator=annotator, status=Assignment.Status.LEASED, expires_at__gte=timezone.now()
        )
        .select_related("task")
        .first()
    )


def assignment_next(*, project: Project, annotator: User, rng: random.Random | None = None) -> Assignment | None:
    """Serve the next task to `annotator` under a lease, or None when nothing is left for them.

    Safe under concurrent calls: candidate tasks are locked (SKIP LOCKED first, then waiting for
    the rows that were busy) and their open slots are counted again under the lock, so no item is
    ever held by more than `required_labels` people and nobody is sent away while a slot is free
    (PostgreSQL; on SQLite the database serialises writers).
    """
    current = assignment_current(project=project, annotator=annotator)
    if current is not None:
        return current
    if project.is_archived:  # an archived project serves nothing new; a lease held already may finish
        return None
    leases_expire()
    rng = rng or random.Random()
    want_gold = project.gold_rate > 0 and rng.random() < project.gold_rate
    order = project.queue_order
    if order == Project.QueueOrder.UNCERTAINTY and rng.random() < project.queue_epsilon:
        order = Project.QueueOrder.RANDOM  # a share at random keeps the labelled data unbiased
    for gold in (want_gold, not want_gold):
        assignment = _claim(project=project, annotator=annotator, gold=gold, order=order, rng=rng)
        if assignment is not None:
            return assignment
    return None


CLAIM_BATCH = 50
# the order of each queue (Project.queue_order) but `random`; each is read through a partial index
QUEUE_ORDERS: dict[str, tuple[str, ...]] = {
    Project.QueueOrder.FIFO: ("-required_labels", "created_at", "id"),
    Project.QueueOrder.UNCERTAINTY: ("-required_labels", "-priority", "id"),
}


def _batch(tasks: QuerySet[Task], *, project: Project, order: str, rng: random.Random) -> list[int]:
    """The next CLAIM_BATCH open items in the queue's order. `random` starts at a random id and
    wraps around: a random item without sorting the whole queue."""
    if order != Project.QueueOrder.RANDOM:
        return list(tasks.order_by(*QUEUE_ORDERS[order]).values_list("id", flat=True)[:CLAIM_BATCH])
    bounds = Task.objects.filter(project=project).aggregate(low=Min("id"), high=Max("id"))
    if bounds["low"] is None:
        return []
    pivot = rng.randint(bounds["low"], bounds["high"])
    ids = list(tasks.filter(pk__gte=pivot).order_by("id").values_list("id", flat=True)[:CLAIM_BATCH])
    if len(ids) < CLAIM_BATCH:
        ids += tasks.filter(pk__lt=pivot).order_by("id").values_list("id", flat=True)[: CLAIM_BATCH - len(ids)]
    return ids


def _claim(*, project: Project, annotator: User, gold: bool, order: str, rng: random.Random) -> Assignment | None:
    """Lease the first open item of the queue that a concurrent claim does not take first.

    Candidates come in batches of the queue's first CLAIM_BATCH open items, tried in the queue's
    order; when the first is held by another claim at that moment, the rest of the batch is tried in
    a random order, so parallel claims spread over it instead of queueing on the same rows (alone,
    a person gets the queue's order exactly). First pass: skip rows another claim holds right now.
    Second pass over the skipped ones: wait for the lock (it is held for one short transaction).
    When a whole batch was filled by others meanwhile, the next batch is read: nobody is told
    "nothing left" while an item still has a free slot for them, however many claim at once.
    """
    tried: set[int] = set()
    while True:
        servable = _servable(project=project, annotator=annotator, gold=gold).exclude(pk__in=tried)
        ids = _batch(servable, project=project, order=order, rng=rng)
        if not ids:
            return None
        tried.update(ids)
        busy: list[int] = []
        for position, task_id in enumerate(ids):
            assignment = _claim_one(task_id=task_id, project=project, annotator=annotator, gold=gold, wait=False)
            if assignment is _BUSY:
                busy.append(task_id)
                if position == 0:  # others are claiming at this moment: spread over the rest of the batch
                    rest = ids[1:]
                    rng.shuffle(rest)
                    ids[1:] = rest
            elif assignment is not None:
                return assignment
        for task_id in busy:
            assignment = _claim_one(task_id=task_id, project=project, annotator=annotator, gold=gold, wait=True)
            if isinstance(assignment, Assignment):
                return assignment


_BUSY = object()


def _claim_one(*, task_id: int, project: Project, annotator: User, gold: bool, wait: bool) -> Any:
    """Lease one task under its row lock; None when it is full, `_BUSY` when locked and not `wait`.

    Each claim locks a single row at a time, so two claims can never deadlock.
    """
    with transaction.atomic():
        task = Task.objects.select_for_update(skip_locked=not wait).filter(pk=task_id).first()
        if task is None:
            return None if wait else _BUSY
        if not gold and task.taken >= task.required_labels:  # read again under the lock
            return None
        try:
            with transaction.atomic():
                assignment = Assignment.objects.create(
                    task=task,
                    annotator=annotator,
                    expires_at=timezone.now() + timedelta(seconds=project.lease_seconds),
                )
        except IntegrityError:  # this person already has it (a concurrent request of theirs)
            return None
        task_taken_add([task.pk], +1)
        return assignment


def assignment_submit(
    *, assignment: Assignment, data: dict[str, Any], source: str = Label.Source.UI, idempotency_key: str = ""
) -> tuple[Label, bool]:
    """Take the judgment for a served task. A lease that expired meanwhile still counts: the work
    is done and is kept (the item may then end with one label more than its overlap)."""
    if assignment.status == Assignment.Status.SKIPPED:
        raise ValueError("this task was skipped; ask for the next one")
    return label_create(
        task=assignment.task,
        annotator=assignment.annotator,
        data=data,
        source=source,
        assignment=assignment,
        idempotency_key=idempotency_key,
    )


def assignment_skip(*, assignment: Assignment, reason: str) -> Assignment:
    """Give a served task back with a reason; it is not served to this person again."""
    reason = reason.strip()
    if not reason:
        raise ValidationError("say why you skip this task (for example: 'not my language', 'offensive')")
    with transaction.atomic():
        updated = Assignment.objects.filter(pk=assignment.pk, status=Assignment.Status.LEASED).update(
            status=Assignment.Status.SKIPPED, skip_reason=reason[:500], finished_at=timezone.now()
        )
        if updated:
            task_taken_add([assignment.task_id], -1)
    assignment.refresh_from_db()
    if not updated and assignment.status != Assignment.Status.SKIPPED:
        raise ValueError(f"this task is already {assignment.status}")
    return assignment


def project_progress(*, project: Project, annotator: User) -> dict[str, int]:
    """What the person did in this project, how many items still need labels, and how many of those
    this person may still be served (the others wait for other people, or are leased to them)."""
    done = Label.objects.filter(task__project=project, annotator=annotator).count()
    skipped = Assignment.objects.filter(
        task__project=project, annotator=annotator, status=Assignment.Status.SKIPPED
    ).count()
    open_tasks = (
        Task.objects.filter(project=project, is_gold=False)
        .annotate(n=Count("labels", distinct=True))
        .filter(n__lt=F("required_labels"))
        .count()
    )
    for_you = _servable(project=project, annotator=annotator, gold=False).count()
    return {"done": done, "skipped": skipped, "open": open_tasks, "for_you": for_you}
