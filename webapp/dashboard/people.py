"""People in the browser: accounts an admin makes, invitation links people accept themselves, who is
active, and a page per person (their pace, agreement, gold accuracy over time, and what they skipped)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import timedelta
from typing import Any

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db.models import Count, Max
from django.db.models.functions import TruncDate
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from webapp.accounts import services as account_services
from webapp.accounts.models import User
from webapp.core.http import AuthedHttpRequest
from webapp.core.parsing import parse_id
from webapp.dashboard.views import admin_required
from webapp.feedback import people as people_services
from webapp.feedback.figures import data_state, project_quality_figure
from webapp.feedback.models import Assignment, Invitation, Label, Project, ProjectMember
from webapp.feedback.services import project_member_add


def _labels_per_person() -> tuple[dict[int, int], dict[int, Any]]:
    """Each person's label count and newest label time: one grouped pass over every label, kept in
    the cache until a label is added (the newest label id is in the key)."""
    newest = Label.objects.aggregate(m=Max("id"))["m"] or 0
    key = f"prefloop:labels-per-person:{newest}"
    stored = cache.get(key)
    if stored is None:
        per_person = Label.objects.values_list("annotator").annotate(n=Count("id"), at=Max("created_at")).order_by()
        stored = ({a: n for a, n, _ in per_person}, {a: at for a, _, at in per_person})
        cache.set(key, stored, 3600)
    return stored


def _people_context(request: AuthedHttpRequest, **extra: Any) -> dict[str, Any]:
    users = list(User.objects.order_by("-is_active", "username"))
    labels, last = _labels_per_person()
    roles: dict[int, list[ProjectMember]] = defaultdict(list)
    for membership in ProjectMember.objects.select_related("project").order_by("project__name"):
        roles[membership.user_id].append(membership)
    now = timezone.now()
    invitations = list(Invitation.objects.select_related("project", "used_by")[:50])
    return {
        "rows": [(u, labels.get(u.pk, 0), last.get(u.pk), roles.get(u.pk, [])) for u in users],
        "projects": Project.objects.filter(archived_at__isnull=True),
        "site_roles": User.Role.choices,
        "project_roles": ProjectMember.Role.choices,
        "invitations": [(i, i.state(now)) for i in invitations],
        "chosen_project": parse_id(request.GET.get("project", "")),
        "form": {},
        **extra,
    }


@require_GET
@admin_required
def people(request: AuthedHttpRequest) -> HttpResponse:
    """Everyone with an account, the forms to make one or invite someone, and open invitations."""
    return render(request, "dashboard/people.html", _people_context(request))


def _project_and_role(request: AuthedHttpRequest) -> tuple[Project | None, str, str]:
    """The project (optional) and role a form names, or an error in words."""
    project_id = request.POST.get("project", "")
    project = Project.objects.filter(pk=parse_id(project_id) or 0).first() if project_id else None
    if project_id and project is None:
        return None, "", f"no project {project_id!r}"
    role = request.POST.get("project_role") or ProjectMember.Role.ANNOTATOR
    if role not in ProjectMember.Role.values:
        return None, "", f"unknown project role {role!r}"
    return project, role, ""


@require_POST
@admin_required
def person_new(request: AuthedHttpRequest) -> HttpResponse:
    """Make an account with a password the admin hands over; optionally a member of a project."""
    form = {k: request.POST.get(k, "") for k in ("username", "email", "role", "project", "project_role")}
    project, project_role, error = _project_and_role(request)
    errors: dict[str, str] = {"project": error} if error else {}
    if not errors:
        try:
            user = account_services.user_create_by_admin(
                username=form["username"].strip(),
                password=request.POST.get("password", ""),
                role=form["role"] or User.Role.ANNOTATOR,
                email=form["email"].strip(),
            )
        except ValidationError as exc:
            errors = {name: " ".join(messages) for name, messages in exc.message_dict.items()}
        else:
            if project is not None:
                project_member_add(project=project, user=user, role=project_role)
            return redirect(f"{reverse('dashboard:people')}?made={user.username}")
    context = _people_context(request, form=form, account_errors=errors)
    return render(request, "dashboard/people.html", context, status=400)


@require_POST
@admin_required
def invitation_new(request: AuthedHttpRequest) -> HttpResponse:
    """An invitation link, shown once on the page that answers (only its digest is kept)."""
    project, project_role, error = _project_and_role(request)
    days = request.POST.get("days", "") or str(people_services.INVITATION_DAYS)
    try:
        lasting = float(days)
    except ValueError:
        error = error or f"not a number of days: {days!r}"
    invitation, token = None, ""
    if not error:
        try:
            invitation, token = people_services.invitation_create(
                by=request.user,
                role=request.POST.get("role") or User.Role.ANNOTATOR,
                project=project,
                project_role=project_role,
                days=lasting,
                note=request.POST.get("note", "").strip(),
            )
        except ValueError as exc:
            error = str(exc)
    if error:
        return render(request, "dashboard/people.html", _people_context(request, invite_error=error), status=400)
    link = request.build_absolute_uri(reverse("invitation_accept", args=[token]))
    return render(request, "dashboard/people.html", _people_context(request, new_link=link, new_invitation=invitation))


@require_POST
@admin_required
def invitation_revoke(request: AuthedHttpRequest, invitation_id: int) -> HttpResponse:
    people_services.invitation_revoke(invitation=get_object_or_404(Invitation, pk=invitation_id))
    return redirect(f"{reverse('dashboard:people')}#invitations")


@require_POST
@admin_required
def person_active(request: AuthedHttpRequest, username: str) -> HttpResponse:
    """Deactivate a person (`active=0`) or let them back in; their labels stay."""
    user = get_object_or_404(User, username=username)
    try:
        people_services.person_set_active(user=user, active=request.POST.get("active") == "1", by=request.user)
    except ValueError as exc:
        return render(request, "dashboard/people.html", _people_context(request, active_error=str(exc)), status=409)
    return redirect((request.POST.get("next") == "person" and reverse("dashboard:person", args=[username]))
                    or reverse("dashboard:people"))  # fmt: skip


DAYS_SHOWN = 30


@require_GET
@admin_required
def person(request: AuthedHttpRequest, username: str) -> HttpResponse:
    """One person: labels per day, median seconds per item, and per project their agreement, gold
    accuracy and trust; their gold accuracy week by week; the items they skipped and why."""
    user = get_object_or_404(User, username=username)
    since = timezone.now() - timedelta(days=DAYS_SHOWN)
    per_day = dict(
        Label.objects.filter(annotator=user, created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values_list("day")
        .annotate(n=Count("id"))
    )
    today = timezone.localdate()
    days = [today - timedelta(days=i) for i in range(DAYS_SHOWN - 1, -1, -1)]
    durations = [
        (finished - leased).total_seconds()
        for leased, finished in Assignment.objects.filter(annotator=user, status=Assignment.Status.SUBMITTED)
        .order_by("-finished_at")
        .values_list("leased_at", "finished_at")[:1000]
        if finished is not None
    ]
    gold_weeks: dict[str, list[bool]] = defaultdict(list)
    for at, correct in Label.objects.filter(annotator=user, gold_correct__isnull=False).values_list(
        "created_at", "gold_correct"
    ):
        year, week, _ = at.isocalendar()
        gold_weeks[f"{year}-W{week:02d}"].append(bool(correct))
    quality, pending = [], []
    state = data_state()  # one read of the data's state for every project's report
    for membership_project in Project.objects.filter(tasks__labels__annotator=user).distinct():
        report = project_quality_figure(membership_project, state=state)
        if report is None:  # a large project's first report: a worker computes it
            pending.append(membership_project)
            continue
        mine = next((a for a in report["annotators"] if a["username"] == user.username), None)
        if mine is not None:
            quality.append((membership_project, mine))
    skipped = (
        Assignment.objects.filter(annotator=user, status=Assignment.Status.SKIPPED)
        .select_related("task__project", "task__prompt")
        .order_by("-finished_at")[:50]
    )
    context = {
        "person": user,
        "memberships": ProjectMember.objects.filter(user=user).select_related("project"),
        "n_labels": Label.objects.filter(annotator=user).count(),
        "chart": {
            "days": [d.isoformat() for d in days],
            "labels": [per_day.get(d, 0) for d in days],
            "weeks": sorted(gold_weeks),
            "gold": [round(sum(v) / len(v), 4) for _, v in sorted(gold_weeks.items())],
        },
        "median_seconds": statistics.median(durations) if durations else None,
        "timed_items": len(durations),
        "quality": quality,
        "quality_pending": pending,
        "skipped": skipped,
    }
    return render(request, "dashboard/person.html", context)
