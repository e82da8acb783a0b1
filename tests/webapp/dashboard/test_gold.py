"""Gold items from a file's column and from the explorer, and annotators who see how they did on
them when their project lets them."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from tests.factories import make_project, make_task, make_user
from training.feedback_io import BadRecord, read_feedback
from webapp.accounts.models import User
from webapp.feedback.assignments import assignment_next
from webapp.feedback.models import Label, ProjectMember, Task
from webapp.feedback.services import label_create
from webapp.feedback.transfer import import_items

pytestmark = pytest.mark.django_db


def test_a_files_gold_column_makes_gold_items_and_a_bad_one_is_a_bad_line(tmp_path):
    lines = [
        {"prompt": "Which is kinder?", "candidates": ["Thank you!", "Go away."], "gold": {"choice": "a"}},
        {"prompt": "Order these", "candidates": ["one", "two", "three"], "gold": {"ranking": [[2], [0, 1]]}},
        {"prompt": "Plain", "candidates": ["x", "y"]},
        {"prompt": "Bad gold", "candidates": ["x", "y"], "gold": {"choice": "c"}},
    ]
    path = tmp_path / "gold.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    records = list(read_feedback(path, "jsonl"))
    (bad,) = [r for r in records if isinstance(r, BadRecord)]
    assert bad.line == 4 and "'gold'" in bad.message and "pairwise gold answer" in bad.message

    project = make_project(name="Gold file")
    report = import_items(project=project, records=records)
    assert report.created_tasks == 3 and len(report.bad) == 1
    gold = {t.prompt.messages[0]["content"]: (t.is_gold, t.gold) for t in Task.objects.filter(project=project)}
    assert gold == {
        "Which is kinder?": (True, {"choice": "a"}),
        "Order these": (True, {"ranking": [[2], [0, 1]]}),
        "Plain": (False, None),
    }


def test_an_admin_makes_a_gold_item_from_the_explorer_and_its_labels_are_scored():
    admin, reviewer = make_user(User.Role.ADMIN), make_user(username="rev")
    ann, other = make_user(username="ann"), make_user(username="bob")
    project = make_project(name="Review", members=[ann, other])
    ProjectMember.objects.create(project=project, user=reviewer, role=ProjectMember.Role.REVIEWER)
    task = make_task(project=project)
    label_create(task=task, annotator=ann, data={"choice": "a"}, source=Label.Source.API)
    label_create(task=task, annotator=other, data={"choice": "b"}, source=Label.Source.API)
    page = Client()
    page.force_login(reviewer)
    refused = page.post(f"/dashboard/items/{task.pk}/", {"choice": "a", "make_gold": "1"})
    assert refused.status_code == 403 and not Task.objects.get(pk=task.pk).is_gold
    assert 'id="adjudicate-gold"' not in page.get(f"/dashboard/items/{task.pk}/").content.decode()

    page.force_login(admin)
    saved = page.post(f"/dashboard/items/{task.pk}/", {"choice": "a", "note": "A is kind", "make_gold": "1"})
    assert saved.status_code == 302
    task.refresh_from_db()
    assert (task.is_gold, task.gold) == (True, {"choice": "a"})
    scored = dict(Label.objects.filter(task=task).values_list("annotator__username", "gold_correct"))
    assert scored == {"ann": True, "bob": False}
    shown = page.get(f"/dashboard/items/{task.pk}/").content.decode()
    assert re.search(r'id="item-gold">A gold item; its answer: <strong>A is better</strong>. 2 labels', shown)

    assert page.post(f"/dashboard/items/{task.pk}/", {"gold_off": "1"}).status_code == 302
    task.refresh_from_db()
    assert (task.is_gold, task.gold) == (False, None)
    assert set(Label.objects.filter(task=task).values_list("gold_correct", flat=True)) == {None}


def test_a_ranking_final_answer_becomes_a_gold_ranking_by_position():
    admin = make_user(User.Role.ADMIN)
    task = make_task(project=make_project(name="Lists"), kind="ranking", texts=("one", "two", "three"))
    slots = list(task.slots.order_by("position"))
    page = Client()
    page.force_login(admin)
    places = {f"place-{slots[0].candidate_id}": "2", f"place-{slots[1].candidate_id}": "3"}
    places[f"place-{slots[2].candidate_id}"] = "1"
    assert page.post(f"/dashboard/items/{task.pk}/", {**places, "make_gold": "1"}).status_code == 302
    task.refresh_from_db()
    assert task.gold == {"ranking": [[2], [0], [1]]}


def test_annotators_see_their_gold_results_only_where_the_project_shows_them():
    ann = make_user(username="ann")
    project = make_project(name="Shown", members=[ann], feedback_types=["pairwise"], gold_rate=1.0)
    make_task(project=project, is_gold=True, gold={"choice": "a"}, required_labels=1)
    page = Client()
    page.force_login(ann)
    assignment = assignment_next(project=project, annotator=ann)
    assert assignment is not None and assignment.task.is_gold
    answered = page.post(f"/annotate/assignment/{assignment.pk}/submit/", {"choice": "b"}, HTTP_HX_REQUEST="true")
    assert answered.status_code == 200
    assert "gold-results" not in answered.content.decode()  # not shown: the project keeps gold hidden

    project.show_gold_results = True
    project.save()
    second = make_task(project=project, is_gold=True, gold={"choice": "b"}, required_labels=1)
    assignment = assignment_next(project=project, annotator=ann)
    assert assignment is not None and assignment.task_id == second.pk
    answered = page.post(f"/annotate/assignment/{assignment.pk}/submit/", {"choice": "a"}, HTTP_HX_REQUEST="true")
    html = answered.content.decode()
    assert "its answer was <strong>B is better</strong>" in html
    assert re.search(r'id="gold-accuracy">0 of 2<', html)
