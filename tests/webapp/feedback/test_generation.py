"""Generation as work of its own (webapp.feedback.generation) and the queue's orders, without a
policy server: the jobs the product queues, what a refresh replaces, and a server that is down.
The answers themselves are written by a real worker and policy server in tests/e2e/test_generation.py.
"""

from __future__ import annotations

import io
import json
import random
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from tests.factories import make_project, make_serving_version, make_task, make_user
from tests.processes import free_port
from tests.webapp.api.test_api import client_for
from webapp.core.jobs import job_label, jobs_reap
from webapp.feedback import assignments
from webapp.feedback.generation import (
    generation_job_create,
    generation_job_run,
    prompts_open,
    refresh_after_promotion,
    tasks_stale,
)
from webapp.feedback.models import Assignment, Candidate, GenerationJob, Project, Prompt, Task
from webapp.runs.services import version_promote, version_register

pytestmark = pytest.mark.django_db(transaction=True)


def _answered_by(task: Task, version) -> Task:
    Candidate.objects.filter(prompt=task.prompt).update(policy_version=version, origin=Candidate.Origin.POLICY)
    return task


def test_prompts_sent_through_the_api_queue_one_job_per_project_that_the_author_can_watch():
    author, other, admin = make_user(), make_user(), make_user("admin")
    project = make_project(members=[author, other], feedback_types=["pairwise"])
    body = [{"text": "Why is the sky blue?", "project": project.pk}, {"text": "Hi?", "project": project.pk}]
    sent = client_for(author).post("/api/prompts/", body, format="json")
    assert sent.status_code == 201, sent.json()
    job = GenerationJob.objects.get()
    assert (job.project, job.kind, job.status, job.prompt_ids) == (project, "prompts", "queued", None)
    assert prompts_open(project).count() == 2  # nothing generated inside the request
    # a second request while that job waits joins it
    client_for(author).post("/api/prompts/", {"text": "And the sea?", "project": project.pk}, format="json")
    assert GenerationJob.objects.count() == 1

    prompt = Prompt.objects.filter(project=project).first()
    asked = client_for(author).post(f"/api/prompts/{prompt.pk}/tasks/")
    assert asked.status_code == 202, asked.json()
    body = asked.json()
    assert body["prompt_ids"] == [prompt.pk] and body["status"] == "queued" and body["policy_version"] is None
    assert client_for(author).get(f"/api/generation-jobs/{body['id']}/").status_code == 200
    assert client_for(other).get(f"/api/generation-jobs/{body['id']}/").status_code == 404  # not theirs
    assert client_for(other).post(f"/api/prompts/{prompt.pk}/tasks/").status_code == 404
    listed = client_for(admin).get(f"/api/generation-jobs/?project={project.pk}").json()
    assert listed["count"] == 2
    assert client_for(admin).get("/api/generation-jobs/?project=x").status_code == 400


def test_admins_queue_answers_for_open_prompts_and_settings_that_make_no_item_are_refused():
    admin, annotator = make_user("admin"), make_user()
    project = make_project(members=[annotator], feedback_types=["pairwise"])
    url = f"/api/projects/{project.pk}/generate/"
    assert client_for(annotator).post(url).status_code == 403
    queued = client_for(admin).post(url)
    assert queued.status_code == 202 and queued.json()["kind"] == "prompts"
    assert client_for(admin).post(url).json()["id"] == queued.json()["id"]  # a double click queues one job
    Project.objects.filter(pk=project.pk).update(answers_per_prompt=4)  # 4 answers make a ranking item
    refused = client_for(admin).post(url)
    assert refused.status_code == 400 and "ranking" in refused.json()["error"]["message"]


