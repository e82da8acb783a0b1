"""Faults of the services around the web app, each on an instance of the test's own (a PostgreSQL
cluster made with initdb, a redis-server, a policy server), stopped and started again by its
process id; the machine's shared services are never touched. Each test checks that no label is lost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    ROOT,
    LoopFiles,
    item_for_prompt,
    serve_version_one,
    start_process,
    wait_for_server,
)
from tests.e2e.test_faults import own_redis
from tests.factories import make_project, make_task, make_user
from tests.processes import OwnPostgres, celery_broker, free_port
from training.policy_server import policy_server_command

pytestmark = pytest.mark.e2e


def _manage(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True)


SEED = """
from webapp.accounts.services import user_ensure
from webapp.feedback.models import Project, ProjectMember
from webapp.feedback.services import tasks_bulk_create
ann, _ = user_ensure(username="ann", password="ann-password", role="annotator")
project = Project.objects.create(name="Faults", feedback_types=["pairwise"], overlap=1)
ProjectMember.objects.create(project=project, user=ann)
items = [{"kind": "pairwise", "messages": [{"role": "user", "content": f"Q {i}?"}], "candidates": ["Yes.", "No."],
          "external_id": f"q{i}"} for i in range(40)]
tasks_bulk_create(project=project, items=items, created_by=None)
print(project.pk)
"""


def test_postgres_restarted_while_the_web_answers_gives_a_clear_503_and_recovers_by_itself(tmp_path: Path):
    database = OwnPostgres(free_port())
    database.init()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PREFLOOP_"))}
    env.update(
        DATABASE_URL=database.url,
        PREFLOOP_VAR_DIR=str(tmp_path / "var"),
        PREFLOOP_ADDR=f"127.0.0.1:{port}",
        TRAIN_EVERY_N_LABELS="0",
        PYTHONUNBUFFERED="1",
    )
    server = None
    try:
        assert _manage(["migrate", "--noinput"], env).returncode == 0
        seeded = _manage(["shell", "-c", SEED], env)
        assert seeded.returncode == 0, seeded.stderr
        project_id = int(seeded.stdout.strip().splitlines()[-1])
        server = start_process("prefloop-serve", [sys.executable, "manage.py", "prefloop_serve", "--workers", "1"],
                               env, tmp_path)  # fmt: skip
        web = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 90
        while True:
            assert server.popen.poll() is None and time.monotonic() < deadline, server.log()[-3000:]
            try:
                if web.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        token = web.post("/api/auth/token/", json={"username": "ann", "password": "ann-password"}).json()["token"]
        api = {"Authorization": f"Token {token}"}

        def label_one() -> int:
            served = web.post(f"/api/projects/{project_id}/next/", headers=api)
            if served.status_code != 200:
                return served.status_code
            done = web.post(f"/api/assignments/{served.json()['id']}/submit/", json={"choice": "a"}, headers=api)
            return done.status_code

        assert [label_one() for _ in range(3)] == [201, 201, 201]

        database.stop()  # by the postmaster's process id
        health = web.get("/healthz")
        assert health.status_code == 503 and health.json()["database"] == "unreachable"
        refused = web.post(f"/api/projects/{project_id}/next/", headers=api)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "database_unavailable"
        page = web.get("/annotate/", headers={"Cookie": "sessionid=whatever"})
        assert page.status_code in (302, 503)  # a visitor without a session is sent to log in, else told why
        login_page = web.post("/login/", data={"username": "ann", "password": "ann-password"})
        assert login_page.status_code in (403, 503)  # no CSRF cookie (403) or no database (503): never a 500
        if login_page.status_code == 503:
            assert "database cannot be reached" in login_page.text

        database.start()  # the same server, no restart of the web
        deadline = time.monotonic() + 30
        while web.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the web did not reconnect to the database by itself"
            time.sleep(0.3)
        assert [label_one() for _ in range(2)] == [201, 201]
        counted = _manage(
            ["shell", "-c", "from webapp.feedback.models import Label; print(Label.objects.count())"], env
        )
        assert counted.stdout.strip().splitlines()[-1] == "5"  # every accepted label, none lost
        assert " 500 " not in server.log() and "Traceback" not in server.log(), server.log()[-3000:]
    finally:
        if server is not None:
            server.stop()
        database.close()


@pytest.mark.django_db(transaction=True)
def test_the_policy_server_going_away_is_said_clearly_labelling_goes_on_and_its_return_is_noticed(
    live_server, loop_settings, loop_files: LoopFiles, tmp_path: Path, start_worker
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = policy_server_command(loop_files.base_model, port=port, lora_modules={"policy-v1": loop_files.v1_adapter})

    def start():
        process = start_process("policy-server", argv, dict(os.environ), tmp_path)
        wait_for_server(process, url, timeout=120)
        return process

    loop_settings.POLICY_SERVER_URL = url
    policy = start()
    serve_version_one(files=loop_files)
    ann = make_user(username="ann", password="ann-password")
    project = make_project(name="Answers", members=[ann], feedback_types=["pairwise"])
    tasks = [make_task(project=project, question=f"Q {i}?", texts=("Yes.", "No.")) for i in range(3)]
    web = httpx.Client(base_url=live_server.url, timeout=60)
    token = web.post("/api/auth/token/", json={"username": "ann", "password": "ann-password"}).json()["token"]
    api = {"Authorization": f"Token {token}"}
    start_worker(policy_url=url, files=loop_files, queues="generate")
    try:
        prompt = web.post("/api/prompts/", json={"text": "What colour is grass?"}, headers=api).json()
        assert item_for_prompt(web, prompt["id"], api)["candidates"]
        policy.stop()  # the policy server goes away

        second = web.post("/api/prompts/", json={"text": "And the sky?"}, headers=api).json()
        deadline = time.monotonic() + 120
        job = web.get("/api/generation-jobs/", headers=api).json()["results"][0]
        while job["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
            job = web.get(f"/api/generation-jobs/{job['id']}/", headers=api).json()
        assert job["status"] == "failed" and "policy server" in job["error"], job  # the job says so
        assert job["failed"] == 1 and job["tasks_created"] == 0
        from django.test import Client

        from webapp.feedback import services

        page = Client()
        page.force_login(ann)
        conversation = services.conversation_create(owner=ann)
        sent = page.post(f"/chat/{conversation.pk}/send/", {"text": "Hello?"}, HTTP_HX_REQUEST="true")
        assert sent.status_code == 200
        reply = conversation.messages.get(role="assistant")
        streamed = b"".join(page.post(f"/chat/message/{reply.pk}/stream/").streaming_content).decode()
        assert "The policy server could not answer" in streamed  # the chat says so
        reply.refresh_from_db()
        assert reply.status == reply.Status.FAILED and "cannot connect to the policy server" in reply.error
        footer = page.get(f"/chat/message/{reply.pk}/").content.decode()  # and keeps saying why
        assert "could not answer: cannot connect to the policy server" in footer
        # labelling the candidates that exist goes on
        for _ in tasks:
            served = web.post(f"/api/projects/{project.pk}/next/", headers=api).json()
            done = web.post(f"/api/assignments/{served['id']}/submit/", json={"choice": "a"}, headers=api)
            assert done.status_code == 201, done.text

        policy = start()  # back on the same address: noticed without restarting anything
        again = web.post(f"/api/prompts/{second['id']}/tasks/", headers=api)
        assert again.status_code == 202, again.text
        assert item_for_prompt(web, second["id"], api)["candidates"]  # the prompt left open is answered now
        _, reply = services.chat_turn_start(conversation=conversation, text="And now?")
        streamed = b"".join(page.post(f"/chat/message/{reply.pk}/stream/").streaming_content).decode()
        assert streamed.strip() and "could not answer" not in streamed
        from webapp.feedback.models import Label

        assert Label.objects.filter(task__project=project).count() == 3
    finally:
        policy.stop()


@pytest.mark.django_db(transaction=True)
def test_redis_stopped_and_started_while_annotators_submit_loses_no_label(live_server, settings, tmp_path: Path):
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    settings.CELERY_BROKER_URL = broker
    people = [make_user(username=f"ann{i}", password="ann-password") for i in range(4)]
    project = make_project(name="Busy", members=people, feedback_types=["pairwise"], recipe={"auto_train_every": 5})
    for i in range(200):
        make_task(project=project, question=f"Q {i}?", texts=("Yes.", "No."))
    web = httpx.Client(base_url=live_server.url, timeout=60)
    tokens = [web.post("/api/auth/token/", json={"username": p.username, "password": "ann-password"}).json()["token"]
              for p in people]  # fmt: skip
    accepted, failures, stop = [], [], threading.Event()

    def annotate(token: str) -> None:
        client = httpx.Client(base_url=live_server.url, timeout=60, headers={"Authorization": f"Token {token}"})
        while not stop.is_set():
            served = client.post(f"/api/projects/{project.pk}/next/")
            if served.status_code == 204:
                return
            if served.status_code != 200:
                failures.append(("next", served.status_code, served.text[:200]))
                continue
            done = client.post(f"/api/assignments/{served.json()['id']}/submit/", json={"choice": "a"})
            if done.status_code == 201:
                accepted.append(done.json()["id"])
            else:
                failures.append(("submit", done.status_code, done.text[:200]))

    with celery_broker(broker):
        with own_redis(port, tmp_path) as redis_process:
            threads = [threading.Thread(target=annotate, args=(t,)) for t in tokens]
            for thread in threads:
                thread.start()
            time.sleep(2)
            redis_process.terminate()  # by its process id, while they submit
            redis_process.wait(timeout=20)
        time.sleep(3)  # they go on submitting with the broker down
        with own_redis(port, tmp_path):
            time.sleep(2)
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
    from webapp.feedback.models import Label
    from webapp.runs.models import TrainingRun

    assert not failures, failures[:5]
    assert len(accepted) >= 20, len(accepted)
    stored = set(Label.objects.filter(task__project=project).values_list("id", flat=True))
    assert stored == set(accepted)  # every accepted submit is stored, and nothing else
    assert TrainingRun.objects.filter(project=project).exists()  # the threshold queued runs all the same


TRAINING_SEED = """
from tests.factories import make_serving_version, make_task, make_user
from webapp.feedback.assignments import label_create
from webapp.feedback.projects import project_default
from webapp.runs import services
from webapp.runs.models import TrainingRun
make_serving_version({adapter!r})
project = project_default()
services.recipe_update(project=project, data={{"held_out_share": 0, "auto_train_every": 0, "max_steps": 5000,
                                               "learning_rate": 1e-5}})
