from __future__ import annotations

from django.db import models


class WorkerBeat(models.Model):
    """A Celery worker's own heartbeat: which queues it listens on, last heard of when (webapp.core.jobs)."""

    hostname = models.CharField(max_length=255, unique=True)
    queues = models.JSONField(default=list)
    seen_at = models.DateTimeField()

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return f"{self.hostname} ({', '.join(self.queues)})"
