"""A large import, the way an admin does it: uploaded through the API, read by a real Celery worker
process, watched through the API until it is done."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.factories import make_project, make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data"


def test_a_large_upload_is_imported_by_a_worker_and_watched_through_the_api(
    live_server, settings, loop_files, start_worker, tmp_path
):
    settings.PREFLOOP_IMPORT_INLINE_BYTES = 64 * 1024  # HH's test split (gzipped, about 740 KB) is large
    settings.IMPORT_DIR = tmp_path / "imports"
    path = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
    if not path.exists():
        pytest.fail(f"{path} is absent: this test reads the shared human-feedback files")
    project = make_project(name="HH", feedback_types=["pairwise"])
    make_user("admin", username="boss", password="boss-password")
    api = httpx.Client(base_url=f"{live_server.url}/api", timeout=120)
    token = api.post("/auth/token/", json={"username": "boss", "password": "boss-password"}).json()["token"]
    headers = {"Authorization": f"Token {token}"}
    start_worker(policy_url="http://127.0.0.1:9", files=loop_files, queues="cpu",
                 env={"PREFLOOP_IMPORT_DIR": str(tmp_path / "imports")})  # fmt: skip
    with path.open("rb") as handle:
        queued = api.post(f"/projects/{project.pk}/import/", files={"file": (path.name, handle)},
                          data={"format": "hh"}, headers=headers)  # fmt: skip
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["id"]
    seen, deadline = [], time.monotonic() + 240
    while True:
        job = api.get(f"/imports/{job_id}/", headers=headers).json()
        seen.append(job["items"])
        if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job["status"] == "succeeded", json.dumps(job)[:500]
    assert (job["items"], job["created_tasks"], job["labels"], job["bad_lines"]) == (2312, 2312, 2312, 0)
    assert any(0 < n < 2312 for n in seen), seen[:20]  # counts moved while it ran
    exported = api.get(f"/projects/{project.pk}/export/", params={"kind": "preference"}, headers=headers)
    assert len(exported.text.splitlines()) == 2312

    # the worker that imported the file also computed the project's quality report
    from django.test import Client

    from webapp.accounts.models import User
    from webapp.feedback.figures import data_state
    from webapp.feedback.models import Figure, Task

    warmed = Figure.objects.get(project=project, name="quality")
    assert warmed.state == data_state() and warmed.value["kinds"]["pairwise"]["labels"] == 2312
    # a report slow to compute is shown as it was while the worker counts the new label
    Figure.objects.filter(pk=warmed.pk).update(seconds=30.0)
    task = Task.objects.filter(project=project).first()
    sent = api.post("/labels/", json={"task": task.pk, "choice": "b"}, headers=headers)
    assert sent.status_code == 201, sent.text
    page = Client()
    page.force_login(User.objects.get(username="boss"))
    quality = page.get(f"/dashboard/quality/?project={project.pk}").content.decode()
    assert "newer labels are being counted on a worker" in quality
    deadline = time.monotonic() + 60
    while Figure.objects.get(pk=warmed.pk).state != data_state() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert Figure.objects.get(pk=warmed.pk).value["kinds"]["pairwise"]["labels"] == 2313
    assert "being counted" not in page.get(f"/dashboard/quality/?project={project.pk}").content.decode()
