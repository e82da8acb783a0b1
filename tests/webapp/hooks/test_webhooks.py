"""Webhooks: made from their page (the secret shown once), events emitted where they happen, and
deliveries posted to a real HTTP server that checks every signature; a receiver that fails is
tried again with back-off, and the log keeps each answer."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.factories import make_project, make_serving_version, make_task, make_user
from tests.webhook_receiver import webhook_receiver
from webapp.accounts.models import User
from webapp.feedback.assignments import assignment_next, assignment_submit
from webapp.hooks.models import Webhook, WebhookDelivery
from webapp.hooks.services import backoff_s, delivery_run, event_emit, hook_create, signature

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(make_user(User.Role.ADMIN, username="boss"))
    return client


def test_an_admin_makes_a_hook_and_sees_its_secret_once(admin_client):
    bad = admin_client.post("/dashboard/webhooks/", {"url": "ftp://x", "events": ["label.created"]})
    assert bad.status_code == 400 and "is not an http(s) URL" in bad.content.decode()
    none = admin_client.post("/dashboard/webhooks/", {"url": "https://example.org/h"})
    assert none.status_code == 400 and "choose events among" in none.content.decode()
    made = admin_client.post("/dashboard/webhooks/", {"url": "https://example.org/h", "events": ["label.created"]})
    hook = Webhook.objects.get()
    assert made.status_code == 200 and f'value="{hook.secret}"' in made.content.decode()
    assert hook.secret not in admin_client.get("/dashboard/webhooks/").content.decode()
    assert hook.secret not in admin_client.get(f"/dashboard/webhooks/{hook.pk}/").content.decode()


def test_events_are_delivered_signed_and_a_failing_receiver_is_tried_again_with_back_off():
    annotator = make_user(username="ann")
    project = make_project(name="Hooked", overlap=1, members=[annotator])
    make_task(project=project, texts=("yes", "no"))
    with webhook_receiver() as receiver:
        hook, receiver.secret = hook_create(url=receiver.url, events=["label.created", "item.completed"])
        deaf, _ = hook_create(url=receiver.url, events=["run.finished"])
        receiver.statuses = [503]  # the first delivery finds the receiver down
        label, _ = assignment_submit(
            assignment=assignment_next(project=project, annotator=annotator), data={"choice": "a", "rationale": "yes!"}
        )
        deliveries = list(WebhookDelivery.objects.order_by("id"))
        assert [(d.hook_id, d.event) for d in deliveries] == [(hook.pk, "label.created"), (hook.pk, "item.completed")]
        first, completed = deliveries
        delivery_run(delivery_id=first.pk)
        first.refresh_from_db()
        assert (first.status, first.attempts, first.response_status) == ("queued", 1, 503)
        assert "the receiver answered 503" in first.error and backoff_s(1) == 2.0
        delivery_run(delivery_id=first.pk)  # what the worker does when the back-off is over
        delivery_run(delivery_id=completed.pk)
        for d in (first, completed):
            d.refresh_from_db()
            assert (d.status, d.response_status, d.response_body) == ("succeeded", 200, "ok")
        assert first.attempts == 2
        assert [r["status"] for r in receiver.received] == [503, 200, 200]
        assert all(r["valid"] for r in receiver.received)  # every body carried a good signature
        body = receiver.received[1]["body"]
        assert body["event"] == "label.created" and body["id"] == first.pk
        assert (body["data"]["label"], body["data"]["rationale"], body["data"]["annotator"]) == (
            label.pk,
            "yes!",
            "ann",
        )
        headers = receiver.received[1]["headers"]
        assert headers["X-Prefloop-Delivery"] == str(first.pk) and headers["X-Prefloop-Event"] == "label.created"
        assert not WebhookDelivery.objects.filter(hook=deaf).exists()  # it hears run.finished only

        receiver.secret = "not-the-secret"  # a receiver that cannot check the signature refuses it
        (refused,) = event_emit("label.created", {"label": 0})
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("django.conf.settings.WEBHOOK_MAX_ATTEMPTS", 1)
            delivery_run(delivery_id=refused.pk)
        refused.refresh_from_db()
        assert (refused.status, refused.response_status) == ("failed", 401)
        assert "gave up after 1 tries" in refused.error


def test_version_events_and_the_delivery_log_with_send_again(admin_client):
    from webapp.runs import services

    with webhook_receiver() as receiver:
        hook, receiver.secret = hook_create(url=receiver.url, events=["version.promoted", "version.rolled_back"])
        v1 = make_serving_version()
        v2 = services.version_register(artifact_path="/nonexistent/v2", base_model="tiny", parent=v1)
        services._make_serving(v2, v1, actor=None, reason="better")  # the promotion's bookkeeping, no policy server
        services._make_serving(v1, v2, actor=None, reason="back")
        events = [d.event for d in WebhookDelivery.objects.filter(hook=hook).order_by("id")]
        assert events[-2:] == ["version.promoted", "version.rolled_back"]
        for delivery in WebhookDelivery.objects.filter(hook=hook):
            delivery_run(delivery_id=delivery.pk)
        last = WebhookDelivery.objects.filter(hook=hook).order_by("id").last()
        assert last.payload["data"] == {"version": v1.number, "previous": v2.number, "actor": None, "reason": "back"}
        page = admin_client.get(f"/dashboard/webhooks/{hook.pk}/").content.decode()
        assert f'id="delivery-{last.pk}"' in page and "version.rolled_back" in page
        again = admin_client.post(f"/dashboard/webhooks/deliveries/{last.pk}/again/")
        assert again.status_code == 302
        resent = WebhookDelivery.objects.filter(hook=hook).order_by("id").last()
        assert resent.pk != last.pk and resent.payload == last.payload and resent.status == "queued"
        admin_client.post(f"/dashboard/webhooks/{hook.pk}/active/", {"active": "0"})
        assert event_emit("version.promoted", {"version": 9}) == []  # an inactive hook hears nothing


def test_the_signature_is_hmac_sha256_over_timestamp_and_body():
    import hashlib
    import hmac

    expected = hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert signature("key", "1700000000", b"{}") == f"sha256={expected}"


def test_deliveries_are_jobs_in_the_one_list_and_a_project_filter_leaves_them_out(admin_client):
    from webapp.core.jobs import jobs_list

    hook_create(url="http://127.0.0.1:9/hook", events=["run.finished"])
    (delivery,) = event_emit("run.finished", {"run": 1})
    assert [(r["kind"], r["id"]) for r in jobs_list(kind="webhook")] == [("webhook", delivery.pk)]
    assert jobs_list(kind="webhook", project=1) == []
    from tests.webapp.api.test_api import client_for

    project = make_project(name="Jobs")
    listed = client_for(User.objects.get(username="boss")).get("/api/jobs/", {"project": project.pk})
    assert listed.status_code == 200 and listed.json() == []
