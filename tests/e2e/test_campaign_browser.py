"""A feedback campaign run from the browser alone, as an admin and an annotator would: no Django
admin, no API call, no shell. The admin makes a project with Markdown guidelines and invites an
annotator, who accepts the link and picks a password; the admin uploads prompts (a real worker has
the built-in policy server answer them) and a labelled TRL file with a bad line (the import's page
names the line, and its report downloads); the annotator judges items in the queue, one of them
against the file's label; the admin finds that disagreement in the explorer, settles it with a note,
and exports the labels with the final answer beside them; the annotator chats, edits a turn onto a
branch, asks for another answer and ranks the two. A webhook the admin made on its page hears
every label and the training run the labels trigger, each body signed (checked by a real HTTP
server)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import serve_version_one
from tests.e2e.test_annotate_browser import login, wait_for_next
from tests.factories import make_user
from tests.webhook_receiver import webhook_receiver
from webapp.feedback.models import Candidate, Label, Message, Project, Task
from webapp.runs.models import TrainingRun

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PROMPTS = b'{"prompt": "Say something kind."}\n{"prompt": "Greet a friend warmly."}\n'
TRL = (
    b'{"prompt": "Is it raining?", "chosen": "A little, take a coat.", "rejected": "Look outside."}\n'
    b'{"prompt": "Broken", "chosen": 42, "rejected": "x"}\n'
    b'{"prompt": [{"role": "user", "content": "Hello?"}], "chosen": [{"role": "assistant", "content": "Hi there!"}],'
    b' "rejected": [{"role": "assistant", "content": "What."}]}\n'
)


def _answered(page, count: int) -> None:
    """Wait until a new page (not the one `_leaving` marked) shows `count` answers written and
    rendered again whole."""
    page.wait_for_function(
        "n => !window.__leaving && document.querySelectorAll('.message.assistant[data-done]').length >= n"
        " && !document.querySelector('[data-stream-url], .content.streaming')",
        arg=count,
        timeout=120_000,
    )


def _leaving(page) -> None:
    page.evaluate("window.__leaving = true")  # a page that loads after this has no such mark


def project_make(page, guidelines: str) -> int:
    """The "Kindness" project, made on its page: `guidelines`, pairwise by default, answers of 16
    tokens, two people an item; its id."""
    page.click("nav >> text=Projects")
    page.click("#project-new")
    page.fill("#project-name", "Kindness")
    page.fill("#project-guidelines", guidelines)
    assert page.is_checked("#kind-pairwise")
    page.fill("#project-max_tokens", "16")
    page.fill("#project-overlap", "2")
    page.click("#project-save")
    page.wait_for_selector("#project-created")
    return int(re.search(r"/dashboard/projects/(\d+)/", page.url).group(1))


def invitation_accepted(page, browser, base: str, project_id: int):
    """From the project's page, an invitation to it, accepted as "ann" in a browser context of its
    own; that context and its page."""
    page.click("#invite-for-project")
    assert page.locator("#invite-project").input_value() == str(project_id)
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
    return annotator, ann


def chat_edited_onto_a_branch(ann, system_prompt: str = "") -> None:
    """A new chat (with `system_prompt`, if given), a turn answered, and that turn edited onto a
    branch of its own, answered too."""
    ann.click("nav >> text=Chat")
    ann.click("#new-chat")
    ann.wait_for_load_state("load")  # chat.js has bound Enter to send (a key pressed before is a new line)
    if system_prompt:
        ann.fill("#system-prompt", system_prompt)
        ann.click("#chat-settings button[type=submit]")
        ann.wait_for_selector("#chat-settings summary >> text=a system prompt is set")
        ann.wait_for_load_state("load")
    ann.fill("#composer-text", "Say something kind.")
    ann.keyboard.press("Enter")
    _answered(ann, 1)
    ann.locator(".message.user .edit-turn summary").click()
    ann.fill(".message.user .edit-turn textarea", "Greet a friend.")
    _leaving(ann)
    ann.click(".message.user .edit-turn button[type=submit]")
    _answered(ann, 1)
    assert ann.locator(".message.user .content").inner_text() == "Greet a friend."
    assert ann.locator(".message.user .sibling-pos").inner_text() == "2 / 2"


def upload(page, base: str, project_id: int, name: str, content: bytes, fmt: str) -> None:
    """A file uploaded from the project's page, waited for until its import ended: it succeeded."""
    page.goto(f"{base}/dashboard/projects/{project_id}/")
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
    with webhook_receiver() as receiver:
        _campaign(live_server, loop_settings, loop_files, builtin_policy_server, start_worker, browser, settings,
                  tmp_path, receiver)  # fmt: skip


