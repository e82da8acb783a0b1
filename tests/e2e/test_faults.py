"""Runs that never get stuck, with real faults: a worker killed with SIGKILL in the middle of
training, and a broker that is down when the label that queues a run arrives.

The broker tests start their own `redis-server` on a free port and stop it by its process id; the
machine's shared Redis and PostgreSQL are never touched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import serve_version_one
from tests.factories import make_task, make_user
from tests.processes import celery_broker, free_port
from webapp.feedback.models import Label
from webapp.feedback.projects import project_default
from webapp.runs import services
from webapp.runs.models import ModelVersion, TrainingRun

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FAST = {"RUN_HEARTBEAT_S": "1", "RUN_STALE_S": "4", "RUN_REAP_EVERY_S": "1", "TRAIN_CHECK_EVERY_S": "3600"}


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _status(run: TrainingRun) -> TrainingRun:
    run.refresh_from_db()
    return run


def _pairs(project, n: int, prefix: str = "Q") -> None:
    from webapp.feedback.assignments import label_create

    ann = make_user(username=f"ann-{prefix}")
    for i in range(n):
        task = make_task(project=project, question=f"{prefix} {i}?", texts=("Yes.", "No, never."))
        label_create(task=task, annotator=ann, data={"choice": "a", "strength": 2}, source="api")


def test_a_worker_killed_mid_training_is_reaped_and_the_next_run_succeeds(
    loop_settings, loop_files, builtin_policy_server, start_worker
):
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    serve_version_one(files=loop_files)
    project = project_default()
    services.recipe_update(
        project=project, data={"held_out_share": 0, "auto_train_every": 0, "max_steps": 5000, "learning_rate": 1e-5}
    )
    _pairs(project, 4)
    doomed = start_worker(policy_url=builtin_policy_server, files=loop_files, env=FAST, queues="gpu")
    run, _ = services.run_create(trigger=TrainingRun.Trigger.API, project=project)
    _wait_for(lambda: _status(run).progress > 0, 180, "the run to train")
    assert run.status == TrainingRun.Status.RUNNING and run.attempts == 1
    # a worker with beat (the reaper) and the cpu queue, as a deployment runs it; it takes no gpu task
    start_worker(policy_url=builtin_policy_server, files=loop_files, env=FAST, beat=True, queues="cpu", clear=False)
    os.killpg(doomed.popen.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    doomed.popen.wait(timeout=30)
    _wait_for(lambda: _status(run).status == TrainingRun.Status.FAILED, 60, "the reaper to fail the lost run")
    waited = time.monotonic() - killed_at
    assert "the worker was lost" in run.error
    assert waited <= int(FAST["RUN_STALE_S"]) + 3, f"reaped {waited:.1f} s after the kill"
    assert ModelVersion.objects.count() == 1  # nothing half trained was registered

    services.recipe_update(project=project, data={"max_steps": 2})
    start_worker(policy_url=builtin_policy_server, files=loop_files, env=FAST, queues="gpu", clear=False)
    again, created = services.run_create(trigger=TrainingRun.Trigger.API, project=project)
    assert created  # the kind was freed
    _wait_for(lambda: not _status(again).is_active, 240, "the next run to finish")
    assert again.status == TrainingRun.Status.SUCCEEDED, again.error
    assert again.result_version is not None


@contextmanager
def own_redis(port: int, data_dir: Path):
    """A redis-server of this test's own on `port`, stopped by its process id."""
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(data_dir)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _pings(port), 20, f"redis on port {port}")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=20)


