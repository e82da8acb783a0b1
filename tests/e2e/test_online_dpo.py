"""Online DPO as a run kind, on real training: the serving version answers the project's prompts
twice through the built-in policy server, the project's reward ensemble labels the pairs it agrees
on, the rest become items for people, and the update passes the gate like any other."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from tests.e2e.conftest import serve_version_one
from tests.e2e.test_gate import RECIPE, _judge, _run
from tests.factories import make_project, make_user
from webapp.feedback.models import Prompt, Task
from webapp.runs import services
from webapp.runs.models import TrainingRun
from worker import tasks

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, reset_sequences=True)]


def test_an_online_dpo_run_trains_on_pairs_the_ensemble_agrees_on_and_sends_the_rest_to_people(
    gate_settings, loop_files
):
    gate_settings.REWARD_ENSEMBLE_METHOD, gate_settings.REWARD_ENSEMBLE_SIZE = "heads", 3
    v1 = serve_version_one(files=loop_files)
    project = make_project(name="online", feedback_types=["pairwise"], temperature=1.0, max_tokens=8)
    recipe = {**RECIPE, "method": "online_dpo", "online_prompts": 12, "online_human_share": 0.5, "max_steps": 4}
    services.recipe_update(project=project, data=recipe)
    ann = make_user(username="ann")
    _judge(project, ann, [f"Question number {i}?" for i in range(30)], "a")
    for i in range(12):
        Prompt.objects.create(project=project, messages=[{"role": "user", "content": f"Say {i}."}], source="api")
    reward = _run(TrainingRun.Kind.REWARD, project)
    tasks.train_reward(reward.pk)
    reward.refresh_from_db()
    assert reward.status == TrainingRun.Status.SUCCEEDED, reward.error
    items_before = Task.objects.filter(project=project).count()

    run, created = services.run_create(trigger=TrainingRun.Trigger.API, kind="policy", project=project)
    assert created and run.kind == "online_dpo"
    tasks.train_policy(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    notes = run.metrics
    assert notes["sampled"] == 12 and notes["reward_model"] == "rm1"
    assert notes["reward_labelled"] + notes["sent_to_people"] <= 12
    # the mix: people's pairs at most as many as the ensemble's (share 0.5), unless it labelled none
    if notes["reward_labelled"]:
        assert notes["human_pairs"] == min(notes["reward_labelled"], len(run.result_version.label_ids))
    new_items = Task.objects.filter(project=project).order_by("id")[items_before:]
    assert len(new_items) == notes["sent_to_people"]
    for item in new_items:  # v1's own answers, ranked by how unsure the ensemble is
        assert item.kind == "pairwise" and {s.candidate.policy_version_id for s in item.slots.all()} == {v1.pk}
        assert item.priority >= 0
    version = run.result_version
    assert version.gate["verdict"] in ("passed", "rejected") and version.config["kind"] == "online_dpo"
    before = load_file(f"{v1.artifact_path}/adapter_model.safetensors")
    after = load_file(f"{version.artifact_path}/adapter_model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before)  # it trained
