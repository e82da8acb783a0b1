"""Webhooks: URLs that hear about what happens (a label, an item completed, an import or a run
finished, a version promoted, rejected or rolled back), each delivery a job under the one lifecycle."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from webapp.core.jobs import Job

EVENTS = {
    "label.created": "a label was stored (from a page, the API or the chat)",
    "item.completed": "an item got all the labels its overlap asks for",
    "import.finished": "an import ended (succeeded, failed or cancelled)",
    "run.finished": "a training or reward run ended",
    "version.promoted": "a policy version began serving",
    "version.rejected": "the gate rejected a candidate",
    "version.rolled_back": "an older policy version was served again",
}


class Webhook(models.Model):
    """A URL Prefloop posts events to, each body signed with HMAC-SHA256 under the hook's secret."""

    url = models.URLField(max_length=500)
    events = models.JSONField(default=list, help_text="The events it hears (keys of EVENTS).")
    secret = models.CharField(max_length=100, help_text="The HMAC key; shown once, when the hook is made.")
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"webhook {self.pk} to {self.url}"


class WebhookDelivery(Job):
    """One event posted to one hook: retried with back-off until the receiver answers 2xx, at most
    WEBHOOK_MAX_ATTEMPTS times; its answer's status and first lines are kept (the delivery log)."""

    job_kind = "webhook"
    on_lost = "retry"

    hook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40)
    payload = models.JSONField()
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, help_text="The first 2,000 characters the receiver answered.")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"delivery {self.pk} of {self.event} to hook {self.hook_id} ({self.status})"

    def job_task(self) -> tuple[str, str]:
        return "prefloop.webhook_deliver", "cpu"
