"""Annotation pages: the next task of a project, judged and submitted without a full page load; and
the page where an invited person makes their account."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webapp.core.http import AuthedHttpRequest
from webapp.feedback import assignments, people
from webapp.feedback.explore import gold_results, reviewable_projects
from webapp.feedback.models import Assignment, Label, Project
from webapp.feedback.selectors import projects_for, task_with_candidates


def _task_context(request: AuthedHttpRequest, project: Project, judged: Label | None = None) -> dict[str, Any]:
    assignment = assignments.assignment_next(project=project, annotator=request.user)
    context: dict[str, Any] = {
        "project": project,
        "assignment": assignment,
        "progress": assignments.project_progress(project=project, annotator=request.user),
    }
    if project.show_gold_results:  # the project lets people see how they did on its gold items
        context["gold"] = gold_results(project=project, annotator=request.user, judged=judged)
    if assignment is not None:
        task = task_with_candidates(task_id=assignment.task_id)
        context["task"] = task
        context["slots"] = list(task.slots.all())
        context["context_messages"] = task.prompt.messages
    return context


@require_GET
@login_required
def index(request: AuthedHttpRequest) -> HttpResponse:
    projects = projects_for(request.user).filter(archived_at__isnull=True)
    rows = [(p, assignments.project_progress(project=p, annotator=request.user)) for p in projects]
    reviews = not request.user.is_prefloop_admin and reviewable_projects(request.user).exists()
    return render(request, "feedback/index.html", {"rows": rows, "reviews": reviews})


@require_GET
@login_required
def project_page(request: AuthedHttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(projects_for(request.user), pk=project_id)
    template = "feedback/_task.html" if request.htmx else "feedback/project.html"
    return render(request, template, _task_context(request, project))


def _own_assignment(request: AuthedHttpRequest, assignment_id: int) -> Assignment:
    return get_object_or_404(
        Assignment.objects.select_related("task__project"), pk=assignment_id, annotator=request.user
    )


def _label_data(request: AuthedHttpRequest) -> dict[str, Any]:
    data: dict[str, Any] = {
        key: request.POST.get(key, "") for key in ("choice", "strength", "critique", "rewrite", "rating", "rationale")
    }
    raw_ranking = request.POST.get("ranking")
    if raw_ranking:
        try:
            data["ranking"] = json.loads(raw_ranking)
        except json.JSONDecodeError:
            raise ValidationError("ranking is not valid JSON") from None
    return data


@require_POST
@login_required
def submit(request: AuthedHttpRequest, assignment_id: int) -> HttpResponse:
    assignment = _own_assignment(request, assignment_id)
    try:
        label, _ = assignments.assignment_submit(assignment=assignment, data=_label_data(request))
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    except ValueError as exc:
        return HttpResponse(str(exc), status=409)
    return _next(request, assignment.task.project, judged=label)


@require_POST
@login_required
def skip(request: AuthedHttpRequest, assignment_id: int) -> HttpResponse:
    assignment = _own_assignment(request, assignment_id)
    try:
        assignments.assignment_skip(assignment=assignment, reason=request.POST.get("reason", ""))
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    except ValueError as exc:
        return HttpResponse(str(exc), status=409)
    return _next(request, assignment.task.project)


def _next(request: AuthedHttpRequest, project: Project, judged: Label | None = None) -> HttpResponse:
    if not request.htmx:
        return redirect("feedback:project", project.pk)
    return render(request, "feedback/_task.html", _task_context(request, project, judged))


@require_http_methods(["GET", "POST"])
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """An invitation link's page, open to whoever holds the link: they pick a name and a password,
    the account is made in the invitation's role (and project), and they are signed in."""
    try:
        invitation = people.invitation_open(token)
    except people.InvitationInvalid as exc:
        return render(request, "registration/invitation.html", {"invalid": str(exc)}, status=404)
    errors: dict[str, str] = {}
    form = {"username": request.POST.get("username", "").strip(), "email": request.POST.get("email", "").strip()}
    if request.method == "POST":
        password, again = request.POST.get("password", ""), request.POST.get("password_again", "")
        if password != again:
            errors = {"password": "the two passwords differ"}
        else:
            try:
                user = people.invitation_accept(token=token, password=password, **form)
            except people.InvitationInvalid as exc:
                return render(request, "registration/invitation.html", {"invalid": str(exc)}, status=409)
            except ValidationError as exc:
                errors = {name: " ".join(messages) for name, messages in exc.message_dict.items()}
            else:
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                return redirect("feedback:index")
    context = {"invitation": invitation, "errors": errors, "form": form}
    return render(request, "registration/invitation.html", context, status=400 if errors else 200)
