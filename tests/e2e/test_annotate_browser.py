"""Annotation pages in a real Chromium: keyboard, drag and drop, rewrite diff, skip, no full reloads."""

from __future__ import annotations

import pytest

from tests.factories import make_project, make_task, make_user
from webapp.feedback.models import Assignment, Label

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def login(page, live_server, username: str, password: str) -> None:
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def wait_for_next(page, done: int) -> None:
    page.wait_for_function("n => document.getElementById('done-count').textContent === String(n)", arg=done)
    assert page.evaluate("window.__samePage") is True, f"step {done} reloaded the page instead of swapping"


def test_each_task_kind_is_judged_in_the_browser_without_a_full_page_load(live_server, page):
    ann = make_user(username="ann", password="ann-password")
    project = make_project(name="Everything", guidelines="Prefer *short* correct answers.", members=[ann])
    pairwise = make_task(project=project, texts=("Paris.", "Lyon, I think."))
    ranking = make_task(project=project, kind="ranking", texts=("first", "second", "third"))
    critique = make_task(project=project, kind="critique", texts=("The sun is a planet.",))
    rating = make_task(project=project, kind="rating", texts=("Two plus two is four.",))
    login(page, live_server, "ann", "ann-password")

    page.goto(f"{live_server.url}/annotate/{project.pk}/")
    assert "Prefer short correct answers." in page.locator("#guidelines").inner_text()  # Markdown, rendered
    assert page.locator("#guidelines em").inner_text() == "short"
    page.evaluate("window.__samePage = true")

    # Pairwise, by keyboard: 2 = B is better.
    page.locator(".task-pairwise").wait_for()
    page.locator("input[name=strength][value='3']").check()
    page.keyboard.press("2")
    wait_for_next(page, 1)
    label = Label.objects.get(task=pairwise)
    assert (label.choice, label.strength) == ("b", 3)

    # Ranking: drag "third" to the top, move "first" below "second" with the keyboard, tie the last two.
    page.locator(".task-ranking").wait_for()
    items = page.locator("#ranking-list .rank-item")
    items.nth(2).drag_to(items.nth(0), target_position={"x": 20, "y": 5})
    page.wait_for_function(
        "() => document.querySelector('#ranking-list .rank-item .text').textContent.trim() === 'third'"
    )
    page.locator("#ranking-list .rank-item", has_text="first").focus()
    page.keyboard.press("Alt+ArrowDown")
    order = [t.strip() for t in page.locator("#ranking-list .rank-item .text").all_inner_texts()]
    assert order == ["third", "second", "first"]
    page.locator("#ranking-list .rank-item").nth(2).locator(".tie-above").check()
    page.click("button.submit-ranking")
    wait_for_next(page, 2)
    ids = {slot.candidate.text: slot.candidate_id for slot in ranking.slots.select_related("candidate")}
    assert Label.objects.get(task=ranking).ranking == [[ids["third"]], [ids["second"], ids["first"]]]

    # Critique with a rewrite: the diff shows the edit; Ctrl+Enter submits.
    page.locator(".task-critique").wait_for()
    page.fill("textarea[name=critique]", "The sun is a star, not a planet.")
    page.fill("#rewrite", "The sun is a star.")
    assert "".join(page.locator("#rewrite-diff ins").all_inner_texts()).strip() == "star"
    assert "".join(page.locator("#rewrite-diff del").all_inner_texts()).strip() == "planet"
    page.keyboard.press("Control+Enter")
    wait_for_next(page, 3)
    label = Label.objects.get(task=critique)
    assert (label.critique, label.rewrite) == ("The sun is a star, not a planet.", "The sun is a star.")

    # Rating by keyboard: 6.
    page.locator(".task-rating").wait_for()
    page.keyboard.press("6")
    wait_for_next(page, 4)
    assert Label.objects.get(task=rating).rating == 6

    assert page.locator(".all-done").is_visible()
    assert page.evaluate("window.__samePage") is True  # every step was an htmx swap


def test_skip_needs_a_reason_and_bad_input_shows_an_error(live_server, page):
    ann = make_user(username="ann", password="ann-password")
    project = make_project(name="Skippable", members=[ann])
    task = make_task(project=project, kind="rating", texts=("Hello.",))
    login(page, live_server, "ann", "ann-password")
    page.goto(f"{live_server.url}/annotate/{project.pk}/")
    page.click("button.submit-rating")  # no rating chosen
    page.locator("#task-area .form-error", has_text="rating must be").wait_for()
    page.click("button.skip-button")  # no reason
    page.locator("#task-area .form-error", has_text="say why").wait_for()
    page.fill("input[name=reason]", "not my language")
    page.click("button.skip-button")
    page.locator(".all-done").wait_for()
    assert Assignment.objects.get(task=task).skip_reason == "not my language"
    assert Label.objects.count() == 0