def test_admins_change_sampling_and_queue_settings_and_bad_values_get_400():
    admin, annotator = make_user("admin"), make_user()
    project = make_project(members=[annotator], feedback_types=["pairwise", "ranking"])
    url = f"/api/projects/{project.pk}/"
    body = {"answers_per_prompt": 4, "temperature": 1.1, "top_p": 0.9, "max_tokens": 48, "queue_order": "uncertainty",
            "queue_epsilon": 0.2, "regenerate_share": 0.5}  # fmt: skip
    assert client_for(annotator).patch(url, body, format="json").status_code == 403
    changed = client_for(admin).patch(url, body, format="json")
    assert changed.status_code == 200, changed.json()
    assert {k: changed.json()[k] for k in body} == body
    project.refresh_from_db()
    assert (project.answers_per_prompt, project.queue_order, project.max_tokens) == (4, "uncertainty", 48)
    assert client_for(annotator).get(url).json()["temperature"] == 1.1  # members read them
    for bad, field in [
        ({"answers_per_prompt": 10}, "answers_per_prompt"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"queue_order": "loudest"}, "queue_order"),
        ({"regenerate_share": 2}, "regenerate_share"),
        ({"feedback_types": ["pairwise"]}, "answers_per_prompt"),  # 4 answers need ranking items
        ({"members": ["x"]}, "members"),
        ({"temprature": 1}, "temprature"),
    ]:
        response = client_for(admin).patch(url, bad, format="json")
        assert response.status_code == 400, (bad, response.json())
        assert field in json.dumps(response.json()["error"]), (bad, response.json())
    project.refresh_from_db()
    assert project.answers_per_prompt == 4 and project.feedback_types == ["pairwise", "ranking"]  # nothing lost
    assert client_for(admin).put(url, body, format="json").status_code == 405


def test_a_refresh_replaces_only_unserved_policy_items_that_an_older_version_wrote():
    v1 = make_serving_version()
    project = make_project(feedback_types=["pairwise"])
    stale = _answered_by(make_task(project=project, question="Old?"), v1)
    served = _answered_by(make_task(project=project, question="Served?"), v1)
    Assignment.objects.create(task=served, annotator=make_user(), expires_at=timezone.now() + timedelta(minutes=5))
    _answered_by(make_task(project=project, question="Gold?", is_gold=True, gold={"choice": "a"}), v1)
    make_task(project=project, question="Written by people?")  # human answers: not the policy's to refresh
    v2 = version_promote(version=version_register(artifact_path="/nonexistent/v2", base_model="tiny", parent=v1))
    fresh = _answered_by(make_task(project=project, question="New?"), v2)
    assert list(tasks_stale(project, v2)) == [stale]
    assert fresh not in tasks_stale(project, v2)

    other = make_project(name="Nothing stale", feedback_types=["pairwise"])
    _answered_by(make_task(project=other), v2)
    quiet = make_project(name="Keeps its items", feedback_types=["pairwise"], regenerate_share=0.0)
    _answered_by(make_task(project=quiet), v1)
    jobs = refresh_after_promotion(version=v2)
    assert [(j.project, j.kind) for j in jobs] == [(project, "refresh")]


