"""Workers' own heartbeats: each Celery worker says every WORKER_HEARTBEAT_S which queues it listens
on (worker.celery), so a job queued where no worker listens can say so (webapp.core.jobs)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from webapp.core.models import WorkerBeat


def worker_beat(*, hostname: str, queues: list[str]) -> None:
    """A worker says it is alive and which queues it listens on (worker.celery, every WORKER_HEARTBEAT_S)."""
    WorkerBeat.objects.update_or_create(hostname=hostname, defaults={"queues": queues, "seen_at": timezone.now()})


def worker_gone(*, hostname: str) -> None:
    """A worker that shuts down cleanly stops listening at once."""
    WorkerBeat.objects.filter(hostname=hostname).delete()


def queue_listeners() -> dict[str, list[str]]:
    """For each queue, the workers heard from within 3 WORKER_HEARTBEAT_S that listen on it."""
    alive = timezone.now() - timedelta(seconds=3 * settings.WORKER_HEARTBEAT_S)
    out: dict[str, list[str]] = {}
    for beat in WorkerBeat.objects.filter(seen_at__gte=alive):
        for queue in beat.queues:
            out.setdefault(queue, []).append(beat.hostname)
    return out
