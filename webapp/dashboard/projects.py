"""Projects in the browser: make one, change its settings and guidelines, archive it, and say who
works on it in which role. The form goes through the API's ProjectSerializer, so a page and a client
meet one set of rules and the same messages."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, F, Sum
from django.http import HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from webapp.accounts.models import User
from webapp.api.serializers import ProjectSerializer
from webapp.core.http import AuthedHttpRequest
from webapp.dashboard.views import admin_required, recipe_context
from webapp.feedback import services as feedback_services
from webapp.feedback.models import FeedbackKind, Invitation, Project, ProjectMember, Task

INT_FIELDS = ("overlap", "lease_seconds", "answers_per_prompt", "max_tokens")
FLOAT_FIELDS = ("gold_rate", "temperature", "top_p", "regenerate_share", "queue_epsilon")


def project_form_data(post: QueryDict) -> dict[str, Any]:
    """The form's fields as the serializer reads them: ticked kinds as a list, a box as a boolean,
    an empty number as "the default" (left out; `max_tokens` empty means the server's own)."""
    data: dict[str, Any] = {
        "name": post.get("name", "").strip(),
        "guidelines": post.get("guidelines", ""),
        "feedback_types": post.getlist("feedback_types"),
        "allow_partial_ranking": post.get("allow_partial_ranking") == "on",
        "show_gold_results": post.get("show_gold_results") == "on",
        "queue_order": post.get("queue_order", Project.QueueOrder.FIFO),
    }
    for field in INT_FIELDS + FLOAT_FIELDS:
        value = post.get(field, "").strip()
        if value:
            data[field] = value
        elif field == "max_tokens":
            data[field] = None
    return data


def _errors(errors: Any) -> dict[str, str]:
    return {
        name: " ".join(str(m) for m in (messages if isinstance(messages, list) else [messages]))
        for name, messages in errors.items()
    }


def _form_context(project: Project | None, values: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    return {
        "project": project,
        "values": values,
        "errors": errors,
        "kinds": FeedbackKind.choices,
        "queue_orders": Project.QueueOrder.choices,
    }


FORM_FIELDS = (
    "name", "guidelines", "feedback_types", "allow_partial_ranking", "show_gold_results", "queue_order", *INT_FIELDS,
    *FLOAT_FIELDS,
)  # fmt: skip


def _values(project: Project) -> dict[str, Any]:
    return {f: getattr(project, f) for f in FORM_FIELDS}


@require_http_methods(["GET"])
@admin_required
def project_list(request: AuthedHttpRequest) -> HttpResponse:
    """Every project with its counts (one grouped query each); archived ones last."""
    per_project = {
        "members": ProjectMember.objects.values_list("project").annotate(n=Count("id")),
        "items": Task.objects.values_list("project").annotate(n=Count("id")),
        "open": Task.objects.filter(taken__lt=F("required_labels")).values_list("project").annotate(n=Count("id")),
        "labels": Task.objects.values_list("project").annotate(n=Sum("n_labels")),  # kept as labels arrive
    }
    counts = {name: dict(rows) for name, rows in per_project.items()}
    projects = list(Project.objects.order_by(F("archived_at").asc(nulls_first=True), "name"))
    rows = [(p, {name: counts[name].get(p.pk, 0) for name in counts}) for p in projects]
    return render(request, "dashboard/projects.html", {"rows": rows})


@require_http_methods(["GET", "POST"])
@admin_required
def project_new(request: AuthedHttpRequest) -> HttpResponse:
    """A new project: its name, guidelines (Markdown), judgment kinds and queue settings."""
    if request.method == "GET":
        blank = Project()  # the model's defaults, as the API would apply them
        return render(request, "dashboard/project_form.html", _form_context(None, _values(blank), {}))
    data = project_form_data(request.POST)
    serializer = ProjectSerializer(data=data)
    if not serializer.is_valid():
        context = _form_context(None, {**_values(Project()), **data}, _errors(serializer.errors))
        return render(request, "dashboard/project_form.html", context, status=400)
    project = serializer.save()
    return redirect(f"{project_url(project)}?created=1")


def project_url(project: Project) -> str:
    from django.urls import reverse

    return reverse("dashboard:project", args=[project.pk])


@require_http_methods(["GET", "POST"])
@admin_required
def project_detail(request: AuthedHttpRequest, project_id: int) -> HttpResponse:
    """A project's page: its settings, who works on it, and its training recipe."""
    project = get_object_or_404(Project, pk=project_id)
    errors: dict[str, str] = {}
    values = _values(project)
    status = 200
    if request.method == "POST":
        data = project_form_data(request.POST)
        serializer = ProjectSerializer(project, data=data)
        if serializer.is_valid():
            serializer.save()
            return redirect(f"{project_url(project)}?saved=1")
        errors, values, status = _errors(serializer.errors), {**values, **data}, 400
    return render(request, "dashboard/project.html", _project_context(request, project, values, errors), status=status)


def _project_context(
    request: AuthedHttpRequest, project: Project, values: dict[str, Any], errors: dict[str, str], **extra: Any
) -> dict[str, Any]:
    members = project.memberships.select_related("user").order_by("user__username")
    candidates = User.objects.filter(is_active=True).exclude(memberships__project=project).order_by("username")
    return {
        **_form_context(project, values, errors),
        **recipe_context(project),
        "saved": request.GET.get("saved") == "1",
        "created": request.GET.get("created") == "1",
        "recipe_saved": request.GET.get("recipe_saved") == "1",
        "members": members,
        "candidates": candidates,
        "project_roles": ProjectMember.Role.choices,
        "invitations": Invitation.objects.filter(project=project, used_at__isnull=True, revoked_at__isnull=True),
        **extra,
    }


@require_POST
@admin_required
def project_archive(request: AuthedHttpRequest, project_id: int) -> HttpResponse:
    """Archive a project, or bring it back (`archived=0`)."""
    project = get_object_or_404(Project, pk=project_id)
    feedback_services.project_archive(project=project, archived=request.POST.get("archived", "1") != "0")
    return redirect(project_url(project))


@require_POST
@admin_required
def project_member(request: AuthedHttpRequest, project_id: int) -> HttpResponse:
    """Add a person to the project in a role, change their role, or end their membership
    (`remove`); their labels stay."""
    project = get_object_or_404(Project, pk=project_id)
    user = User.objects.filter(username=request.POST.get("username", "")).first()
    error = ""
    if user is None:
        error = f"no such person: {request.POST.get('username', '')!r}"
    elif request.POST.get("remove"):
        feedback_services.project_member_remove(project=project, user=user)
    else:
        try:
            feedback_services.project_member_add(
                project=project, user=user, role=request.POST.get("role") or ProjectMember.Role.ANNOTATOR
            )
        except ValueError as exc:  # an unknown role, named in words
            error = str(exc)
    if error:
        context = _project_context(request, project, _values(project), {}, member_error=error)
        return render(request, "dashboard/project.html", context, status=400)
    return redirect(f"{project_url(project)}#members")
