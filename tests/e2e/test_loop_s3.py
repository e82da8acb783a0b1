"""The loop with its policy versions in an S3-compatible object store (a real SeaweedFS server).

The web app writes version 1 to the bucket, a real Celery worker downloads it into its own cache
to train version 2, uploads version 2 with its manifest, and the built-in policy server loads it
from the worker's checked local copy; the next candidates come from version 2.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from safetensors.torch import load_file

from tests.e2e.conftest import item_for_prompt
from tests.factories import make_user
from training.artifacts import COMPLETE_FILE, RemoteArtifactStore
from training.policy_client import PolicyClient

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PROMPTS = ["What is the capital of Italy?", "How many legs does a cat have?", "Why do we need sleep?"]


def test_loop_with_versions_in_s3(
    live_server, loop_settings, loop_files, builtin_policy_server, start_worker, s3_options, tmp_path
):
    from webapp.runs.bootstrap import initial_version_ensure
    from webapp.runs.services import version_serve

    url = f"s3://artifacts/loop-{uuid.uuid4().hex[:8]}"
    loop_settings.ARTIFACT_STORE_URL = url
    loop_settings.ARTIFACT_STORE_OPTIONS = s3_options
    loop_settings.ARTIFACT_CACHE_DIR = tmp_path / "web-cache"
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    loop_settings.TRAIN_EVERY_N_LABELS = 0

    v1, created = initial_version_ensure()
    assert created and v1.artifact_path == f"{url}/versions/v1-initial"
    version_serve(version=v1)
    client = PolicyClient(builtin_policy_server)
    assert client.adapter_root("policy-v1") == str(tmp_path / "web-cache" / "v1-initial")

    make_user(username="ann", password="ann-password")
    make_user("admin", username="boss", password="boss-password")
    worker_cache = tmp_path / "worker-cache"  # the worker's machine has a cache of its own
    start_worker(
        policy_url=builtin_policy_server,
        files=loop_files,
        env={
            "ARTIFACT_STORE_URL": url,
            "ARTIFACT_STORE_OPTIONS": json.dumps(s3_options),
            "ARTIFACT_CACHE_DIR": str(worker_cache),
        },
    )
    api = httpx.Client(base_url=f"{live_server.url}/api", timeout=120)
    token = api.post("/auth/token/", json={"username": "ann", "password": "ann-password"}).json()["token"]
    ann = {"Authorization": f"Token {token}"}
    boss_token = api.post("/auth/token/", json={"username": "boss", "password": "boss-password"}).json()["token"]
    boss = {"Authorization": f"Token {boss_token}"}
    for text in PROMPTS:
        prompt = api.post("/prompts/", json={"text": text}, headers=ann).json()
        task = item_for_prompt(api, prompt["id"], ann, api="")
        label = api.post("/labels/", json={"task": task["id"], "choice": "a"}, headers=ann)
        assert label.status_code == 201, label.text

    launched = api.post("/runs/", headers={"Authorization": f"Token {boss_token}"})
    assert launched.status_code == 201, launched.text
    run = launched.json()
    deadline = time.monotonic() + 300
    while run["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
        run = api.get(f"/runs/{run['id']}/", headers=boss).json()
    assert run["status"] == "succeeded", run

    v2 = {v["number"]: v for v in api.get("/versions/", headers=boss).json()["results"]}[2]
    assert v2["status"] == "serving"
    assert v2["artifact_path"].startswith(f"{url}/versions/run-")
    name = v2["artifact_path"].rsplit("/", 1)[-1]
    # In the bucket: the adapter, its meta.json and the manifest written last.
    store = RemoteArtifactStore(url, cache_dir=tmp_path / "check-cache", storage_options=s3_options)
    assert store.list_versions() == sorted(["v1-initial", name])
    manifest = json.loads(store.fs.cat_file(f"{store.root}/versions/{name}/{COMPLETE_FILE}"))
    assert {"adapter_model.safetensors", "adapter_config.json", "meta.json"} <= set(manifest["files"])
    assert store.read_meta(name).parent == "v1"  # the web app's name of the parent version
    # The worker trained from its own download of version 1 and served version 2 from its copy.
    assert (worker_cache / "v1-initial" / COMPLETE_FILE).is_file()
    assert client.adapter_root("policy-v2") == str(worker_cache / name)
    fresh = store.local_path(name)  # and a third machine's download is byte-identical
    w1 = load_file(str(tmp_path / "web-cache" / "v1-initial" / "adapter_model.safetensors"))
    w2 = load_file(str(fresh / "adapter_model.safetensors"))
    assert any(not w1[k].equal(w2[k]) for k in w1)
    assert (fresh / "adapter_model.safetensors").read_bytes() == (
        worker_cache / name / "adapter_model.safetensors"
    ).read_bytes()

    prompt = api.post("/prompts/", json={"text": "What is the capital of Spain?"}, headers=ann).json()
    task = item_for_prompt(api, prompt["id"], ann, api="")
    assert {c["policy_version"] for c in task["candidates"]} == {2}
