from __future__ import annotations

import pytest
from django.db import IntegrityError

from tests.factories import make_serving_version, make_user
from webapp.runs import services
from webapp.runs.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db


def test_versions_are_numbered_in_order_and_one_serves():
    v1 = make_serving_version()
    v2 = services.version_register(artifact_path="/a/v2", base_model="tiny", parent=v1)
    assert (v1.number, v2.number) == (1, 2)
    assert v2.status == ModelVersion.Status.CANDIDATE
    services.version_promote(version=v2)
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == (ModelVersion.Status.RETIRED, ModelVersion.Status.SERVING)
    assert ModelVersion.objects.filter(status=ModelVersion.Status.SERVING).count() == 1


def test_database_refuses_two_serving_versions():
    make_serving_version()
    with pytest.raises(IntegrityError):
        ModelVersion.objects.create(number=9, base_model="x", artifact_path="/x", status=ModelVersion.Status.SERVING)


def test_run_create_twice_returns_the_same_active_run_and_enqueues_once(django_capture_on_commit_callbacks):
    admin = make_user("admin")
    with django_capture_on_commit_callbacks() as callbacks:
        first, created_first = services.run_create(trigger=TrainingRun.Trigger.ADMIN, created_by=admin)
        second, created_second = services.run_create(trigger=TrainingRun.Trigger.ADMIN, created_by=admin)
    assert (created_first, created_second) == (True, False)
    assert first.pk == second.pk
    assert len(callbacks) == 1
    assert TrainingRun.objects.count() == 1


def test_run_lifecycle_start_progress_succeed_and_redelivery_is_harmless():
    v1 = make_serving_version()
    run = TrainingRun.objects.create(trigger=TrainingRun.Trigger.API)
    started = services.run_start(run_id=run.pk, parent_version=v1)
    assert started is not None and started.status == TrainingRun.Status.RUNNING
    services.run_progress(run_id=run.pk, progress=0.5, metrics={"loss": 0.6, "step": 1})
    services.run_progress(run_id=run.pk, progress=1.7, metrics={"loss": 0.4, "step": 2})
    run.refresh_from_db()
    assert run.progress == 1.0
    assert run.metrics["loss"] == 0.4
    assert [h["step"] for h in run.history] == [1, 2]
    v2 = services.version_register(artifact_path="/a/v2", base_model="tiny", parent=v1)
    services.run_succeed(run_id=run.pk, version=v2, metrics={"final_loss": 0.4})
    # A redelivered task finds the run finished and does nothing.
    assert services.run_start(run_id=run.pk, parent_version=v1) is None
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.result_version_id == v2.pk


def test_run_fail_records_error_and_frees_the_slot_for_a_new_run():
    run = TrainingRun.objects.create(trigger=TrainingRun.Trigger.API)
    services.run_fail(run_id=run.pk, error="ValueError: no labels")
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert "no labels" in run.error
    assert run.finished_at is not None
    again, created = services.run_create(trigger=TrainingRun.Trigger.API)
    assert created and again.pk != run.pk


def test_a_running_run_with_no_heartbeat_is_not_restarted_by_a_redelivery_but_reaped_not_left_stuck():
    from webapp.core.jobs import jobs_reap

    run = TrainingRun.objects.create(trigger=TrainingRun.Trigger.API, status=TrainingRun.Status.RUNNING)
    assert services.run_start(run_id=run.pk, parent_version=None) is None  # one rule: only a queued job starts
    jobs_reap()
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "the worker was lost" in run.error


def test_runs_of_each_kind_queue_independently_and_once(django_capture_on_commit_callbacks):
    admin = make_user("admin")
    with django_capture_on_commit_callbacks() as callbacks:
        dpo, created_dpo = services.run_create(trigger=TrainingRun.Trigger.ADMIN, created_by=admin)
        reward, created_reward = services.run_create(
            trigger=TrainingRun.Trigger.ADMIN, created_by=admin, kind=TrainingRun.Kind.REWARD
        )
        again, created_again = services.run_create(trigger=TrainingRun.Trigger.API, kind=TrainingRun.Kind.REWARD)
    assert (created_dpo, created_reward, created_again) == (True, True, False)
    assert (dpo.kind, reward.kind) == ("dpo", "reward") and again.pk == reward.pk
    assert len(callbacks) == 2
    with pytest.raises(ValueError, match="unknown run kind 'ppo'"):
        services.run_create(trigger=TrainingRun.Trigger.API, kind="ppo")


def test_a_reward_run_finishes_with_a_numbered_reward_model():
    run = TrainingRun.objects.create(trigger=TrainingRun.Trigger.API, kind=TrainingRun.Kind.REWARD)
    assert services.run_start(run_id=run.pk, parent_version=None) is not None
    first = services.reward_model_register(artifact_path="/a/rm", backbone="tiny", member_paths=[""])
    second = services.reward_model_register(artifact_path="/a/rm2", backbone="tiny", member_paths=["member-0"])
    assert (first.number, second.number, str(second)) == (1, 2, "rm2")
    services.run_succeed(run_id=run.pk, reward_model=second, metrics={"n_train_pairs": 8})
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED
    assert run.result_reward_model_id == second.pk and run.result_version_id is None
