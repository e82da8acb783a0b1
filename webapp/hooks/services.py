"""Webhooks: make one (its secret returned once), emit an event to every hook that hears it (a
delivery job each, sent once the emitting transaction commits), and deliver: POST the JSON body
signed with HMAC-SHA256 over "<timestamp>.<body>", retried with back-off (2, 4, 8, ... s, at most
60) until a 2xx, at most WEBHOOK_MAX_ATTEMPTS times.

Headers of every delivery: `X-Prefloop-Event`, `X-Prefloop-Delivery` (its id; the same on a retry,
so a receiver can drop a repeat), `X-Prefloop-Timestamp` (Unix seconds) and `X-Prefloop-Signature`
(`sha256=` + the hex HMAC). A receiver recomputes the HMAC with its copy of the secret and compares
in constant time, and refuses an old timestamp."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlparse

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from webapp.accounts.models import User
from webapp.core.jobs import JobStatus, job_enqueue, job_finish, job_retry_later, job_start
from webapp.hooks.models import EVENTS, Webhook, WebhookDelivery

logger = logging.getLogger(__name__)
RESPONSE_KEPT = 2000
TIMEOUT_S = 10


def hook_create(*, url: str, events: list[str], created_by: User | None = None) -> tuple[Webhook, str]:
    """A hook for `events` at `url`; return it and its secret (shown once). ValueError in words."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL")
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise ValueError(
            f"choose events among {', '.join(EVENTS)}" + (f" (not {', '.join(unknown)})" if unknown else "")
        )
    secret = secrets.token_hex(24)
    hook = Webhook.objects.create(url=url, events=sorted(set(events)), secret=secret, created_by=created_by)
    return hook, secret


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=` + the hex HMAC-SHA256 of "<timestamp>.<body>" under `secret`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def hooks_active() -> list[Webhook]:
    """The active webhooks, for a caller that emits several events at once (`event_emit(hooks=)`)."""
    return list(Webhook.objects.filter(active=True))


def event_emit(event: str, data: dict[str, Any], *, hooks: list[Webhook] | None = None) -> list[WebhookDelivery]:
    """A delivery to each active hook (of `hooks`, read already) that hears `event`, sent once the
    caller's transaction commits (an event of a rolled-back change is never heard)."""
    assert event in EVENTS, event
    hooks = [h for h in (hooks_active() if hooks is None else hooks) if event in h.events]
    if not hooks:
        return []
    payload = {"event": event, "sent_at": timezone.now().isoformat(), "data": data}
    deliveries = [WebhookDelivery.objects.create(hook=h, event=event, payload=payload) for h in hooks]
    for delivery in deliveries:
        transaction.on_commit(lambda d=delivery: job_enqueue(d))  # type: ignore[misc]
    return deliveries


def delivery_again(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send an ended delivery's event again, as a new delivery (the log keeps both)."""
    again = WebhookDelivery.objects.create(hook=delivery.hook, event=delivery.event, payload=delivery.payload)
    transaction.on_commit(lambda: job_enqueue(again))
    return again


def backoff_s(attempt: int) -> float:
    return float(min(2**attempt, 60))


def delivery_run(*, delivery_id: int) -> WebhookDelivery | None:
    """Post one delivery (a worker's task). A 2xx ends it succeeded; anything else is tried again
    after a back-off, and fails for good after WEBHOOK_MAX_ATTEMPTS tries."""
    delivery = job_start(WebhookDelivery, delivery_id)
    if delivery is None:
        return None
    hook = delivery.hook
    body = json.dumps({"id": delivery.pk, **delivery.payload}, ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Prefloop-Webhook/1",
        "X-Prefloop-Event": delivery.event,
        "X-Prefloop-Delivery": str(delivery.pk),
        "X-Prefloop-Timestamp": timestamp,
        "X-Prefloop-Signature": signature(hook.secret, timestamp, body),
    }
    status, text, error = None, "", ""
    try:
        answer = httpx.post(hook.url, content=body, headers=headers, timeout=TIMEOUT_S)
        status, text = answer.status_code, answer.text[:RESPONSE_KEPT]
        if not 200 <= status < 300:
            error = f"the receiver answered {status}"
    except httpx.HTTPError as exc:
        error = f"could not reach {hook.url}: {exc.__class__.__name__}: {exc}"
    fields: dict[str, Any] = {"response_status": status, "response_body": text}
    if not error:
        return job_finish(WebhookDelivery, delivery.pk, JobStatus.SUCCEEDED, attempt=delivery.attempts, **fields)
    if delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        error = f"{error}; gave up after {delivery.attempts} tries"
        return job_finish(WebhookDelivery, delivery.pk, JobStatus.FAILED, error=error, attempt=delivery.attempts,
                          **fields)  # fmt: skip
    delay = backoff_s(delivery.attempts)
    logger.info("delivery %s: %s; trying again in %.0f s", delivery.pk, error, delay)
    return job_retry_later(WebhookDelivery, delivery.pk, error=error, attempt=delivery.attempts, delay_s=delay,
                           **fields)  # fmt: skip
