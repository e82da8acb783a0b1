"""The evaluation gate on real training: a candidate trained on bad labels is rejected and the
serving version keeps answering; one trained on sound labels is promoted; a run that started from
an older version is evaluated against the newer one. Worker tasks run in this process, on
PostgreSQL, against the built-in policy server over HTTP."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.e2e.conftest import run_trained, serve_version_one
from tests.factories import make_project, make_task, make_user
from training.adapters import adapter_rank
from webapp.feedback.assignments import label_create
from webapp.runs import guard as guard_mod
from webapp.runs import pipeline, policy, services
from webapp.runs.data import is_held_out
from webapp.runs.models import ModelVersion, RewardModel, TrainingRun, VersionEvent
from worker import tasks

# Label ids from 1, so that which labels are held out (a hash of the id) is the same in every run:
# with a share of 0.3, 10 of the 30 sound labels (ids 1-30) and 1 of the 10 bad ones (31-40).
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, reset_sequences=True)]

GOOD, BAD = "Yes.", "No, never."
RECIPE = {
    "method": "dpo",
    "learning_rate": 1e-3,
    "held_out_share": 0.3,
    "min_heldout_pairs": 5,
    "auto_train_every": 0,
    "gate_prompts": 4,
    "max_kl": 25.0,
    # The tiny model's samples are close to gibberish, so the reward model's verdict on them is
    # near a coin toss: the held-out accuracy decides here; the win rate is measured and shown.
    "min_win_rate": 0.2,
    "label_scope": "new",  # each label trains the lineage once: the bad batch alone trains v3
}


def _judge(project, annotator, questions, choice):
    """One pairwise label per question over (GOOD, BAD): choice 'a' prefers GOOD, 'b' prefers BAD."""
    return [
        label_create(
            task=make_task(project=project, question=q, texts=(GOOD, BAD)),
            annotator=annotator,
            data={"choice": choice, "strength": 2},
            source="api",
        )[0]
        for q in questions
    ]


def _run(kind, project):
    run, created = services.run_create(trigger=TrainingRun.Trigger.API, kind=kind, project=project)
    assert created
    return run


def test_bad_labels_are_rejected_by_the_gate_and_sound_ones_promoted(gate_settings, loop_files):
    v1 = serve_version_one(files=loop_files)
    project = make_project(name="gated")
    services.recipe_update(project=project, data=RECIPE)
    ann = make_user(username="ann")
    sound = _judge(project, ann, [f"Question number {i}?" for i in range(30)], "a")
    held = [label.pk for label in sound if is_held_out(label.pk, 0.3)]
    assert len(held) == 10

    run_trained(TrainingRun.Kind.REWARD, project)
    assert RewardModel.objects.get().project == project

    first = run_trained("policy", project)
    v2 = first.result_version
    assert v2.status == ModelVersion.Status.SERVING and v2.gate["verdict"] == "passed", v2.gate
    checks = {c["name"]: c for c in v2.gate["checks"]}
    assert checks["heldout_accuracy"]["value"] >= 0.9 and checks["heldout_accuracy"]["n"] == 10
    assert checks["win_rate"]["value"] is not None and checks["kl"]["value"] is not None
    assert v2.gate["against"] == "v1" and v2.gate["reward_model"] == "rm1"
    assert sorted(v2.label_ids) == sorted(label.pk for label in sound if label.pk not in held)  # the snapshot
    assert VersionEvent.objects.filter(version=v2, action="promote", actor=None).exists()

    # A batch of bad labels: the answer the held-out labels and the reward model call worse.
    bad = _judge(project, ann, [f"Query {i}?" for i in range(10)], "b")
    second = run_trained("policy", project)
    v3 = second.result_version
    assert v3.status == ModelVersion.Status.REJECTED, v3.gate
    assert v3.gate["verdict"] == "rejected" and "held-out preference accuracy" in v3.gate["reason"]
    # label scope "new": v3 trained only on the labels v2's lineage had not seen
    assert set(v3.label_ids) == {label.pk for label in bad if not is_held_out(label.pk, 0.3)}
    v2.refresh_from_db()
    assert v2.status == ModelVersion.Status.SERVING
    assert policy.generate([{"role": "user", "content": "Hello?"}], n=1, version=v2)  # v2 keeps answering

    # The reason is on the dashboard, and the API lists the figures and the snapshot.
    client = Client()
    client.force_login(make_user("admin", username="boss"))
    row = client.get("/dashboard/runs/", HTTP_HX_REQUEST="true").content.decode()
    assert 'id="version-3" class="version-rejected"' in row and "held-out preference accuracy" in row
    versions = {v["number"]: v for v in client.get("/api/versions/").json()["results"]}
    assert versions[3]["gate"]["verdict"] == "rejected" and versions[3]["n_labels"] == len(v3.label_ids)
    assert client.get(f"/api/versions/{v3.pk}/labels/").json()["label_ids"] == sorted(v3.label_ids)
    refused = client.post(f"/api/versions/{v3.pk}/promote/", {}, content_type="application/json")
    assert refused.status_code == 409 and "held-out preference accuracy" in refused.json()["error"]["message"]
    assert v1.pk != v2.pk


def test_a_run_that_started_from_an_older_version_is_evaluated_against_the_newer_one(gate_settings, loop_files):
    v1 = serve_version_one(files=loop_files)
    a, b = make_project(name="A"), make_project(name="B")
    for project in (a, b):
        services.recipe_update(project=project, data={**RECIPE, "min_win_rate": 0.0, "held_out_share": 0.0})
    services.recipe_update(project=b, data={"lora_rank": 4})  # B's versions are rank 4: v1's adapter is resized
    ann = make_user(username="ann")
    _judge(a, ann, [f"A {i}?" for i in range(4)], "a")
    _judge(b, ann, [f"B {i}?" for i in range(4)], "a")
    run_a, run_b = _run("policy", a), _run("policy", b)
    # both start from v1; run A finishes first and promotes v2
    assert services.run_start(run_id=run_b.pk, parent_version=v1) is not None
    tasks.train_policy(run_a.pk)
    run_a.refresh_from_db()
    v2 = run_a.result_version
    assert v2.status == ModelVersion.Status.SERVING, (run_a.error, v2 and v2.gate)
    guard_mod.guarded(run_b.pk, lambda guard: pipeline.policy_run(run_id=run_b.pk, parent=v1, guard=guard))
    run_b.refresh_from_db()
    assert run_b.status == TrainingRun.Status.SUCCEEDED, run_b.error
    v3 = run_b.result_version
    assert v3.parent == v1 and v3.gate["against"] == "v2"  # never judged against the version it started from
    assert (adapter_rank(v2.artifact_path), adapter_rank(v3.artifact_path)) == (8, 4)
    promoted = VersionEvent.objects.filter(version=v3, action="promote").first()
    if v3.status == ModelVersion.Status.SERVING:
        assert promoted is not None and promoted.previous == v2 and "against v2" in promoted.reason
    else:
        assert promoted is None and ModelVersion.objects.get(pk=v2.pk).status == ModelVersion.Status.SERVING


def test_a_recipe_with_an_arena_gate_serves_the_candidate_only_once_people_prefer_it(gate_settings, loop_files):
    """The checks pass, then the candidate waits: both versions answer the project's prompts, people
    judge them blind through the queue, and beat's arena check serves it when its interval is above."""
    from webapp.feedback.assignments import assignment_next, assignment_submit
    from webapp.feedback.models import GenerationJob, Task

    v1 = serve_version_one(files=loop_files)
    project = make_project(name="arena gated", feedback_types=["pairwise"], overlap=3, max_tokens=6)
    services.recipe_update(project=project, data={**RECIPE, "arena_prompts": 4})
    ann = make_user(username="ann")
    _judge(project, ann, [f"Question number {i}?" for i in range(30)], "a")

    run = run_trained("policy", project)
    v2 = run.result_version
    assert v2.status == ModelVersion.Status.CANDIDATE and v2.gate["verdict"] == "waiting", v2.gate
    assert "waiting for the arena against v1" in v2.gate["reason"]
    job = GenerationJob.objects.get(kind="arena")
    assert job.versions == [v2.pk, v1.pk] and len(job.prompt_ids) == 4

    tasks.generate(job.pk)  # the generate queue's task, in this process
    job.refresh_from_db()
    assert job.status == "succeeded" and job.tasks_created == 4, job.error
    items = Task.objects.filter(arena=True, project=project)
    sides = {tuple(s.candidate.policy_version.number for s in t.slots.order_by("position")) for t in items}
    assert sides <= {(2, 1), (1, 2)} and len(items) == 4

    tasks.reap_runs()  # beat's check: no judgment yet, the candidate waits
    v2.refresh_from_db()
    assert v2.status == ModelVersion.Status.CANDIDATE
    for person in [make_user(username=f"judge{i}") for i in range(3)]:  # 4 items x overlap 3 = 12 judgments
        while (served := assignment_next(project=project, annotator=person)) is not None:
            first = served.task.slots.order_by("position").first().candidate.policy_version
            prefers_a = not served.task.arena or first.number == 2  # in the arena, v2's answer
            assignment_submit(assignment=served, data={"choice": "a" if prefers_a else "b"})
    tasks.reap_runs()
    v2.refresh_from_db()
    assert v2.status == ModelVersion.Status.SERVING and "arena over 12 comparisons" in v2.gate["reason"], v2.gate
    assert VersionEvent.objects.filter(version=v2, action="promote", reason__startswith="won the arena").exists()
    assert policy.policy_client().adapter_root("policy-v2") is not None  # the server has it


