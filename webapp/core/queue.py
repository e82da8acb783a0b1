"""Sending work to the Celery workers from the web app, by task name (the web process never imports
the worker's tasks, and with them the training libraries)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def broker_send(name: str, *, args: list[Any], queue: str, countdown: float = 0) -> bool:
    """Send task `name` to `queue` (to run `countdown` seconds from now); return whether the broker
    took it.

    Never raises, and gives up after one quick retry: a broker that is down must not hold a
    request. The caller's record stays queued, and a beat task sends it again later.
    """
    from webapp.core.celery_app import app

    try:
        app.send_task(
            name,
            args=args,
            queue=queue,
            countdown=countdown or None,
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5},
        )
    except Exception as exc:  # kombu and redis raise several kinds of connection error
        logger.warning("the broker did not take %s%s (%s)", name, args, exc)
        return False
    return True
