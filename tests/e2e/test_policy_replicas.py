"""Two built-in policy servers on the CPU as replicas of one policy (POLICY_SERVER_URLS): requests
spread over them and skip a dead one, a promotion is all or nothing (one replica stopped: nothing
flips, and the error names it), a replica started again catches up (policy_sync, or the first
request that finds its version missing), and then the promotion goes through on both."""

from __future__ import annotations

import os
import shutil

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

    def adapters(self) -> set[str]:
        return {str(m["id"]) for m in policy._client(self.url, 30.0).models()} - {"base"}


@pytest.fixture
def replicas(loop_settings, loop_files, tmp_path):
    pair = [Replica("replica-a", loop_files, tmp_path), Replica("replica-b", loop_files, tmp_path)]
    for replica in pair:
        replica.start()
    loop_settings.POLICY_SERVER_URLS = [r.url for r in pair]
    loop_settings.POLICY_PROXY_URL = ""
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
    assert all("POST /v1/chat/completions" in r.process.log() for r in (a, b))  # both answered, in turn

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
    assert all(policy.generate(HI, n=1, version=v2) for _ in range(4))
    assert v2.adapter_name in b.adapters()