def test_importing_prompts_queues_their_answers(tmp_path):
    admin = make_user("admin")
    project = make_project(feedback_types=["pairwise"])
    lines = [{"prompt": "Name a colour.", "id": "p1"}, {"prompt": "Name a fruit.", "id": "p2"}]
    upload = io.BytesIO("\n".join(json.dumps(x) for x in lines).encode())
    upload.name = "prompts.jsonl"
    response = client_for(admin).post(
        f"/api/projects/{project.pk}/import/", {"file": upload, "format": "jsonl"}, format="multipart"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["created_prompts"] == 2
    job = GenerationJob.objects.get()
    assert job.project == project and job.status == "queued"
    assert prompts_open(project).count() == 2


def test_a_policy_server_that_is_down_fails_the_job_clearly_and_leaves_the_prompts_open(settings):
    settings.POLICY_SERVER_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.POLICY_TIMEOUT_S = 5
    make_serving_version()
    project = make_project(feedback_types=["pairwise"])
    Prompt.objects.create(project=project, messages=[{"role": "user", "content": "Hello?"}], source="api")
    job = generation_job_create(project=project)
    done = generation_job_run(job_id=job.pk)
    assert done.status == "failed" and "policy server" in done.error
    assert (done.prompts_total, done.prompts_done, done.failed, done.tasks_created) == (1, 1, 1, 0)
    assert prompts_open(project).count() == 1  # a later job answers it
    assert generation_job_run(job_id=job.pk) is None  # a second delivery of the message does nothing


def test_a_job_without_a_serving_version_fails_with_the_reason():
    project = make_project(feedback_types=["pairwise"])
    job = generation_job_run(job_id=generation_job_create(project=project).pk)
    assert job.status == "failed" and "no policy version is serving" in job.error


def test_jobs_the_broker_lost_are_sent_again_and_jobs_whose_worker_died_run_again(settings):
    settings.RUN_STALE_S, settings.RUN_RESEND_S = 60, 60
    project = make_project(feedback_types=["pairwise"])
    waiting = generation_job_create(project=project)
    GenerationJob.objects.filter(pk=waiting.pk).update(enqueued_at=None)  # the broker never took it
    now = timezone.now()
    running = {"project": project, "kind": "refresh", "status": "running", "attempts": 1}
    lost = GenerationJob.objects.create(**running, started_at=now, heartbeat_at=now - timedelta(hours=1))
    alive = GenerationJob.objects.create(**running, started_at=now - timedelta(minutes=30), heartbeat_at=now)
    report = jobs_reap()
    assert report["requeued"] == [job_label(lost)] and job_label(waiting) in report["sent"]
    lost.refresh_from_db()
    assert lost.status == "queued" and "the worker was lost" in lost.error  # its batches stay; the rest is redone
    alive.refresh_from_db()
    assert alive.status == "running"  # 30 minutes in, but its heartbeat is fresh: never sent again


def test_the_dashboard_shows_generation_and_queues_it_for_a_project():
    admin = make_user("admin")
    project = make_project(name="Answers", feedback_types=["pairwise"])
    client = Client()
    client.force_login(admin)
    page = client.get("/dashboard/")
    assert page.status_code == 200 and b"Answers from the policy" in page.content
    queued = client.post("/dashboard/generation/new/", {"project": project.pk}, HTTP_HX_REQUEST="true")
    assert queued.status_code == 200 and b"generation-" in queued.content
    assert GenerationJob.objects.filter(project=project).count() == 1
    assert client.post("/dashboard/generation/new/", {"project": "x"}).status_code == 400
    Project.objects.filter(pk=project.pk).update(answers_per_prompt=3)
    shown = client.post("/dashboard/generation/new/", {"project": project.pk}, HTTP_HX_REQUEST="true")
    assert b"ranking" in shown.content and GenerationJob.objects.count() == 1


# -- the queue's orders


def test_uncertainty_serves_the_most_informative_item_first_with_a_random_share():
    project = make_project(queue_order="uncertainty", queue_epsilon=0.0)
    tasks = [make_task(project=project, question=f"Q{i}?") for i in range(6)]
    for task, priority in zip(tasks, [0.1, 0.9, 0.3, 0.0, 0.5, 0.7], strict=True):
        Task.objects.filter(pk=task.pk).update(priority=priority)
    served = [assignments.assignment_next(project=project, annotator=make_user()).task_id for _ in range(6)]
    by_priority = [t.pk for t in sorted(tasks, key=lambda t: -Task.objects.get(pk=t.pk).priority)]
    assert served == by_priority

    Project.objects.filter(pk=project.pk).update(queue_epsilon=1.0)  # every item at random
    project.refresh_from_db()
    first = set()
    for seed in range(12):  # the first item served from a full queue, by twelve seeds
        Assignment.objects.all().delete()
        Task.objects.update(taken=0)
        first.add(assignments.assignment_next(project=project, annotator=make_user(), rng=random.Random(seed)).task_id)
    assert len(first) > 1  # not always the top item


def test_random_order_serves_every_item_once_in_no_fixed_order():
    project = make_project(queue_order="random")
    tasks = [make_task(project=project, question=f"Q{i}?") for i in range(20)]
    served = [
        assignments.assignment_next(project=project, annotator=make_user(), rng=random.Random(s)).task_id
        for s in range(20)
    ]
    assert sorted(served) == sorted(t.pk for t in tasks)  # each once: nobody told "nothing left" early
    assert served != sorted(served)
    assert assignments.assignment_next(project=project, annotator=make_user()) is None


def test_oldest_first_serves_one_person_exactly_in_the_queues_order():
    project = make_project()  # queue_order fifo
    tasks = [make_task(project=project, question=f"Q{i}?") for i in range(8)]
    served = [assignments.assignment_next(project=project, annotator=make_user()).task_id for _ in range(8)]
    assert served == [t.pk for t in tasks]
