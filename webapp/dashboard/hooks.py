"""Webhooks in the browser: make one (its secret shown once), turn it off or on, and its delivery
log with each answer's status and a "send again" button."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webapp.core.http import AuthedHttpRequest
from webapp.dashboard.views import admin_required
from webapp.hooks.models import EVENTS, Webhook, WebhookDelivery
from webapp.hooks.services import delivery_again, hook_create


@require_http_methods(["GET", "POST"])
@admin_required
def hooks(request: AuthedHttpRequest) -> HttpResponse:
    """Every hook, and the form that makes one; a new hook's secret is on the page that answers, once."""
    error, made, secret = "", None, ""
    if request.method == "POST":
        try:
            made, secret = hook_create(
                url=request.POST.get("url", "").strip(), events=request.POST.getlist("events"), created_by=request.user
            )
        except ValueError as exc:
            error = str(exc)
    context = {"hooks": Webhook.objects.all(), "events": EVENTS, "error": error, "made": made, "secret": secret,
               "posted": request.POST if error else {}}  # fmt: skip
    return render(request, "dashboard/hooks.html", context, status=400 if error else 200)


@require_GET
@admin_required
def hook_detail(request: AuthedHttpRequest, hook_id: int) -> HttpResponse:
    """A hook's delivery log, newest first, refreshed while a delivery is on its way."""
    hook = get_object_or_404(Webhook, pk=hook_id)
    deliveries = list(hook.deliveries.all()[:100])
    active = any(d.is_active for d in deliveries)
    return render(request, "dashboard/hook.html", {"hook": hook, "deliveries": deliveries, "active": active})


@require_POST
@admin_required
def hook_active(request: AuthedHttpRequest, hook_id: int) -> HttpResponse:
    """Turn a hook off (`active=0`: it hears nothing more) or on again."""
    Webhook.objects.filter(pk=get_object_or_404(Webhook, pk=hook_id).pk).update(
        active=request.POST.get("active") == "1"
    )
    return redirect("dashboard:hook", hook_id)


@require_POST
@admin_required
def delivery_resend(request: AuthedHttpRequest, delivery_id: int) -> HttpResponse:
    """Send a delivery's event again, as a new delivery."""
    delivery = get_object_or_404(WebhookDelivery, pk=delivery_id)
    delivery_again(delivery=delivery)
    return redirect("dashboard:hook", delivery.hook_id)
