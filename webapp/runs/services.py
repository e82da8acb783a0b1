"""Every write to training runs and policy versions goes through one of these functions."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from webapp.accounts.models import User
from webapp.runs.models import ModelVersion, RewardModel, TrainingRun

logger = logging.getLogger(__name__)

# The worker task of each run kind, sent by name (the web app never imports the worker's tasks).
TRAIN_TASK_NAMES: dict[str, str] = {
    TrainingRun.Kind.DPO: "prefloop.train_policy",
    TrainingRun.Kind.KTO: "prefloop.train_policy",
    TrainingRun.Kind.GRPO: "prefloop.train_policy",
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
    )


def reward_model_register(
    *,
    artifact_path: str,
    backbone: str,
    member_paths: list[str],
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    data_hash: str = "",
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
    )


def version_serve(*, version: ModelVersion) -> ModelVersion:
    """Load `version` into the policy server under its own name, promote it, and unload the
    adapters older than the one it replaces. No restart: the next request simply names it."""
    from webapp.core import policy

    previous = ModelVersion.objects.filter(status=ModelVersion.Status.SERVING).exclude(pk=version.pk).first()
    policy.adapter_load(version)
    version = version_promote(version=version)
    try:
        policy.adapters_retire(keep=[v for v in (version, previous) if v is not None])
    except policy.PolicyServerError as exc:  # stale adapters cost memory, not correctness
        logger.warning("could not unload old adapters: %s", exc)
    return version


@transaction.atomic
def version_promote(*, version: ModelVersion) -> ModelVersion:
    """Make `version` the serving one; the previous serving version is retired.

    Call after the policy server has loaded the version's adapter, so the table never names a
    version the server does not have.
    """
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    ModelVersion.objects.select_for_update().filter(status=ModelVersion.Status.SERVING).exclude(pk=version.pk).update(
        status=ModelVersion.Status.RETIRED
    )
    version.status = ModelVersion.Status.SERVING
    version.promoted_at = timezone.now()
    version.save(update_fields=["status", "promoted_at"])
    return version


def run_create(
    *, trigger: str, created_by: User | None = None, kind: str = TrainingRun.Kind.DPO
) -> tuple[TrainingRun, bool]:
    """Queue a training run of `kind`, or return the one of that kind already queued or running (a
    double submit is harmless). Runs of different kinds may be active at once.

    The worker task is enqueued after the transaction commits.
    """
    if kind not in TRAIN_TASK_NAMES:
        raise ValueError(f"unknown run kind {kind!r}: one of {', '.join(TRAIN_TASK_NAMES)}")
    try:
        with transaction.atomic():
            active = (
                TrainingRun.objects.select_for_update()
                .filter(kind=kind, status__in=TrainingRun.ACTIVE_STATUSES)
                .first()
            )
            if active is not None:
                return active, False
            run = TrainingRun.objects.create(kind=kind, trigger=trigger, created_by=created_by)
            transaction.on_commit(lambda: run_enqueue(run_id=run.pk, kind=kind))
            return run, True
    except IntegrityError:  # a concurrent request created it between our check and insert
        active = TrainingRun.objects.get(kind=kind, status__in=TrainingRun.ACTIVE_STATUSES)
        return active, False


def run_enqueue(*, run_id: int, kind: str = TrainingRun.Kind.DPO) -> None:
    """Send the run's worker task to the broker by name."""
    from worker.celery import app

    app.send_task(TRAIN_TASK_NAMES[kind], args=[run_id], queue="gpu")


@transaction.atomic
def run_start(*, run_id: int, parent_version: ModelVersion | None) -> TrainingRun | None:
    """Move a queued run to running; return None when another delivery already finished it.

    A run found RUNNING was started by a worker that died before acknowledging the task (tasks
    are acknowledged late), so the redelivered task starts it again rather than leaving it stuck.
    """
    run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None or run.status not in TrainingRun.ACTIVE_STATUSES:
        return None
    run.status = TrainingRun.Status.RUNNING
    run.started_at = timezone.now()
    run.parent_version = parent_version
    run.progress = 0.0
    run.error = ""
    run.save(update_fields=["status", "started_at", "parent_version", "progress", "error"])
    return run


def run_record_data(*, run: TrainingRun, n_labels: int, n_pairs: int) -> None:
    run.n_labels = n_labels
    run.n_pairs = n_pairs
    run.save(update_fields=["n_labels", "n_pairs"])


def run_progress(*, run_id: int, progress: float, metrics: dict[str, Any]) -> None:
    """Record progress (0..1) and the latest logged metrics; keep a bounded history for charts."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.status != TrainingRun.Status.RUNNING:
            return
        run.progress = min(max(progress, 0.0), 1.0)
        run.metrics = {**run.metrics, **metrics}
        run.history = [*run.history, metrics][-HISTORY_LIMIT:]
        run.save(update_fields=["progress", "metrics", "history"])


@transaction.atomic
def run_succeed(
    *,
    run_id: int,
    metrics: dict[str, Any],
    version: ModelVersion | None = None,
    reward_model: RewardModel | None = None,
) -> TrainingRun:
    """Finish a run with what it made: a policy version (DPO) or a reward model."""
    run = TrainingRun.objects.select_for_update().get(pk=run_id)
    run.status = TrainingRun.Status.SUCCEEDED
    run.result_version = version
    run.result_reward_model = reward_model
    run.progress = 1.0
    run.metrics = {**run.metrics, **metrics}
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "result_version", "result_reward_model", "progress", "metrics", "finished_at"])
    return run


@transaction.atomic
def run_fail(*, run_id: int, error: str) -> TrainingRun | None:
    run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None or not run.is_active:
        return run
    run.status = TrainingRun.Status.FAILED
    run.error = error[:10_000]
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "error", "finished_at"])
    return run


def run_maybe_trigger() -> list[TrainingRun]:
    """Queue a DPO run every `TRAIN_EVERY_N_LABELS` new labels and a reward-model run every
    `REWARD_EVERY_N_LABELS` (0 = never), counted since the last run of that kind; return those queued."""
    from webapp.feedback.selectors import labels_since_last_run

    queued = []
    for kind, every in (
        (TrainingRun.Kind.DPO, settings.TRAIN_EVERY_N_LABELS),
        (TrainingRun.Kind.REWARD, settings.REWARD_EVERY_N_LABELS),
    ):
        active = TrainingRun.objects.filter(kind=kind, status__in=TrainingRun.ACTIVE_STATUSES)
        if every <= 0 or active.exists() or labels_since_last_run(kind=kind) < every:
            continue
        run, created = run_create(trigger=TrainingRun.Trigger.THRESHOLD, kind=kind)
        if created:
            logger.info("queued %s after %d new labels", run, every)
            queued.append(run)
    return queued
