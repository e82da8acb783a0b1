"""The production entry point as deployed: `manage.py prefloop_serve` with DEBUG off and the HTTPS
settings on, behind a TLS proxy (the test sends the proxy's X-Forwarded-Proto header), on its own
PostgreSQL database. Static files, secure cookies, HSTS, the first admin from the environment and
no demo accounts, `check --deploy` clean, the chat answering, and an export that streams."""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.e2e.conftest import ROOT, LoopFiles, start_process
from tests.processes import free_port

pytestmark = pytest.mark.e2e

SHARED_DATA = ROOT.parent / "shared" / "data"
PROXY = {"X-Forwarded-Proto": "https"}


def _admin_dsn() -> str:
    from django.db import connection

    s = connection.settings_dict
    return f"postgresql://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/postgres"


@pytest.fixture
def production_db() -> str:
    """A database of its own, made and dropped by this test."""
    name = f"prefloop_prod_{secrets.token_hex(4)}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield _admin_dsn().rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _run(argv: list[str], env: dict[str, str]):
    import subprocess

    return subprocess.run([sys.executable, "manage.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True)


def _cookies(response: httpx.Response) -> dict[str, str]:
    return {c.split("=", 1)[0]: c for c in response.headers.get_list("set-cookie")}


def test_the_production_server_serves_securely_with_static_files_and_streams(
    production_db: str, builtin_policy_server: str, loop_files: LoopFiles, tmp_path: Path
):
    port = free_port()
    origin = f"https://127.0.0.1:{port}"
    password = secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PREFLOOP_"))}
    env.update(
        DATABASE_URL=production_db,
        DJANGO_DEBUG="0",
        PREFLOOP_HTTPS="1",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_CSRF_TRUSTED_ORIGINS=origin,
        PREFLOOP_VAR_DIR=str(tmp_path / "var"),
        ARTIFACT_DIR=str(tmp_path / "artifacts"),
        POLICY_BASE_MODEL=str(loop_files.base_model),
        POLICY_SERVER_URL=builtin_policy_server,
        TRAIN_EVERY_N_LABELS="0",
        PREFLOOP_ADMIN_USERNAME="owner",
        PREFLOOP_ADMIN_PASSWORD=password,
        PREFLOOP_ADDR=f"127.0.0.1:{port}",
        PYTHONUNBUFFERED="1",
    )
    check = _run(["check", "--deploy", "--fail-level", "WARNING"], env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert _run(["migrate", "--noinput"], env).returncode == 0
    setup = _run(["prefloop_setup", "--no-users"], env)  # the base model and version 1; no demo accounts
    assert setup.returncode == 0, setup.stderr
    server = start_process("prefloop-serve", [sys.executable, "manage.py", "prefloop_serve"], env, tmp_path)
    web = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.popen.poll() is None, server.log()[-3000:]
            assert time.monotonic() < deadline, server.log()[-3000:]
            try:
                health = web.get("/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert health.status_code == 200 and health.json()["database"] == "ok"  # plain HTTP for the health check
        assert "Admin owner created from the environment." in server.log()
        plain = web.get("/login/")
        assert plain.status_code == 301 and plain.headers["location"].startswith("https://")

        # Pages and static files, through the proxy.
        login_page = web.get("/login/", headers=PROXY)
        assert login_page.status_code == 200, login_page.text[:500]
        assert "max-age=31536000" in login_page.headers["strict-transport-security"]
        assert "/static/prefloop/app.css" in login_page.text
        for path in ("/static/prefloop/app.css", "/static/prefloop/chat.js", "/static/vendor/htmx/htmx-2.0.11.min.js"):
            asset = web.get(path, headers={**PROXY, "Accept-Encoding": "gzip"})
            assert asset.status_code == 200, (path, asset.status_code)
        assert asset.headers.get("content-encoding") == "gzip"  # compressed by collectstatic

        # No demo accounts; the first admin came from the environment.
        demo = web.post("/api/auth/token/", json={"username": "admin", "password": "prefloop-admin"}, headers=PROXY)
        assert demo.status_code == 400, demo.text
        token = web.post("/api/auth/token/", json={"username": "owner", "password": password}, headers=PROXY)
        assert token.status_code == 200, token.text
        api = {**PROXY, "Authorization": f"Token {token.json()['token']}"}

        # Log in through the form: the cookies are Secure, the CSRF check holds behind the proxy.
        csrf = _cookies(login_page)["csrftoken"]
        assert "Secure" in csrf
        csrf_value = csrf.split("=", 1)[1].split(";", 1)[0]
        form_token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text).group(1)
        login = web.post(
            "/login/",
            data={"username": "owner", "password": password, "csrfmiddlewaretoken": form_token},
            headers={**PROXY, "Cookie": f"csrftoken={csrf_value}", "Referer": f"{origin}/login/", "Origin": origin},
        )
        assert login.status_code == 302, login.text[:500]
        session = _cookies(login)["sessionid"]
        assert "Secure" in session and "HttpOnly" in session
        cookie = f"csrftoken={csrf_value}; sessionid={session.split('=', 1)[1].split(';', 1)[0]}"
        page = {**PROXY, "Cookie": cookie, "Referer": f"{origin}/chat/", "Origin": origin, "X-CSRFToken": csrf_value}

        # The chat answers through the production server.
        new = web.post("/chat/new/", headers=page)
        assert new.status_code == 302, new.text[:300]
        conversation = new.headers["location"].rstrip("/").rsplit("/", 1)[-1]
        sent = web.post(f"/chat/{conversation}/send/", data={"text": "What colour is grass?"},
                        headers={**page, "HX-Request": "true"})  # fmt: skip
        assert sent.status_code == 200, sent.text[:300]
        stream_url = re.search(r'data-stream-url="([^"]+)"', sent.text).group(1)
        answer = web.post(stream_url, headers=page)
        assert answer.status_code == 200 and answer.text.strip(), answer.text[:300]

        # An export streams: its first line arrives long before its last.
        if not SHARED_DATA.exists():
            pytest.fail(f"{SHARED_DATA} is absent: this test reads the shared human-feedback files")
        imported = _run(
            ["import_feedback", str(SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"), "--format", "hh",
             "--project", "HH", "--quiet"], env)  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        project = next(p for p in web.get("/api/projects/", headers=api).json()["results"] if p["name"] == "HH")
        start, first, lines = time.perf_counter(), None, 0
        with web.stream("GET", f"/api/projects/{project['id']}/export/", params={"kind": "raw"}, headers=api) as rows:
            assert rows.status_code == 200
            for line in rows.iter_lines():
                if line:
                    first = first if first is not None else time.perf_counter() - start
                    lines += 1
        total = time.perf_counter() - start
        assert lines == 2312
        assert first < total / 2, (first, total)  # buffered, the first line came with the last

        # Hostile input is a 4xx here too.
        assert web.get("/api/labels/", params={"project": "²"}, headers=api).status_code == 400
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()[-3000:]
