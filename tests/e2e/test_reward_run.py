"""An admin trains a reward model from the dashboard; a real Celery worker fits it on the labels.

The browser clicks "Train a reward model", the dashboard (htmx, polling) shows the run and then
the reward model with its held-out accuracy; the model in the artifact store loads and scores.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.test_annotate_browser import login
from tests.factories import make_pairwise_task, make_user
from training.reward import RewardEnsemble
from webapp.feedback.assignments import label_create
from webapp.feedback.models import Label
from webapp.feedback.projects import project_default
from webapp.runs import services
from webapp.runs.data import is_held_out
from webapp.runs.models import RewardModel, TrainingRun

# Label ids from 1, so that the held-out share (a hash of the id) is the same in every run.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, reset_sequences=True)]

# 50 questions x 2 annotators = 100 labels, of which the project holds out a quarter (by a hash of the
# id): 23 pairs, enough for the worker to fit the model's temperature (REWARD_CALIBRATE, on by default)
QUESTIONS = [f"Question number {i}: what is {i} plus {i}?" for i in range(50)]


def test_admin_trains_a_reward_model_from_the_dashboard(
    live_server, loop_settings, loop_files, start_worker, page, tmp_path
):
    loop_settings.TRAIN_EVERY_N_LABELS = 0
    services.recipe_update(project=project_default(), data={"held_out_share": 0.25})
    owner = make_user()
    annotators = [make_user(username="ann"), make_user(username="bob")]
    make_user("admin", username="boss", password="boss-password")
    for i, question in enumerate(QUESTIONS):
        task = make_pairwise_task(
            created_by=owner, question=question, texts=(f"The answer is {2 * i}.", "I refuse to answer that.")
        )
        for annotator in annotators:
            # as crowds do, the annotators disagree now and then (bob on every third question), so the
            # held-out pairs are not all ranked right and do pin a temperature down
            choice = "b" if annotator.username == "bob" and i % 3 == 0 else "a"
            label_create(task=task, annotator=annotator, data={"choice": choice, "strength": 3}, source="api")
    start_worker(policy_url="http://127.0.0.1:9", files=loop_files)  # no policy server needed for a reward run

    login(page, live_server, "boss", "boss-password")
    page.goto(f"{live_server.url}/dashboard/")
    page.click("#train-reward")
    page.locator("#runs td", has_text="Reward model").first.wait_for()
    row = page.locator("#reward-model-1.reward-model-serving")
    row.wait_for(timeout=300_000)  # the runs panel polls every 2 s; the first reward model serves its project

    run = TrainingRun.objects.get(kind=TrainingRun.Kind.REWARD)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.metrics["gate"]["verdict"] == "passed" and "first" in row.locator(".rm-gate").inner_text()
    expected_held_out = sum(is_held_out(label.pk, 0.25) for label in Label.objects.all())
    assert expected_held_out >= 20
    assert run.trigger == TrainingRun.Trigger.ADMIN and run.n_pairs == 100 - expected_held_out
    reward_model = RewardModel.objects.get()
    assert run.result_reward_model == reward_model
    assert reward_model.backbone == str(loop_files.base_model)  # REWARD_BACKBONE defaults to the policy's base
    held_out = reward_model.metrics["n_eval_pairs"]
    assert held_out == expected_held_out and reward_model.metrics["n_train_pairs"] + held_out == 100
    assert reward_model.project == project_default()
    evaluation = reward_model.metrics["eval"]
    assert evaluation["n"] == held_out and 0.0 <= evaluation["accuracy"] <= 1.0
    assert set(evaluation["by_group"]) <= {"ann", "bob"}  # accuracy per annotator
    assert re.fullmatch(r"\d+%", row.locator(".rm-accuracy").inner_text().strip())
    assert row.locator(".rm-accuracy").inner_text().strip() == f"{round(100 * evaluation['accuracy'])}%"

    # The artifact: a reward model folder in the store that loads and scores like any other.
    folder = Path(reward_model.artifact_path)
    assert (folder / "meta.json").is_file() and reward_model.member_paths == [""]
    ensemble = RewardEnsemble.load([folder / m for m in reward_model.member_paths])
    scores = ensemble.score([[{"role": "user", "content": QUESTIONS[0]}]] * 2, ["The answer is 0.", "I refuse."])
    assert len(scores["mean"]) == 2 and scores["mean"][0] != scores["mean"][1]
    # ... calibrated on the held-out pairs: the temperature fitted there is saved with it and applied
    calibration = reward_model.metrics["calibration"]
    assert calibration["n_pairs"] == expected_held_out and len(calibration["temperatures"]) == 1
    assert ensemble.members[0].temperature == calibration["temperatures"][0] > 0
    assert 0.0 <= calibration["ece_after"] <= 1.0 and 0.0 <= calibration["ece_before"] <= 1.0
