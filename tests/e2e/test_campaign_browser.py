"""A feedback campaign run from the browser alone, as an admin and an annotator would: no Django
admin, no API call, no shell. The admin makes a project with Markdown guidelines and invites an
annotator, who accepts the link and picks a password; the admin uploads prompts (a real worker has
the built-in policy server answer them) and a labelled TRL file with a bad line (the import's page
names the line, and its report downloads); the annotator judges an item in the queue; the admin
exports the labels."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import serve_version_one
from tests.e2e.test_annotate_browser import login, wait_for_next
from tests.factories import make_user
from webapp.feedback.models import Label, Project, Task

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PROMPTS = b'{"prompt": "Say something kind."}\n{"prompt": "Greet a friend warmly."}\n'
TRL = (
    b'{"prompt": "Is it raining?", "chosen": "A little, take a coat.", "rejected": "Look outside."}\n'
    b'{"prompt": "Broken", "chosen": 42, "rejected": "x"}\n'
    b'{"prompt": [{"role": "user", "content": "Hello?"}], "chosen": [{"role": "assistant", "content": "Hi there!"}],'
    b' "rejected": [{"role": "assistant", "content": "What."}]}\n'
)


def _upload(page, base: str, project: Project, name: str, content: bytes, fmt: str) -> None:
    page.goto(f"{base}/dashboard/projects/{project.pk}/")
    page.click("#project-upload")
    page.set_input_files("#upload-file", files=[{"name": name, "mimeType": "application/json", "buffer": content}])
    page.select_option("#upload-format", fmt)
    page.click("#upload-send")
    page.wait_for_function(
        "() => ['succeeded', 'failed'].includes(document.getElementById('import-status').textContent)",
        timeout=120_000,
    )
    assert page.locator("#import-status").inner_text() == "succeeded", page.locator("#import-detail").inner_text()


def test_an_admin_runs_a_campaign_from_the_browser_alone(
    live_server, loop_settings, loop_files, builtin_policy_server, start_worker, browser, settings, tmp_path
):
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    settings.IMPORT_DIR = tmp_path / "imports"
    serve_version_one(files=loop_files)
    start_worker(policy_url=builtin_policy_server, files=loop_files, queues="cpu,generate",
                 env={"PREFLOOP_IMPORT_DIR": str(tmp_path / "imports")})  # fmt: skip
    make_user("admin", username="boss", password="boss-password")
    base = live_server.url
    admin = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = admin.new_page()
    page.set_default_timeout(30_000)
    login(page, live_server, "boss", "boss-password")

    # A project, made on its page: Markdown guidelines, pairwise by default, short answers.
    page.click("nav >> text=Projects")
    page.click("#project-new")
    page.fill("#project-name", "Kindness")
    page.fill("#project-guidelines", "Prefer the **kind** answer.\n\n<script>window.__leak = 1</script>")
    assert page.is_checked("#kind-pairwise")
    page.fill("#project-max_tokens", "16")
    page.click("#project-save")
    page.wait_for_selector("#project-created")
    project = Project.objects.get(name="Kindness")
    assert (project.feedback_types, project.max_tokens) == (["pairwise"], 16)

    # An invitation to this project, accepted in the annotator's own browser.
    page.click("#invite-for-project")
    assert page.locator("#invite-project").input_value() == str(project.pk)
    page.fill("#invite-note", "Ann")
    page.click("#invite-make")
    link = page.locator("#invite-link").input_value()
    annotator = browser.new_context(viewport={"width": 1200, "height": 900})
    ann = annotator.new_page()
    ann.set_default_timeout(30_000)
    ann.goto(link)
    ann.fill("#invitation-username", "ann")
    ann.fill("#invitation-password", "kind-words-2026")
    ann.fill("#invitation-password-again", "kind-words-2026")
    ann.click("#invitation-accept")
    ann.wait_for_url(f"{base}/annotate/")
    assert "Kindness" in ann.content()

    # Prompts, answered by the serving version on the worker; then a labelled TRL file with a bad line.
    _upload(page, base, project, "prompts.jsonl", PROMPTS, "jsonl")
    _upload(page, base, project, "preferences.jsonl", TRL, "trl")
    assert page.locator("#import-progress").get_attribute("value") == "1.0000"
    assert page.locator("#import-bad-lines").inner_text() == "1"
    assert page.locator("#import-bad tbody td").first.inner_text() == "2"  # the bad line, by number
    with page.expect_download() as download:
        page.click("#import-bad-download")
    report = Path(download.value.path()).read_text().splitlines()
    assert report[0] == "line,message" and report[1].startswith("2,")
    deadline = time.monotonic() + 180
    while Task.objects.filter(project=project, prompt__source="import", labels__isnull=True).count() < 2:
        assert time.monotonic() < deadline, "the worker did not answer the uploaded prompts"
        time.sleep(0.5)

    # The annotator judges an answered prompt; the guidelines are rendered, their script is not.
    ann.goto(f"{base}/annotate/{project.pk}/")
    assert ann.locator("#guidelines strong").inner_text() == "kind"
    assert ann.evaluate("window.__leak") is None
    ann.evaluate("window.__samePage = true")
    ann.locator(".task-pairwise").wait_for()
    ann.keyboard.press("1")
    wait_for_next(ann, 1)
    judged = Label.objects.get(annotator__username="ann")
    assert judged.task.project == project and judged.task.labels.count() == 1  # an uploaded prompt, not a TRL pair

    # The export, downloaded from its page: the annotator's label and the file's two.
    page.goto(f"{base}/dashboard/projects/{project.pk}/export/")
    page.check("#export-raw")
    with page.expect_download() as download:
        page.click("#export-download")
    rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert sorted(r["annotator"] for r in rows) == ["ann", "import-trl", "import-trl"]
    admin.close()
    annotator.close()
