"""Admin dashboard: data counts, training runs (live), policy versions, and the train button."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Avg, Count, QuerySet
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from training.policy_client import PolicyServerError
from webapp.core.http import AuthedHttpRequest
from webapp.core.jobs import JOB_KINDS, job_cancel, job_model_for, job_waiting_on, jobs_list, queue_listeners
from webapp.core.parsing import parse_id
from webapp.dashboard.overview import active_annotators, labels_per_day, queue_depth
from webapp.feedback.figures import figure_with_age
from webapp.feedback.followups import followup_row, followups_scored
from webapp.feedback.generation import arena_job_create, generation_job_create, generation_settings_error
from webapp.feedback.models import Conversation, GenerationJob, ImportJob, JobStatus, Label, Project, Task
from webapp.runs import services
from webapp.runs.arena import arena_board
from webapp.runs.models import ModelVersion, RewardModel, TrainingRun, VersionEvent
from webapp.runs.recipe import GATE_CHECKS, METHOD_LABELS, PRESETS, Recipe, RecipeError
from webapp.runs.selectors import reward_model_list, reward_model_serving, run_list, version_list, version_serving


def admin_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    @login_required
    def wrapper(request: AuthedHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_prefloop_admin:
            return render(request, "403.html", {"message": "The dashboard is for admins."}, status=403)
        return view(request, *args, **kwargs)

    return wrapper


def _runs_context() -> dict[str, Any]:
    return {
        "runs": run_list()[:20],
        "versions": version_list()[:20],
        "serving": version_serving(),
        "reward_models": reward_model_list()[:20],
        "events": VersionEvent.objects.select_related("version", "previous", "actor")[:20],
    }


def _runs_response(request: AuthedHttpRequest, *, error: str = "") -> HttpResponse:
    if not request.htmx:
        return redirect("dashboard:index")
    return render(request, "dashboard/_runs.html", {**_runs_context(), "action_error": error})


def _recent_jobs(jobs: QuerySet[Any]) -> tuple[list[Any], bool]:
    """A card's ten newest worker jobs (imports, generation), and whether one is still going (the
    card then refreshes itself)."""
    recent = list(jobs.order_by("-id")[:10])
    return recent, any(j.status in (JobStatus.QUEUED, JobStatus.RUNNING) for j in recent)


def _imports_context() -> dict[str, Any]:
    jobs, active = _recent_jobs(ImportJob.objects.select_related("project"))
    return {"imports": jobs, "imports_active": active}


@require_GET
@admin_required
def imports(request: AuthedHttpRequest) -> HttpResponse:
    """The imports card: a worker's imports with their counts, refreshed while one is going."""
    return _card(request, "dashboard/_imports.html", "Imports", _imports_context())


def _generation_context(*, error: str = "") -> dict[str, Any]:
    jobs, active = _recent_jobs(GenerationJob.objects.select_related("project", "policy_version"))
    return {
        "generation_jobs": jobs,
        "generation_active": active,
        "generation_error": error,
        "projects": Project.objects.all(),
    }


@require_GET
@admin_required
def generation(request: AuthedHttpRequest) -> HttpResponse:
    """The generation card: the policy's answers being written, refreshed while a job is going."""
    return _card(request, "dashboard/_generation.html", "Generation", _generation_context())


@require_POST
@admin_required
def generate(request: AuthedHttpRequest) -> HttpResponse:
    """Queue the serving version's answers to a project's open prompts."""
    project = Project.objects.filter(pk=_int(request.POST.get("project", ""))).first()
    if project is None:
        error = f"no project {request.POST.get('project', '')!r}"
    else:
        error = generation_settings_error(project) or ""
    if error or project is None:  # the card shows it in place; a plain form post gets the status
        return _generation_response(request, error) if request.htmx else HttpResponseBadRequest(error)
    generation_job_create(project=project, created_by=request.user)
    return _generation_response(request) if request.htmx else redirect("dashboard:index")


