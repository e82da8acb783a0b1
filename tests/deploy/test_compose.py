"""The shipped compose file, read as compose reads it (no Docker engine runs here): every service
is wired to something that exists, nothing secret is written in it, and its commands are ours."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
COMMANDS = {p.stem for p in (ROOT / "webapp" / "core" / "management" / "commands").glob("*.py")} | {"migrate"}


def _command(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def test_every_part_of_the_system_is_a_service():
    assert {"postgres", "redis", "setup", "web", "proxy", "trainer", "trainer-gpu", "generator", "beat",
            "policy-builtin", "vllm"} == set(SERVICES)  # fmt: skip
    assert _command(SERVICES["web"]) == "python manage.py prefloop_serve"
    for name in ("postgres", "redis", "web", "policy-builtin", "vllm"):
        assert "healthcheck" in SERVICES[name], name
    for name, service in SERVICES.items():
        if name not in ("setup",):
            assert service.get("restart", COMPOSE["x-app"]["restart"]) == "unless-stopped", name


def test_dependencies_name_real_services_and_the_gpu_is_reserved_only_where_asked():
    for name, service in SERVICES.items():
        for needed in service.get("depends_on", {}):
            assert needed in SERVICES, (name, needed)
    assert SERVICES["trainer"]["profiles"] == ["cpu"] and SERVICES["trainer-gpu"]["profiles"] == ["gpu"]
    assert SERVICES["policy-builtin"]["profiles"] == ["cpu"] and SERVICES["vllm"]["profiles"] == ["gpu"]
    for name in ("trainer-gpu", "vllm"):
        devices = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name
    assert "deploy" not in SERVICES["trainer"] and "deploy" not in SERVICES["policy-builtin"]
    for name in ("policy-builtin", "vllm"):  # either one answers as policy:8000
        assert SERVICES[name]["networks"]["default"]["aliases"] == ["policy"]
    assert COMPOSE["x-app"]["environment"]["POLICY_SERVER_URL"] == "http://policy:8000"


def test_the_workers_cover_every_queue_a_task_is_sent_to():
    queues: set[str] = set()
    for service in SERVICES.values():
        match = re.search(r"celery -A worker.celery worker -Q (\S+)", _command(service))
        if match:
            queues |= set(match.group(1).split(","))
    sent = set(re.findall(r'queue="(\w+)"', (ROOT / "worker" / "tasks.py").read_text()))
    assert sent and sent <= queues, (sent, queues)


def test_commands_are_this_projects_and_no_demo_accounts_are_made():
    for name, service in SERVICES.items():
        for command in re.findall(r"manage\.py (\w+)", _command(service)):
            assert command in COMMANDS, (name, command)
    setup = _command(SERVICES["setup"])
    assert "prefloop_setup --no-users" in setup and "migrate" in setup


def test_no_secret_is_written_in_the_file_and_the_example_env_names_every_one():
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "DJANGO_SECRET_KEY"} <= required
    example = (ROOT / ".env.example").read_text()
    for name in required:
        assert re.search(rf"^{name}=$", example, re.M), name  # present, and empty: each installation makes its own
    environments = [COMPOSE["x-app"]["environment"]] + [s.get("environment", {}) for s in SERVICES.values()]
    for environment in environments:
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET", key):
                assert str(value).startswith("${"), (key, value)
            for password in re.findall(r"://[^:/@]*:([^@]+)@", str(value)):
                assert password.startswith("${"), (key, value)
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    env = COMPOSE["x-app"]["environment"]
    assert env["DJANGO_DEBUG"] == "0" and env["PREFLOOP_HTTPS"] == "1"


@pytest.mark.parametrize("path", ["webapp", "worker", "training", "templates", "static", "manage.py"])
def test_the_image_holds_what_the_services_run(path: str):
    assert re.search(rf"^COPY {re.escape(path)}\b", (ROOT / "Dockerfile").read_text(), re.M), path