ann = make_user(username="ann")
for i in range(4):
    task = make_task(project=project, question=f"Q {{i}}?", texts=("Yes.", "No, never."))
    label_create(task=task, annotator=ann, data={{"choice": "a", "strength": 2}}, source="api")
run, _ = services.run_create(trigger=TrainingRun.Trigger.API, project=project)
print(run.pk)
"""
RUN_STATE = "from webapp.runs.models import TrainingRun as R; r = R.objects.get(pk={pk}); print(r.status, r.progress)"


def test_postgres_restarted_while_a_worker_trains_ends_the_run_and_never_leaves_it_running(
    builtin_policy_server: str, loop_files: LoopFiles, tmp_path: Path
):
    database = OwnPostgres(free_port())
    database.init()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PREFLOOP_"))}
    env.update(
        DATABASE_URL=database.url,
        PREFLOOP_VAR_DIR=str(tmp_path / "var"),
        ARTIFACT_DIR=str(loop_files.artifact_dir),
        POLICY_BASE_MODEL=str(loop_files.base_model),
        POLICY_SERVER_URL=builtin_policy_server,
        RUN_HEARTBEAT_S="1",
        RUN_STALE_S="4",
        RUN_REAP_EVERY_S="1",
        TRAIN_CHECK_EVERY_S="3600",
        PYTHONUNBUFFERED="1",
    )
    worker = None

    def state() -> tuple[str, float]:
        out = _manage(["shell", "-c", RUN_STATE.format(pk=run_id)], env)
        status, progress = out.stdout.strip().splitlines()[-1].split()
        return status, float(progress)

    try:
        assert _manage(["migrate", "--noinput"], env).returncode == 0
        seeded = _manage(["shell", "-c", TRAINING_SEED.format(adapter=str(loop_files.v1_adapter))], env)
        assert seeded.returncode == 0, seeded.stderr
        run_id = int(seeded.stdout.strip().splitlines()[-1])
        argv = [sys.executable, "-m", "celery", "-A", "worker.celery", "worker", "-Q", "gpu,cpu", "--pool", "solo",
                "--beat", "--schedule", str(tmp_path / "beat"), "--hostname", f"pg-{free_port()}@%h"]  # fmt: skip
        broker_env = {**env, "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")}
        import redis

        redis.Redis.from_url(broker_env["CELERY_BROKER_URL"]).delete("gpu", "cpu", "generate")
        resent = _manage(["shell", "-c", f"from webapp.runs import services; services.run_enqueue(run_id={run_id})"],
                         broker_env)  # fmt: skip
        assert resent.returncode == 0, resent.stderr
        worker = start_process("worker", argv, broker_env, tmp_path)
        deadline = time.monotonic() + 180
        while (current := state())[0] != "running" or current[1] <= 0:  # training, with steps done
            assert time.monotonic() < deadline and worker.popen.poll() is None, worker.log()[-3000:]
            time.sleep(1)
        database.stop()  # in the middle of training, by the postmaster's pid
        time.sleep(3)
        database.start()
        deadline = time.monotonic() + 90
        while (current := state())[0] == "running":
            assert time.monotonic() < deadline, f"the run stayed running: {current}\n{worker.log()[-3000:]}"
            time.sleep(1)
        assert current[0] in ("failed", "succeeded", "queued"), current  # ended, or sent again: never stuck
    finally:
        if worker is not None:
            worker.stop()
        database.close()
