"""Similar items: each item's question and answers as a sentence embedding (all-MiniLM-L6-v2 by
default), and its nearest items of the same project, found by a worker's embedding job.

An item page asks `similar_items`; an item with no vector yet has its project's embedding job
queued (`embedding_job_ensure`, one at a time per project) and says so. The job embeds what has
no vector, in batches, then finds the nearest items of each new one; in a project of at most
`RELINK_ALL_UP_TO` items every item's neighbours are found again, so older items see newer ones.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction

from webapp.core.jobs import ACTIVE, JobGuard, JobStatus, job_enqueue, job_finish, job_guarded, job_start
from webapp.feedback.models import EmbeddingJob, ItemVector, Project, Task

logger = logging.getLogger(__name__)

BATCH = 128
NEIGHBOURS = 5
RELINK_ALL_UP_TO = 20_000


def embeddings_on() -> bool:
    return bool(settings.EMBEDDING_MODEL) and settings.EMBEDDING_MODEL != "off"


def item_text(task: Task) -> str:
    """What an item is about, as one text: its conversation's last user turn, then its answers."""
    turns = [m.get("content", "") for m in task.prompt.messages if m.get("role") == "user"]
    answers = [slot.candidate.text for slot in task.slots.all()]
    return "\n".join([turns[-1] if turns else "", *answers])


def embedding_job_ensure(project: Project) -> EmbeddingJob | None:
    """The project's embedding job that is queued or running, or a new one (None: embeddings off)."""
    if not embeddings_on():
        return None
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()  # one job a project at a time
        job = EmbeddingJob.objects.filter(project=project, status__in=ACTIVE).first()
        if job is None:
            job = EmbeddingJob.objects.create(project=project)
            transaction.on_commit(lambda: job_enqueue(job))
    return job


def similar_items(task: Task) -> dict[str, Any]:
    """{"state": "off" | "pending" | "ready", "items": [(task, cosine), ...]} for an item's page."""
    if not embeddings_on():
        return {"state": "off", "items": []}
    vector = ItemVector.objects.filter(task=task).first()
    if vector is None:
        embedding_job_ensure(task.project)
        return {"state": "pending", "items": []}
    ids = [int(pk) for pk, _ in vector.neighbours]
    found = Task.objects.filter(pk__in=ids).select_related("prompt", "project").in_bulk()
    return {"state": "ready", "items": [(found[int(pk)], score) for pk, score in vector.neighbours if int(pk) in found]}


def embedding_job_run(*, job_id: int) -> EmbeddingJob | None:
    """Embed the project's items that have no vector, batch by batch (a cancel stops it between
    batches, keeping what was embedded), then link each new item to its nearest items."""
    job = job_start(EmbeddingJob, job_id)
    if job is None:
        return None

    def body(guard: JobGuard) -> None:
        from training.embeddings import embed

        missing = Task.objects.filter(project=job.project, vector__isnull=True).order_by("id")
        EmbeddingJob.objects.filter(pk=job_id).update(items_total=missing.count(), items_done=0)
        new_ids: list[int] = []
        while batch := list(missing.select_related("prompt").prefetch_related("slots__candidate")[:BATCH]):
            vectors = embed(settings.EMBEDDING_MODEL, [item_text(t) for t in batch])
            ItemVector.objects.bulk_create(
                [
                    ItemVector(task=t, project=job.project, vector=v.tobytes())
                    for t, v in zip(batch, vectors, strict=True)
                ],
                ignore_conflicts=True,  # a resumed job may meet vectors it wrote before it was lost
            )
            new_ids += [t.pk for t in batch]
            EmbeddingJob.objects.filter(pk=job_id).update(items_done=len(new_ids))
            logger.info("embedding %s: %d items embedded", job_id, len(new_ids))
            guard.check()
        linked = neighbours_link(project=job.project, new_ids=new_ids)
        logger.info("embedding %s: neighbours found for %d items", job_id, linked)
        job_finish(EmbeddingJob, job_id, JobStatus.SUCCEEDED, attempt=guard.attempt)

    job_guarded(EmbeddingJob, job_id, body, cancelled="cancelled while it ran; the items embedded before stay")
    return EmbeddingJob.objects.get(pk=job_id)


def neighbours_link(*, project: Project, new_ids: list[int]) -> int:
    """Store the nearest items of each item in `new_ids` (of every item, in a small project);
    return how many items' neighbours were written."""
    from training.embeddings import nearest

    rows = list(ItemVector.objects.filter(project=project).order_by("task_id").values_list("task_id", "vector"))
    if not rows:
        return 0
    ids = [pk for pk, _ in rows]
    matrix = np.stack([np.frombuffer(bytes(v), dtype=np.float32) for _, v in rows])
    position = {pk: i for i, pk in enumerate(ids)}
    targets = ids if len(ids) <= RELINK_ALL_UP_TO else [pk for pk in new_ids if pk in position]
    queries = [position[pk] for pk in targets]
    found = nearest(matrix, matrix[queries], k=NEIGHBOURS, exclude=queries)
    updates = [
        ItemVector(task_id=pk, neighbours=[[ids[j], round(score, 4)] for j, score in near])
        for pk, near in zip(targets, found, strict=True)
    ]
    ItemVector.objects.bulk_update(updates, ["neighbours"], batch_size=1000)
    return len(updates)
