"""REST API for projects, the queue, every judgment kind, bulk uploads, filters and thumbs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.factories import make_project, make_serving_version, make_task, make_user
from tests.webapp.api.test_api import client_for
from webapp.feedback import services
from webapp.feedback.models import Label, MessageFeedback, Prompt, Task

pytestmark = pytest.mark.django_db


def test_admins_create_projects_and_bad_settings_get_400():
    admin, annotator = make_user("admin"), make_user()
    body = {"name": "Helpfulness", "feedback_types": ["pairwise", "ranking"], "overlap": 3, "gold_rate": 0.1}
    assert client_for(admin).get("/api/projects/").json()["count"] == 0
    assert client_for(annotator).post("/api/projects/", body, format="json").status_code == 403
    created = client_for(admin).post("/api/projects/", body, format="json")
    assert created.status_code == 201 and created.json()["overlap"] == 3
    for bad in ({"feedback_types": ["telepathy"]}, {"overlap": 0}, {"gold_rate": 1.5}):
        response = client_for(admin).post("/api/projects/", {**body, "name": "x", **bad}, format="json")
        assert response.status_code == 400, bad
        assert response.json()["error"]["fields"]
    assert client_for(annotator).get("/api/projects/").json()["results"] == []  # membership is explicit
    with_members = client_for(admin).post(
        "/api/projects/", {**body, "name": "Harmlessness", "members": [annotator.username]}, format="json"
    )
    assert with_members.status_code == 201, with_members.json()
    listed = client_for(annotator).get("/api/projects/").json()["results"]
    assert [p["name"] for p in listed] == ["Harmlessness"]
    unknown = client_for(admin).post("/api/projects/", {**body, "name": "x", "members": ["ghost"]}, format="json")
    assert unknown.status_code == 400 and "ghost" in unknown.json()["error"]["message"]


def test_queue_next_submit_with_idempotency_key_then_empty():
    person = make_user()
    project = make_project(overlap=1, members=[person])
    task = make_task(project=project, kind="ranking", texts=("x", "y", "z"))
    client = client_for(person)
    served = client.post(f"/api/projects/{project.pk}/next/")
    assert served.status_code == 200
    body = served.json()
    assert body["task"]["id"] == task.pk and "gold" not in body["task"]
    ids = [c["id"] for c in body["task"]["candidates"]]
    judgment = {"ranking": [[ids[1]], [ids[0], ids[2]]]}
    url = f"/api/assignments/{body['id']}/submit/"
    first = client.post(url, judgment, format="json", HTTP_IDEMPOTENCY_KEY="retry-1")
    again = client.post(url, judgment, format="json", HTTP_IDEMPOTENCY_KEY="retry-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and first.json()["ranking"] == [[ids[1]], [ids[0], ids[2]]]
    assert Label.objects.count() == 1
    assert client.post(f"/api/projects/{project.pk}/next/").status_code == 204


def test_submit_and_next_labels_and_serves_the_next_task_in_one_request():
    person = make_user()
    project = make_project(overlap=1, members=[person])
    first, second = (make_task(project=project, question=q) for q in ("One?", "Two?"))
    client = client_for(person)
    served = client.post(f"/api/projects/{project.pk}/next/").json()
    url = f"/api/assignments/{served['id']}/submit-and-next/"
    answer = client.post(url, {"choice": "a", "strength": 2}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert answer.status_code == 201
    body = answer.json()
    assert body["submitted"]["choice"] == "a" and body["submitted"]["task"] == served["task"]["id"]
    following = body["next"]
    assert {served["task"]["id"], following["task"]["id"]} == {first.pk, second.pk}
    # a retry of the same submit answers the same label and the task served since, and adds nothing
    again = client.post(url, {"choice": "a", "strength": 2}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert again.status_code == 200 and again.json() == body
    assert Label.objects.count() == 1
    # a different judgment of the same task is refused, as a plain submit refuses it
    assert client.post(url, {"choice": "b"}, format="json").status_code == 409
    last = client.post(f"/api/assignments/{following['id']}/submit-and-next/", {"choice": "b"}, format="json")
    assert last.status_code == 201 and last.json()["next"] is None  # nothing left
    assert (
        client.post(f"/api/assignments/{following['id']}/submit-and-next/", {"choice": 7}, format="json").status_code
        == 400
    )
    assert Label.objects.count() == 2


def test_bad_judgments_get_400_and_store_nothing():
    person = make_user()
    project = make_project(members=[person])
    make_task(project=project, kind="ranking", texts=("x", "y", "z"))
    client = client_for(person)
    assignment = client.post(f"/api/projects/{project.pk}/next/").json()
    url = f"/api/assignments/{assignment['id']}/submit/"
    for bad, fragment in [
        ({"ranking": [[10**9]]}, "not a candidate"),
        ({"ranking": "first"}, "non-empty list"),
        ({"rating": 12}, "rating"),
    ]:
        response = client.post(url, bad, format="json")
        assert response.status_code == 400 and fragment in response.json()["error"]["message"], response.json()
    assert Label.objects.count() == 0


def test_skip_with_reason():
    person = make_user()
    project = make_project(members=[person])
    make_task(project=project)
    client = client_for(person)
    assignment = client.post(f"/api/projects/{project.pk}/next/").json()
    assert client.post(f"/api/assignments/{assignment['id']}/skip/", {}, format="json").status_code == 400
    skipped = client.post(f"/api/assignments/{assignment['id']}/skip/", {"reason": "offensive"}, format="json")
    assert skipped.status_code == 200 and skipped.json()["status"] == "skipped"
    assert client.post(f"/api/projects/{project.pk}/next/").status_code == 204


def test_bulk_tasks_are_all_or_nothing_and_rerun_skips_known_ids():
    project = make_project()
    admin = client_for(make_user("admin"))
    items = [
        {"text": "Q1", "kind": "pairwise", "candidates": ["a1", "b1"], "external_id": "q1"},
        {"text": "Q2", "kind": "ranking", "candidates": ["r1", "r2", "r3"], "external_id": "q2"},
        {"text": "Q3", "kind": "critique", "candidates": ["c1"], "external_id": "q3"},
        {"text": "Q4", "kind": "pairwise", "candidates": ["g1", "g2"], "is_gold": True, "gold": {"choice": "a"}},
    ]
    first = admin.post("/api/tasks/bulk/", {"project": project.pk, "items": items}, format="json")
    assert first.status_code == 201, first.json()
    assert len(first.json()["created"]) == 4
    again = admin.post("/api/tasks/bulk/", {"project": project.pk, "items": items[:3]}, format="json")
    assert again.json() == {"created": [], "skipped": ["q1", "q2", "q3"]}
    ranking = Task.objects.get(kind="ranking")
    assert [s.candidate.text for s in ranking.slots.select_related("candidate")] == ["r1", "r2", "r3"]

    bad = [*items[:2], {"text": "Q5", "kind": "pairwise", "candidates": ["only one"]}]
    response = admin.post("/api/tasks/bulk/", {"project": project.pk, "items": bad}, format="json")
    assert response.status_code == 400 and "2 candidates" in response.json()["error"]["message"]
    too_many = [{"text": f"Q{i}", "kind": "rating", "candidates": ["x"]} for i in range(1001)]
    assert admin.post("/api/tasks/bulk/", {"project": project.pk, "items": too_many}, format="json").status_code == 400
    assert Task.objects.count() == 4
    assert (
        client_for(make_user())
        .post("/api/tasks/bulk/", {"project": project.pk, "items": items}, format="json")
        .status_code
        == 403
    )


def test_bulk_prompts_and_limits():
    client = client_for(make_user())
    rows = [{"text": f"question {i}"} for i in range(25)]
    response = client.post("/api/prompts/", rows, format="json")
    assert response.status_code == 201 and len(response.json()) == 25
    assert Prompt.objects.count() == 25
    bad = [*rows[:3], {"messages": [{"role": "assistant", "content": "no"}]}]
    assert client.post("/api/prompts/", bad, format="json").status_code == 400
    assert Prompt.objects.count() == 25


def test_label_filters_and_bad_filter_values():
    person = make_user()
    p1, p2 = make_project(), make_project()
    for project, kind, texts in [(p1, "pairwise", ("a", "b")), (p2, "rating", ("x",))]:
        task = make_task(project=project, kind=kind, texts=texts, created_by=person)
        data = {"choice": "a"} if kind == "pairwise" else {"rating": 5}
        client_for(person).post("/api/labels/", {"task": task.pk, **data}, format="json")
    client = client_for(person)
    assert client.get("/api/labels/", {"kind": "rating"}).json()["count"] == 1
    assert client.get("/api/labels/", {"project": p1.pk}).json()["results"][0]["choice"] == "a"
    assert client.get("/api/labels/", {"project": "abc"}).status_code == 400
    assert client.get("/api/tasks/", {"kind": "pairwise"}).json()["count"] == 1


def test_thumbs_on_own_chat_answers_only():
    make_serving_version()
    owner, other = make_user(), make_user()
    conv = services.conversation_create(owner=owner)
    _, reply = services.chat_turn_start(conversation=conv, text="hi")
    services.chat_reply_finish(message=reply, content="hello")
    url = f"/api/messages/{reply.pk}/thumbs/"
    assert client_for(other).post(url, {"value": "up"}, format="json").status_code == 404
    assert client_for(owner).post(url, {"value": "sideways"}, format="json").status_code == 400
    client_for(owner).post(url, {"value": "down", "reason": "too short"}, format="json")
    client_for(owner).post(url, {"value": "up"}, format="json")
    thumb = MessageFeedback.objects.get()
    assert (thumb.value, thumb.reason) == ("up", "")


def test_quality_endpoint_is_for_admins():
    project = make_project()
    assert client_for(make_user()).get(f"/api/projects/{project.pk}/quality/").status_code == 403
    body = client_for(make_user("admin")).get(f"/api/projects/{project.pk}/quality/").json()
    assert body["project"] == project.name and body["kinds"] == {}


def test_bulk_tasks_of_a_kind_the_project_does_not_ask_for_are_refused():
    project = make_project(feedback_types=["pairwise"])
    items = [{"text": "Q", "kind": "rating", "candidates": ["x"]}]
    response = client_for(make_user("admin")).post(
        "/api/tasks/bulk/", {"project": project.pk, "items": items}, format="json"
    )
    assert response.status_code == 400
    assert "does not ask for rating" in response.json()["error"]["message"]
    assert Task.objects.count() == 0


def test_import_and_export_through_the_api(tmp_path, client):
    project = make_project(feedback_types=["pairwise"])
    admin_user = make_user("admin", username="boss", password="boss-pass")
    admin = client_for(admin_user)
    lines = [
        '{"messages": [{"role": "user", "content": "Which is right?"}], "candidates": ["Paris", "Rome"], "id": "q1"}',
        "{oops",
        '{"prompt": "Only a prompt", "id": "q2"}',
    ]
    upload = tmp_path / "items.jsonl"
    upload.write_text("\n".join(lines) + "\n")
    with upload.open("rb") as handle:
        response = admin.post(
            f"/api/projects/{project.pk}/import/", {"file": handle, "format": "jsonl"}, format="multipart"
        )
    assert response.status_code == 200, response.content
    report = response.json()
    assert (report["created_tasks"], report["created_prompts"], report["bad_lines"]) == (1, 1, 1)
    assert report["bad"][0]["line"] == 2
    with upload.open("rb") as handle:
        bad = admin.post(f"/api/projects/{project.pk}/import/", {"file": handle, "format": "nope"}, format="multipart")
        assert bad.status_code == 400

    task = Task.objects.get(project=project)
    Label.objects.create(task=task, annotator=make_user(), kind="pairwise", choice="b", strength=3)
    exported = admin.get(f"/api/projects/{project.pk}/export/", {"kind": "preference"})
    assert exported.status_code == 200 and exported["Content-Type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in b"".join(exported.streaming_content).decode().splitlines()]
    assert rows == [
        {
            "prompt": [{"role": "user", "content": "Which is right?"}],
            "chosen": [{"role": "assistant", "content": "Rome"}],
            "rejected": [{"role": "assistant", "content": "Paris"}],
            "margin": 1.0,
        }
    ]
    assert admin.get(f"/api/projects/{project.pk}/export/", {"kind": "csv"}).status_code == 400
    assert client_for(make_user()).get(f"/api/projects/{project.pk}/export/", {"kind": "raw"}).status_code == 403

    client.force_login(admin_user)
    action = client.post("/admin/feedback/project/", {"action": "export_raw", "_selected_action": [project.pk]})
    assert action.status_code == 200
    raw = [json.loads(line) for line in b"".join(action.streaming_content).decode().splitlines()]
    assert [(r["choice"], r["strength"]) for r in raw] == [("b", 3)]


def test_a_large_import_runs_on_a_worker_with_counts_the_admin_can_watch(tmp_path, settings, client):
    from webapp.feedback.models import ImportJob
    from worker.tasks import import_feedback

    settings.PREFLOOP_IMPORT_INLINE_BYTES = 200  # this file is "large"
    settings.IMPORT_DIR = tmp_path / "imports"
    project = make_project(feedback_types=["pairwise"])
    admin_user = make_user("admin", username="boss")
    admin = client_for(admin_user)
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"Q {i}?"}], "candidates": ["a", "b"], "id": f"q{i}"})
        for i in range(30)
    ] + ['{"prompt": "a NUL \\u0000 here"}']
    upload = tmp_path / "items.jsonl"
    upload.write_text("\n".join(lines) + "\n")
    with upload.open("rb") as handle:
        queued = admin.post(
            f"/api/projects/{project.pk}/import/", {"file": handle, "format": "jsonl"}, format="multipart"
        )
    assert queued.status_code == 202, queued.content
    job = queued.json()
    assert (job["status"], job["file_name"], job["items"]) == ("queued", "items.jsonl", 0)
    stored = Path(ImportJob.objects.get(pk=job["id"]).path)
    assert stored.parent == tmp_path / "imports" and stored.stat().st_size == upload.stat().st_size

    client.force_login(admin_user)
    card = client.get("/dashboard/imports/").content.decode()
    assert f'id="import-{job["id"]}"' in card and "queued" in card and 'hx-trigger="every 2s"' in card

    import_feedback(job["id"])  # what the worker runs; a second delivery does nothing
    import_feedback(job["id"])
    done = admin.get(f"/api/imports/{job['id']}/").json()
    assert (done["status"], done["items"], done["created_tasks"], done["bad_lines"]) == ("succeeded", 30, 30, 1)
    assert Task.objects.filter(project=project).count() == 30 and not stored.exists()
    assert admin.get("/api/imports/", {"project": project.pk}).json()["results"][0]["id"] == job["id"]
    card = client.get("/dashboard/imports/").content.decode()
    assert "succeeded" in card and "every 2s" not in card  # nothing left to watch
    assert client_for(make_user()).get(f"/api/imports/{job['id']}/").status_code == 403


def test_a_ranking_gold_item_scores_the_annotators_top_answer_by_its_position():
    from webapp.feedback.models import Label

    project = make_project(feedback_types=["ranking"], gold_rate=1.0)
    admin = client_for(make_user("admin"))
    gold = {"text": "Best?", "kind": "ranking", "candidates": ["x", "y", "z"], "is_gold": True,
            "gold": {"ranking": [[2], [0, 1]]}}  # fmt: skip
    created = admin.post("/api/tasks/bulk/", {"project": project.pk, "items": [gold]}, format="json")
    assert created.status_code == 201, created.json()
    task = Task.objects.get(is_gold=True)
    ids = {s.candidate.text: s.candidate_id for s in task.slots.select_related("candidate")}
    scored = {}
    for name, top in (("right", "z"), ("wrong", "x")):
        person = make_user(username=name)
        project.members.add(person)
        client = client_for(person)
        served = client.post(f"/api/projects/{project.pk}/next/").json()
        assert served["task"]["id"] == task.pk
        rest = [ids[t] for t in ("x", "y", "z") if t != top]
        sent = client.post(f"/api/assignments/{served['id']}/submit/", {"ranking": [[ids[top]], rest]}, format="json")
        assert sent.status_code == 201, sent.json()
        scored[name] = Label.objects.get(annotator=person).gold_correct
    assert scored == {"right": True, "wrong": False}
    for bad in ({"ranking": [[0], [1]]}, {"ranking": [[0, 1, 2, 3]]}, {"choice": "a"}, ["z"]):
        item = {**gold, "text": "Again?", "gold": bad}
        answer = admin.post("/api/tasks/bulk/", {"project": project.pk, "items": [item]}, format="json")
        assert answer.status_code == 400 and "gold" in answer.content.decode(), bad
