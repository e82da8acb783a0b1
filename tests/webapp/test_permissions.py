"""Who may reach what: every URL of the web app (pages and API) for an anonymous visitor, an
annotator who is a member of the project, one who is not (holding their own valid session or
token: "another user's token" on the member's objects), and an admin.

The table must name every URL the app routes, so a new URL cannot ship without its row. Cells:
`in` (past access control: any answer other than 401, 403, 404 or a redirect to the login page,
below 500 or the 503 of the policy server being absent here), `login` (pages: a redirect to the
login page; API: 401), or a status code. The API's schema and its docs page are public.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from tests.factories import make_project, make_serving_version, make_task, make_user
from webapp.accounts.models import User
from webapp.accounts.services import token_create, token_for_user
from webapp.feedback import services
from webapp.feedback.assignments import assignment_next
from webapp.feedback.models import GenerationJob, ImportJob
from webapp.feedback.people import invitation_create
from webapp.hooks.models import WebhookDelivery
from webapp.hooks.services import hook_create
from webapp.runs.models import TrainingRun
from webapp.runs.services import reward_model_register

pytestmark = pytest.mark.django_db

ACTORS = ("anonymous", "member", "outsider", "admin")


@dataclass
class World:
    member: User
    outsider: User
    admin: User
    ids: dict[str, Any]


@pytest.fixture
def world() -> World:
    admin = make_user(User.Role.ADMIN, username="boss")
    member, outsider = make_user(username="member"), make_user(username="outsider")
    version = make_serving_version()
    project = make_project(name="P", members=[member])
    task = make_task(project=project, texts=("one", "two"))
    assignment = assignment_next(project=project, annotator=member)
    conversation = services.conversation_create(owner=member)
    _, reply = services.chat_turn_start(conversation=conversation, text="hello")
    services.chat_reply_finish(message=reply, content="hi there")
    comparison = make_task(created_by=member, texts=("left", "right"))
    prompt = services.prompt_create(messages=[{"role": "user", "content": "q?"}], created_by=member, source="api")
    run = TrainingRun.objects.create(trigger=TrainingRun.Trigger.API, project=project)
    token, _ = token_create(user=member)
    job = ImportJob.objects.create(project=project, format="jsonl", file_name="x.jsonl", path="/nonexistent/x")
    generation = GenerationJob.objects.create(project=project, created_by=member, prompt_ids=[prompt.pk])
    reward_model = reward_model_register(artifact_path="/nonexistent/rm", backbone="tiny", member_paths=[""])
    invitation, invitation_token = invitation_create(by=admin, project=project)
    hook, _ = hook_create(url="http://127.0.0.1:9/hook", events=["label.created"])
    delivery = WebhookDelivery.objects.create(hook=hook, event="label.created", payload={}, status="succeeded")
    return World(
        member=member,
        outsider=outsider,
        admin=admin,
        ids={
            "project_id": project.pk,
            "task_id": task.pk,
            "assignment_id": assignment.pk,
            "conversation_id": conversation.pk,
            "message_id": reply.pk,
            "comparison_id": comparison.pk,
            "prompt_id": prompt.pk,
            "run_id": run.pk,
            "version_id": version.pk,
            "token_id": token.token_key,
            "username": member.username,
            "job_id": job.pk,
            "generation_id": generation.pk,
            "kind": "import",
            "reward_model_id": reward_model.pk,
            "invitation_id": invitation.pk,
            "invitation_token": invitation_token,
            "hook_id": hook.pk,
            "delivery_id": delivery.pk,
        },
    )


ADMIN_ONLY = {"anonymous": "login", "member": 403, "outsider": 403, "admin": "in"}
SIGNED_IN = {"anonymous": "login", "member": "in", "outsider": "in", "admin": "in"}
MEMBERS = {"anonymous": "login", "member": "in", "outsider": 404, "admin": "in"}
OWNER = {"anonymous": "login", "member": "in", "outsider": 404, "admin": 404}  # the member's own objects
ANYONE = {"anonymous": "in", "member": "in", "outsider": "in", "admin": "in"}

# name -> (method, url kwargs from World.ids, body, expectations)
ROWS: dict[str, tuple[str, tuple[str, ...], dict[str, Any], dict[str, Any]]] = {
    "healthz": ("get", (), {}, ANYONE),
    "login": ("get", (), {}, ANYONE),
    "logout": ("post", (), {}, {a: 302 for a in ACTORS}),
    "admin:index": ("get", (), {}, {"anonymous": 302, "member": 302, "outsider": 302, "admin": 200}),
    "chat:index": ("get", (), {}, SIGNED_IN),
    "chat:new": ("post", (), {}, SIGNED_IN),
    "chat:conversation": ("get", ("conversation_id",), {}, OWNER),
    "chat:send": ("post", ("conversation_id",), {"text": "more"}, OWNER),
    "chat:stream": ("post", ("message_id",), {}, OWNER),
    "chat:message": ("get", ("message_id",), {}, OWNER),
    "chat:settings": ("post", ("conversation_id",), {"system_prompt": "Be brief."}, OWNER),
    "chat:regenerate": ("post", ("message_id",), {}, OWNER),
    "chat:edit": ("post", ("message_id",), {"text": "again"}, OWNER),
    "chat:switch": ("post", ("message_id",), {}, OWNER),
    "chat:rank": ("post", ("message_id",), {}, OWNER),
    "chat:compare": ("post", ("message_id",), {}, OWNER),
    "chat:label": ("post", ("comparison_id:task_id",), {"choice": "a"}, OWNER),
    "chat:thumbs": ("post", ("message_id",), {"value": "up"}, OWNER),
    "feedback:index": ("get", (), {}, SIGNED_IN),
    "feedback:project": ("get", ("project_id",), {}, MEMBERS),
    "feedback:submit": ("post", ("assignment_id",), {"choice": "a"}, OWNER),
    "feedback:skip": ("post", ("assignment_id",), {"reason": "unclear"}, OWNER),
    "dashboard:index": ("get", (), {}, ADMIN_ONLY),
    "dashboard:runs": ("get", (), {}, ADMIN_ONLY),
    "dashboard:run_new": ("post", (), {}, ADMIN_ONLY),
    "dashboard:run": ("get", ("run_id",), {}, ADMIN_ONLY),
    "dashboard:run_cancel": ("post", ("run_id",), {}, ADMIN_ONLY),
    "dashboard:version_promote": ("post", ("version_id",), {"reason": "x"}, ADMIN_ONLY),
    "dashboard:reward_model_promote": ("post", ("reward_model_id",), {"reason": "x"}, ADMIN_ONLY),
    "dashboard:jobs": ("get", (), {}, ADMIN_ONLY),
    "dashboard:job_cancel": ("post", ("kind", "job_id"), {}, ADMIN_ONLY),
    "dashboard:recipe": ("get", ("project_id",), {}, ADMIN_ONLY),
    "dashboard:recipe_preview": ("get", ("project_id",), {}, ADMIN_ONLY),
    "dashboard:arena": ("get", ("project_id",), {}, ADMIN_ONLY),
    "dashboard:quality": ("get", (), {}, ADMIN_ONLY),
    "dashboard:imports": ("get", (), {}, ADMIN_ONLY),
    "dashboard:generation": ("get", (), {}, ADMIN_ONLY),
    "dashboard:generate": ("post", (), {"project": "project_id"}, ADMIN_ONLY),
    "dashboard:projects": ("get", (), {}, ADMIN_ONLY),
    "dashboard:project_new": ("get", (), {}, ADMIN_ONLY),
    "dashboard:project": ("get", ("project_id",), {}, ADMIN_ONLY),
    "dashboard:project_archive": ("post", ("project_id",), {}, ADMIN_ONLY),
    "dashboard:project_member": ("post", ("project_id",), {"username": "outsider", "role": "reviewer"}, ADMIN_ONLY),
    "dashboard:project_import": ("get", ("project_id",), {}, ADMIN_ONLY),
    "dashboard:project_export": ("get", ("project_id",), {"kind": "raw"}, ADMIN_ONLY),
    "dashboard:import": ("get", ("job_id",), {}, ADMIN_ONLY),
    "dashboard:import_bad_lines": ("get", ("job_id",), {}, ADMIN_ONLY),
    "dashboard:explore": ("get", (), {"q": "capital"}, ADMIN_ONLY),  # and a project's reviewers
    "dashboard:item": ("get", ("task_id",), {}, ADMIN_ONLY),
    "dashboard:hooks": ("get", (), {}, ADMIN_ONLY),
    "dashboard:hook": ("get", ("hook_id",), {}, ADMIN_ONLY),
    "dashboard:hook_active": ("post", ("hook_id",), {"active": "0"}, ADMIN_ONLY),
    "dashboard:delivery_resend": ("post", ("delivery_id",), {}, ADMIN_ONLY),
    "dashboard:people": ("get", (), {}, ADMIN_ONLY),
    "dashboard:person_new": ("post", (), {"username": "fresh", "password": "a-long-passphrase-1"}, ADMIN_ONLY),
    "dashboard:invitation_new": ("post", (), {"note": "someone"}, ADMIN_ONLY),
    "dashboard:invitation_revoke": ("post", ("invitation_id",), {}, ADMIN_ONLY),
    "dashboard:person": ("get", ("username",), {}, ADMIN_ONLY),
    "dashboard:person_active": ("post", ("username",), {"active": "0"}, ADMIN_ONLY),
    "invitation_accept": ("get", ("invitation_token:token",), {}, ANYONE),
    "api-token": ("post", (), {"username": "member", "password": "wrong"}, ANYONE),
    "api-tokens": ("get", (), {}, SIGNED_IN),
    "api-token-revoke": ("delete", ("token_id",), {}, OWNER),
    "api-prompts": ("get", (), {}, SIGNED_IN),
    "api-prompt-tasks": ("post", ("prompt_id",), {}, MEMBERS),
    "api-candidates": ("get", (), {}, SIGNED_IN),
    "api-tasks": ("get", (), {}, SIGNED_IN),
    "api-task": ("get", ("task_id",), {}, MEMBERS),
    "api-labels": ("get", (), {}, SIGNED_IN),
    "api-runs": ("get", (), {}, ADMIN_ONLY),
    "api-run": ("get", ("run_id",), {}, ADMIN_ONLY),
    "api-run-cancel": ("post", ("run_id",), {}, ADMIN_ONLY),
    "api-versions": ("get", (), {}, ADMIN_ONLY),
    "api-version-promote": ("post", ("version_id",), {"reason": "x"}, ADMIN_ONLY),
    "api-reward-model-promote": ("post", ("reward_model_id",), {"reason": "x"}, ADMIN_ONLY),
    "api-jobs": ("get", (), {}, ADMIN_ONLY),
    "api-job-cancel": ("post", ("kind", "job_id"), {}, ADMIN_ONLY),
    "api-version-labels": ("get", ("version_id",), {}, ADMIN_ONLY),
    "api-version-events": ("get", (), {}, ADMIN_ONLY),
    "api-reward-models": ("get", (), {}, ADMIN_ONLY),
    "api-projects": ("get", (), {}, SIGNED_IN),
    "api-project": ("get", ("project_id",), {}, MEMBERS),
    "api-project-members": ("get", ("project_id",), {}, ADMIN_ONLY),
    "api-project-member": ("delete", ("project_id", "username"), {}, ADMIN_ONLY),
    "api-project-next": ("post", ("project_id",), {}, MEMBERS),
    "api-project-generate": ("post", ("project_id",), {}, ADMIN_ONLY),
    "api-project-arena": ("get", ("project_id",), {}, ADMIN_ONLY),
    "api-generation-jobs": ("get", (), {}, SIGNED_IN),
    "api-followups": ("get", (), {}, ADMIN_ONLY),
    "api-generation-job": ("get", ("generation_id:job_id",), {}, OWNER | {"admin": "in"}),
    "api-project-import": ("post", ("project_id",), {}, ADMIN_ONLY),
    "api-project-export": ("get", ("project_id",), {"kind": "raw"}, ADMIN_ONLY),
    "api-imports": ("get", (), {}, ADMIN_ONLY),
    "api-import": ("get", ("job_id",), {}, ADMIN_ONLY),
    "api-project-recipe": ("get", ("project_id",), {}, ADMIN_ONLY),
    "api-project-quality": ("get", ("project_id",), {}, ADMIN_ONLY),
    "api-assignment-submit": ("post", ("assignment_id",), {"choice": "a"}, OWNER),
    "api-assignment-submit-next": ("post", ("assignment_id",), {"choice": "a"}, OWNER),
    "api-assignment-skip": ("post", ("assignment_id",), {"reason": "unclear"}, OWNER),
    "api-tasks-bulk": ("post", (), {"items": []}, ADMIN_ONLY),
    "api-message-thumbs": ("post", ("message_id",), {"value": "up"}, OWNER),
    "api-conversations": ("get", (), {}, SIGNED_IN),
    "api-conversation": ("get", ("conversation_id",), {}, OWNER),
    "api-conversation-messages": ("post", ("conversation_id",), {"text": "more"}, OWNER),
    "api-message-stream": ("get", ("message_id",), {}, OWNER),
    "api-message-regenerate": ("post", ("message_id",), {}, OWNER),
    "api-message-rank": ("post", ("message_id",), {"ranking": []}, OWNER),
    "api-people": ("get", (), {}, ADMIN_ONLY),
    "api-person": ("get", ("username",), {}, ADMIN_ONLY),
    "api-invitations": ("get", (), {}, ADMIN_ONLY),
    "api-invitation-revoke": ("post", ("invitation_id",), {}, ADMIN_ONLY),
    "api-task-adjudication": ("put", ("task_id",), {"choice": "a"}, {**MEMBERS, "member": 404}),  # reviewers
    "api-webhooks": ("get", (), {}, ADMIN_ONLY),
    "api-webhook": ("get", ("hook_id",), {}, ADMIN_ONLY),
    "api-webhook-deliveries": ("get", ("hook_id",), {}, ADMIN_ONLY),
    "api-webhook-delivery-resend": ("post", ("delivery_id",), {}, ADMIN_ONLY),
    "api-schema": ("get", (), {}, ANYONE),
    "api-docs": ("get", (), {}, ANYONE),
}
ACCEPT = {"username": "joiner", "password": "a-long-passphrase-1", "password_again": "a-long-passphrase-1"}
# Writes that are not the rows' own method, on URLs that also read.
EXTRA: dict[str, tuple[str, tuple[str, ...], dict[str, Any], dict[str, Any]]] = {
    "api-prompts POST": ("post", (), {"text": "a question"}, SIGNED_IN),
    "api-conversations POST": ("post", (), {"system_prompt": "Be brief."}, SIGNED_IN),
    "api-people POST": ("post", (), {"username": "newbie", "password": "a-long-passphrase-1"}, ADMIN_ONLY),
    "api-person PATCH": ("patch", ("username",), {"is_active": False}, ADMIN_ONLY),
    "api-invitations POST": ("post", (), {"note": "Ann"}, ADMIN_ONLY),
    "api-webhooks POST": ("post", (), {"url": "http://127.0.0.1:9/h", "events": ["run.finished"]}, ADMIN_ONLY),
    "api-webhook PATCH": ("patch", ("hook_id",), {"active": False}, ADMIN_ONLY),
    "api-webhook DELETE": ("delete", ("hook_id",), {}, ADMIN_ONLY),
    "api-conversation PATCH": ("patch", ("conversation_id",), {"title": "Renamed"}, OWNER),
    "api-conversation DELETE": ("delete", ("conversation_id",), {}, OWNER),
    "api-labels POST": ("post", (), {"task": "task_id", "choice": "a"}, MEMBERS),
    "api-runs POST": ("post", (), {}, ADMIN_ONLY),
    "api-projects POST": ("post", (), {"name": "New", "feedback_types": ["pairwise"]}, ADMIN_ONLY),
    "api-project-members POST": ("post", ("project_id",), {"username": "outsider"}, ADMIN_ONLY),
    "api-project-recipe PATCH": ("patch", ("project_id",), {"beta": 0.2}, ADMIN_ONLY),
    "api-project PATCH": ("patch", ("project_id",), {"temperature": 0.5}, ADMIN_ONLY),
    "api-project-arena POST": ("post", ("project_id",), {"versions": [1, 2]}, ADMIN_ONLY),
    "dashboard:arena POST": ("post", ("project_id",), {"first": 1, "second": 2, "prompts": 3}, ADMIN_ONLY),
    "dashboard:project_new POST": ("post", (), {"name": "Made here", "feedback_types": "pairwise"}, ADMIN_ONLY),
    "dashboard:project POST": ("post", ("project_id",), {"name": "P", "feedback_types": "pairwise"}, ADMIN_ONLY),
    "dashboard:hooks POST": ("post", (), {"url": "http://127.0.0.1:9/h", "events": "run.finished"}, ADMIN_ONLY),
    "dashboard:item POST": ("post", ("task_id",), {"choice": "a", "note": "settled"}, ADMIN_ONLY),
    "dashboard:project_import POST": ("post", ("project_id",), {"format": "jsonl"}, ADMIN_ONLY),
    "invitation_accept POST": ("post", ("invitation_token:token",), ACCEPT, ANYONE),
}


def _named_urls() -> set[str]:
    names: set[str] = set()

    def walk(patterns: list[Any], namespace: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if pattern.namespace == "admin":
                    names.add("admin:index")
                    continue
                walk(pattern.url_patterns, f"{pattern.namespace}:" if pattern.namespace else namespace)
            elif isinstance(pattern, URLPattern) and pattern.name:
                names.add(namespace + pattern.name)

    walk(get_resolver().url_patterns, "")
    return names


def test_the_table_names_every_url_the_app_routes():
    assert set(ROWS) == _named_urls()


def _client(world: World, actor: str, api: bool) -> Any:
    user = {"member": world.member, "outsider": world.outsider, "admin": world.admin}.get(actor)
    if api:
        client = APIClient()
        if user is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Token {token_for_user(user=user)}")
        return client
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _check(world: World, actor: str, name: str, row: tuple[str, tuple[str, ...], dict[str, Any], dict[str, Any]]):
    method, keys, body, expected = row
    url_name = name.split(" ")[0]
    kwargs = {}
    for key in keys:
        source, _, target = key.partition(":")
        kwargs[target or source] = world.ids[source]
    url = reverse(url_name, kwargs=kwargs)
    api = url.startswith("/api/")
    data = {k: world.ids.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    client = _client(world, actor, api)
    if api and method != "get":
        response = getattr(client, method)(url, data, format="json")
    else:
        response = getattr(client, method)(url, data)
    want = expected[actor]
    status = response.status_code
    where = f"{actor} {method.upper()} {url} -> {status}"
    if want == "login":
        if api:
            assert status == 401, where
        else:
            assert status == 302 and response["Location"].startswith(reverse("login")), where
    elif want == "in":
        assert (status < 500 or status == 503) and status not in (401, 403, 404), where
        if status == 302:
            assert not response["Location"].startswith(reverse("login")), where
    else:
        assert status == want, where
    assert "Traceback" not in response.content.decode(errors="replace")[:20000] if not response.streaming else True


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("name", sorted(ROWS))
def test_access(world: World, name: str, actor: str):
    _check(world, actor, name, ROWS[name])


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("name", sorted(EXTRA))
def test_writes(world: World, name: str, actor: str):
    _check(world, actor, name, EXTRA[name])


@pytest.mark.both_databases
def test_error_pages_are_pages_of_the_app_not_bare_html(settings):
    from webapp.core.views import server_error

    settings.DEBUG = False
    annotator = make_user(username="ann")
    client = Client()
    missing = client.get("/no/such/page/")
    body = missing.content.decode()
    assert missing.status_code == 404 and 'id="error-404"' in body and "/no/such/page/" in body
    assert 'class="topbar"' in body and "app.css" in body
    client.force_login(annotator)
    refused = client.get("/dashboard/")
    body = refused.content.decode()
    assert refused.status_code == 403 and 'id="error-403"' in body and "The dashboard is for admins." in body
    assert "signed in as <strong>ann</strong>" in body and ">Annotate</a>" in body
    failed = server_error(client.get("/").wsgi_request)
    assert failed.status_code == 500 and 'id="error-500"' in failed.content.decode()
    assert client.get("/api/no/such/route/").json()["error"]["code"] == "not_found"  # the API keeps its JSON