def test_a_candidate_no_check_could_judge_is_unchecked_and_waits_if_the_recipe_says(gate_settings, loop_files):
    """Too few held-out pairs for the accuracy check and no reward model: the KL check alone ran, so the
    candidate is "unchecked", never "passed"; with `gate_unchecked: wait` it waits for a person (the
    default, serve, is what test_make_run sees on SQLite)."""
    unchecked = "wait"
    v1 = serve_version_one(files=loop_files)
    project = make_project(name=f"unjudged {unchecked}")
    recipe = {**RECIPE, "min_heldout_pairs": 50, "gate_unchecked": unchecked}
    services.recipe_update(project=project, data=recipe)
    _judge(project, make_user(username="ann"), [f"Question number {i}?" for i in range(10)], "a")
    run = run_trained("policy", project)
    v2 = run.result_version
    assert v2.gate["verdict"] == "unchecked" and v2.gate["unchecked"] == unchecked, v2.gate
    assert "no check could judge its quality" in v2.gate["reason"] and "KL" in v2.gate["reason"]
    kl = next(c for c in v2.gate["checks"] if c["name"] == "kl")
    assert kl["passed"] is True and len(kl["interval"]) == 2 and kl["n"] >= 1
    assert v2.status == ModelVersion.Status.CANDIDATE
    assert ModelVersion.objects.get(pk=v1.pk).status == ModelVersion.Status.SERVING
    client = Client()
    client.force_login(make_user("admin", username="boss"))
    page = client.get(f"/dashboard/runs/{run.pk}/").content.decode()
    assert 'class="gate-unchecked" id="gate-verdict">unchecked<' in page and 'id="gate-unchecked"' in page
    assert "passed</span>" not in page


