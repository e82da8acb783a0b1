"""A campaign over the API: accounts and invitations, a final answer that becomes gold, and
webhooks with their delivery log, for admins (and reviewers, for final answers)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.factories import make_project, make_task, make_user
from webapp.accounts.models import User
from webapp.accounts.services import token_for_user
from webapp.feedback.models import Label, ProjectMember, Task
from webapp.feedback.people import invitation_open
from webapp.feedback.services import label_create
from webapp.hooks.models import WebhookDelivery

pytestmark = pytest.mark.django_db


def _client(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for_user(user=user)}")
    return client


def test_an_admin_makes_accounts_invites_and_deactivates_over_the_api():
    admin = _client(make_user(User.Role.ADMIN, username="boss"))
    project = make_project(name="Api campaign")
    made = admin.post(
        "/api/people/",
        {"username": "ann", "password": "a-long-passphrase-1", "project": project.pk, "project_role": "reviewer"},
        format="json",
    )
    assert made.status_code == 201, made.content
    assert made.json()["role"] == "annotator" and made.json()["labels"] == 0
    assert ProjectMember.objects.get(user__username="ann").role == "reviewer"
    weak = admin.post("/api/people/", {"username": "bob", "password": "short"}, format="json")
    assert weak.status_code == 400 and not User.objects.filter(username="bob").exists()

    off = admin.patch("/api/people/ann/", {"is_active": False}, format="json")
    assert off.status_code == 200 and off.json()["is_active"] is False
    myself = admin.patch("/api/people/boss/", {"is_active": False}, format="json")
    assert myself.status_code == 400

    invited = admin.post("/api/invitations/", {"project": project.pk, "days": 2, "note": "Cy"}, format="json")
    assert invited.status_code == 201, invited.content
    link = invited.json()["link"]
    assert invitation_open(link.rstrip("/").rsplit("/", 1)[1]).note == "Cy"  # the link's token works
    listed = admin.get("/api/invitations/").json()["results"]
    assert listed[0]["state"] == "open" and "link" not in listed[0] and "digest" not in listed[0]
    revoked = admin.post(f"/api/invitations/{invited.json()['invitation']['id']}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"


def test_a_reviewer_settles_an_item_and_an_admin_makes_it_gold_over_the_api():
    admin, reviewer, ann = make_user(User.Role.ADMIN), make_user(username="rev"), make_user(username="ann")
    project = make_project(name="Settled", members=[ann])
    ProjectMember.objects.create(project=project, user=reviewer, role=ProjectMember.Role.REVIEWER)
    task = make_task(project=project)
    label_create(task=task, annotator=ann, data={"choice": "b"}, source=Label.Source.API)
    as_reviewer = _client(reviewer)
    settled = as_reviewer.put(f"/api/tasks/{task.pk}/adjudication/", {"choice": "a", "note": "kinder"}, format="json")
    assert settled.status_code == 201 and settled.json()["answer"]["choice"] == "a", settled.content
    assert as_reviewer.get(f"/api/tasks/{task.pk}/adjudication/").json()["reviewer"] == "rev"
    refused = as_reviewer.put(f"/api/tasks/{task.pk}/adjudication/", {"choice": "a", "make_gold": True}, format="json")
    assert refused.status_code == 403
    bad = as_reviewer.put(f"/api/tasks/{task.pk}/adjudication/", {"choice": "x"}, format="json")
    assert bad.status_code == 400
    assert _client(ann).get(f"/api/tasks/{task.pk}/adjudication/").status_code == 404  # annotators do not review

    gold = _client(admin).put(f"/api/tasks/{task.pk}/adjudication/", {"choice": "a", "make_gold": True}, format="json")
    assert gold.status_code == 200
    task = Task.objects.get(pk=task.pk)
    assert (task.is_gold, task.gold) == (True, {"choice": "a"})
    assert Label.objects.get(task=task).gold_correct is False


def test_an_admin_makes_pauses_and_reads_a_webhook_over_the_api():
    admin = _client(make_user(User.Role.ADMIN))
    made = admin.post("/api/webhooks/", {"url": "http://127.0.0.1:9/h", "events": ["label.created"]}, format="json")
    assert made.status_code == 201 and len(made.json()["secret"]) == 48, made.content
    hook = made.json()["hook"]["id"]
    assert "secret" not in admin.get(f"/api/webhooks/{hook}/").json()
    unknown = admin.post("/api/webhooks/", {"url": "http://127.0.0.1:9/h", "events": ["label.eaten"]}, format="json")
    assert unknown.status_code == 400
    paused = admin.patch(f"/api/webhooks/{hook}/", {"active": False}, format="json")
    assert paused.status_code == 200 and paused.json()["active"] is False
    delivery = WebhookDelivery.objects.create(hook_id=hook, event="label.created", payload={"n": 1}, status="failed")
    log = admin.get(f"/api/webhooks/{hook}/deliveries/").json()["results"]
    assert [(d["id"], d["status"]) for d in log] == [(delivery.pk, "failed")]
    again = admin.post(f"/api/webhook-deliveries/{delivery.pk}/resend/")
    assert again.status_code == 202 and again.json()["payload"] == {"n": 1} and again.json()["id"] != delivery.pk
    assert admin.delete(f"/api/webhooks/{hook}/").status_code == 204
    assert not WebhookDelivery.objects.exists()
