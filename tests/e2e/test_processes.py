"""A DPO policy run on two processes (the recipe's `processes`), launched through the API and run by
a real Celery worker whose TRAIN_SHARDING is "fsdp": it trains under torchrun over gloo, sharded, is
gated and serves a new version as a one-process run does; a second one, cancelled through the API
while it trains, stops both of its training processes and leaves no version."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from tests.e2e.conftest import serve_version_one
from tests.factories import make_pairwise_task, make_user
from webapp.feedback.assignments import label_create
from webapp.feedback.projects import project_default
from webapp.runs import services
from webapp.runs.models import ModelVersion

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _launched() -> list[int]:
    """The training processes of a run on several processes (training.launch under torchrun)."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"training.launch" in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _run(api: httpx.Client, headers: dict[str, str], run_id: int) -> dict:
    return api.get(f"/runs/{run_id}/", headers=headers).json()


def test_a_run_on_two_processes_serves_a_version_and_a_cancel_stops_both(
    live_server, loop_settings, loop_files, builtin_policy_server, start_worker
):
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    loop_settings.TRAIN_EVERY_N_LABELS = 0
    serve_version_one(files=loop_files)
    chat = project_default()
    services.recipe_update(project=chat, data={"processes": 2, "max_steps": 2, "held_out_share": 0})
    owner, ann = make_user(), make_user(username="ann")
    make_user("admin", username="boss", password="boss-password")
    for question in ["What is the capital of Italy?", "How many legs does a cat have?", "Why do we sleep?"]:
        task = make_pairwise_task(created_by=owner, question=question, texts=("A short, kind answer.", "No."))
        label_create(task=task, annotator=ann, data={"choice": "a", "strength": 2}, source="api")
    start_worker(policy_url=builtin_policy_server, files=loop_files, env={"TRAIN_SHARDING": "fsdp"})
    api = httpx.Client(base_url=f"{live_server.url}/api", timeout=120)
    token = api.post("/auth/token/", json={"username": "boss", "password": "boss-password"}).json()["token"]
    boss = {"Authorization": f"Token {token}"}

    run = api.post("/runs/", json={"kind": "dpo"}, headers=boss).json()
    deadline = time.monotonic() + 300
    while run["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
        run = _run(api, boss, run["id"])
    assert run["status"] == "succeeded", run["error"]
    assert run["metrics"]["processes"] == 2 and run["metrics"]["steps"] == 2 and run["result_version"] == 2
    assert run["metrics"]["sharding"] == "fsdp"  # the worker's TRAIN_SHARDING, as the trainer used it
    assert ModelVersion.objects.get(number=2).gate.get("verdict")  # gated as a one-process run is

    services.recipe_update(project=chat, data={"max_steps": 5000})  # long enough to cancel mid-way
    run = api.post("/runs/", json={"kind": "dpo"}, headers=boss).json()
    deadline = time.monotonic() + 180
    while not (run["progress"] or 0) > 0 and time.monotonic() < deadline:  # training, on both processes
        time.sleep(0.5)
        run = _run(api, boss, run["id"])
    running = _launched()
    assert run["status"] == "running" and len(running) >= 2, (run, running)
    assert api.post(f"/runs/{run['id']}/cancel/", headers=boss).status_code in (200, 202)
    deadline = time.monotonic() + 60
    while (_launched() or run["status"] == "running") and time.monotonic() < deadline:
        time.sleep(0.5)
        run = _run(api, boss, run["id"])
    assert run["status"] == "cancelled" and _launched() == []
    assert not ModelVersion.objects.filter(number=3).exists()
