"""Every write to training runs and policy versions goes through one of these functions."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, TypeVar

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from webapp.accounts.models import User
from webapp.core.jobs import JobStatus, job_beat, job_cancel, job_enqueue, job_finish, job_start
from webapp.feedback.models import Project
from webapp.hooks.services import event_emit
from webapp.runs.models import ModelVersion, RewardModel, RewardModelEvent, TrainingRun, VersionEvent
from webapp.runs.recipe import Recipe, RecipeError

logger = logging.getLogger(__name__)

# The worker task of each run kind, sent by name (the web app never imports the worker's tasks).
TRAIN_TASK_NAMES: dict[str, str] = {
    TrainingRun.Kind.DPO: "prefloop.train_policy",
    TrainingRun.Kind.KTO: "prefloop.train_policy",
    TrainingRun.Kind.GRPO: "prefloop.train_policy",
    TrainingRun.Kind.LIPO: "prefloop.train_policy",
    TrainingRun.Kind.ONLINE_DPO: "prefloop.train_policy",
    TrainingRun.Kind.REWARD: "prefloop.train_reward",
}
HISTORY_LIMIT = 500
NumberedT = TypeVar("NumberedT", ModelVersion, RewardModel)


def _create_numbered(model: type[NumberedT], **fields: Any) -> NumberedT:
    """Create a `model` row under the next free `number`; a writer that takes the same number
    concurrently makes this one try the next."""
    for _ in range(5):
        try:
            with transaction.atomic():
                number = (model.objects.aggregate(m=Max("number"))["m"] or 0) + 1  # type: ignore[attr-defined]
                return model.objects.create(number=number, **fields)  # type: ignore[attr-defined]
        except IntegrityError:
            continue
    raise RuntimeError(f"could not allocate a {model.__name__} number after 5 tries")


def version_register(
    *,
    artifact_path: str,
    base_model: str,
    parent: ModelVersion | None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    data_hash: str = "",
    label_ids: list[int] | None = None,
    project: Project | None = None,
) -> ModelVersion:
    """Register a complete version folder under the next free number (status: candidate)."""
    return _create_numbered(
        ModelVersion,
        artifact_path=artifact_path,
        base_model=base_model,
        parent=parent,
        config=config or {},
        metrics=metrics or {},
        data_hash=data_hash,
        label_ids=sorted(label_ids or []),
        project=project,
    )


def reward_model_register(
    *,
    artifact_path: str,
    backbone: str,
    member_paths: list[str],
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    data_hash: str = "",
    project: Project | None = None,
) -> RewardModel:
    """Register a complete reward-model folder under the next free number."""
    return _create_numbered(
        RewardModel,
        artifact_path=artifact_path,
        backbone=backbone,
        member_paths=member_paths,
        config=config or {},
        metrics=metrics or {},
        data_hash=data_hash,
        project=project,
    )


class ServingChanged(Exception):
    """The serving version changed after a candidate was evaluated against it."""


class NeedsConfirmation(Exception):
    """Promoting a rejected candidate needs an explicit confirmation; the message names what it failed."""


def version_serve(
    *,
    version: ModelVersion,
    actor: User | None = None,
    reason: str = "",
    expected_serving: ModelVersion | None = None,
) -> ModelVersion:
    """Load `version` into the policy server under its own name, then make it the serving version,
    and unload the adapters older than the one it replaces. No restart: the next request names it;
    answers in flight finish on the version that began them (each version has its own name).

    With `expected_serving`, the flip happens only if that version still serves (ServingChanged
    otherwise): a candidate evaluated against one version is never promoted over a newer one.
    """
    from webapp.feedback.generation import refresh_after_promotion
    from webapp.runs import policy

    policy.adapter_load(version)
    version, previous = _promote(version=version, actor=actor, reason=reason, expected_serving=expected_serving)
    if previous is not None:  # people judge on-policy answers: the new version answers unserved items again
        with transaction.atomic():
            refresh_after_promotion(version=version)
    try:
        policy.adapters_retire(keep=[v for v in (version, previous) if v is not None])
    except policy.PolicyServerError as exc:  # stale adapters cost memory, not correctness
        logger.warning("could not unload old adapters: %s", exc)
    return version


def version_promote(*, version: ModelVersion, actor: User | None = None, reason: str = "") -> ModelVersion:
    """Make `version` the serving one and retire the previous one; record who, when and why.
    Promoting a version older than the serving one is a rollback.

    Call after the policy server has loaded the version's adapter, so the table never names a
    version the server does not have (`version_serve` does both).
    """
    return _promote(version=version, actor=actor, reason=reason)[0]


def _promote(
    *,
    version: ModelVersion,
    actor: User | None = None,
    reason: str = "",
    expected_serving: ModelVersion | None = None,
) -> tuple[ModelVersion, ModelVersion | None]:
    """`version_promote`, returning (version, the version it replaced); with `expected_serving`,
    ServingChanged unless that version is the one serving."""
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        previous = (
            ModelVersion.objects.select_for_update()
            .filter(status=ModelVersion.Status.SERVING)
            .exclude(pk=version.pk)
            .first()
        )
        if expected_serving is not None and (previous is None or previous.pk != expected_serving.pk):
            if version.status != ModelVersion.Status.SERVING:
                raise ServingChanged(
                    f"{previous or 'no version'} serves now, not {expected_serving}: evaluate against it first"
                )
        if version.status == ModelVersion.Status.SERVING:
            return version, None
        _make_serving(version, previous, actor=actor, reason=reason)
    return version, previous


def _make_serving(
    chosen: ModelVersion | RewardModel, previous: ModelVersion | RewardModel | None, *, actor: User | None, reason: str
) -> None:
    """Inside the caller's transaction, with both rows locked: retire `previous`, serve `chosen`, and
    put it on its audit trail (a rollback when it is older than the one it replaces)."""
    if previous is not None:
        previous.status = "retired"
        previous.save(update_fields=["status"])
    chosen.status = "serving"
    chosen.promoted_at = timezone.now()
    chosen.save(update_fields=["status", "promoted_at"])
    rollback = previous is not None and chosen.number < previous.number
    action = VersionEvent.Action.ROLLBACK if rollback else VersionEvent.Action.PROMOTE
    event = {"previous": previous, "action": action, "actor": actor, "reason": reason[:2000]}
    if isinstance(chosen, RewardModel):
        RewardModelEvent.objects.create(reward_model=chosen, **event)
    else:
        VersionEvent.objects.create(version=chosen, **event)
        event_emit("version.rolled_back" if rollback else "version.promoted", {
            "version": chosen.number, "previous": getattr(previous, "number", None),
            "actor": getattr(actor, "username", None), "reason": reason[:2000],
        })  # fmt: skip


def version_promote_by_admin(
    *, version: ModelVersion, actor: User, reason: str = "", confirm: bool = False
) -> ModelVersion:
    """An admin's promotion or rollback. A rejected candidate needs `confirm`: NeedsConfirmation
    names what it failed. Raises ValueError for a version that cannot serve."""
    version.refresh_from_db()
    if version.status == ModelVersion.Status.SERVING:
        raise ValueError(f"{version} is already serving")
    if not version.artifact_path:
        raise ValueError(f"{version} has no adapter to serve")
    if version.status == ModelVersion.Status.REJECTED and not confirm:
        failed = "; ".join(version.gate_failures) or version.gate.get("reason", "the gate")
        raise NeedsConfirmation(f"{version} was rejected by the gate ({failed}); confirm to promote it anyway")
    return version_serve(version=version, actor=actor, reason=reason or "promoted by an admin")


@transaction.atomic
def version_gate_record(*, version: ModelVersion, gate: dict[str, Any]) -> ModelVersion:
    """Store the gate's figures and verdict on the version; a rejection marks it rejected."""
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    version.gate = gate
    fields = ["gate"]
    if gate.get("verdict") == "rejected" and version.status == ModelVersion.Status.CANDIDATE:
        version.status = ModelVersion.Status.REJECTED
        fields.append("status")
        VersionEvent.objects.create(
            version=version, action=VersionEvent.Action.REJECT, reason=str(gate.get("reason", ""))[:2000]
        )
        event_emit("version.rejected", {"version": version.number, "reason": str(gate.get("reason", ""))[:2000]})
    version.save(update_fields=fields)
    return version