def test_train_from_first_trains_each_candidate_afresh_from_the_first_version(gate_settings, loop_files):
    """`train_from: first`: the candidate starts from v1 (its reference too) on every label, while its
    parent, and what it is gated against, is the version serving."""
    v1 = serve_version_one(files=loop_files)
    project = make_project(name="afresh")
    services.recipe_update(project=project, data={**RECIPE, "label_scope": "all", "held_out_share": 0.0})
    ann = make_user(username="ann")
    first = _judge(project, ann, [f"Question number {i}?" for i in range(4)], "a")
    run = run_trained("policy", project)
    v2 = run.result_version
    assert v2.status == ModelVersion.Status.SERVING and v2.config["trained_from"] == "v1", v2.gate
    services.recipe_update(project=project, data={"train_from": "first"})
    more = _judge(project, ann, [f"Query {i}?" for i in range(4)], "a")
    run = run_trained("policy", project)
    v3 = run.result_version
    assert v3.parent == v2 and v3.config["trained_from"] == "v1" and v3.gate["against"] == "v2"
    assert sorted(v3.label_ids) == sorted(label.pk for label in [*first, *more])  # every label, afresh
    assert v1.pk != v3.pk


def test_a_reward_model_worse_than_the_serving_one_is_rejected_and_changes_nothing(gate_settings, loop_files):
    from webapp.runs.models import RewardModelEvent
    from webapp.runs.selectors import reward_model_serving

    gate_settings.REWARD_MAX_STEPS = 30
    project = make_project(name="rewarded")
    services.recipe_update(project=project, data=RECIPE)
    ann = make_user(username="ann")
    _judge(project, ann, [f"Question number {i}?" for i in range(30)], "a")  # ids 1-30, 10 held out
    rm1 = run_trained(TrainingRun.Kind.REWARD, project).result_reward_model
    assert rm1.status == RewardModel.Status.SERVING and rm1.gate["reason"] == "the project's first reward model"
    assert reward_model_serving(project) == rm1

    # Labels that say the opposite where they train, and agree with the first ones where held out.
    for i in range(60):
        label_id = 31 + i
        (label,) = _judge(project, ann, [f"Another question {i}?"], "a" if is_held_out(label_id, 0.3) else "b")
        assert label.pk == label_id
    rm2 = run_trained(TrainingRun.Kind.REWARD, project).result_reward_model
    assert rm2.status == RewardModel.Status.REJECTED, rm2.gate
    assert rm2.gate["verdict"] == "rejected" and rm2.gate["against"] == "rm1", rm2.gate
    assert rm2.gate["accuracy"] < rm2.gate["serving_accuracy"] and rm2.gate["length_rule_accuracy"] is not None
    rm1.refresh_from_db()
    assert rm1.status == RewardModel.Status.SERVING and reward_model_serving(project) == rm1  # nothing changed
    assert RewardModelEvent.objects.filter(reward_model=rm2, action="reject").exists()

    # An admin can still serve it, knowingly, and roll back; each step is on the audit trail.
    client = Client()
    client.force_login(make_user("admin", username="boss"))
    refused = client.post(f"/api/reward-models/{rm2.pk}/promote/", {}, content_type="application/json")
    assert refused.status_code == 409 and "rejected" in refused.json()["error"]["message"]
    served = client.post(f"/api/reward-models/{rm2.pk}/promote/", {"confirm": True, "reason": "trying it"},
                         content_type="application/json")  # fmt: skip
    assert served.status_code == 200 and served.json()["status"] == "serving"
    back = client.post(f"/api/reward-models/{rm1.pk}/promote/", {"reason": "worse"}, content_type="application/json")
    assert back.status_code == 200 and reward_model_serving(project) == rm1
    actions = list(RewardModelEvent.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["promote", "reject", "promote", "rollback"]
    row = client.get("/dashboard/runs/", HTTP_HX_REQUEST="true").content.decode()
    assert 'id="reward-model-2" class="reward-model-retired"' in row and 'class="rm-status">serving' in row
