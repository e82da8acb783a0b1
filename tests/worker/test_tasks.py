"""The worker's tasks, called in-process on the test database: the failures a user can cause.

(The happy paths run in a real Celery worker process in tests/e2e.)
"""

from __future__ import annotations

import pytest

from tests.factories import make_serving_version, make_user
from webapp.runs import services
from webapp.runs.models import TrainingRun
from worker import tasks

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("dpo", "no decisive pairwise labels yet"),
        ("kto", "no thumbs or decisive choices yet for KTO"),
        ("grpo", "GRPO needs a reward model: train one first"),
    ],
)
def test_a_policy_run_without_its_data_fails_with_a_clear_error(kind: str, message: str) -> None:
    make_serving_version()
    run, _ = services.run_create(trigger=TrainingRun.Trigger.API, kind=kind)
    tasks.train_policy(run.pk)  # a Celery task called directly runs in-process
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and message in run.error
    assert run.finished_at is not None  # never left running


def test_grpo_with_a_reward_model_but_no_prompt_fails_with_a_clear_error() -> None:
    make_serving_version()
    services.reward_model_register(artifact_path="/nonexistent/rm", backbone="tiny", member_paths=[""])
    run, _ = services.run_create(trigger=TrainingRun.Trigger.API, kind=TrainingRun.Kind.GRPO)
    tasks.train_policy(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "no prompts yet for GRPO" in run.error


def test_a_reward_run_with_too_few_pairs_fails_with_a_clear_error() -> None:
    make_user()
    run, _ = services.run_create(trigger=TrainingRun.Trigger.API, kind=TrainingRun.Kind.REWARD)
    tasks.train_reward(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert "a reward model needs at least 2 preference pairs; the labels give 0" in run.error


def test_a_finished_run_redelivered_is_left_alone() -> None:
    run, _ = services.run_create(trigger=TrainingRun.Trigger.API, kind=TrainingRun.Kind.REWARD)
    services.run_fail(run_id=run.pk, error="earlier failure")
    tasks.train_reward(run.pk)
    run.refresh_from_db()
    assert run.error == "earlier failure"
