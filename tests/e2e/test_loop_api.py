"""The whole loop through the REST API alone, against a real vLLM server and a real worker."""

from __future__ import annotations

import time

import httpx
import pytest
from safetensors.torch import load_file

from tests.e2e.conftest import item_for_prompt, serve_version_one
from tests.factories import make_user
from training.policy_client import PolicyClient

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.django_db(transaction=True)]

PROMPTS = [
    "What is the capital of Italy?",
    "How many legs does a cat have?",
    "Give me a tip for learning.",
    "What is water made of?",
    "Why do we need sleep?",
    "Say something kind.",
    "What is a computer?",
    "How do I boil an egg?",
]


def test_api_loop_against_vllm(live_server, loop_settings, loop_files, vllm_policy_server, start_worker):
    loop_settings.POLICY_SERVER_URL = vllm_policy_server
    loop_settings.TRAIN_EVERY_N_LABELS = 0  # this test launches the run itself, through the API
    v1 = serve_version_one(files=loop_files)
    make_user(username="ann", password="ann-password")
    make_user("admin", username="boss", password="boss-password")
    start_worker(policy_url=vllm_policy_server, files=loop_files)

    api = httpx.Client(base_url=f"{live_server.url}/api", timeout=120)
    ann_token = api.post("/auth/token/", json={"username": "ann", "password": "ann-password"}).json()["token"]
    boss_token = api.post("/auth/token/", json={"username": "boss", "password": "boss-password"}).json()["token"]
    ann = {"Authorization": f"Token {ann_token}"}
    boss = {"Authorization": f"Token {boss_token}"}

    label_ids = []
    for text in PROMPTS:
        prompt = api.post("/prompts/", json={"text": text}, headers=ann)
        assert prompt.status_code == 201, prompt.text
        task = item_for_prompt(api, prompt.json()["id"], ann, api="")  # written by the worker
        a, b = task["candidates"]
        assert a["policy_version"] == b["policy_version"] == 1
        choice = "a" if len(a["text"]) <= len(b["text"]) else "b"
        body = {"task": task["id"], "choice": choice, "strength": 2}
        label = api.post("/labels/", json=body, headers=ann)
        assert label.status_code == 201, label.text
        assert api.post("/labels/", json=body, headers=ann).status_code == 200  # a retried submit is harmless
        label_ids.append(label.json()["id"])
    assert api.get("/labels/", headers=ann).json()["count"] == len(PROMPTS)

    bad = api.post("/prompts/", json={"messages": [{"role": "user", "content": ""}]}, headers=ann)
    assert bad.status_code == 400 and "content" in bad.json()["error"]["message"]
    assert api.post("/runs/", headers=ann).status_code == 403

    launched = api.post("/runs/", headers=boss)
    assert launched.status_code == 201, launched.text
    run_id = launched.json()["id"]
    deadline = time.monotonic() + 300
    run = launched.json()
    while run["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
        run = api.get(f"/runs/{run_id}/", headers=boss).json()
    assert run["status"] == "succeeded", run["error"]
    assert (run["parent_version"], run["result_version"], run["n_labels"]) == (1, 2, len(PROMPTS))
    assert 1 <= run["n_pairs"] <= len(PROMPTS)  # a pair whose two samples are the same text teaches nothing
    assert run["metrics"]

    versions = {v["number"]: v for v in api.get("/versions/", headers=boss).json()["results"]}
    assert versions[2]["status"] == "serving" and versions[1]["status"] == "retired"
    client = PolicyClient(vllm_policy_server)
    assert client.adapter_root("policy-v2") == versions[2]["artifact_path"]
    assert client.adapter_root("policy-v1") == str(loop_files.v1_adapter)  # kept for answers in flight

    # New candidates come from the hot-swapped version 2, served by the same vLLM process.
    prompt = api.post("/prompts/", json={"text": "What is the capital of Spain?"}, headers=ann).json()
    task = item_for_prompt(api, prompt["id"], ann, api="")
    assert {c["policy_version"] for c in task["candidates"]} == {2}

    w1 = load_file(f"{v1.artifact_path}/adapter_model.safetensors")
    w2 = load_file(f"{versions[2]['artifact_path']}/adapter_model.safetensors")
    assert any(not w1[k].equal(w2[k]) for k in w1)
