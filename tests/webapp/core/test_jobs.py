"""One lifecycle for every background job (webapp.core.jobs), kind by kind: a lost worker found by
its heartbeat, redelivery, time limits, cancel, the log tail, and an import's upload removed
however the import ends. No worker is needed: these run on both databases."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.factories import make_project, make_serving_version
from webapp.core.jobs import JobGuard, JobStatus, job_cancel, job_label, job_models, job_start, jobs_reap
from webapp.feedback.generation import generation_job_create
from webapp.feedback.models import EmbeddingJob, GenerationJob, ImportJob
from webapp.feedback.transfer import import_job_run
from webapp.hooks.models import WebhookDelivery
from webapp.hooks.services import hook_create
from webapp.runs.models import TrainingRun

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.both_databases]  # the heartbeat thread reads


def _import_job(tmp_path: Path, lines: list[str], name: str = "items.jsonl") -> ImportJob:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return ImportJob.objects.create(project=make_project(), format="jsonl", file_name=name, path=str(path))


def _items(n: int) -> list[str]:
    return [json.dumps({"messages": [{"role": "user", "content": f"Q {i}?"}], "candidates": ["a", "b"]})
            for i in range(n)]  # fmt: skip


def _jobs_of_every_kind(tmp_path: Path) -> dict[str, object]:
    project = make_project(name="Every kind")
    return {
        "policy": TrainingRun.objects.create(kind="dpo", trigger="api", project=project),
        "reward": TrainingRun.objects.create(kind="reward", trigger="api", project=project),
        "generation": GenerationJob.objects.create(project=project),
        "embedding": EmbeddingJob.objects.create(project=project),
        "import": _import_job(tmp_path, _items(2)),
        "webhook": WebhookDelivery.objects.create(
            hook=hook_create(url="http://127.0.0.1:9/hook", events=["run.finished"])[0],
            event="run.finished",
            payload={},
        ),
    }


def test_every_kind_of_job_is_under_the_one_lifecycle():
    names = {m.__name__ for m in job_models()}
    assert names == {"TrainingRun", "GenerationJob", "ImportJob", "WebhookDelivery", "EmbeddingJob"}


def test_a_lost_worker_is_found_by_its_heartbeat_and_each_kind_ends_as_it_promises(settings, tmp_path):
    settings.RUN_STALE_S, settings.RUN_MAX_ATTEMPTS = 30, 2
    jobs = _jobs_of_every_kind(tmp_path)
    upload = Path(jobs["import"].path)
    for job in jobs.values():
        assert job_start(type(job), job.pk) is not None
        assert job_start(type(job), job.pk) is None  # a second delivery while it runs starts nothing
    assert jobs_reap()["lost"] == []  # every heartbeat is fresh: nothing is touched
    for job in jobs.values():
        type(job).objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=31))
    report = jobs_reap()
    for kind, job in jobs.items():
        job.refresh_from_db()
        assert "the worker was lost" in job.error, kind
        if kind in ("generation", "webhook", "embedding"):  # it resumes (a delivery is sent again): queued again
            assert job.status == JobStatus.QUEUED and job_label(job) in report["requeued"]
        else:
            assert job.status == JobStatus.FAILED and job_label(job) in report["lost"], kind
    assert not upload.exists()  # the reaped import's upload is gone
    # the generation job runs out of attempts: the second loss fails it, saying so
    generation = jobs["generation"]
    assert job_start(GenerationJob, generation.pk) is not None
    GenerationJob.objects.filter(pk=generation.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=31))
    jobs_reap()
    generation.refresh_from_db()
    assert generation.status == JobStatus.FAILED and "after 2 attempts" in generation.error


def test_a_job_past_its_kinds_time_limit_fails_naming_the_limit_and_its_worker_is_told_to_stop(settings, tmp_path):
    settings.RUN_STALE_S = 30
    settings.JOB_TIME_LIMITS = {**settings.JOB_TIME_LIMITS, "generation": 60}
    jobs = _jobs_of_every_kind(tmp_path)
    for job in jobs.values():
        job_start(type(job), job.pk)
        type(job).objects.filter(pk=job.pk).update(started_at=timezone.now() - timedelta(seconds=61))
    report = jobs_reap()
    generation = GenerationJob.objects.get(pk=jobs["generation"].pk)
    assert report["timed_out"] == [job_label(generation)]
    assert generation.status == JobStatus.FAILED and "time limit" in generation.error and "60 s" in generation.error
    assert TrainingRun.objects.get(pk=jobs["policy"].pk).status == JobStatus.RUNNING  # its limit is hours
    with JobGuard(GenerationJob, generation.pk) as guard:  # the worker's next beat tells it to stop
        guard.beat()
        assert guard.stopped.is_set()


def test_cancel_works_for_every_kind_queued_or_running(tmp_path):
    jobs = _jobs_of_every_kind(tmp_path)
    queued = jobs.pop("import")
    job_cancel(ImportJob, queued.pk)
    queued.refresh_from_db()
    assert queued.status == JobStatus.CANCELLED and not Path(queued.path).exists()
    with pytest.raises(ValueError, match="is already cancelled"):
        job_cancel(ImportJob, queued.pk)
    for job in jobs.values():
        job_start(type(job), job.pk)
        job_cancel(type(job), job.pk)
        job.refresh_from_db()
        assert job.status == JobStatus.RUNNING and job.cancel_requested  # its worker stops at its next step
        with JobGuard(type(job), job.pk) as guard:
            guard.beat()
            assert guard.stopped.is_set()


def test_a_generation_job_cancelled_while_it_runs_ends_cancelled_and_keeps_its_log():
    make_serving_version()
    project = make_project(feedback_types=["pairwise"])
    job = generation_job_create(project=project)
    assert job_start(GenerationJob, job.pk) is not None
    logger = logging.getLogger("webapp.feedback.generation")
    with JobGuard(GenerationJob, job.pk) as guard:
        logger.warning("answering prompt %d", 1)
        job_cancel(GenerationJob, job.pk)
        guard.beat()
    job.refresh_from_db()
    assert "answering prompt 1" in job.log_tail


def test_an_imports_upload_is_removed_however_it_ends(tmp_path):
    done = _import_job(tmp_path, _items(3), "good.jsonl")
    assert import_job_run(job_id=done.pk).status == JobStatus.SUCCEEDED
    assert not Path(done.path).exists()
    unreadable = _import_job(tmp_path, ["not json at all {"], "bad.jsonl")
    Path(unreadable.path).write_bytes(b"\xff\xfe\x00bad")
    ended = import_job_run(job_id=unreadable.pk)
    assert ended.status in (JobStatus.FAILED, JobStatus.SUCCEEDED) and not Path(unreadable.path).exists()
    missing = _import_job(tmp_path, _items(1), "gone.jsonl")
    Path(missing.path).unlink()
    failed = import_job_run(job_id=missing.pk)
    assert failed.status == JobStatus.FAILED and "cannot read it" in failed.error
    cancelled = _import_job(tmp_path, _items(1), "cancelled.jsonl")
    job_cancel(ImportJob, cancelled.pk)
    assert not Path(cancelled.path).exists() and import_job_run(job_id=cancelled.pk) is None


def test_the_api_and_the_dashboard_list_every_job_of_every_kind_and_cancel_any(tmp_path, client):
    from tests.factories import make_user
    from tests.webapp.api.test_api import client_for
    from webapp.core.workers import worker_beat

    jobs = _jobs_of_every_kind(tmp_path)
    job_start(GenerationJob, jobs["generation"].pk)
    logging.getLogger("webapp.feedback.generation").warning("not captured: no guard holds this job")
    boss = make_user("admin", username="boss")
    api = client_for(boss)
    listed = api.get("/api/jobs/")
    assert listed.status_code == 200
    rows = {(r["kind"], r["id"]): r for r in listed.json()}
    assert set(rows) == {(k, j.pk) for k, j in jobs.items()}
    generation = rows[("generation", jobs["generation"].pk)]
    assert generation["status"] == "running" and generation["heartbeat_at"] and generation["time_limit_s"] > 0
    assert {"progress", "log_tail", "attempts", "waiting_on", "error"} <= set(generation)
    # no worker has beaten: a queued job says why it waits; once one listens on its queue, it does not
    policy = rows[("policy", jobs["policy"].pk)]
    assert "no worker listens on the 'gpu' queue" in policy["waiting_on"]
    worker_beat(hostname="w1@test", queues=["gpu", "cpu"])
    rows = {(r["kind"], r["id"]): r for r in api.get("/api/jobs/").json()}
    assert rows[("policy", jobs["policy"].pk)]["waiting_on"] == ""
    assert rows[("import", jobs["import"].pk)]["waiting_on"] == ""  # the cpu queue too
    # filters, and bad ones answered 400 in words
    assert [r["kind"] for r in api.get("/api/jobs/", {"kind": "reward"}).json()] == ["reward"]
    assert {r["kind"] for r in api.get("/api/jobs/", {"status": "running"}).json()} == {"generation"}
    for bad in ({"kind": "nope"}, {"status": "lost"}, {"project": "x"}, {"limit": "0"}):
        answer = api.get("/api/jobs/", bad)
        assert answer.status_code == 400 and answer.json(), bad
    assert client_for(make_user()).get("/api/jobs/").status_code == 403
    # cancel any kind: queued at once, running at its next step; ended: 409; unknown: 404
    cancelled = api.post(f"/api/jobs/import/{jobs['import'].pk}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.post(f"/api/jobs/import/{jobs['import'].pk}/cancel/").status_code == 409
    stopping = api.post(f"/api/jobs/generation/{jobs['generation'].pk}/cancel/")
    assert stopping.json()["status"] == "running" and stopping.json()["cancel_requested"] is True
    assert api.post(f"/api/jobs/reward/{jobs['policy'].pk}/cancel/").status_code == 404  # a policy run
    assert api.post("/api/jobs/nope/1/cancel/").status_code == 404
    # the dashboard shows the same, filters, and cancels
    client.force_login(boss)
    page = client.get("/dashboard/jobs/").content.decode()
    for kind, job in jobs.items():
        assert f'id="job-{kind}-{job.pk}"' in page
    only = client.get("/dashboard/jobs/", {"kind": "import"}).content.decode()
    assert f'id="job-import-{jobs["import"].pk}"' in only and "job-policy-" not in only
    assert client.get("/dashboard/jobs/", {"kind": "nope"}).status_code == 400
    assert client.post(f"/dashboard/jobs/reward/{jobs['reward'].pk}/cancel/").status_code == 302
    assert TrainingRun.objects.get(pk=jobs["reward"].pk).status == JobStatus.CANCELLED
    again = client.post(f"/dashboard/jobs/reward/{jobs['reward'].pk}/cancel/")
    assert again.status_code == 409 and "is already cancelled" in again.content.decode()


@pytest.mark.parametrize("meanwhile", [{"status": "queued"}, {"status": "running", "attempts": 2}])
def test_a_worker_that_went_quiet_stops_and_leaves_the_job_to_its_next_attempt(meanwhile):
    from webapp.core.jobs import job_guarded

    job = GenerationJob.objects.create(project=make_project())
    job_start(GenerationJob, job.pk)

    def body(guard: JobGuard) -> None:
        # while this worker was quiet the reaper queued the job again (and maybe another worker took it)
        GenerationJob.objects.filter(pk=job.pk).update(**meanwhile)
        guard.beat()
        guard.check()  # this worker stops here

    job_guarded(GenerationJob, job.pk, body, cancelled="stopped")
    job.refresh_from_db()
    assert (job.status, job.attempts, job.error) == (meanwhile["status"], meanwhile.get("attempts", 1), "")