def _pings(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def test_a_label_is_accepted_while_the_broker_is_down_and_its_run_starts_when_it_is_back(
    live_server, loop_settings, loop_files, builtin_policy_server, start_worker, tmp_path
):
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    loop_settings.CELERY_BROKER_URL = broker
    serve_version_one(files=loop_files)
    project = project_default()
    services.recipe_update(
        project=project, data={"held_out_share": 0, "auto_train_every": 3, "max_steps": 2, "min_win_rate": 0}
    )
    make_user("admin", username="boss", password="boss-password")
    tasks = [make_task(project=project, question=f"Q {i}?", texts=("Yes.", "No, never.")) for i in range(3)]
    api = httpx.Client(base_url=f"{live_server.url}/api", timeout=60)
    token = api.post("/auth/token/", json={"username": "boss", "password": "boss-password"}).json()["token"]
    headers = {"Authorization": f"Token {token}"}
    # the web app (the live server, in this process) sends its tasks to this broker
    with celery_broker(broker):
        with own_redis(port, tmp_path) as redis_process:
            start_worker(policy_url=builtin_policy_server, files=loop_files, env=FAST, beat=True)
            for task in tasks[:2]:
                answer = api.post("/labels/", json={"task": task.pk, "choice": "a", "strength": 2}, headers=headers)
                assert answer.status_code == 201, answer.text
            redis_process.terminate()  # the broker goes down, by its own process id
            redis_process.wait(timeout=20)
        assert not _pings(port)
        crossing = api.post("/labels/", json={"task": tasks[2].pk, "choice": "a", "strength": 2}, headers=headers)
        assert crossing.status_code == 201, crossing.text  # the label that crosses the threshold is stored
        assert Label.objects.filter(task=tasks[2]).count() == 1
        run = TrainingRun.objects.get()
        assert run.status == TrainingRun.Status.QUEUED and run.enqueued_at is None
        with own_redis(port, tmp_path):  # back on the same port: the worker reconnects, beat's reaper sends the run
            _wait_for(lambda: not _status(run).is_active, 240, "the queued run to run once the broker is back")
            assert run.status == TrainingRun.Status.SUCCEEDED, run.error
            assert run.enqueued_at is not None and run.trigger == TrainingRun.Trigger.THRESHOLD


def test_a_long_generation_job_is_never_sent_twice_while_alive_and_a_killed_one_resumes(
    loop_settings, loop_files, builtin_policy_server, start_worker
):
    """The reaper runs every second and judges a job lost after RUN_STALE_S (4 s) without a heartbeat.
    A generation job that runs longer than that stays one job on one worker (judged by its last
    update, as it was before the one lifecycle, it would have been queued and sent again while it
    ran); a job whose worker is killed is queued again and a new worker answers only what is left."""
    from tests.factories import make_project
    from webapp.core.models import WorkerBeat
    from webapp.feedback.generation import generation_job_create
    from webapp.feedback.models import GenerationJob, Prompt, Task

    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    serve_version_one(files=loop_files)
    project = make_project(name="Long", feedback_types=["pairwise"], max_tokens=32, temperature=1.0)
    fast = {**FAST, "WORKER_HEARTBEAT_S": "1"}
    start_worker(policy_url=builtin_policy_server, files=loop_files, env=fast, beat=True, queues="cpu")  # the reaper
    doomed = start_worker(policy_url=builtin_policy_server, files=loop_files, env=fast, queues="generate", clear=False)

    def job_for(n: int, prefix: str) -> GenerationJob:
        ids = [Prompt.objects.create(project=project, messages=[{"role": "user", "content": f"{prefix} {i}?"}],
                                     source="api").pk for i in range(n)]  # fmt: skip
        return generation_job_create(project=project, prompt_ids=ids)

    def refreshed(job: GenerationJob) -> GenerationJob:
        job.refresh_from_db()
        return job

    long_job = job_for(360, "Tell me a long story about the number")  # over 2 x RUN_STALE_S on a fast machine too
    ran = False
    while refreshed(long_job).is_active:
        ran = ran or long_job.status == "running"
        assert not (ran and long_job.status == "queued"), "the job was queued again while it ran"
        assert long_job.attempts <= 1, "the job was started twice"
        time.sleep(0.2)
    took = (long_job.finished_at - long_job.started_at).total_seconds()
    assert long_job.status == "succeeded", long_job.error
    assert took > 2 * int(FAST["RUN_STALE_S"]), f"the job took {took:.1f} s: too short to prove anything"
    assert long_job.attempts == 1
    assert (long_job.prompts_done, long_job.tasks_created) == (360, 360)
    assert Task.objects.filter(project=project).count() == 360  # each prompt answered once
    assert "prompts answered" in long_job.log_tail  # the worker's log for this job, kept on it
    assert WorkerBeat.objects.filter(queues__contains=["generate"]).exists()

    resumed = job_for(120, "Tell me another long story about")
    _wait_for(lambda: refreshed(resumed).prompts_done > 0 and resumed.status == "running", 120, "it to start")
    os.killpg(doomed.popen.pid, signal.SIGKILL)  # the only worker on the generate queue
    doomed.popen.wait(timeout=30)
    _wait_for(lambda: refreshed(resumed).status == "queued", 60, "the reaper to queue it again")
    assert "the worker was lost" in resumed.error and resumed.prompts_done < 120
    start_worker(policy_url=builtin_policy_server, files=loop_files, env=fast, queues="generate", clear=False)
    _wait_for(lambda: not refreshed(resumed).is_active, 300, "the job to finish")
    assert resumed.status == "succeeded" and resumed.attempts == 2, resumed.error
    assert Task.objects.filter(project=project).count() == 480  # nothing answered twice, nothing left out
