"""Generation as work of its own, end to end: prompts sent through the API are answered by a real
Celery worker on the `generate` queue, with the project's sampling settings, by the built-in policy
server over HTTP; after a promotion, unserved items get the new version's answers."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.conftest import serve_version_one
from tests.factories import make_project, make_task, make_user
from webapp.feedback.models import Assignment, Candidate, GenerationJob, Task
from webapp.runs.services import version_register

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _login(api: httpx.Client, username: str) -> dict[str, str]:
    token = api.post("/auth/token/", json={"username": username, "password": f"{username}-password"}).json()["token"]
    return {"Authorization": f"Token {token}"}


def _finished(api: httpx.Client, headers: dict[str, str], job_id: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    job = api.get(f"/generation-jobs/{job_id}/", headers=headers).json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = api.get(f"/generation-jobs/{job_id}/", headers=headers).json()
    return job


def test_a_worker_answers_open_prompts_with_each_projects_sampling_settings(
    live_server, loop_settings, loop_files, builtin_policy_server, start_worker
):
    from transformers import AutoTokenizer

    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    serve_version_one(files=loop_files)
    ann = make_user(username="ann", password="ann-password")
    make_user("admin", username="boss", password="boss-password")
    pairs = make_project(name="Pairs", members=[ann], feedback_types=["pairwise"], temperature=1.0, max_tokens=6)
    lists = make_project(name="Lists", members=[ann], feedback_types=["ranking"], answers_per_prompt=4, max_tokens=6)
    start_worker(policy_url=builtin_policy_server, files=loop_files, queues="generate")
    api = httpx.Client(base_url=f"{live_server.url}/api", timeout=60)
    ann_h, boss = _login(api, "ann"), _login(api, "boss")

    questions = [{"text": f"Tell me about the number {i}.", "project": pairs.pk} for i in range(10)]
    sent = api.post("/prompts/", json=questions, headers=ann_h)
    assert sent.status_code == 201, sent.text
    api.post("/prompts/", json=[{"text": f"Name a colour, {i}.", "project": lists.pk} for i in range(3)], headers=ann_h)
    jobs = {j["project"]: j for j in api.get("/generation-jobs/", headers=boss).json()["results"]}
    done = {project: _finished(api, boss, job["id"]) for project, job in jobs.items()}
    assert done[pairs.pk]["status"] == "succeeded", done[pairs.pk]
    assert (done[pairs.pk]["prompts_total"], done[pairs.pk]["prompts_done"], done[pairs.pk]["tasks_created"]) == (
        10, 10, 10,
    )  # fmt: skip
    assert done[pairs.pk]["policy_version"] == 1 and done[pairs.pk]["failed"] == 0
    assert done[lists.pk]["status"] == "succeeded" and done[lists.pk]["tasks_created"] == 3

    tokenizer = AutoTokenizer.from_pretrained(str(loop_files.base_model))
    for project, kind, k in ((pairs, "pairwise", 2), (lists, "ranking", 4)):
        items = list(Task.objects.filter(project=project).prefetch_related("slots__candidate"))
        assert items and all(t.kind == kind and t.slots.count() == k for t in items)
        answers = [s.candidate for t in items for s in t.slots.all()]
        assert {(c.origin, c.policy_version.number) for c in answers} == {("policy", 1)}
        # max_tokens=6 reached the server: decoded text tokenized again may split a little differently
        lengths = [len(tokenizer(c.text, add_special_tokens=False).input_ids) for c in answers]
        assert max(lengths) <= 8 and sum(lengths) / len(lengths) <= 6.5, lengths
    # pairs at temperature 1.0 are different texts (twins are resampled hotter)
    distinct = [len({s.candidate.text for s in t.slots.all()}) for t in Task.objects.filter(project=pairs)]
    assert sum(distinct) >= 18, distinct
    served = api.post(f"/projects/{pairs.pk}/next/", headers=ann_h)  # the items are in the queue at once
    assert served.status_code == 200 and served.json()["task"]["kind"] == "pairwise"


def test_after_a_promotion_unserved_items_get_the_new_versions_answers_and_served_ones_stay(
    live_server, loop_settings, loop_files, builtin_policy_server, start_worker
):
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    v1 = serve_version_one(files=loop_files)
    ann = make_user(username="ann", password="ann-password")
    make_user("admin", username="boss", password="boss-password")
    every = make_project(name="Every item", members=[ann], feedback_types=["pairwise"], max_tokens=6)
    half = make_project(name="Half", members=[ann], feedback_types=["pairwise"], regenerate_share=0.5, max_tokens=6)
    for project in (every, half):
        for i in range(4):
            task = make_task(project=project, question=f"{project.name} {i}?", texts=("Old one.", "Old two."))
            Candidate.objects.filter(prompt=task.prompt).update(policy_version=v1, origin=Candidate.Origin.POLICY)
    api = httpx.Client(base_url=f"{live_server.url}/api", timeout=60)
    ann_h, boss = _login(api, "ann"), _login(api, "boss")
    held = api.post(f"/projects/{every.pk}/next/", headers=ann_h).json()  # one item is being judged
    held_task = held["task"]["id"]

    start_worker(policy_url=builtin_policy_server, files=loop_files, queues="generate")
    v2 = version_register(artifact_path=str(loop_files.v1_adapter), base_model=str(loop_files.base_model), parent=v1)
    promoted = api.post(f"/versions/{v2.pk}/promote/", json={"reason": "try v2"}, headers=boss)
    assert promoted.status_code == 200, promoted.text
    jobs = {j.project_id: j for j in GenerationJob.objects.filter(kind="refresh")}
    assert set(jobs) == {every.pk, half.pk}
    done = {p: _finished(api, boss, job.pk) for p, job in jobs.items()}
    assert done[every.pk]["status"] == "succeeded" and done[every.pk]["tasks_created"] == 3, done[every.pk]
    assert done[half.pk]["tasks_created"] == 2 and done[half.pk]["prompts_total"] == 2  # the project's share

    def versions(project):
        return sorted(
            {s.candidate.policy_version.number for s in t.slots.select_related("candidate__policy_version")}.pop()
            for t in Task.objects.filter(project=project)
        )

    assert versions(every) == [1, 2, 2, 2] and versions(half) == [1, 1, 2, 2]
    assert Task.objects.filter(pk=held_task).exists()  # the item being judged was not taken away
    assert Assignment.objects.get(task_id=held_task).status == "leased"
    submitted = api.post(f"/assignments/{held['id']}/submit/", json={"choice": "a"}, headers=ann_h)
    assert submitted.status_code == 201, submitted.text
    assert Task.objects.filter(project=every).count() == 4  # one item per prompt, none lost


@pytest.mark.django_db(transaction=True)
def test_an_arena_never_asks_people_to_compare_two_equal_answers(loop_settings, loop_files, builtin_policy_server):
    from webapp.feedback.generation import _arena_pair
    from webapp.runs import policy

    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    v1 = serve_version_one(files=loop_files)
    twin = version_register(artifact_path=v1.artifact_path, base_model=v1.base_model, parent=v1)  # the same weights
    policy.adapter_load(twin)
    project = make_project(name="Twins", feedback_types=["pairwise"], temperature=0.0, max_tokens=8)
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    greedy = [policy.generate(messages, n=1, version=v, temperature=0.0, max_tokens=8)[0] for v in (v1, twin)]
    assert greedy[0] == greedy[1]  # the same weights, greedy: the arena would have shown two equal answers
    pair = _arena_pair(messages, project=project, writers=[v1, twin])
    # sampled again, hotter, until they differ; a server that samples the same weights alike even hot
    # (the built-in one may) gives no pair at all: never two equal answers to compare
    assert pair == [] or (len(pair) == 2 and pair[0].strip() != pair[1].strip()), pair
