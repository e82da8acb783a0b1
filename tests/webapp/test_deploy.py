"""Production settings and the first admin: DEBUG off by default, a secret key of one's own, the
HTTPS settings from the environment, `check --deploy` clean, no demo accounts on the production path."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from webapp.accounts.models import User
from webapp.env import ConfigError, env_secret_key

ROOT = Path(__file__).resolve().parents[2]


def _settings(env: dict[str, str], *names: str) -> list[str]:
    """Setting values as a fresh process reads them from `env` (and nothing else of ours)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PREFLOOP_"))}
    code = "import django; django.setup(); from django.conf import settings; " + "; ".join(
        f"print(repr(settings.{name}))" for name in names
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "webapp.settings", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()


def test_debug_is_off_unless_asked_and_https_settings_follow_one_switch(tmp_path: Path):
    var = {"PREFLOOP_VAR_DIR": str(tmp_path)}
    names = ("DEBUG", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "SECURE_HSTS_SECONDS", "SECURE_PROXY_SSL_HEADER")
    assert _settings(var, *names) == ["False", "False", "False", "0", "None"]
    assert _settings({**var, "DJANGO_DEBUG": "1"}, "DEBUG") == ["True"]
    https = _settings({**var, "PREFLOOP_HTTPS": "1", "DJANGO_CSRF_TRUSTED_ORIGINS": "https://a.example"},
                      *names, "CSRF_TRUSTED_ORIGINS")  # fmt: skip
    assert https == [
        "False",
        "True",
        "True",
        "31536000",
        "('HTTP_X_FORWARDED_PROTO', 'https')",
        "['https://a.example']",
    ]
    one_off = _settings({**var, "PREFLOOP_HTTPS": "1", "DJANGO_SECURE_HSTS_SECONDS": "60"}, "SECURE_HSTS_SECONDS")
    assert one_off == ["60"]


def test_check_deploy_names_what_plain_http_lacks_and_is_clean_behind_https(tmp_path: Path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PREFLOOP_"))}
    base = {**clean, "PREFLOOP_VAR_DIR": str(tmp_path), "DJANGO_ALLOWED_HOSTS": "prefloop.example.org"}

    def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)

    plain = check(base)
    assert plain.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in plain.stderr, plain.stderr
    behind_https = check({**base, "PREFLOOP_HTTPS": "1"})
    assert behind_https.returncode == 0, behind_https.stderr


def test_the_secret_key_is_made_once_private_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DJANGO_SECRET_KEY", raising=False)
    path = tmp_path / "var" / "secret_key"
    first = env_secret_key("DJANGO_SECRET_KEY", path)
    assert len(first) >= 50 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert env_secret_key("DJANGO_SECRET_KEY", path) == first
    assert env_secret_key("DJANGO_SECRET_KEY", tmp_path / "other") != first  # no two installations share one
    monkeypatch.setenv("DJANGO_SECRET_KEY", "change-me-in-production")
    with pytest.raises(ConfigError, match="at least 50 characters"):
        env_secret_key("DJANGO_SECRET_KEY", path)


@pytest.mark.django_db
def test_the_first_admin_is_made_once_with_a_password_that_passes_the_validators(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FIRST_ADMIN_PASSWORD", "password")
    with pytest.raises(CommandError, match="too common"):
        call_command("prefloop_admin", "owner", "--password-env", "FIRST_ADMIN_PASSWORD")
    monkeypatch.setenv("FIRST_ADMIN_PASSWORD", "annotation-lead1")
    with pytest.raises(CommandError, match="too similar to the username"):
        call_command("prefloop_admin", "annotation-lead", "--password-env", "FIRST_ADMIN_PASSWORD")
    assert not User.objects.exists()
    monkeypatch.setenv("FIRST_ADMIN_PASSWORD", "a long unusual phrase 42")
    call_command("prefloop_admin", "owner", "--password-env", "FIRST_ADMIN_PASSWORD")
    owner = User.objects.get()
    assert owner.is_prefloop_admin and owner.check_password("a long unusual phrase 42")
    monkeypatch.setenv("FIRST_ADMIN_PASSWORD", "another long phrase 43")
    call_command("prefloop_admin", "second", "--password-env", "FIRST_ADMIN_PASSWORD")  # an admin exists: no-op
    assert list(User.objects.values_list("username", flat=True)) == ["owner"]
    with pytest.raises(CommandError, match="MISSING is empty or unset"):
        call_command("prefloop_admin", "x", "--password-env", "MISSING")