# --- reward models as versions -------------------------------------------------------------------


def reward_model_gate_record(*, reward_model: RewardModel, gate: dict[str, Any]) -> RewardModel:
    """Store the reward gate's verdict; serve a candidate that passed (or was unchecked and the recipe
    serves those), reject one the gate rejected, leave an unchecked one a candidate otherwise."""
    with transaction.atomic():
        reward_model = RewardModel.objects.select_for_update().get(pk=reward_model.pk)
        reward_model.gate = gate
        reward_model.save(update_fields=["gate"])
        if gate.get("verdict") == "rejected" and reward_model.status == RewardModel.Status.CANDIDATE:
            reward_model.status = RewardModel.Status.REJECTED
            reward_model.save(update_fields=["status"])
            RewardModelEvent.objects.create(
                reward_model=reward_model, action=RewardModelEvent.Action.REJECT, reason=str(gate.get("reason"))[:2000]
            )
    return reward_model


def reward_model_serve(*, reward_model: RewardModel, actor: User | None = None, reason: str = "") -> RewardModel:
    """Make `reward_model` its project's serving one and retire the one it replaces; record who, when
    and why. Promoting one older than the serving one is a rollback."""
    with transaction.atomic():
        reward_model = RewardModel.objects.select_for_update().get(pk=reward_model.pk)
        if reward_model.status == RewardModel.Status.SERVING:
            return reward_model
        previous = (
            RewardModel.objects.select_for_update()
            .filter(project=reward_model.project, status=RewardModel.Status.SERVING)
            .first()
        )
        _make_serving(reward_model, previous, actor=actor, reason=reason)
    return reward_model


