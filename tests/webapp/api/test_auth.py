"""API tokens are stored hashed, expire, and are listed and revoked by their owner; wrong passwords
lock a username out from an address; logins are throttled."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from tests.factories import make_user
from tests.webapp.api.test_api import client_for

pytestmark = pytest.mark.django_db


def _login(username: str, password: str, address: str = "10.0.0.1"):
    body = {"username": username, "password": password}
    return APIClient(REMOTE_ADDR=address).post("/api/auth/token/", body, format="json")


def test_a_token_is_stored_hashed_expires_and_is_revoked_by_its_owner():
    make_user(username="ann", password="s3cret-pass")
    issued = _login("ann", "s3cret-pass")
    assert issued.status_code == 200, issued.json()
    token, token_id = issued.json()["token"], issued.json()["id"]
    stored = AuthToken.objects.get(token_key=token_id)
    assert token not in (stored.digest, stored.token_key) and token.startswith(token_id)  # only a digest is kept
    lifetime = stored.expiry - timezone.now()
    assert timedelta(days=29) < lifetime <= timedelta(days=30)
    ann = APIClient()
    ann.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert [t["id"] for t in ann.get("/api/auth/tokens/").json()] == [token_id]
    other = client_for(make_user(username="bob"))
    assert other.delete(f"/api/auth/tokens/{token_id}/").status_code == 404  # not theirs
    assert token_id not in [t["id"] for t in other.get("/api/auth/tokens/").json()]
    assert ann.delete(f"/api/auth/tokens/{token_id}/").status_code == 204
    revoked = ann.get("/api/prompts/")
    assert revoked.status_code == 401 and "Invalid token" in revoked.json()["error"]["message"]


def test_an_expired_or_garbled_token_is_refused():
    ann = make_user(username="ann")
    client = client_for(ann)
    assert client.get("/api/prompts/").status_code == 200
    AuthToken.objects.filter(user=ann).update(expiry=timezone.now() - timedelta(seconds=1))
    assert client.get("/api/prompts/").status_code == 401
    garbled = APIClient()
    garbled.credentials(HTTP_AUTHORIZATION="Token \xff\xfe\xfd")
    assert garbled.get("/api/prompts/").status_code == 401


def test_wrong_passwords_lock_a_username_out_from_that_address(settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_user(username="ann", password="s3cret-pass")
    for _ in range(2):
        wrong = _login("ann", "guess")
        assert wrong.status_code == 400 and "Unable to log in" in wrong.json()["error"]["message"]
    third = _login("ann", "guess")
    assert third.status_code == 429 and third.json()["error"]["code"] == "locked_out", third.content
    locked = _login("ann", "s3cret-pass")  # even the right password, now
    assert locked.status_code == 429 and locked.json()["error"]["code"] == "locked_out", locked.json()
    assert _login("ann", "s3cret-pass", address="10.0.0.2").status_code == 200  # another address is not locked
    page = Client(REMOTE_ADDR="10.0.0.1").post("/login/", {"username": "ann", "password": "s3cret-pass"})
    assert page.status_code == 429 and "Too many failed logins" in page.content.decode()


def test_logins_are_throttled_per_address():
    answers = [_login(f"nobody{i}", "x").status_code for i in range(21)]  # 20 a minute
    assert answers[:20] == [400] * 20 and answers[20] == 429
    assert _login("nobody", "x", address="10.0.0.9").status_code == 400


def test_a_forged_forwarded_address_does_not_escape_the_lockout(settings):
    settings.AXES_FAILURE_LIMIT = 2
    make_user(username="ann", password="s3cret-pass")
    for i in range(2):
        forged = APIClient(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
        forged.post("/api/auth/token/", {"username": "ann", "password": "guess"}, format="json")
    again = APIClient(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="192.0.2.99")
    locked = again.post("/api/auth/token/", {"username": "ann", "password": "s3cret-pass"}, format="json")
    assert locked.status_code == 429, locked.content
