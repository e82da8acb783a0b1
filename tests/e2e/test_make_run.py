"""`make run`'s embedded defaults: SQLite, the filesystem broker, the built-in policy server.

Runs the same commands as `make run` (migrate, prefloop_setup, prefloop_run) with no DATABASE_URL
and no CELERY_BROKER_URL, checks that the web server, the worker and the policy server come up and
work together, then stops them with Ctrl-C (SIGINT) and checks that all three exit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.e2e.conftest import ROOT, item_for_prompt
from tests.processes import free_port

pytestmark = pytest.mark.e2e


def make_run_start(tmp_path) -> tuple[subprocess.Popen, object, str, int, int]:
    """Run `make run`'s commands (migrate, prefloop_setup, prefloop_run) with no DATABASE_URL and
    no CELERY_BROKER_URL under `tmp_path`; return the system's process (its own process group), its
    log, the log's text once the web server, the worker and the policy server are up, and the web
    and policy ports."""
    web_port, policy_port = free_port(), free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(
        PREFLOOP_VAR_DIR=str(tmp_path / "var"),
        POLICY_SERVER_URL=f"http://127.0.0.1:{policy_port}",
        PREFLOOP_ADDR=f"127.0.0.1:{web_port}",
        PYTHONUNBUFFERED="1",
        DJANGO_DEBUG="1",  # as the Makefile's `run` sets it
    )
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True)
    setup = subprocess.run([*manage, "prefloop_setup"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    assert "User admin (admin): password prefloop-admin" in setup.stdout
    assert "Serving policy version: v1" in setup.stdout
    assert (tmp_path / "var" / "prefloop.sqlite3").exists()

    log = (tmp_path / "run.log").open("w+")
    run = subprocess.Popen(
        [*manage, "prefloop_run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 180
    text = ""
    while "celery@" not in text or "ready" not in text or "Prefloop is running" not in text:
        if run.poll() is not None or time.monotonic() > deadline:
            make_run_stop(run)
            raise AssertionError(text[-3000:])
        time.sleep(1)
        log.seek(0)
        text = log.read()
    for _ in range(30):
        try:
            if httpx.get(f"http://127.0.0.1:{web_port}/login/").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    return run, log, text, web_port, policy_port


def make_run_stop(run: subprocess.Popen) -> None:
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    try:
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


def test_make_run_starts_everything_on_embedded_defaults_and_ctrl_c_stops_it(tmp_path):
    run, log, text, web_port, policy_port = make_run_start(tmp_path)
    try:
        assert re.search(rf"http://127\.0\.0\.1:{web_port}/", text)
        # the URL comes once the system is up, after the worker's ready line, with no start-up banner
        assert text.index("Prefloop is running") > text.index(" ready") and "[queues]" not in text

        web = httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=30)
        static = web.get("/static/prefloop/chat.js")  # served by the same server as the pages
        assert static.status_code == 200 and "javascript" in static.headers["content-type"], static.status_code
        token = web.post("/api/auth/token/", json={"username": "annotator", "password": "prefloop-annotator"})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Token {token.json()['token']}"}
        prompt = web.post("/api/prompts/", json={"text": "What is the capital of Italy?"}, headers=headers).json()
        # SQLite + the filesystem broker: make run's worker writes the answers (the `generate` queue)
        item = item_for_prompt(web, prompt["id"], headers)
        assert [c["policy_version"] for c in item["candidates"]] == [1, 1]
        models = httpx.get(f"http://127.0.0.1:{policy_port}/v1/models").json()["data"]
        assert "policy-v1" in {m["id"] for m in models}
        # Train on SQLite with the filesystem broker, as a new user would: judge, train, gate, roll back.
        candidates = item["candidates"]
        label = web.post("/api/labels/", json={"task": item["id"], "choice": "a", "strength": 2}, headers=headers)
        assert label.status_code == 201, label.text
        admin_token = web.post("/api/auth/token/", json={"username": "admin", "password": "prefloop-admin"})
        admin = {"Authorization": f"Token {admin_token.json()['token']}"}
        projects = web.get("/api/projects/", headers=admin).json()
        chat = next(p for p in projects.get("results", projects) if p["name"] == "Chat")
        recipe = web.patch(f"/api/projects/{chat['id']}/recipe/", json={"held_out_share": 0}, headers=admin)
        distinct = len({c["text"].strip() for c in candidates}) == 2  # the tiny model may sample one text twice
        left_out = {} if distinct else {"expresses no preference": 1}
        assert recipe.status_code == 200 and recipe.json()["training_data"]["left_out"] == left_out, recipe.text
        queued = web.post("/api/runs/", json={"kind": "dpo"}, headers=admin).json()
        deadline = time.monotonic() + 240
        result = queued
        while result["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(1)
            result = web.get(f"/api/runs/{queued['id']}/", headers=admin).json()
        if distinct:  # a pair of two identical samples teaches nothing, and the run says so
            assert result["status"] == "succeeded", result["error"]
            versions = {v["number"]: v for v in web.get("/api/versions/", headers=admin).json()["results"]}
            # no held-out label and no reward model: no check could judge it, so it is "unchecked" (never a
            # green "passed"), and the recipe's default for that serves it
            assert versions[2]["gate"]["verdict"] == "unchecked" and versions[2]["status"] == "serving"
            events = web.get("/api/version-events/", headers=admin).json()["results"]
            assert events[0]["action"] == "promote" and events[0]["reason"].startswith("served unchecked")
            rollback = web.post(f"/api/versions/{versions[1]['id']}/promote/", json={"reason": "back"}, headers=admin)
            assert rollback.status_code == 200 and rollback.json()["status"] == "serving", rollback.text
            events = web.get("/api/version-events/", headers=admin).json()["results"]
            assert [e["action"] for e in events[:2]] == ["rollback", "promote"]
        else:
            assert result["status"] == "failed" and "no decisive pairwise labels" in result["error"]
        children = psutil.Process(run.pid).children(recursive=True)
        assert len(children) >= 3  # policy server, worker, web server
    finally:
        make_run_stop(run)
    log.seek(0)
    assert "Stopped." in log.read()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"processes still running after Ctrl-C: {alive}"
    # The embedded broker keeps all its folders under the var folder, none in the working tree.
    assert (tmp_path / "var" / "broker" / "control").is_dir()
    assert not (ROOT / "control").exists()
