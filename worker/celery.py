"""The Celery app. Workers start it with `celery -A worker.celery worker -Q cpu,gpu,generate`."""

from __future__ import annotations

import logging
import os
import threading

import django
from celery import signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL and the hub report usage unless told not to
django.setup()

from django.conf import settings  # noqa: E402  (after django.setup)

from webapp.core.celery_app import app  # noqa: E402  (after django.setup)

__all__ = ["app"]


@signals.worker_ready.connect
def _start_beating(sender: object = None, **_: object) -> None:
    """The worker's own heartbeat (webapp.core.jobs.worker_beat), so a job queued where no worker
    listens says so instead of waiting in silence."""
    consumer = getattr(sender, "consumer", None) or sender
    hostname = str(getattr(sender, "hostname", "") or "worker")
    queues = sorted(q.name for q in getattr(getattr(consumer, "task_consumer", None), "queues", []) or [])
    if not queues:
        queues = sorted(app.amqp.queues.consume_from or [])

    def beat() -> None:
        from django.db import connection

        from webapp.core.workers import worker_beat

        while not _stop.is_set():
            try:
                worker_beat(hostname=hostname, queues=queues)
            except Exception:  # the database may be away for a moment; the next beat retries
                logging.getLogger(__name__).exception("the worker's heartbeat failed")
            finally:
                connection.close()
            _stop.wait(settings.WORKER_HEARTBEAT_S)

    threading.Thread(target=beat, name="worker-heartbeat", daemon=True).start()
    _hostnames.append(hostname)


@signals.worker_shutdown.connect
def _stop_beating(**_: object) -> None:
    from webapp.core.workers import worker_gone

    _stop.set()
    for hostname in _hostnames:
        try:
            worker_gone(hostname=hostname)
        except Exception:
            logging.getLogger(__name__).exception("could not remove the worker's heartbeat")


_stop = threading.Event()
_hostnames: list[str] = []
