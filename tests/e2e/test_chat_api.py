"""The chat over the REST API, against the built-in policy server (a real process over HTTP): a
conversation with a system prompt, answers streamed as server-sent events, a regenerated sibling,
an edited first turn on a branch of its own, a ranking of the siblings, a version an admin picks,
and what a client sees when the answer cannot be written."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from tests.e2e.conftest import serve_version_one
from tests.factories import make_user
from webapp.accounts.models import User
from webapp.accounts.services import token_for_user
from webapp.feedback.models import Label, Message
from webapp.runs.services import version_register

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def _events(response) -> list[tuple[str, dict]]:
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    body = b"".join(response.streaming_content) if response.streaming else response.content
    events = []
    for block in body.decode().strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def _answer(client: APIClient, reply_id: int) -> str:
    events = _events(client.get(f"/api/messages/{reply_id}/stream/", HTTP_ACCEPT="text/event-stream"))
    assert [name for name, _ in events][-1] == "done", events
    text = "".join(data["text"] for name, data in events if name == "delta")
    assert events[-1][1]["message"]["content"] == text and events[-1][1]["message"]["status"] == "complete"
    return text


def _client(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for_user(user=user)}")
    return client


def test_a_client_chats_branches_and_ranks_over_the_api(loop_settings, loop_files, builtin_policy_server):
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    loop_settings.POLICY_MAX_TOKENS = 8
    serve_version_one(files=loop_files)
    client = _client(make_user(username="api-chatter"))

    created = client.post("/api/conversations/", {"system_prompt": "Answer briefly."}, format="json")
    assert created.status_code == 201, created.content
    conversation = created.json()["id"]
    sent = client.post(f"/api/conversations/{conversation}/messages/", {"text": "Tell me a fact."}, format="json")
    assert sent.status_code == 201, sent.content
    question, reply = sent.json()["user_message"], sent.json()["reply"]
    assert (reply["status"], reply["policy_version"], reply["parent"]) == ("streaming", 1, question["id"])
    first = _answer(client, reply["id"])
    assert first.strip(), "the policy wrote nothing"
    # a finished answer streams again, whole, as one delta: a reconnecting client loses nothing
    assert _answer(client, reply["id"]) == first

    again = client.post(f"/api/messages/{reply['id']}/regenerate/")
    assert again.status_code == 201 and again.json()["reply"]["parent"] == question["id"]
    second_id = again.json()["reply"]["id"]
    _answer(client, second_id)
    assert client.post(f"/api/messages/{question['id']}/regenerate/").status_code == 400

    ranking = {"ranking": [second_id, reply["id"]]}
    ranked = client.post(f"/api/messages/{question['id']}/rank/", ranking, format="json")
    assert ranked.status_code == 201, ranked.content
    assert client.post(f"/api/messages/{question['id']}/rank/", ranking, format="json").status_code == 200
    label = Label.objects.get(pk=ranked.json()["label"])
    assert label.kind == "ranking" and len(label.ranking) == 2
    assert label.task.prompt.messages[0] == {"role": "system", "content": "Answer briefly."}
    bad = client.post(f"/api/messages/{question['id']}/rank/", {"ranking": [second_id]}, format="json")
    assert bad.status_code == 400 and "every answer" in bad.json()["error"]["message"]

    # an edited first turn: a new root, its own answer, and the old branch one PATCH away
    edited = client.post(
        f"/api/conversations/{conversation}/messages/", {"text": "Tell me a joke.", "parent": None}, format="json"
    )
    assert edited.status_code == 201 and edited.json()["user_message"]["parent"] is None
    _answer(client, edited.json()["reply"]["id"])
    shown = client.get(f"/api/conversations/{conversation}/").json()
    assert shown["branch"] == [edited.json()["user_message"]["id"], edited.json()["reply"]["id"]]
    assert len(shown["messages"]) == 5
    switched = client.patch(f"/api/conversations/{conversation}/", {"current": question["id"]}, format="json")
    assert switched.status_code == 200 and switched.json()["branch"] == [question["id"], second_id]

    # other people's conversations are not there for them, and a person cannot pick the version
    stranger = _client(make_user(username="stranger"))
    assert stranger.get(f"/api/conversations/{conversation}/").status_code == 404
    assert stranger.get(f"/api/messages/{reply['id']}/stream/").status_code == 404
    refused = client.patch(f"/api/conversations/{conversation}/", {"policy_version": 1}, format="json")
    assert refused.status_code == 403 and "admin" in refused.json()["error"]["message"]


def test_an_admin_chats_with_a_version_that_is_not_serving(loop_settings, loop_files, builtin_policy_server):
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    loop_settings.POLICY_MAX_TOKENS = 8
    serving = serve_version_one(files=loop_files)
    candidate = version_register(artifact_path=str(loop_files.v1_adapter), base_model="tiny", parent=serving)
    client = _client(make_user(User.Role.ADMIN, username="api-admin"))
    created = client.post("/api/conversations/", {"policy_version": candidate.number}, format="json")
    assert created.status_code == 201 and created.json()["policy_version"] == candidate.number
    conversation = created.json()["id"]
    reply = client.post(f"/api/conversations/{conversation}/messages/", {"text": "Hi"}, format="json").json()["reply"]
    assert reply["policy_version"] == candidate.number
    assert _answer(client, reply["id"]).strip()  # the server loaded the candidate's adapter to answer
    missing = client.patch(f"/api/conversations/{conversation}/", {"policy_version": 999}, format="json")
    assert missing.status_code == 400 and "v999" in missing.json()["error"]["message"]


def test_a_stream_says_why_the_policy_could_not_answer(loop_settings):
    loop_settings.POLICY_SERVER_URL = "http://127.0.0.1:9"  # nothing listens there
    from tests.factories import make_serving_version

    make_serving_version()
    client = _client(make_user(username="unlucky"))
    conversation = client.post("/api/conversations/", {}, format="json").json()["id"]
    reply = client.post(f"/api/conversations/{conversation}/messages/", {"text": "Hi"}, format="json").json()["reply"]
    events = _events(client.get(f"/api/messages/{reply['id']}/stream/"))
    assert events[-1][0] == "error" and "policy server could not answer" in events[-1][1]["detail"]
    assert Message.objects.get(pk=reply["id"]).status == "failed"
    # read again, the failure is kept with its reason; asking for another answer is the way on
    assert _events(client.get(f"/api/messages/{reply['id']}/stream/"))[0][0] == "error"
    assert client.post(f"/api/messages/{reply['id']}/regenerate/").status_code == 201
