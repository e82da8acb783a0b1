"""KTO and GRPO policy updates, launched through the API and run by a real Celery worker.

KTO learns from the chat's thumbs and the choices; GRPO samples answers to the newest prompts
and is rewarded by the newest reward model (an ensemble's mean minus λ·variance). Each run writes
a new version that the built-in policy server hot-loads, and the next candidates come from it.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file

from tests.e2e.conftest import item_for_prompt, serve_version_one
from tests.factories import make_pairwise_task, make_serving_reward_model, make_user
from training.reward import PreferenceExample, RewardConfig, train_reward_model
from webapp.feedback.assignments import label_create
from webapp.feedback.projects import project_default
from webapp.runs import services
from webapp.runs.models import ModelVersion

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _wait(api: httpx.Client, headers: dict[str, str], run: dict) -> dict:
    deadline = time.monotonic() + 300
    while run["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
        run = api.get(f"/runs/{run['id']}/", headers=headers).json()
    return run


def test_kto_then_grpo_runs_each_serve_a_new_version(
    live_server, loop_settings, loop_files, builtin_policy_server, start_worker, tmp_path
):
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    loop_settings.TRAIN_EVERY_N_LABELS = 0
    v1 = serve_version_one(files=loop_files)
    chat = project_default()
    services.recipe_update(project=chat, data={"held_out_share": 0})  # every label trains: exact counts below
    owner, ann = make_user(), make_user(username="ann")
    make_user("admin", username="boss", password="boss-password")
    questions = ["What is the capital of Italy?", "How many legs does a cat have?", "Why do we sleep?"]
    for question in questions:
        task = make_pairwise_task(created_by=owner, question=question, texts=("A short, kind answer.", "No."))
        label_create(task=task, annotator=ann, data={"choice": "a", "strength": 2}, source="api")

    # A reward model to reward GRPO with: two members trained on these choices, registered.
    examples = [
        PreferenceExample(prompt=[{"role": "user", "content": q}], chosen="A short, kind answer.", rejected="No.")
        for q in questions
    ]
    folder = loop_files.artifact_dir / "versions" / "reward-test"
    trained = train_reward_model(
        examples,
        folder,
        RewardConfig(backbone=str(loop_files.base_model), max_length=64, max_steps=1, ensemble_size=2),
    )
    make_serving_reward_model(
        artifact_path=str(folder),
        backbone=str(loop_files.base_model),
        member_paths=[Path(p).name for p in trained["member_paths"]],  # member-0, member-1
        project=chat,
    )
    start_worker(policy_url=builtin_policy_server, files=loop_files, env={"GRPO_MAX_STEPS": "2"})

    api = httpx.Client(base_url=f"{live_server.url}/api", timeout=120)
    token = api.post("/auth/token/", json={"username": "boss", "password": "boss-password"}).json()["token"]
    boss = {"Authorization": f"Token {token}"}

    kto = _wait(api, boss, api.post("/runs/", json={"kind": "kto"}, headers=boss).json())
    assert kto["status"] == "succeeded", kto["error"]
    assert (kto["kind"], kto["parent_version"], kto["result_version"]) == ("kto", 1, 2)
    assert kto["n_pairs"] == 6  # each choice gives a liked and a disliked answer
    assert {"n_desirable", "n_undesirable", "final_loss"} <= set(kto["metrics"])

    grpo = _wait(api, boss, api.post("/runs/", json={"kind": "grpo"}, headers=boss).json())
    assert grpo["status"] == "succeeded", grpo["error"]
    assert (grpo["kind"], grpo["parent_version"], grpo["result_version"]) == ("grpo", 2, 3)
    assert grpo["n_pairs"] == len(questions)  # the distinct prompts
    assert grpo["metrics"]["reward_model"] == "rm1" and grpo["metrics"]["steps"] == 2

    v2, v3 = ModelVersion.objects.get(number=2), ModelVersion.objects.get(number=3)
    assert v3.status == ModelVersion.Status.SERVING and v3.parent == v2 and v2.config["kind"] == "kto"
    weights = [load_file(f"{v.artifact_path}/adapter_model.safetensors") for v in (v1, v2, v3)]
    for before, after in itertools.pairwise(weights):
        assert any(not before[k].equal(after[k]) for k in before)
    assert any(m["id"] == "policy-v3" for m in httpx.get(f"{builtin_policy_server}/v1/models").json()["data"])

    prompt = api.post("/prompts/", json={"text": "What is the capital of Spain?"}, headers=boss).json()
    task = item_for_prompt(api, prompt["id"], boss, api="")
    assert {c["policy_version"] for c in task["candidates"]} == {3}
