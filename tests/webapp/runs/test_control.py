"""Runs that never get stuck, promotions with an audit trail, and what a run trains on (PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import make_project, make_serving_version, make_task, make_user
from webapp.core.jobs import job_label, jobs_reap
from webapp.feedback.assignments import label_create
from webapp.runs import services
from webapp.runs.data import (
    EXCLUDED_GOLD,
    EXCLUDED_HELD_OUT,
    EXCLUDED_TRUST,
    EXCLUDED_WEIGHTLESS,
    is_held_out,
    training_data,
)
from webapp.runs.models import ModelVersion, TrainingRun, VersionEvent
from webapp.runs.recipe import Recipe, RecipeError

pytestmark = pytest.mark.django_db


def _run(**fields) -> TrainingRun:
    from webapp.feedback.projects import project_default

    fields.setdefault("trigger", TrainingRun.Trigger.API)
    fields.setdefault("project", project_default())
    return TrainingRun.objects.create(**fields)


def test_a_redelivered_message_for_a_run_with_a_fresh_heartbeat_is_a_no_op(settings):
    settings.RUN_STALE_S = 60
    v1 = make_serving_version()
    run = _run()
    assert services.run_start(run_id=run.pk, parent_version=v1) is not None
    assert services.run_start(run_id=run.pk, parent_version=v1) is None  # a live worker holds it
    run.refresh_from_db()
    assert (run.status, run.attempts) == (TrainingRun.Status.RUNNING, 1)


def test_a_redelivered_message_never_restarts_a_run_left_by_a_dead_worker_the_reaper_fails_it(settings):
    settings.RUN_STALE_S = 60
    run = _run()
    assert services.run_start(run_id=run.pk, parent_version=None) is not None
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=120))
    assert services.run_start(run_id=run.pk, parent_version=None) is None  # the reaper's to judge
    run.refresh_from_db()
    assert (run.status, run.attempts) == (TrainingRun.Status.RUNNING, 1)
    jobs_reap()
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "the worker was lost" in run.error


def test_the_reaper_fails_a_run_whose_heartbeat_is_stale_and_frees_its_kind(settings):
    settings.RUN_STALE_S = 30
    stale, fresh = _run(), _run(kind=TrainingRun.Kind.REWARD)
    for run in (stale, fresh):
        services.run_start(run_id=run.pk, parent_version=None)
    TrainingRun.objects.filter(pk=stale.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=31))
    result = jobs_reap()
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert result["lost"] == [job_label(stale)]
    assert stale.status == TrainingRun.Status.FAILED and "the worker was lost" in stale.error
    assert fresh.status == TrainingRun.Status.RUNNING
    again, created = services.run_create(trigger=TrainingRun.Trigger.API, kind=TrainingRun.Kind.DPO)
    assert created and again.pk != stale.pk  # the kind is free again
    # a run whose cancel was asked when its worker died ends cancelled, not failed
    services.run_start(run_id=again.pk, parent_version=None)
    services.run_cancel(run_id=again.pk)
    TrainingRun.objects.filter(pk=again.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=31))
    jobs_reap()
    again.refresh_from_db()
    assert again.status == TrainingRun.Status.CANCELLED and "the worker was lost" in again.error


def test_only_a_running_run_can_succeed():
    run = _run()
    services.run_cancel(run_id=run.pk)
    with pytest.raises(services.RunNotRunning, match="cancelled, not running"):
        services.run_succeed(run_id=run.pk, metrics={})


def test_cancel_ends_a_queued_run_at_once_and_asks_a_running_one_to_stop():
    queued, running = _run(), _run(kind=TrainingRun.Kind.KTO)
    services.run_start(run_id=running.pk, parent_version=None)
    services.run_cancel(run_id=queued.pk)
    services.run_cancel(run_id=running.pk)
    queued.refresh_from_db()
    running.refresh_from_db()
    assert queued.status == TrainingRun.Status.CANCELLED
    assert running.status == TrainingRun.Status.RUNNING and running.cancel_requested
    assert services.run_heartbeat(run_id=running.pk) is True  # the worker learns it at its next beat
    services.run_cancelled(run_id=running.pk)
    running.refresh_from_db()
    assert running.status == TrainingRun.Status.CANCELLED
    with pytest.raises(ValueError, match="already cancelled"):
        services.run_cancel(run_id=running.pk)


def test_a_broker_that_is_down_never_fails_the_run_it_was_asked_for():
    from tests.processes import celery_broker, free_port

    run = _run()
    with celery_broker(f"redis://127.0.0.1:{free_port()}/0"):  # nothing listens there
        assert services.run_enqueue(run_id=run.pk, kind=run.kind) is False
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.QUEUED and run.enqueued_at is None


def test_promotions_and_rollbacks_are_recorded_with_who_and_why():
    admin = make_user("admin")
    v1 = make_serving_version()
    v2 = services.version_register(artifact_path="/a/v2", base_model="tiny", parent=v1)
    services.version_promote(version=v2, actor=admin, reason="better answers")
    services.version_promote(version=v1, actor=admin, reason="v2 is rude")
    events = list(VersionEvent.objects.order_by("id"))
    assert [(e.action, e.version_id, e.previous_id) for e in events[-2:]] == [
        ("promote", v2.pk, v1.pk),
        ("rollback", v1.pk, v2.pk),
    ]
    assert (events[-1].actor, events[-1].reason) == (admin, "v2 is rude")


def test_a_rejected_candidate_needs_a_confirmation_that_names_what_it_failed():
    admin = make_user("admin")
    v1 = make_serving_version()
    v2 = services.version_register(artifact_path="/a/v2", base_model="tiny", parent=v1)
    gate = {
        "verdict": "rejected",
        "reason": "held-out preference accuracy 0.200 < 0.5",
        "checks": [
            {"name": "heldout_accuracy", "passed": False, "summary": "held-out preference accuracy 0.200 < 0.5"}
        ],
    }
    v2 = services.version_gate_record(version=v2, gate=gate)
    assert v2.status == ModelVersion.Status.REJECTED
    assert VersionEvent.objects.filter(version=v2, action="reject").exists()
    with pytest.raises(services.NeedsConfirmation, match=r"held-out preference accuracy 0.200 < 0.5"):
        services.version_promote_by_admin(version=v2, actor=admin)


def test_a_candidate_evaluated_against_one_version_is_never_promoted_over_another():
    v1 = make_serving_version()
    v2 = services.version_register(artifact_path="/a/v2", base_model="tiny", parent=v1)
    v3 = services.version_register(artifact_path="/a/v3", base_model="tiny", parent=v1)
    services.version_promote(version=v2)
    with pytest.raises(services.ServingChanged, match="v2 serves now, not v1"):
        services._promote(version=v3, expected_serving=v1)
    v3.refresh_from_db()
    assert v3.status == ModelVersion.Status.CANDIDATE


def _label(task, annotator, choice="a"):
    return label_create(task=task, annotator=annotator, data={"choice": choice, "strength": 2}, source="api")[0]


def test_a_run_reads_only_its_projects_labels_and_never_gold_or_untrusted_ones():
    a, b = make_project(name="A"), make_project(name="B")
    ann = make_user(username="ann")
    labels_a = [_label(make_task(project=a, question=f"A{i}?", texts=(f"a{i}", f"b{i}")), ann) for i in range(12)]
    labels_b = [_label(make_task(project=b, question=f"B{i}?", texts=(f"a{i}", f"b{i}")), ann) for i in range(5)]
    gold = make_task(project=a, question="Gold?", texts=("x", "y"), is_gold=True, gold={"choice": "a"})
    gold_label = _label(gold, ann)
    recipe = Recipe(held_out_share=0.25)
    data = training_data(project=a, recipe=recipe)
    ids_b = {label.pk for label in labels_b}
    seen = {r["label_id"] for r in data.pairs + data.held_out_pairs}
    assert not seen & ids_b and gold_label.pk not in seen
    held = {label.pk for label in labels_a if is_held_out(label.pk, 0.25)}
    assert {r["label_id"] for r in data.held_out_pairs} == held
    assert set(data.label_ids) == {label.pk for label in labels_a} - held  # the snapshot: what trains
    assert data.excluded[EXCLUDED_GOLD] == 1 and data.excluded.get(EXCLUDED_HELD_OUT, 0) == len(held)
    assert training_data(project=a, recipe=recipe).label_ids == data.label_ids  # the split never moves
    # an annotator under the trust floor is left out (gold accuracy 0 of 5 sets the trust)
    bad = make_user(username="bad")
    for i in range(5):
        _label(make_task(project=a, question=f"G{i}?", texts=("x", "y"), is_gold=True, gold={"choice": "a"}), bad, "b")
    bad_label = _label(make_task(project=a, question="Z?", texts=("z1", "z2")), bad)
    floored = training_data(project=a, recipe=Recipe(held_out_share=0.0, trust_floor=0.5))
    assert bad_label.pk not in floored.label_ids and floored.excluded[EXCLUDED_TRUST] == 1


def test_weighted_labels_count_by_their_annotators_trust_and_reach_every_trainer():
    from webapp.runs.pipeline import reward_examples as _reward_examples
    from webapp.runs.updates import _dpo_update, _lipo_update

    project = make_project(name="W")
    people = {"sure": 5, "fair": 4, "coin": 2}  # right on 5, 4 and 2 of 5 gold items: trust 1.0, 0.8, 0.4
    mine: dict[str, list[int]] = {}
    for name, right in people.items():
        user = make_user(username=name)
        for i in range(5):
            gold = make_task(project=project, question=f"{name} gold {i}?", texts=("x", "y"), is_gold=True,
                             gold={"choice": "a"})  # fmt: skip
            _label(gold, user, "a" if i < right else "b")
        mine[name] = [_label(make_task(project=project, question=f"{name} {i}?", texts=(f"p{i}", f"q{i}")), user).pk
                      for i in range(3)]  # fmt: skip
        ranked = make_task(project=project, kind="ranking", question=f"{name} list?", texts=("r1", "r2", "r3"))
        ids = list(ranked.slots.order_by("position").values_list("candidate_id", flat=True))
        label_create(task=ranked, annotator=user, data={"ranking": [[i] for i in ids]}, source="api")
    recipe = Recipe(held_out_share=0.0, labels="weighted")
    data = training_data(project=project, recipe=recipe)
    # 2·trust - 1: sure 1.0, fair 0.6, coin 0 (left out); scaled so the training labels average 1
    assert data.weights == {"sure": 1.25, "fair": 0.75}
    assert data.excluded[EXCLUDED_WEIGHTLESS] == 4 and not set(mine["coin"]) & set(data.label_ids)
    weights = {r["label_id"]: r["weight"] for r in data.pairs}
    assert {weights[pk] for pk in mine["sure"]} == {1.25} and {weights[pk] for pk in mine["fair"]} == {0.75}
    assert data.summary()["weights"] == {"fair": 0.75, "sure": 1.25}
    update = _dpo_update(data, recipe)
    assert sorted({p.weight for p in update.data["pairs"]}) == [0.75, 1.25]
    lipo = _lipo_update(data, Recipe(held_out_share=0.0, labels="weighted", method="lipo"))
    assert sorted(r.weight for r in lipo.data["rankings"]) == [0.75, 1.25]
    train, _ = _reward_examples(data)
    assert sorted(e.weight for e in train) == [0.75] * 4 + [1.25] * 4  # 3 pairs and a list each
    with pytest.raises(RecipeError, match="KTO has no per-label weight"):
        Recipe(labels="weighted", method="kto")
    raw = training_data(project=project, recipe=Recipe(held_out_share=0.0))
    assert not raw.weights and all("weight" not in r for r in raw.pairs) and len(raw.label_ids) == 12


def test_rankings_train_as_lists_and_ties_are_kept_for_the_reward_model():
    project = make_project(name="R")
    ann = make_user(username="ranker")
    task = make_task(project=project, kind="ranking", texts=("best", "middle", "worst"))
    ids = list(task.slots.order_by("position").values_list("candidate_id", flat=True))
    label_create(task=task, annotator=ann, data={"ranking": [[ids[0]], [ids[1]], [ids[2]]]}, source="api")
    tie = make_task(project=project, texts=("same-ish one", "same-ish two"))
    label_create(task=tie, annotator=ann, data={"choice": "tie"}, source="api")
    data = training_data(project=project, recipe=Recipe(held_out_share=0.0))
    assert data.rankings[0]["completions"] == ["best", "middle", "worst"] and data.rankings[0]["ranks"] == [0, 1, 2]
    assert len(data.pairs) == 3  # and as pairs for DPO
    assert [(t["chosen"], t["rejected"]) for t in data.ties] == [("same-ish one", "same-ish two")]


def test_a_project_whose_stored_recipe_is_invalid_never_fails_a_label():
    project = make_project(name="Broken", recipe={"method": "ppo"})  # written around the validation
    label = _label(make_task(project=project, question="Q?", texts=("x", "y")), make_user(username="ann"))
    assert label.pk is not None and not TrainingRun.objects.filter(project=project).exists()
    from tests.webapp.api.test_api import client_for

    admin = client_for(make_user("admin"))
    for answer in (
        admin.post("/api/runs/", {"project": project.pk}, format="json"),
        admin.get(f"/api/projects/{project.pk}/recipe/"),
    ):
        assert answer.status_code == 400 and "stored recipe is invalid" in answer.json()["error"]["message"]
    from django.test import Client

    page = Client()
    page.force_login(make_user("admin", username="boss"))
    shown = page.get(f"/dashboard/projects/{project.pk}/recipe/")
    assert shown.status_code == 400 and "must be one of" in shown.content.decode()  # the page says why
    fixed = admin.put(f"/api/projects/{project.pk}/recipe/", {"method": "ipo"}, format="json")
    assert fixed.status_code == 200 and fixed.json()["recipe"]["method"] == "ipo"
