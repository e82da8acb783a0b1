"""The Celery app, configured from the Django settings (CELERY_*). The web side sends tasks through it
by name (webapp.core.queue); the workers start it from `worker.celery`, which adds their tasks."""

from __future__ import annotations

from celery import Celery

app = Celery("prefloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ["worker.tasks"]  # a name, read by the worker only: the web never imports the tasks
app.conf.task_routes = {"prefloop.train_policy": {"queue": "gpu"}}
