"""The campaign of test_campaign_browser, on what every newcomer runs: `make run`'s SQLite, its
filesystem broker, its worker and its built-in policy server, started as `make run` starts them.
Everything is done in the browser; the test reads the system's SQLite file only to know which
item the annotator was served, and to check what the pages said was stored.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.e2e.test_annotate_browser import login, wait_for_next
from tests.e2e.test_campaign_browser import (
    PROMPTS,
    TRL,
    chat_edited_onto_a_branch,
    invitation_accepted,
    project_make,
    upload,
)
from tests.e2e.test_make_run import make_run_start, make_run_stop

pytestmark = pytest.mark.e2e


def test_a_campaign_from_the_browser_on_sqlite_and_the_filesystem_broker(tmp_path, browser):
    run, _log, _text, web_port, _policy = make_run_start(tmp_path)
    try:
        _campaign(f"http://127.0.0.1:{web_port}", tmp_path / "var" / "prefloop.sqlite3", browser)
    finally:
        make_run_stop(run)


def _campaign(base: str, database: Path, browser) -> None:
    db = sqlite3.connect(database, timeout=30)

    class Server:  # login() takes a live server
        url = base

    admin = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = admin.new_page()
    page.set_default_timeout(30_000)
    login(page, Server, "admin", "prefloop-admin")
    project_id = project_make(page, "Prefer the **kind** answer.")
    annotator, ann = invitation_accepted(page, browser, base, project_id)

    # Prompts, answered by make run's worker (its generate queue, over the filesystem broker).
    upload(page, base, project_id, "prompts.jsonl", PROMPTS, "jsonl")
    deadline = time.monotonic() + 180
    while db.execute("SELECT count(*) FROM feedback_task WHERE project_id = ?", (project_id,)).fetchone()[0] < 2:
        assert time.monotonic() < deadline, "the worker did not answer the uploaded prompts"
        time.sleep(0.5)
    ann.goto(f"{base}/annotate/{project_id}/")
    assert ann.locator("#guidelines strong").inner_text() == "kind"
    ann.evaluate("window.__samePage = true")
    for done in (1, 2):
        ann.locator(".task-pairwise").wait_for()
        ann.keyboard.press("1")
        wait_for_next(ann, done)

    upload(page, base, project_id, "preferences.jsonl", TRL, "trl")
    assert page.locator("#import-bad-lines").inner_text() == "1"
    assert page.locator("#import-bad tbody td").first.inner_text() == "2"
    with page.expect_download() as download:
        page.click("#import-bad-download")
    assert Path(download.value.path()).read_text().splitlines()[1].startswith("2,")

    # The annotator disagrees with the file on the pair they are served; the admin settles it.
    ann.goto(f"{base}/annotate/{project_id}/")
    ann.locator(".task-pairwise").wait_for()
    served, theirs = db.execute(
        "SELECT a.task_id, l.choice FROM feedback_assignment a JOIN accounts_user u ON u.id = a.annotator_id "
        "JOIN feedback_label l ON l.task_id = a.task_id WHERE u.username = 'ann' AND a.status = 'leased'"
    ).fetchone()
    ann.keyboard.press("2" if theirs == "a" else "1")
    ann.wait_for_function("() => document.getElementById('done-count').textContent === '3'")
    page.click("nav >> text=Explore")
    page.select_option("#explore-project", str(project_id))
    page.check("#explore-disagreement")
    page.click("#explore-go")
    page.click(f"a[href='/dashboard/items/{served}/']")
    page.check(f"#adjudicate-form input[name=choice][value={theirs}]")
    page.fill("#adjudicate-note", "The file's answer is the kinder one.")
    page.click("#adjudicate-save")
    page.wait_for_selector("#item-settled")

    page.goto(f"{base}/dashboard/projects/{project_id}/export/")
    page.check("#export-raw")
    with page.expect_download() as download:
        page.click("#export-download")
    rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert sorted(r["annotator"] for r in rows) == ["ann", "ann", "ann", "import-trl", "import-trl"]
    assert all(r["adjudication"]["choice"] == theirs for r in rows if r["task_id"] == served)

    # The annotator chats on a branch of their own.
    chat_edited_onto_a_branch(ann)
    messages = db.execute("SELECT role, content, status FROM feedback_message ORDER BY id").fetchall()
    assert [m[0] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert all(status == "complete" for role, _, status in messages if role == "assistant")
    admin.close()
    annotator.close()
    db.close()
