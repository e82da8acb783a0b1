"""Hostile input answers in the API's error format with a 4xx, never a 500; annotators never see
which items are gold."""

from __future__ import annotations

import json

import pytest

from tests.factories import make_project, make_task, make_user
from tests.webapp.api.test_api import client_for
from webapp.core.parsing import json_depth_error, parse_id
from webapp.feedback.models import Label, Project, Prompt

pytestmark = pytest.mark.django_db


def test_ids_are_ascii_digits_in_the_databases_range():
    assert parse_id("42") == 42 and parse_id(" 7 ") == 7
    for bad in ("²", "٣", "-1", "1e3", "", "9" * 20, str(2**63), "0x10", None):
        assert parse_id(bad) is None, bad


@pytest.mark.parametrize("value", ["²", "٣", "abc", "9" * 25, str(2**63), "1.5"])
def test_odd_numbers_in_filters_are_a_400(value: str):
    client = client_for(make_user())
    for url, param in (("/api/labels/", "project"), ("/api/labels/", "task"), ("/api/tasks/", "project"),
                       ("/api/candidates/", "prompt")):  # fmt: skip
        response = client.get(url, {param: value})
        assert response.status_code == 400, (url, param, value, response.content[:200])
        assert param in response.json()["error"]["message"]


def test_deeply_nested_or_nul_json_is_a_400_and_stores_nothing():
    client = client_for(make_user())
    deep = "[" * 5000 + "]" * 5000
    nested = json.dumps({"text": "hi", "meta": json.loads("[" * 40 + "]" * 40)})
    for body in (deep, nested, '{"text": "a\\u0000b"}', '{"te\\u0000xt": "a"}', "{not json"):
        response = client.generic("POST", "/api/prompts/", body, content_type="application/json")
        assert response.status_code == 400, (body[:40], response.content[:200])
        assert response.json()["error"]["code"] == "parse_error"
    assert Prompt.objects.count() == 0
    assert json_depth_error([[[]]], limit=3) is None and "deeper than 2" in json_depth_error([[[]]], limit=2)


def test_annotators_cannot_tell_gold_items_but_admins_can():
    admin, ann = make_user("admin"), make_user()
    project = make_project(name="Gold", members=[ann])
    make_task(project=project, question="Gold?", texts=("right", "wrong"), is_gold=True, gold={"choice": "a"})
    client = client_for(ann)
    served = client.post(f"/api/projects/{project.pk}/next/").json()
    assert "is_gold" not in served["task"], served
    submitted = client.post(f"/api/assignments/{served['id']}/submit/", {"choice": "b"}, format="json")
    assert submitted.status_code == 201 and "gold_correct" not in submitted.json(), submitted.json()
    assert all("gold_correct" not in row for row in client.get("/api/labels/").json()["results"])
    assert all("is_gold" not in row for row in client.get("/api/tasks/").json()["results"])
    refused = client.get("/api/tasks/", {"is_gold": "true"})
    assert refused.status_code == 403 and "admins" in refused.json()["error"]["message"]
    # the label was kept and scored all the same; admins see both
    assert Label.objects.get().gold_correct is False
    boss = client_for(admin)
    assert boss.get("/api/tasks/", {"is_gold": "true"}).json()["results"][0]["is_gold"] is True
    assert boss.get("/api/labels/").json()["results"][0]["gold_correct"] is False


def test_nul_characters_in_forms_and_queries_are_a_400_and_store_nothing():
    from django.test import Client

    from webapp.feedback import services
    from webapp.feedback.models import Message

    person = make_user()
    conversation = services.conversation_create(owner=person)
    page = Client()
    page.force_login(person)
    refused = page.post(f"/chat/{conversation.pk}/send/", {"text": "a\x00b"}, HTTP_HX_REQUEST="true")
    assert refused.status_code == 400 and "NUL" in refused.content.decode()
    assert not Message.objects.filter(conversation=conversation).exists()
    api = client_for(person).get("/api/labels/", {"kind": "a\x00b"})
    assert api.status_code == 400 and "NUL" in api.json()["error"]["message"]


def test_bodies_over_the_limit_are_a_413_that_names_it(settings):
    from django.test import Client

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    client = client_for(make_user())
    big = json.dumps({"text": "x" * 5000})
    response = client.generic("POST", "/api/prompts/", big, content_type="application/json")
    assert response.status_code == 413 and "limit is 2048 bytes" in response.json()["error"]["message"]
    page = Client()
    page.force_login(make_user())
    form = page.post("/chat/new/", {"text": "x" * 5000})
    assert form.status_code == 413 and "2048" in form.content.decode()
    assert Prompt.objects.count() == 0


def test_a_misspelt_field_is_a_400_that_names_it_not_a_silent_default():
    admin, ann = make_user("admin"), make_user()
    project = make_project(name="Typos", members=[ann])
    task = make_task(project=project)
    label = client_for(ann).post("/api/labels/", {"task": task.pk, "choise": "a"}, format="json")
    assert label.status_code == 400 and "choise" in label.json()["error"]["fields"], label.json()
    created = client_for(admin).post("/api/projects/", {"name": "X", "feedback_types": ["pairwise"], "overlapp": 3},
                                     format="json")  # fmt: skip
    assert created.status_code == 400 and "overlapp" in created.json()["error"]["fields"]
    assert not Label.objects.exists() and not Project.objects.filter(name="X").exists()
