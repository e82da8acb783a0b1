"""REST API behaviour that needs no policy server: auth, validation, idempotency, permissions, schema."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.factories import make_heads_reward_model, make_pairwise_task, make_serving_version, make_user
from webapp.accounts.services import token_for_user
from webapp.feedback.models import Label, Prompt
from webapp.runs.models import TrainingRun

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for_user(user=user)}")
    return client


def test_requests_without_a_token_get_401():
    response = APIClient().get("/api/prompts/")
    assert response.status_code == 401
    assert response.json()["error"]["message"]


def test_token_endpoint_gives_a_working_token():
    make_user(username="ann", password="s3cret-pass")
    response = APIClient().post("/api/auth/token/", {"username": "ann", "password": "s3cret-pass"}, format="json")
    assert response.status_code == 200
    token = response.json()["token"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/prompts/").status_code == 200


def test_create_prompt_from_text_or_messages():
    client = client_for(make_user())
    r1 = client.post("/api/prompts/", {"text": "Hello?"}, format="json")
    r2 = client.post(
        "/api/prompts/",
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "How are you?"},
            ]
        },
        format="json",
    )
    assert (r1.status_code, r2.status_code) == (201, 201)
    assert r1.json()["messages"] == [{"role": "user", "content": "Hello?"}]
    assert len(r2.json()["messages"]) == 3
    listed = client.get("/api/prompts/").json()
    assert listed["count"] == 2


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param({}, "exactly one", id="nothing"),
        pytest.param({"text": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one", id="both"),
        pytest.param(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "last message",
            id="ends-with-assistant",
        ),
        pytest.param({"messages": [{"role": "wizard", "content": "q"}]}, "wizard", id="bad-role"),
        pytest.param({"messages": "not a list"}, "list", id="not-a-list"),
    ],
)
def test_bad_prompts_get_400_with_a_clear_message_and_store_nothing(body, fragment):
    response = client_for(make_user()).post("/api/prompts/", body, format="json")
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]
    assert Prompt.objects.count() == 0


def test_malformed_json_is_a_400_not_a_500():
    response = client_for(make_user()).post("/api/prompts/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]


def test_label_submit_new_repeat_and_conflict():
    user = make_user()
    task = make_pairwise_task(created_by=user)
    client = client_for(user)
    first = client.post("/api/labels/", {"task": task.pk, "choice": "a", "strength": 2}, format="json")
    repeat = client.post("/api/labels/", {"task": task.pk, "choice": "a", "strength": 2}, format="json")
    conflict = client.post("/api/labels/", {"task": task.pk, "choice": "b"}, format="json")
    assert (first.status_code, repeat.status_code, conflict.status_code) == (201, 200, 409)
    assert repeat.json()["id"] == first.json()["id"]
    assert conflict.json()["error"]["code"] == "already_labelled"
    assert Label.objects.get().choice == "a"


@pytest.mark.parametrize(
    "make_body",
    [
        pytest.param(lambda task_id: {"choice": "a"}, id="no-task"),
        pytest.param(lambda task_id: {"task": 999999, "choice": "a"}, id="unknown-task"),
        pytest.param(lambda task_id: {"task": task_id, "choice": "c"}, id="bad-choice"),
        pytest.param(lambda task_id: {"task": task_id, "choice": "a", "strength": 7}, id="bad-strength"),
    ],
)
def test_bad_labels_get_400(make_body):
    user = make_user()
    task = make_pairwise_task(created_by=user)
    response = client_for(user).post("/api/labels/", make_body(task.pk), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["message"]
    assert Label.objects.count() == 0


def test_annotators_cannot_label_or_see_other_peoples_tasks():
    owner, other = make_user(), make_user()
    task = make_pairwise_task(created_by=owner)
    response = client_for(other).post("/api/labels/", {"task": task.pk, "choice": "a"}, format="json")
    assert response.status_code == 404
    assert client_for(other).get(f"/api/tasks/{task.pk}/").status_code == 404
    assert client_for(owner).get(f"/api/tasks/{task.pk}/").json()["candidates"][0]["text"] == "first answer"


def test_only_admins_launch_runs_and_a_second_launch_returns_the_active_run(django_capture_on_commit_callbacks):
    make_serving_version()
    annotator, admin = make_user(), make_user("admin")
    assert client_for(annotator).post("/api/runs/").status_code == 403
    with django_capture_on_commit_callbacks():
        first = client_for(admin).post("/api/runs/")
        second = client_for(admin).post("/api/runs/")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["status"] == "queued"
    assert client_for(admin).get(f"/api/runs/{first.json()['id']}/").json()["trigger"] == TrainingRun.Trigger.API
    assert client_for(annotator).get(f"/api/runs/{first.json()['id']}/").status_code == 403  # training internals


def test_launching_a_reward_model_run_and_bad_kinds(django_capture_on_commit_callbacks):
    admin = make_user("admin")
    with django_capture_on_commit_callbacks() as callbacks:
        reward = client_for(admin).post("/api/runs/", {"kind": "reward"}, format="json")
        dpo = client_for(admin).post("/api/runs/", {}, format="json")
    assert (reward.status_code, dpo.status_code) == (201, 201)
    assert (reward.json()["kind"], dpo.json()["kind"]) == ("reward", "dpo")
    assert len(callbacks) == 2
    bad = client_for(admin).post("/api/runs/", {"kind": "ppo"}, format="json")
    assert bad.status_code == 400
    assert bad.json()["error"]["fields"]["kind"]
    assert TrainingRun.objects.count() == 2
    assert client_for(admin).get("/api/reward-models/").json()["results"] == []
    make_heads_reward_model(3)
    (listed,) = client_for(admin).get("/api/reward-models/").json()["results"]
    assert (listed["name"], listed["member_paths"], listed["n_members"]) == ("rm1", [""], 3)


def test_versions_list_shows_the_serving_version():
    make_serving_version()
    data = client_for(make_user("admin")).get("/api/versions/").json()
    assert [(v["name"], v["status"]) for v in data["results"]] == [("v1", "serving")]


def test_openapi_schema_and_docs_page_are_served():
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in [
        "/api/prompts/",
        "/api/prompts/{prompt_id}/tasks/",
        "/api/labels/",
        "/api/runs/",
        "/api/versions/",
        "/api/reward-models/",
    ]:
        assert path in paths
    docs = APIClient().get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()
