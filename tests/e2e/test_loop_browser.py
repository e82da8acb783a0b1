"""The whole loop in a real browser: chat → pairwise choices → DPO in a worker → v2 in the chat."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.e2e.conftest import serve_version_one
from tests.factories import make_user
from training.policy_client import PolicyClient
from webapp.feedback.models import Label, MessageFeedback
from webapp.runs.data import is_held_out
from webapp.runs.models import ModelVersion, TrainingRun

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

QUESTIONS = [
    "What is the capital of France?",
    "How do I make tea?",
    "Tell me a fact about the moon.",
    "What colour is grass?",
]
COMPARES_PER_ANSWER = 2
SHOTS_DIR_ENV = "PREFLOOP_SCREENSHOT_DIR"


def send(page, text: str) -> None:
    """Type a message, press Enter, and wait until its streamed answer is complete."""
    # chat.js binds Enter to send once the page has loaded; a key pressed before is a new line
    page.wait_for_load_state("load")
    done_before = page.locator(".message.assistant[data-done]").count()
    page.fill("#composer textarea", text)
    page.press("#composer textarea", "Enter")
    page.wait_for_function(
        "n => document.querySelectorAll('.message.assistant[data-done]').length > n", arg=done_before
    )


def compare_and_choose(page) -> str:
    """Ask for two answers to the last turn and choose the shorter one (a rule the model can learn)."""
    last = page.locator(".message.assistant").last
    boxes = last.locator(".compare-box")
    done = last.locator(".compare-box.done")
    n_done = done.count()
    last.locator("button.compare").click()
    box = boxes.nth(n_done)
    box.locator(".candidate").nth(1).wait_for()
    a, b = (box.locator(".candidate .text").nth(i).inner_text() for i in (0, 1))
    choice = "a" if len(a) <= len(b) else "b"
    box.locator(f"button.choice-{choice}").click()
    page.wait_for_function(
        "([el, n]) => el.querySelectorAll('.compare-box.done').length > n",
        arg=[last.element_handle(), n_done],
    )
    return done.nth(n_done).inner_text()


def test_chat_feedback_trains_and_the_next_answer_comes_from_version_2(
    live_server, loop_settings, loop_files, builtin_policy_server, start_worker, page
):
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    loop_settings.TRAIN_EVERY_N_LABELS = len(QUESTIONS) * COMPARES_PER_ANSWER
    v1 = serve_version_one(files=loop_files)
    make_user(username="ann", password="ann-password")
    start_worker(policy_url=builtin_policy_server, files=loop_files)

    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", "ann-password")
    page.click("button[type=submit]")
    page.click("#new-chat")
    assert page.locator("#serving-version").inner_text() == "v1"

    notes = []
    for question in QUESTIONS:
        send(page, question)
        last = page.locator(".message.assistant").last
        assert last.locator(".content").inner_text().strip(), "the streamed answer is empty"
        assert last.locator(".version").inner_text() == "v1"
        notes.extend(compare_and_choose(page) for _ in range(COMPARES_PER_ANSWER))
    first = page.locator(".message.assistant").first
    first.locator(".thumb-reason").fill("short and right")
    first.locator("button.thumb-down").click()
    first.locator("button.thumb-down.active").wait_for()
    first.locator("button.thumb-up").click()  # people change their minds: the latest thumb counts
    first.locator("button.thumb-up.active").wait_for()
    thumb = MessageFeedback.objects.get()
    assert (thumb.value, thumb.reason) == ("up", "short and right")
    assert len(notes) == 8
    assert all("Saved" in note for note in notes)
    assert "Training run" in notes[-1], notes[-1]  # the 8th label queued a run

    deadline = time.monotonic() + 300
    run = TrainingRun.objects.get()
    while run.status in TrainingRun.ACTIVE_STATUSES and time.monotonic() < deadline:
        time.sleep(1)
        run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.trigger == TrainingRun.Trigger.THRESHOLD
    assert run.n_labels == 8
    # Each decisive label is a pair, unless the policy sampled the same text twice or the project
    # holds it out for the evaluation gate.
    distinct = sum(
        len({s.candidate.text for s in label.task.slots.all()}) == 2 and not is_held_out(label.pk, 0.2)
        for label in Label.objects.all()
    )
    assert run.n_pairs == distinct >= 1
    v2 = ModelVersion.objects.get(number=2)
    assert v2.status == ModelVersion.Status.SERVING and v2.parent_id == v1.pk
    # The policy server swapped the adapter in place, without a restart.
    assert PolicyClient(builtin_policy_server).adapter_root(v2.adapter_name) == v2.artifact_path

    send(page, "What is the capital of Spain?")
    last = page.locator(".message.assistant").last
    assert last.locator(".version").inner_text() == "v2"
    assert last.locator(".content").inner_text().strip()
    page.reload()
    assert page.locator("#serving-version").inner_text() == "v2"

    shots = os.environ.get(SHOTS_DIR_ENV)
    if shots:  # the README's screenshot: a v2 answer with a comparison open
        page.locator(".message.assistant").last.locator("button.compare").click()
        page.locator(".message.assistant").last.locator(".compare-box .candidate").nth(1).wait_for()
        page.locator(".message.assistant").last.locator(".compare-box .choices").scroll_into_view_if_needed()
        page.screenshot(path=str(Path(shots) / "chat.png"), full_page=False)

    w1 = load_file(f"{v1.artifact_path}/adapter_model.safetensors")
    w2 = load_file(f"{v2.artifact_path}/adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    assert any(not w1[k].equal(w2[k]) for k in w1), "version 2's adapter weights equal version 1's"