def reward_model_promote_by_admin(
    *, reward_model: RewardModel, actor: User, reason: str = "", confirm: bool = False
) -> RewardModel:
    """An admin's promotion or rollback of a reward model; a rejected one needs `confirm`."""
    reward_model.refresh_from_db()
    if reward_model.status == RewardModel.Status.SERVING:
        raise ValueError(f"{reward_model} is already serving")
    if reward_model.status == RewardModel.Status.REJECTED and not confirm:
        why = (reward_model.gate or {}).get("reason", "the reward gate")
        raise NeedsConfirmation(f"{reward_model} was rejected ({why}); confirm to promote it anyway")
    return reward_model_serve(reward_model=reward_model, actor=actor, reason=reason or "promoted by an admin")


# --- recipes ------------------------------------------------------------------------------------


def recipe_defaults() -> dict[str, Any]:
    """The process-wide settings a project's recipe starts from."""
    return {"auto_train_every": settings.TRAIN_EVERY_N_LABELS, "grpo_lambda": settings.GRPO_UWO_LAMBDA}


def recipe_for(project: Project) -> Recipe:
    """The project's recipe (its stored fields over the defaults)."""
    return Recipe.from_dict(project.recipe, defaults=recipe_defaults())


def recipe_update(*, project: Project, data: dict[str, Any], replace: bool = False) -> Recipe:
    """Validate and store the project's recipe (RecipeError names every bad field). With `replace`
    the data is the whole recipe; otherwise it changes only the fields it names."""
    base = {} if replace else dict(project.recipe or {})
    recipe = Recipe.from_dict({**base, **data}, defaults=recipe_defaults())
    project.recipe = recipe.to_dict()
    project.save(update_fields=["recipe"])
    return recipe


# --- runs ---------------------------------------------------------------------------------------


def _project_or_default(project: Project | None) -> Project:
    from webapp.feedback.projects import project_default

    return project if project is not None else project_default()


def run_create(
    *,
    trigger: str,
    created_by: User | None = None,
    kind: str | None = None,
    project: Project | None = None,
) -> tuple[TrainingRun, bool]:
    """Queue a training run of `kind` (None or "policy": the project's recipe decides) for
    `project` (the default project when None), or return the one of that project and kind already
    queued or running (a double submit is harmless). The recipe is copied onto the run.

    The worker task is enqueued after the transaction commits; a broker that is down loses
    nothing: the run waits in the database and the reaper enqueues it when the broker is back.
    """
    project = _project_or_default(project)
    recipe = recipe_for(project)
    if kind in (None, "", "policy"):
        kind = recipe.kind
    if kind not in TRAIN_TASK_NAMES:
        raise ValueError(f"unknown run kind {kind!r}: one of policy, {', '.join(TRAIN_TASK_NAMES)}")
    try:
        with transaction.atomic():
            active = (
                TrainingRun.objects.select_for_update()
                .filter(project=project, kind=kind, status__in=TrainingRun.ACTIVE_STATUSES)
                .first()
            )
            if active is not None:
                return active, False
            run = TrainingRun.objects.create(
                kind=kind, trigger=trigger, created_by=created_by, project=project, recipe=recipe.to_dict()
            )
            transaction.on_commit(lambda: run_enqueue(run_id=run.pk, kind=kind))
            return run, True
    except IntegrityError:  # a concurrent request created it between our check and insert
        active = TrainingRun.objects.get(project=project, kind=kind, status__in=TrainingRun.ACTIVE_STATUSES)
        return active, False


def run_enqueue(*, run_id: int, kind: str = TrainingRun.Kind.DPO) -> bool:
    """Send the run's worker task to the broker; return whether the broker took it. Never raises:
    with the broker down the run stays queued, and the reaper sends it once the broker answers."""
    run = TrainingRun.objects.filter(pk=run_id).first()
    return run is not None and job_enqueue(run)


