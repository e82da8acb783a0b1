"""The Celery app. Workers start it with `celery -A worker.celery worker -Q cpu,gpu,generate`."""

from __future__ import annotations

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL and the hub report usage unless told not to
django.setup()

app = Celery("prefloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ["worker.tasks"]
app.conf.task_routes = {"prefloop.train_policy": {"queue": "gpu"}}
