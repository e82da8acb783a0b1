"""Admin dashboard: data counts, training runs (live), policy versions, and the train button."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from webapp.core.http import AuthedHttpRequest
from webapp.feedback.models import Conversation, Label, Project, Task
from webapp.feedback.quality import project_quality
from webapp.runs import services
from webapp.runs.models import TrainingRun
from webapp.runs.selectors import reward_model_list, run_list, version_list, version_serving


def admin_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    @login_required
    def wrapper(request: AuthedHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_prefloop_admin:
            return HttpResponseForbidden("The dashboard is for admins.")
        return view(request, *args, **kwargs)

    return wrapper


def _runs_context() -> dict[str, Any]:
    return {
        "runs": run_list()[:20],
        "versions": version_list()[:20],
        "serving": version_serving(),
        "reward_models": reward_model_list()[:20],
    }


@require_GET
@admin_required
def index(request: AuthedHttpRequest) -> HttpResponse:
    context = {
        **_runs_context(),
        "n_labels": Label.objects.count(),
        "n_tasks": Task.objects.count(),
        "n_conversations": Conversation.objects.count(),
    }
    return render(request, "dashboard/index.html", context)


@require_GET
@admin_required
def runs(request: AuthedHttpRequest) -> HttpResponse:
    return render(request, "dashboard/_runs.html", _runs_context())


@require_POST
@admin_required
def run_new(request: AuthedHttpRequest) -> HttpResponse:
    kind = request.POST.get("kind") or TrainingRun.Kind.DPO
    if kind not in TrainingRun.Kind.values:
        return HttpResponseBadRequest(f"unknown run kind {kind!r}: one of {', '.join(TrainingRun.Kind.values)}")
    services.run_create(trigger=TrainingRun.Trigger.ADMIN, created_by=request.user, kind=kind)
    if not request.htmx:
        return redirect("dashboard:index")
    return render(request, "dashboard/_runs.html", _runs_context())


@require_GET
@admin_required
def quality(request: AuthedHttpRequest) -> HttpResponse:
    """Agreement per project and kind, and each annotator's agreement, gold accuracy and trust."""
    projects = Project.objects.all()
    selected = projects.filter(pk=request.GET.get("project") or 0).first() or projects.first()
    report = project_quality(project=selected) if selected else None
    return render(request, "dashboard/quality.html", {"projects": projects, "selected": selected, "report": report})


@require_GET
@admin_required
def run_detail(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    """One run, live: status, progress, the latest metrics and a chart of every logged step."""
    run = get_object_or_404(run_list(), pk=run_id)
    template = "dashboard/_run_detail.html" if request.htmx else "dashboard/run.html"
    return render(request, template, {"run": run, "chart": _chart_data(run.history)})


CHART_SERIES = ("loss", "rewards/margins", "rewards/accuracies", "kl")


def _chart_data(history: list[dict]) -> dict:
    """The logged steps as chart series: one line per metric that the run logged."""
    steps = [entry.get("step") for entry in history]
    series = {key: [entry.get(key) for entry in history] for key in CHART_SERIES if any(key in e for e in history)}
    return {"steps": steps, "series": series}