def run_start(*, run_id: int, parent_version: ModelVersion | None) -> TrainingRun | None:
    """Move a queued run to running (webapp.core.jobs.job_start); None when there is nothing to do:
    it ended, a worker holds it already, or its cancel was asked while it waited."""
    return job_start(TrainingRun, run_id, stage=TrainingRun.Stage.TRAINING, parent_version=parent_version, progress=0.0)


def run_heartbeat(*, run_id: int, stage: str | None = None) -> bool:
    """Record that the run's worker is alive (and its stage); return whether it should stop."""
    return job_beat(TrainingRun, run_id, **({"stage": stage} if stage is not None else {}))


def run_record_data(*, run: TrainingRun, n_labels: int, n_pairs: int, data: dict[str, Any] | None = None) -> None:
    run.n_labels = n_labels
    run.n_pairs = n_pairs
    fields = ["n_labels", "n_pairs"]
    if data is not None:
        run.metrics = {**run.metrics, "data": data}
        fields.append("metrics")
    run.save(update_fields=fields)


def run_progress(*, run_id: int, progress: float, metrics: dict[str, Any]) -> None:
    """Record progress (0..1) and the latest logged metrics; keep a bounded history for charts."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.status != TrainingRun.Status.RUNNING:
            return
        run.progress = min(max(progress, 0.0), 1.0)
        run.metrics = {**run.metrics, **metrics}
        run.history = [*run.history, metrics][-HISTORY_LIMIT:]
        run.heartbeat_at = timezone.now()
        run.save(update_fields=["progress", "metrics", "history", "heartbeat_at"])


class RunNotRunning(Exception):
    """A run can only succeed from running (it was cancelled, reaped or finished meanwhile)."""


@transaction.atomic
def run_succeed(
    *,
    run_id: int,
    metrics: dict[str, Any],
    version: ModelVersion | None = None,
    reward_model: RewardModel | None = None,
) -> TrainingRun:
    """Finish a run with what it made: a policy version or a reward model. Only a running run can
    succeed (RunNotRunning otherwise)."""
    run = TrainingRun.objects.select_for_update().get(pk=run_id)
    if run.status != TrainingRun.Status.RUNNING:
        raise RunNotRunning(f"run {run_id} is {run.status}, not running: it cannot succeed")
    ended = job_finish(
        TrainingRun,
        run_id,
        JobStatus.SUCCEEDED,
        result_version=version,
        result_reward_model=reward_model,
        progress=1.0,
        metrics={**run.metrics, **metrics},
    )  # fmt: skip; through the lifecycle's one end, so what ending means (webhooks) happens here too
    assert ended is not None
    return ended


def run_fail(*, run_id: int, error: str) -> TrainingRun | None:
    return job_finish(TrainingRun, run_id, JobStatus.FAILED, error=error)


def run_cancel(*, run_id: int) -> TrainingRun:
    """Cancel a queued run at once, or ask a running one to stop at its next step (its worker then
    ends it cancelled and keeps nothing it half wrote). ValueError for a finished run."""
    return job_cancel(TrainingRun, run_id)


def run_cancelled(*, run_id: int) -> TrainingRun | None:
    """The worker stopped a run whose cancel was asked: end it cancelled."""
    return job_finish(
        TrainingRun, run_id, JobStatus.CANCELLED, error="cancelled while it ran; nothing it wrote was kept"
    )


def run_maybe_trigger(*, only: Project | None = None) -> list[TrainingRun]:
    """Queue each project's (or only `only`'s) policy run every `auto_train_every` new labels of that
    project (its recipe) and a reward-model run every `REWARD_EVERY_N_LABELS` (0 = never), counted
    since the project's last run of that kind; return those queued."""
    from webapp.feedback.selectors import labels_since_last_run

    queued = []
    projects: Iterable[Project] = Project.objects.filter(archived_at__isnull=True)
    if only is not None:
        projects = [only] if only.archived_at is None else []  # an archived project waits for a person
    for project in projects:
        try:
            recipe = recipe_for(project)
        except RecipeError as exc:  # a stored recipe made invalid by hand must not fail a label
            logger.warning("project %s has an invalid recipe, so it does not train by itself: %s", project, exc)
            continue
        for kind, every in (
            (recipe.kind, recipe.auto_train_every),
            (TrainingRun.Kind.REWARD, settings.REWARD_EVERY_N_LABELS),
        ):
            if every <= 0:
                continue
            active = TrainingRun.objects.filter(project=project, kind=kind, status__in=TrainingRun.ACTIVE_STATUSES)
            if active.exists() or labels_since_last_run(kind=kind, project=project, at_most=every) < every:
                continue
            run, created = run_create(trigger=TrainingRun.Trigger.THRESHOLD, kind=kind, project=project)
            if created:
                logger.info("queued %s after %d new labels of %s", run, every, project)
                queued.append(run)
    return queued