def _generation_response(request: AuthedHttpRequest, error: str = "") -> HttpResponse:
    return render(request, "dashboard/_generation.html", _generation_context(error=error))


def missing_parts() -> list[tuple[str, str]]:
    """What an installation lacks before the loop can run, each with how to fix it (an empty
    production install says so instead of showing empty tables)."""
    missing = []
    if version_serving() is None:
        missing.append(("No policy version serves, so the chat and the generation of answers cannot work.",
                        "Run `python manage.py prefloop_setup --no-users` (it builds or finds the base model and "
                        "serves version 1), or promote a version below."))  # fmt: skip
    listeners = queue_listeners()
    idle = [q for q in ("cpu", "gpu", "generate") if not listeners.get(q)]
    if idle:
        missing.append((f"No worker listens on the {', '.join(repr(q) for q in idle)} queue"
                        f"{'s' if len(idle) > 1 else ''}: imports, answers and training wait.",
                        f"Start one: `celery -A worker.celery worker -Q {','.join(idle)} --beat`."))  # fmt: skip
    if not Project.objects.filter(archived_at__isnull=True).exists():
        missing.append(("There is no open project to annotate.", "Make one on the Projects page."))
    return missing


@require_GET
@admin_required
def index(request: AuthedHttpRequest) -> HttpResponse:
    context = {
        "missing": missing_parts(),
        **_runs_context(),
        **_generation_context(),
        **_imports_context(),
        "overview": {
            "labels": labels_per_day(),
            "queue": queue_depth(),
            "active": active_annotators(),
            "jobs": jobs_list(limit=8),
        },
        "n_labels": Label.objects.count(),
        "n_tasks": Task.objects.count(),
        "n_conversations": Conversation.objects.count(),
        "followups": [followup_row(a) for a in followups_scored().prefetch_related("replies").order_by("-id")[:5]],
        "followup_stats": followups_scored().aggregate(n=Count("id"), mean=Avg("followup_score")),
        "projects": Project.objects.all(),
    }
    return render(request, "dashboard/index.html", context)


@require_GET
@admin_required
def runs(request: AuthedHttpRequest) -> HttpResponse:
    return _card(request, "dashboard/_runs.html", "Runs and versions", _runs_context())


def _card(request: AuthedHttpRequest, template: str, title: str, context: dict[str, Any]) -> HttpResponse:
    """A dashboard card: the fragment itself for htmx, which refreshes it in place; a whole page with
    the app's layout for a person who opens its address."""
    if request.htmx:
        return render(request, template, context)
    return render(request, "dashboard/card_page.html", {**context, "card_template": template, "card_title": title})


@require_POST
@admin_required
def run_new(request: AuthedHttpRequest) -> HttpResponse:
    kind = request.POST.get("kind") or "policy"
    if kind != "policy" and kind not in TrainingRun.Kind.values:
        return HttpResponseBadRequest(f"unknown run kind {kind!r}: one of policy, {', '.join(TrainingRun.Kind.values)}")
    project = None
    if request.POST.get("project"):
        project = Project.objects.filter(pk=_int(request.POST["project"])).first()
        if project is None:
            return HttpResponseBadRequest(f"no project {request.POST['project']!r}")
    try:
        services.run_create(trigger=TrainingRun.Trigger.ADMIN, created_by=request.user, kind=kind, project=project)
    except RecipeError as exc:
        return HttpResponseBadRequest(f"the project's recipe is invalid ({exc}): fix it on its recipe page")
    if request.POST.get("next") == "recipe" and project is not None:
        return redirect("dashboard:recipe", project.pk)
    return _runs_response(request)


def _int(value: str) -> int:
    return parse_id(value) or 0


