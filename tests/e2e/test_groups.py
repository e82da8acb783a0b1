"""Groups of annotators on real training (MaxMin-RLHF): labels from two groups who want opposite
answers give a reward model with one member per group, the dashboard shows the groups, and the gate
reports a candidate's win rate per group. Worker tasks run in this process, on PostgreSQL, against
the built-in policy server over HTTP."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.e2e.conftest import run_trained, serve_version_one
from tests.factories import make_project, make_task, make_user
from webapp.feedback.assignments import label_create
from webapp.runs import services
from webapp.runs.artifacts import reward_model_local_path
from webapp.runs.models import RewardModel, TrainingRun

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, reset_sequences=True)]

YES, NO = "Yes.", "No, never."


def _judge(project, annotator, n, prefers_yes):
    for i in range(n):
        label_create(
            task=make_task(project=project, question=f"{annotator.username} question {i}?", texts=(YES, NO)),
            annotator=annotator,
            data={"choice": "a" if prefers_yes else "b", "strength": 2},
            source="api",
        )


def test_two_groups_of_annotators_get_a_reward_member_each_and_the_gate_reports_both(gate_settings, loop_files):
    from training.reward import RewardEnsemble

    serve_version_one(files=loop_files)
    project = make_project(name="two tastes")
    services.recipe_update(
        project=project,
        data={"reward_groups": 3, "held_out_share": 0.2, "auto_train_every": 0, "gate_prompts": 3, "max_kl": 50.0},
    )
    majority = [make_user(username=f"yes{i}") for i in range(3)]
    minority = [make_user(username=f"no{i}") for i in range(2)]
    for person in majority:
        _judge(project, person, 10, prefers_yes=True)
    for person in minority:
        _judge(project, person, 10, prefers_yes=False)

    run = run_trained(TrainingRun.Kind.REWARD, project)
    reward_model = RewardModel.objects.get(run=run)
    found = reward_model.metrics["groups"]
    assert found["k"] == 2, found  # up to 3 were looked for; the labels show 2
    assert [g["annotators"] for g in found["groups"]] == [["yes0", "yes1", "yes2"], ["no0", "no1"]]
    assert len(reward_model.member_paths) == 2
    root = reward_model_local_path(reward_model)
    members = RewardEnsemble.load([f"{root}/{m}" for m in reward_model.member_paths])
    prompt = [{"role": "user", "content": "A new question?"}]
    scores = members.score([prompt, prompt], [YES, NO])["members"]
    assert scores[0][0] > scores[0][1] and scores[1][0] < scores[1][1]  # each group's member learned its taste

    policy = run_trained("policy", project)
    gate = policy.result_version.gate
    assert [g["annotators"] for g in gate["groups"]] == [["yes0", "yes1", "yes2"], ["no0", "no1"]], gate
    assert all(0.0 <= g["win_rate"] <= 1.0 for g in gate["groups"])

    client = Client()
    client.force_login(make_user("admin", username="boss"))
    page = client.get(f"/dashboard/quality/?project={project.pk}").content.decode()
    assert 'id="groups-found">2<' in page and "yes0, yes1, yes2" in page and "no0, no1" in page
    assert 'id="group-win-rates"' in page and "v2" in page
    detail = client.get(f"/dashboard/runs/{policy.pk}/").content.decode()
    assert 'id="gate-groups"' in detail


def test_one_population_trains_one_model_and_says_why(gate_settings, loop_files):
    project = make_project(name="one taste")
    services.recipe_update(project=project, data={"reward_groups": 2, "auto_train_every": 0})
    for person in [make_user(username=f"p{i}") for i in range(3)]:
        _judge(project, person, 6, prefers_yes=True)
    run = run_trained(TrainingRun.Kind.REWARD, project)
    reward_model = RewardModel.objects.get(run=run)
    assert reward_model.metrics["groups"]["k"] == 1 and "one population" in reward_model.metrics["groups"]["why"]
    assert len(reward_model.member_paths) == 1
