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

from tests.e2e.conftest import ROOT
from tests.processes import free_port

pytestmark = pytest.mark.e2e


def test_make_run_starts_everything_on_embedded_defaults_and_ctrl_c_stops_it(tmp_path):
    web_port, policy_port = free_port(), free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(
        PREFLOOP_VAR_DIR=str(tmp_path / "var"),
        POLICY_SERVER_URL=f"http://127.0.0.1:{policy_port}",
        PREFLOOP_ADDR=f"127.0.0.1:{web_port}",
        PYTHONUNBUFFERED="1",
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
    try:
        deadline = time.monotonic() + 180
        text = ""
        while "celery@" not in text or "ready" not in text or "Prefloop is running" not in text:
            assert run.poll() is None, text[-3000:]
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(1)
            log.seek(0)
            text = log.read()
        assert re.search(rf"http://127\.0\.0\.1:{web_port}/", text)

        web = httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=30)
        for _ in range(30):
            try:
                if web.get("/login/").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        token = web.post("/api/auth/token/", json={"username": "annotator", "password": "prefloop-annotator"})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Token {token.json()['token']}"}
        prompt = web.post("/api/prompts/", json={"text": "What is the capital of Italy?"}, headers=headers).json()
        task = web.post(f"/api/prompts/{prompt['id']}/tasks/", headers=headers)
        assert task.status_code == 201, task.text  # SQLite + built-in policy server answer
        assert [c["policy_version"] for c in task.json()["candidates"]] == [1, 1]
        models = httpx.get(f"http://127.0.0.1:{policy_port}/v1/models").json()["data"]
        assert "policy-v1" in {m["id"] for m in models}
        children = psutil.Process(run.pid).children(recursive=True)
        assert len(children) >= 3  # policy server, worker, web server
    finally:
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        try:
            run.wait(timeout=60)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    log.seek(0)
    assert "Stopped." in log.read()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"processes still running after Ctrl-C: {alive}"
    # The embedded broker keeps all its folders under the var folder, none in the working tree.
    assert (tmp_path / "var" / "broker" / "control").is_dir()
    assert not (ROOT / "control").exists()
