from __future__ import annotations

from django.db.models import QuerySet

from webapp.feedback.models import Project
from webapp.runs.models import ModelVersion, RewardModel, TrainingRun


def version_serving() -> ModelVersion | None:
    return ModelVersion.objects.filter(status=ModelVersion.Status.SERVING).first()


def version_list() -> QuerySet[ModelVersion]:
    return ModelVersion.objects.select_related("parent").order_by("-number")


def run_list() -> QuerySet[TrainingRun]:
    return TrainingRun.objects.select_related("parent_version", "result_version", "result_reward_model", "created_by")


def reward_model_list() -> QuerySet[RewardModel]:
    return RewardModel.objects.select_related("run").order_by("-number")


def run_active(*, kind: str = TrainingRun.Kind.DPO) -> TrainingRun | None:
    return TrainingRun.objects.filter(kind=kind, status__in=TrainingRun.ACTIVE_STATUSES).first()


def run_get(*, run_id: int) -> TrainingRun:
    return run_list().get(pk=run_id)


def reward_model_serving(project: Project | None) -> RewardModel | None:
    """The reward model `project`'s gate, GRPO, online DPO and queue use: its serving one."""
    return RewardModel.objects.filter(project=project, status=RewardModel.Status.SERVING).first()
