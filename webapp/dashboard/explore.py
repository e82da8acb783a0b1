"""The data explorer and review, for admins and for each project's reviewers: search and filter the
items, open one with its whole conversation, every answer's version and every raw label, and record a
final answer with a note beside the labels."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from webapp.core.http import AuthedHttpRequest
from webapp.core.parsing import parse_id
from webapp.feedback.explore import (
    SORTS,
    adjudicate,
    explore,
    filters_from,
    gold_text,
    reviewable_projects,
    task_gold_set,
)
from webapp.feedback.models import Label, Task
from webapp.feedback.similar import similar_items


def reviewer_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Admins, and people who review or manage at least one project."""

    @wraps(view)
    @login_required
    def wrapper(request: AuthedHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not reviewable_projects(request.user).exists():
            message = "The explorer is for admins and for reviewers of a project."
            return render(request, "403.html", {"message": message}, status=403)
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
@reviewer_required
def explorer(request: AuthedHttpRequest) -> HttpResponse:
    """Items, searched, filtered and sorted; 50 a page, with a link to the next page."""
    filters = filters_from(request.GET)
    rows, after = ([], "") if filters.errors else explore(user=request.user, filters=filters)
    params = request.GET.copy()
    params.pop("after", None)
    next_url = ""
    if after:
        params["after"] = after
        next_url = f"{reverse('dashboard:explore')}?{params.urlencode()}"
    context = {
        "rows": rows,
        "f": filters,
        "next_url": next_url,
        "projects": reviewable_projects(request.user),
        "kinds": Task.Kind.choices,
        "sorts": SORTS,
    }
    return render(request, "dashboard/explore.html", context, status=400 if filters.errors else 200)


@require_http_methods(["GET", "POST"])
@reviewer_required
def item(request: AuthedHttpRequest, task_id: int) -> HttpResponse:
    """One item: its conversation, each answer with the version that wrote it, every raw label with
    its rationale, strength and time, and the final answer a reviewer recorded (or the form for it)."""
    task = get_object_or_404(
        Task.objects.filter(project__in=reviewable_projects(request.user)).select_related("project", "prompt"),
        pk=task_id,
    )
    error = ""
    gold_wanted = request.POST.get("make_gold") == "1" or request.POST.get("gold_off") == "1"
    if request.method == "POST" and gold_wanted and not request.user.is_prefloop_admin:
        return HttpResponse("Only an admin makes gold items.", status=403)
    if request.method == "POST" and request.POST.get("gold_off") == "1":
        task_gold_set(task=task, gold=None)
        return redirect("dashboard:item", task.pk)
    if request.method == "POST":
        data: dict[str, Any] = {k: request.POST.get(k, "") for k in ("choice", "critique", "rewrite", "rating")}
        if task.kind == Task.Kind.RANKING:
            data = {"ranking": _ranking_from(request.POST, task)}
        try:
            adjudicate(
                task=task,
                reviewer=request.user,
                data=data,
                note=request.POST.get("note", ""),
                make_gold=request.POST.get("make_gold") == "1",
            )
        except ValidationError as exc:
            error = " ".join(exc.messages)
        else:
            return redirect(f"{reverse('dashboard:item', args=[task.pk])}?settled=1")
    slots = list(task.slots.select_related("candidate__policy_version").order_by("position"))
    letter = {slot.candidate_id: LETTERS[slot.position] for slot in slots}
    labels = Label.objects.filter(task=task).select_related("annotator").order_by("created_at", "id")
    adjudication = getattr(task, "adjudication", None)
    answer = adjudication.answer if adjudication else {}  # its final answer, in a label's fields
    context = {
        "task": task,
        "answers": [(LETTERS[slot.position], slot) for slot in slots],
        "labels": [(label, _answer_text(label.choice, label.ranking, label.rating, letter)) for label in labels],
        "adjudication": adjudication,
        "settled_answer": _answer_text(answer.get("choice", ""), answer.get("ranking"), answer.get("rating"), letter),
        "error": error,
        "settled": request.GET.get("settled") == "1",
        "gold_answer": gold_text(task),
        "similar": similar_items(task),
        "gold_scored": Label.objects.filter(task=task, gold_correct__isnull=False).count() if task.is_gold else 0,
    }
    return render(request, "dashboard/item.html", context, status=400 if error else 200)


LETTERS = "ABCDEFGHI"  # an item's answers, by position (at most 9)


def _answer_text(choice: str, ranking: list[list[int]] | None, rating: int | None, letter: dict[int, str]) -> str:
    """A judgment as a reviewer reads it: "a", "B > A = C" (answers by letter, best first), "rated 4"."""
    if choice:
        return choice
    if ranking:
        return " > ".join(" = ".join(letter.get(c, "?") for c in group) for group in ranking)
    return f"rated {rating}" if rating else ""


def _ranking_from(post: Any, task: Task) -> list[list[int]]:
    """A ranking from the form: each answer's place (1 = best; equal places tie)."""
    places: dict[int, list[int]] = {}
    for slot in task.slots.order_by("position"):
        place = parse_id(post.get(f"place-{slot.candidate_id}", ""))
        if place is None:
            return []  # refused in words by the label's own check
        places.setdefault(place, []).append(slot.candidate_id)
    return [places[p] for p in sorted(places)]
