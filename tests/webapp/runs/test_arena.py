"""The version arena in the web app (webapp.runs.arena): blind items, the leaderboard, and the
arena gate's decisions. A worker writing the answers is in tests/e2e/test_generation.py."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.factories import make_project, make_serving_version, make_task, make_user
from tests.webapp.api.test_api import client_for
from webapp.feedback.generation import arena_job_create
from webapp.feedback.models import Candidate, GenerationJob, Label, Prompt, Task
from webapp.runs.arena import arena_board, arena_comparisons, arena_gates_check, arena_verdict
from webapp.runs.models import ModelVersion
from webapp.runs.services import version_gate_record, version_register

pytestmark = pytest.mark.django_db


def _versions():
    v1 = make_serving_version()
    v2 = version_register(artifact_path="/nonexistent/v2", base_model="tiny", parent=v1)
    return v1, v2


def _arena_item(project, first, second, *, question="Which?"):
    """An arena item as a job makes it: answer A by `first`, answer B by `second`."""
    task = make_task(project=project, question=question, texts=(f"by {first}", f"by {second}"))
    Task.objects.filter(pk=task.pk).update(arena=True)
    for slot, version in zip(task.slots.order_by("position"), (first, second), strict=True):
        Candidate.objects.filter(pk=slot.candidate_id).update(policy_version=version, origin="policy")
    return task


def _judge(task, choice):
    return Label.objects.create(task=task, annotator=make_user(), kind="pairwise", choice=choice)


def test_judgments_of_arena_items_are_comparisons_from_side_a():
    v1, v2 = _versions()
    project = make_project(feedback_types=["pairwise"])
    _judge(_arena_item(project, v2, v1), "a")  # v2 shown as A and preferred
    _judge(_arena_item(project, v1, v2), "b")  # v2 shown as B and preferred
    _judge(_arena_item(project, v1, v2), "tie")
    _judge(_arena_item(project, v1, v2), "both_bad")
    _judge(make_task(project=project), "a")  # not an arena item
    comparisons = arena_comparisons(project=project)
    assert sorted(comparisons) == sorted([("v2", "v1", 1.0), ("v1", "v2", 0.0), ("v1", "v2", 0.5), ("v1", "v2", 0.5)])
    board = arena_board(project=project)
    assert board["comparisons"] == 4
    assert [r["name"] for r in board["versions"]] == ["v2", "v1"]
    assert board["versions"][0]["wins"] == 2 and board["versions"][0]["ties"] == 2
    assert board["versions"][0]["status"] == "candidate"


def test_annotators_never_see_which_version_wrote_an_arena_answer():
    v1, v2 = _versions()
    ann, admin = make_user(), make_user("admin")
    project = make_project(members=[ann], feedback_types=["pairwise"])
    arena = _arena_item(project, v2, v1)
    plain = make_task(project=project, question="Plain?")
    Candidate.objects.filter(prompt=plain.prompt).update(policy_version=v1)
    seen = {}
    for _ in range(2):  # both items, in the queue's order
        served = client_for(ann).post(f"/api/projects/{project.pk}/next/").json()
        seen[served["task"]["id"]] = [c["policy_version"] for c in served["task"]["candidates"]]
        client_for(ann).post(f"/api/assignments/{served['id']}/submit/", {"choice": "a"}, format="json")
    assert seen == {arena.pk: [None, None], plain.pk: [1, 1]}  # only the arena's versions are hidden
    as_admin = client_for(admin).get(f"/api/tasks/{arena.pk}/").json()
    assert [c["policy_version"] for c in as_admin["candidates"]] == [2, 1]


def test_admins_queue_arena_comparisons_and_read_the_leaderboard():
    v1, v2 = _versions()
    admin, ann = make_user("admin"), make_user()
    project = make_project(members=[ann], feedback_types=["pairwise"])
    for i in range(5):
        Prompt.objects.create(project=project, messages=[{"role": "user", "content": f"Q{i}?"}], source="api")
    url = f"/api/projects/{project.pk}/arena/"
    assert client_for(ann).post(url, {"versions": [2, 1]}, format="json").status_code == 403
    queued = client_for(admin).post(url, {"versions": [2, 1], "prompts": 3}, format="json")
    assert queued.status_code == 202, queued.json()
    job = GenerationJob.objects.get(pk=queued.json()["id"])
    assert job.kind == "arena" and job.versions == [v2.pk, v1.pk] and len(job.prompt_ids) == 3
    newest = sorted(Prompt.objects.filter(project=project).order_by("-id").values_list("id", flat=True)[:3])
    assert job.prompt_ids == newest
    for bad, message in [
        ({"versions": [2, 2]}, "two different versions"),
        ({"versions": [2, 9]}, "no version 9"),
        ({"versions": [2]}, "versions"),
        ({"versions": [2, 1], "prompts": 0}, "prompts"),
    ]:
        response = client_for(admin).post(url, bad, format="json")
        assert response.status_code == 400 and message in str(response.json()), (bad, response.json())
    ratings = make_project(name="Ratings only", feedback_types=["rating"])
    refused = client_for(admin).post(f"/api/projects/{ratings.pk}/arena/", {"versions": [2, 1]}, format="json")
    assert refused.status_code == 400 and "pairwise" in refused.json()["error"]["message"]
    board = client_for(admin).get(url)
    assert board.status_code == 200 and board.json() == {"comparisons": 0, "versions": []}
    assert client_for(ann).get(url).status_code == 403


def test_the_dashboard_shows_the_leaderboard_and_queues_comparisons():
    v1, v2 = _versions()
    admin = make_user("admin")
    project = make_project(name="Arena", feedback_types=["pairwise"])
    Prompt.objects.create(project=project, messages=[{"role": "user", "content": "Q?"}], source="api")
    for _ in range(3):
        _judge(_arena_item(project, v2, v1), "a")
    page = Client()
    page.force_login(admin)
    shown = page.get(f"/dashboard/projects/{project.pk}/arena/")
    assert shown.status_code == 200 and b'id="arena-v2"' in shown.content and b"3 / 0 / 0" in shown.content
    queued = page.post(f"/dashboard/projects/{project.pk}/arena/", {"first": 2, "second": 1, "prompts": 5})
    assert queued.status_code == 200 and b"Queued" in queued.content
    assert GenerationJob.objects.filter(kind="arena", project=project).count() == 1
    same = page.post(f"/dashboard/projects/{project.pk}/arena/", {"first": 2, "second": 2, "prompts": 5})
    assert same.status_code == 400 and b"Choose two different versions" in same.content


def test_the_arena_gate_waits_while_intervals_overlap_and_rejects_a_clear_loser():
    v1, v2 = _versions()
    project = make_project(feedback_types=["pairwise"])
    Prompt.objects.create(project=project, messages=[{"role": "user", "content": "Q?"}], source="api")
    job = arena_job_create(project=project, versions=(v2, v1), prompts=1)
    version_gate_record(
        version=v2,
        gate={
            "verdict": "waiting",
            "reason": "checks passed",
            "arena": {"against": 1, "job": job.pk, "project": project.pk},
        },
    )
    assert arena_verdict(project=project, candidate=v2, serving=v1)[0] == "waiting"  # no judgment yet
    for choice in ("b", "a", "b"):
        _judge(_arena_item(project, v2, v1, question=f"Q{choice}?"), choice)
    assert arena_gates_check() == {"served": [], "rejected": []}  # three judgments: the intervals overlap
    for i in range(40):
        _judge(_arena_item(project, v2, v1, question=f"More {i}?"), "b" if i % 8 else "a")
    verdict, note = arena_verdict(project=project, candidate=v2, serving=v1)
    assert verdict == "rejected" and "43 comparisons" in note
    assert arena_gates_check() == {"served": [], "rejected": [2]}
    v2.refresh_from_db()
    assert v2.status == ModelVersion.Status.REJECTED and "arena over 43 comparisons" in v2.gate["reason"]
    assert v2.events.filter(action="reject").exists()


def test_the_prompts_author_cannot_read_an_arenas_versions_through_the_candidates_api():
    v1, v2 = _versions()
    author, admin = make_user(username="author"), make_user("admin")
    project = make_project(members=[author], feedback_types=["pairwise"])
    arena = _arena_item(project, v2, v1)
    Prompt.objects.filter(pk=arena.prompt_id).update(created_by=author)
    plain = make_task(project=project, question="Plain?", created_by=author)
    Candidate.objects.filter(prompt=plain.prompt).update(policy_version=v1)
    seen = client_for(author).get("/api/candidates/").json()["results"]
    versions = {(c["prompt"], c["text"]): c["policy_version"] for c in seen}
    assert versions == {
        (arena.prompt_id, "by v2"): None, (arena.prompt_id, "by v1"): None,
        (plain.prompt_id, "first answer"): 1, (plain.prompt_id, "second answer"): 1,
    }  # fmt: skip
    as_admin = client_for(admin).get("/api/candidates/", {"prompt": arena.prompt_id}).json()["results"]
    assert sorted(c["policy_version"] for c in as_admin) == [1, 2]