def _campaign(live_server, loop_settings, loop_files, builtin_policy_server, start_worker, browser, settings, tmp_path,
              receiver):  # fmt: skip
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    settings.IMPORT_DIR = tmp_path / "imports"
    serve_version_one(files=loop_files)
    start_worker(policy_url=builtin_policy_server, files=loop_files, queues="cpu,gpu,generate",
                 env={"PREFLOOP_IMPORT_DIR": str(tmp_path / "imports")})  # fmt: skip
    make_user("admin", username="boss", password="boss-password")
    base = live_server.url
    admin = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = admin.new_page()
    page.set_default_timeout(30_000)
    login(page, live_server, "boss", "boss-password")

    # A project, made on its page: Markdown guidelines, pairwise by default, short answers.
    project = Project.objects.get(
        pk=project_make(page, "Prefer the **kind** answer.\n\n<script>window.__leak = 1</script>")
    )
    assert (project.feedback_types, project.max_tokens, project.overlap) == (["pairwise"], 16, 2)
    # its recipe, on the same page: a short run after every 3 new labels
    page.fill("#recipe-auto_train_every", "3")
    page.fill("#recipe-max_steps", "2")
    page.click("#recipe-save")
    page.wait_for_selector("#recipe-saved")
    project.refresh_from_db()
    assert (project.recipe["auto_train_every"], project.recipe["max_steps"]) == (3, 2)

    # A webhook for labels and runs, made on its page; its secret is shown once.
    page.click("nav >> text=Dashboard")
    page.click("#hooks-link")
    page.fill("#hook-url", receiver.url)
    page.check("#hook-event-label\\.created")
    page.check("#hook-event-run\\.finished")
    page.click("#hook-make")
    receiver.secret = page.locator("#hook-secret").input_value()
    page.goto(f"{base}/dashboard/projects/{project.pk}/")

    # An invitation to this project, accepted in the annotator's own browser.
    annotator, ann = invitation_accepted(page, browser, base, project.pk)
    assert "Kindness" in ann.content()

    # Prompts, answered by the serving version on the worker; the annotator judges both answers.
    upload(page, base, project.pk, "prompts.jsonl", PROMPTS, "jsonl")
    deadline = time.monotonic() + 180
    while Task.objects.filter(project=project).count() < 2:
        assert time.monotonic() < deadline, "the worker did not answer the uploaded prompts"
        time.sleep(0.5)
    ann.goto(f"{base}/annotate/{project.pk}/")
    assert ann.locator("#guidelines strong").inner_text() == "kind"  # Markdown, rendered
    assert ann.evaluate("window.__leak") is None  # and its script never ran
    ann.evaluate("window.__samePage = true")
    for done in (1, 2):
        ann.locator(".task-pairwise").wait_for()
        ann.keyboard.press("1")
        wait_for_next(ann, done)

    # A labelled TRL file with a bad line: the import's page names the line; its report downloads.
    upload(page, base, project.pk, "preferences.jsonl", TRL, "trl")
    assert page.locator("#import-progress").get_attribute("value") == "1.0000"
    assert page.locator("#import-bad-lines").inner_text() == "1"
    assert page.locator("#import-bad tbody td").first.inner_text() == "2"  # the bad line, by number
    with page.expect_download() as download:
        page.click("#import-bad-download")
    report = Path(download.value.path()).read_text().splitlines()
    assert report[0] == "line,message" and report[1].startswith("2,")

    # The annotator is served a pair from the file (overlap 2: one slot left) and disagrees with it.
    ann.goto(f"{base}/annotate/{project.pk}/")
    ann.locator(".task-pairwise").wait_for()
    served = Task.objects.get(assignments__annotator__username="ann", assignments__status="leased")
    theirs = served.labels.get().choice
    ann.keyboard.press("2" if theirs == "a" else "1")
    ann.wait_for_function("() => document.getElementById('done-count').textContent === '3'")
    served.refresh_from_db()
    assert (served.n_labels, served.disagreement) == (2, 0.5)

    # The admin finds it among the disagreements and settles it with a note.
    page.click("nav >> text=Explore")
    page.select_option("#explore-project", str(project.pk))
    page.check("#explore-disagreement")
    page.click("#explore-go")
    page.click(f"a[href='/dashboard/items/{served.pk}/']")
    assert page.locator("#item-labels tbody tr").count() == 2
    page.check(f"#adjudicate-form input[name=choice][value={theirs}]")
    page.fill("#adjudicate-note", "The file's answer is the kinder one.")
    page.click("#adjudicate-save")
    page.wait_for_selector("#item-settled")
    assert "Settled by boss" in page.locator("#item-adjudication").inner_text()
    assert served.labels.count() == 2  # the raw labels stay

    # The webhook heard each of the annotator's labels and the run the third one triggered, signed.
    deadline = time.monotonic() + 300
    while "run.finished" not in receiver.events():
        runs = list(TrainingRun.objects.values_list("kind", "status", "stage", "error"))
        assert time.monotonic() < deadline, (
            f"no run.finished webhook; heard {receiver.events(valid_only=False)}; runs {runs}"
        )
        time.sleep(1)
    assert all(r["valid"] for r in receiver.received), "a delivery's signature did not check"
    heard = [r["body"]["data"] for r in receiver.received if r["body"]["event"] == "label.created"]
    assert sorted(d["annotator"] for d in heard) == ["ann", "ann", "ann"]
    (run,) = [r["body"]["data"] for r in receiver.received if r["body"]["event"] == "run.finished"]
    assert (run["project"], run["kind"]) == (project.pk, "policy")

    # The export, downloaded from its page: the annotator's label and the file's two.
    page.goto(f"{base}/dashboard/projects/{project.pk}/export/")
    page.check("#export-raw")
    with page.expect_download() as download:
        page.click("#export-download")
    rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert sorted(r["annotator"] for r in rows) == ["ann", "ann", "ann", "import-trl", "import-trl"]
    settled = [r for r in rows if r["task_id"] == served.pk]
    assert len(settled) == 2 and all(r["adjudication"]["choice"] == theirs for r in settled)
    assert settled[0]["adjudication"]["note"] == "The file's answer is the kinder one."

    # The annotator chats: a system prompt, a turn, an edit of it on a branch of its own, back to
    # the first branch, another answer there, and the two sibling answers ranked.
    chat_edited_onto_a_branch(ann, system_prompt="Be kind and brief.")
    _leaving(ann)
    ann.click(".message.user .sibling-prev")
    _answered(ann, 1)
    assert ann.locator(".message.user .content").inner_text() == "Say something kind."
    assert ann.locator(".message.user .sibling-pos").inner_text() == "1 / 2"
    _leaving(ann)
    ann.click(".message.assistant .regenerate")
    _answered(ann, 1)
    assert ann.locator(".message.assistant .sibling-pos").inner_text() == "2 / 2"
    rank = ann.locator(".message.assistant .rank-siblings")
    rank.locator("summary").click()
    answers = rank.locator("li")
    answers.nth(1).drag_to(answers.nth(0), target_position={"x": 20, "y": 5})  # the newer answer on top
    assert [rank.locator("select").nth(i).input_value() for i in range(2)] == ["1", "2"]
    rank.locator("button[type=submit]").click()
    ann.wait_for_selector(".rank-siblings[data-ranked]")
    chat_labels = Label.objects.filter(annotator__username="ann", kind="ranking")
    assert chat_labels.count() == 1 and chat_labels.get().task.prompt.messages[0]["content"] == "Be kind and brief."
    newest = Message.objects.filter(role="assistant", conversation__owner__username="ann").order_by("-id").first()
    assert Candidate.objects.get(pk=chat_labels.get().ranking[0][0]).text == newest.content
    admin.close()
    annotator.close()
