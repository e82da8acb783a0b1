"""axe-core, run in the browser on every main page as an annotator and an admin see it, finds no
serious or critical accessibility violation (missing labels, contrast, names of buttons, ARIA)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.e2e.test_annotate_browser import login
from tests.e2e.test_loop_browser import SHOTS_DIR_ENV
from tests.factories import make_project, make_serving_version, make_task, make_user
from webapp.accounts.models import User
from webapp.feedback import services
from webapp.feedback.models import Label
from webapp.feedback.people import invitation_create
from webapp.hooks.services import hook_create
from webapp.runs.models import TrainingRun

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).resolve().parents[2] / "static" / "vendor" / "axe-core" / "axe-4.14.1.min.js"
# With PREFLOOP_SCREENSHOT_DIR set, the pages the README shows are saved there as they are checked.
SHOTS = {
    "annotator /annotate/{project}/": "annotate.png",
    "admin /dashboard/": "overview.png",
    "admin /dashboard/projects/{project}/": "project.png",
    "admin /dashboard/explore/": "explore.png",
    "admin /dashboard/items/{task}/": "item.png",
    "admin /dashboard/person/ann/": "person.png",
}


def _shoot(page, where: str, ids: dict) -> None:
    shots = os.environ.get(SHOTS_DIR_ENV)
    name = next((file for key, file in SHOTS.items() if key.format(**ids) == where), None)
    if shots and name == "overview.png":  # the dashboard's overview card, whole
        page.wait_for_timeout(300)  # the charts draw after the page loads
        page.locator("#overview").screenshot(path=str(Path(shots) / name))
    elif shots and name:
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(Path(shots) / name), full_page=False)


def _violations(page) -> list[str]:
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        """async () => {
            const result = await axe.run(document, {resultTypes: ['violations']});
            return result.violations
              .filter(v => v.impact === 'serious' || v.impact === 'critical')
              .map(v => `${v.impact} ${v.id}: ${v.help} at `
                        + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', '));
        }"""
    )
    return list(found)


def _world() -> dict[str, int | str]:
    admin = make_user(User.Role.ADMIN, username="boss", password="boss-password")
    ann = make_user(username="ann", password="ann-password")
    make_serving_version()
    project = make_project(name="Access", members=[ann], guidelines="Prefer the **clear** answer.")
    task = make_task(project=project, texts=("A short answer.", "A longer, kinder answer."))
    make_task(project=project, kind="ranking", texts=("one", "two", "three"))
    services.label_create(task=task, annotator=admin, data={"choice": "a"}, source=Label.Source.API)
    for day in range(12):  # some history for the overview's charts and the person's page
        made = make_task(project=project, question=f"Question {day} about the river?", texts=("Yes.", "No, not today."))
        label, _ = services.label_create(
            task=made, annotator=ann, data={"choice": "ab"[day % 2], "rationale": "clearer"}, source=Label.Source.API
        )
        Label.objects.filter(pk=label.pk).update(created_at=timezone.now() - timedelta(days=day % 7))
    conversation = services.conversation_create(owner=ann)
    _, reply = services.chat_turn_start(conversation=conversation, text="Hello?")
    services.chat_reply_finish(message=reply, content="Hi! **How** can I help?")
    mine = services.conversation_create(owner=admin)
    _, answer = services.chat_turn_start(conversation=mine, text="Hi")
    services.chat_reply_finish(message=answer, content="Hello.")
    run = TrainingRun.objects.create(trigger=TrainingRun.Trigger.API, project=project)
    hook, _ = hook_create(url="http://127.0.0.1:9/hook", events=["label.created"])
    _, token = invitation_create(by=admin, project=project)
    return {"project": project.pk, "task": task.pk, "conversation": conversation.pk, "mine": mine.pk,
            "run": run.pk, "hook": hook.pk, "token": token}  # fmt: skip


def test_no_page_has_a_serious_or_critical_accessibility_violation(live_server, browser):
    ids = _world()
    base = live_server.url
    found: dict[str, list[str]] = {}
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)

    for path in ("/login/", f"/invitations/{ids['token']}/", "/no-such-page/"):
        page.goto(base + path)
        found[path] = _violations(page)
    login(page, live_server, "ann", "ann-password")
    page.wait_for_url(f"{base}/chat/")
    for path in ("/chat/", f"/chat/{ids['conversation']}/", "/annotate/", f"/annotate/{ids['project']}/"):
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
        found[f"annotator {path}"] = _violations(page)
        _shoot(page, f"annotator {path}", ids)
    context.close()

    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    login(page, live_server, "boss", "boss-password")
    page.wait_for_url(f"{base}/chat/")
    d, p = "/dashboard", ids["project"]
    for path in (
        f"/chat/{ids['mine']}/",
        f"{d}/",
        f"{d}/runs/",
        f"{d}/runs/{ids['run']}/",
        f"{d}/imports/",
        f"{d}/generation/",
        f"{d}/jobs/",
        f"{d}/quality/",
        f"{d}/projects/",
        f"{d}/projects/new/",
        f"{d}/projects/{p}/",
        f"{d}/projects/{p}/recipe/",
        f"{d}/projects/{p}/arena/",
        f"{d}/projects/{p}/import/",
        f"{d}/projects/{p}/export/",
        f"{d}/explore/",
        f"{d}/items/{ids['task']}/",
        f"{d}/webhooks/",
        f"{d}/webhooks/{ids['hook']}/",
        f"{d}/people/",
        f"{d}/person/ann/",
    ):
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
        found[f"admin {path}"] = _violations(page)
        _shoot(page, f"admin {path}", ids)
    context.close()

    bad = {where: v for where, v in found.items() if v}
    assert not bad, "\n".join(f"{where}: {line}" for where, lines in bad.items() for line in lines)