@require_POST
@admin_required
def run_cancel(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    """Cancel a queued run, or stop a running one at its next step."""
    get_object_or_404(TrainingRun, pk=run_id)
    try:
        services.run_cancel(run_id=run_id)
    except ValueError as exc:
        return _runs_response(request, error=str(exc)) if request.htmx else HttpResponse(str(exc), status=409)
    return _runs_response(request)


@require_POST
@admin_required
def version_promote(request: AuthedHttpRequest, version_id: int) -> HttpResponse:
    """Promote a version or roll back to it; a rejected one needs the confirmation its button asks for."""
    version = get_object_or_404(ModelVersion, pk=version_id)
    return _promoted(request, lambda **how: services.version_promote_by_admin(version=version, **how))


def _promoted(request: AuthedHttpRequest, promote: Callable[..., Any]) -> HttpResponse:
    """An admin's promotion or rollback from a button: the reason from its prompt, `confirm` from its
    confirmation; the runs card again, with the error in words when it could not be done."""
    reason = (request.headers.get("HX-Prompt") or request.POST.get("reason") or "").strip()
    confirm = request.POST.get("confirm") in ("1", "true", "on")
    try:
        promote(actor=request.user, reason=reason, confirm=confirm)
    except (services.NeedsConfirmation, ValueError, PolicyServerError) as exc:
        return _runs_response(request, error=str(exc)) if request.htmx else HttpResponse(str(exc), status=409)
    return _runs_response(request)


@require_POST
@admin_required
def reward_model_promote(request: AuthedHttpRequest, reward_model_id: int) -> HttpResponse:
    """Serve a reward model for its project, or roll back to one; a rejected one needs confirming."""
    reward_model = get_object_or_404(RewardModel, pk=reward_model_id)
    return _promoted(request, lambda **how: services.reward_model_promote_by_admin(reward_model=reward_model, **how))


@require_http_methods(["GET", "POST"])
@admin_required
def recipe(request: AuthedHttpRequest, project_id: int) -> HttpResponse:
    """A project's training recipe: a form with presets and validation, and what a run would train on.
    The same form is on the project's page; saved from there (`next=project`), it goes back there."""
    project = get_object_or_404(Project, pk=project_id)
    errors: dict[str, str] = {}
    saved = False
    try:
        current = services.recipe_for(project)
    except RecipeError as exc:  # a stored recipe made invalid by hand: show the defaults and why
        errors = exc.errors
        current = Recipe.from_dict({}, defaults=services.recipe_defaults())
    values: dict[str, Any] = current.to_dict()
    if request.method == "POST":
        posted: dict[str, Any] = {f: request.POST[f] for f in values if f in request.POST and f != "required_checks"}
        posted["required_checks"] = request.POST.getlist("required_checks")
        preset = request.POST.get("preset", "")
        if preset:
            if preset not in PRESETS:
                return HttpResponseBadRequest(f"unknown preset {preset!r}")
            posted = {**values, **PRESETS[preset]}
        try:
            current = services.recipe_update(project=project, data=posted, replace=True)
            values, errors, saved = current.to_dict(), {}, True
        except RecipeError as exc:
            errors = exc.errors
            values = {**values, **posted}
        if saved and request.POST.get("next") == "project":
            return redirect(f"{reverse('dashboard:project', args=[project.pk])}?recipe_saved=1#recipe")
    context = {"project": project, "saved": saved, **recipe_context(project, current, values, errors)}
    return render(request, "dashboard/recipe.html", context, status=400 if errors else 200)


def recipe_context(
    project: Project, current: Recipe | None = None, values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What the recipe form and its preview show: the recipe's values (or those just posted), the
    errors in words, and what a run with it would train on."""
    recipe_errors = dict(errors or {})
    if current is None:
        try:
            current = services.recipe_for(project)
        except RecipeError as exc:
            recipe_errors = exc.errors
            current = Recipe.from_dict({}, defaults=services.recipe_defaults())
    return {
        "recipe_values": values if values is not None else current.to_dict(),
        "recipe_errors": recipe_errors,
        "methods": METHOD_LABELS,
        "presets": PRESETS,
        "checks": GATE_CHECKS,
        "fields": RECIPE_FIELDS,
        "kind": current.kind,
    }


@require_GET
@admin_required
def recipe_preview(request: AuthedHttpRequest, project_id: int) -> HttpResponse:
    """What a run of the project's saved recipe would train on: loaded after the page, as it reads
    every label of the project (kept in the cache until the data or the recipe changes)."""
    project = get_object_or_404(Project, pk=project_id)
    try:
        current = services.recipe_for(project)
    except RecipeError:
        return HttpResponse(
            '<section class="card" id="recipe-preview"><p>Fix the recipe to see what a run would train on.</p>'
            "</section>"
        )
    summary, age = figure_with_age("training-preview", project, current.to_dict())
    if summary is None:  # a large project's first count: a worker does it; the card asks again
        again = reverse("dashboard:recipe_preview", args=[project.pk])
        return HttpResponse(
            f'<section class="card" id="recipe-preview" hx-get="{again}" hx-trigger="load delay:3s" '
            'hx-swap="outerHTML"><h2>What a run will train on</h2><p class="hint" role="status">This project has '
            "many labels: a worker is counting the ones a run would use…</p></section>"
        )
    return render(
        request,
        "dashboard/_recipe_preview.html",
        {"project": project, "summary": summary, "kind": current.kind, "age": age},
    )


@require_http_methods(["GET", "POST"])
@admin_required
def arena(request: AuthedHttpRequest, project_id: int) -> HttpResponse:
    """The project's leaderboard of versions from blind comparisons, and a form to queue more."""
    project = get_object_or_404(Project, pk=project_id)
    error, queued = "", None
    if request.method == "POST":
        numbers = [_int(request.POST.get("first", "")), _int(request.POST.get("second", ""))]
        found = {v.number: v for v in ModelVersion.objects.filter(number__in=numbers)}
        prompts = _int(request.POST.get("prompts", ""))
        if len(found) != 2 or not 1 <= prompts <= 1000:
            error = "Choose two different versions and 1 to 1000 prompts."
        else:
            try:
                queued = arena_job_create(
                    project=project, versions=(found[numbers[0]], found[numbers[1]]), prompts=prompts,
                    created_by=request.user,
                )  # fmt: skip
            except ValueError as exc:
                error = str(exc)
    context = {
        "project": project,
        "board": arena_board(project=project),
        "versions": version_list(),
        "error": error,
        "queued": queued,
    }
    return render(request, "dashboard/arena.html", context, status=400 if error else 200)


# The form's fields after the method: (name, label, input type, step).
RECIPE_FIELDS = [
    ("beta", "β (0: the method's own)", "number", "any"),
    ("learning_rate", "Learning rate (0: the method's own)", "number", "any"),
    ("epochs", "Epochs (0: the method's own)", "number", "1"),
    ("max_steps", "Steps (0: by epochs)", "number", "1"),
    ("lora_rank", "LoRA rank", "number", "1"),
    ("processes", "Training processes (DPO family, KTO; 0: the worker's TRAIN_PROCESSES)", "number", "1"),
    ("robust_epsilon", "Robust DPO ε", "number", "any"),
    ("grpo_lambda", "GRPO λ", "number", "any"),
    ("followup_margin", "KTO: follow-up score margin (0: off)", "number", "any"),
    ("online_prompts", "Online DPO: prompts answered twice per run", "number", "1"),
    ("online_human_share", "Online DPO: share of people's pairs", "number", "any"),
    ("reward_groups", "Reward runs: groups of annotators to look for (0: one population)", "number", "1"),
    ("auto_train_every", "Train after this many new labels (0: by hand)", "number", "1"),
    ("trust_floor", "Trust floor", "number", "any"),
    ("held_out_share", "Held-out share", "number", "any"),
    ("min_heldout_pairs", "Held-out pairs before the accuracy check", "number", "1"),
    ("min_heldout_accuracy", "Gate: least held-out accuracy", "number", "any"),
    ("min_win_rate", "Gate: least win rate", "number", "any"),
    ("max_kl", "Gate: most KL (nats)", "number", "any"),
    ("gate_confidence", "Gate: confidence of its tests", "number", "any"),
    ("gate_margin", "Gate: a worse candidate it must catch, by this much", "number", "any"),
    ("gate_prompts", "Gate: held-out prompts", "number", "1"),
    ("arena_prompts", "Gate: arena prompts people compare (0: no arena)", "number", "1"),
]


@require_GET
@admin_required
def quality(request: AuthedHttpRequest) -> HttpResponse:
    """Agreement per project and kind, and each annotator's agreement, gold accuracy and trust."""
    projects = Project.objects.all()
    selected = projects.filter(pk=request.GET.get("project") or 0).first() or projects.first()
    report, age = figure_with_age("quality", selected) if selected else (None, None)
    context: dict[str, Any] = {"projects": projects, "selected": selected, "report": report, "age": age}
    if selected is not None:  # groups of annotators, as the project's serving reward model found them
        reward_model = reward_model_serving(selected)
        context["reward_model"] = reward_model
        context["groups"] = (reward_model.metrics or {}).get("groups") if reward_model else None
        context["group_versions"] = [
            v
            for v in ModelVersion.objects.filter(project=selected).order_by("-number")[:20]
            if (v.gate or {}).get("groups")
        ]
    return render(request, "dashboard/quality.html", context)


@require_GET
@admin_required
def run_detail(request: AuthedHttpRequest, run_id: int) -> HttpResponse:
    """One run, live: status, progress, the latest metrics and a chart of every logged step."""
    run = get_object_or_404(run_list(), pk=run_id)
    template = "dashboard/_run_detail.html" if request.htmx else "dashboard/run.html"
    gate = run.result_version.gate if run.result_version is not None else {}
    waiting_on = job_waiting_on(run, queue_listeners())
    context = {"run": run, "chart": _chart_data(run.history), "gate": gate, "waiting_on": waiting_on}
    return render(request, template, context)


CHART_SERIES = ("loss", "rewards/margins", "rewards/accuracies", "kl")


def _chart_data(history: list[dict]) -> dict:
    """The logged steps as chart series: one line per metric that the run logged."""
    steps = [entry.get("step") for entry in history]
    series = {key: [entry.get(key) for entry in history] for key in CHART_SERIES if any(key in e for e in history)}
    return {"steps": steps, "series": series}


def _jobs_page(request: AuthedHttpRequest, *, error: str = "", status_code: int = 200) -> HttpResponse:
    kind, status = request.GET.get("kind", ""), request.GET.get("status", "")
    try:
        rows = jobs_list(kind=kind, status=status, limit=200)
    except ValueError as exc:
        rows, error = [], str(exc)
        status_code = 400
    context = {
        "jobs": rows,
        "active": any(r["status"] in (JobStatus.QUEUED, JobStatus.RUNNING) for r in rows),
        "kinds": JOB_KINDS,
        "statuses": JobStatus.values,
        "kind": kind,
        "status": status,
        "error": error,
    }
    return render(request, "dashboard/jobs.html", context, status=status_code)


@require_GET
@admin_required
def jobs(request: AuthedHttpRequest) -> HttpResponse:
    """Every background job of every kind in one place, filtered by kind and status."""
    return _jobs_page(request)


@require_POST
@admin_required
def job_cancel_view(request: AuthedHttpRequest, kind: str, job_id: int) -> HttpResponse:
    """Cancel a job of any kind: a queued one at once, a running one at its next step."""
    try:
        model = job_model_for(kind)
    except ValueError as exc:
        return HttpResponse(str(exc), status=404)
    get_object_or_404(model, pk=job_id)
    try:
        job_cancel(model, job_id)
    except ValueError as exc:
        return _jobs_page(request, error=str(exc), status_code=409)
    return redirect("dashboard:jobs")
