"""Thumbs items: one answer judged good or bad, as TRL's unpaired files (`prompt/completion/label`)
and Argilla's one-answer records bring them in. They are served in the queue, checked, scored
against gold, exported, and train KTO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from tests.factories import make_project, make_task, make_user
from training.feedback_io import read_feedback
from webapp.feedback import assignments
from webapp.feedback.explore import task_gold_set
from webapp.feedback.models import Label, Task
from webapp.feedback.transfer import export_rows, import_items
from webapp.runs.data import training_data
from webapp.runs.recipe import Recipe

pytestmark = [pytest.mark.django_db, pytest.mark.both_databases]

UNPAIRED = [
    {"prompt": "What is 2+2?", "completion": "4", "label": True},
    {"prompt": [{"role": "user", "content": "Hi?"}], "completion": [{"role": "assistant", "content": "Go away."}],
     "label": False},
    {"prompt": "Odd", "completion": "x", "label": "maybe"},
    {"prompt": "Pair", "chosen": "good", "rejected": "bad"},
]  # fmt: skip


def _file(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "unpaired.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_an_unpaired_trl_file_becomes_thumbs_items_that_train_kto_and_export(tmp_path):
    project = make_project(feedback_types=["pairwise", "thumbs"])
    report = import_items(project=project, records=read_feedback(_file(tmp_path, UNPAIRED), "trl"))
    assert (report.created_tasks, report.labels) == (3, 3)
    assert [(b.line, "true or false" in b.message) for b in report.bad] == [(3, True)]
    thumbs = Task.objects.filter(project=project, kind="thumbs").order_by("id")
    assert [t.slots.get().candidate.text for t in thumbs] == ["4", "Go away."]
    assert sorted(Label.objects.filter(task__kind="thumbs").values_list("choice", flat=True)) == ["down", "up"]

    data = training_data(project=project, recipe=Recipe.from_dict({"held_out_share": 0}))
    assert sorted((r["completion"], r["desirable"]) for r in data.kto) == [
        ("4", True), ("Go away.", False), ("bad", False), ("good", True),
    ]  # fmt: skip
    rows = list(export_rows(project=project, kind="kto"))
    assert sorted((r["completion"][0]["content"], r["label"]) for r in rows) == [
        ("4", True), ("Go away.", False), ("bad", False), ("good", True),
    ]  # fmt: skip
    again = import_items(project=project, records=read_feedback(_file(tmp_path, UNPAIRED), "trl"))
    assert (again.created_tasks, again.skipped) == (0, 3)  # a second upload adds nothing


def test_a_project_that_does_not_ask_for_thumbs_names_the_lines_and_the_fix(tmp_path):
    project = make_project(feedback_types=["pairwise"])
    report = import_items(project=project, records=read_feedback(_file(tmp_path, UNPAIRED), "trl"))
    assert report.created_tasks == 1  # the preference pair still comes in
    assert [b.line for b in report.bad] == [1, 2, 3]  # in line order, the refused items with the unreadable one
    assert "add thumbs to its judgment kinds" in report.bad[0].message
    assert not Task.objects.filter(kind="thumbs").exists()


def test_the_queue_serves_a_thumbs_item_and_refuses_anything_but_up_or_down(client):
    person = make_user(username="rater")
    project = make_project(feedback_types=["thumbs"], members=[person])
    task = make_task(project=project, kind="thumbs", texts=("Paris.",))
    client.force_login(person)
    page = client.get(f"/annotate/{project.pk}/")
    html = page.content.decode()
    assert page.status_code == 200 and "Good answer" in html and "Bad answer" in html and "Paris." in html
    assignment = task.assignments.get(annotator=person)
    bad = client.post(f"/annotate/assignment/{assignment.pk}/submit/", {"choice": "a"})
    assert bad.status_code == 400 and "up or down" in bad.content.decode()
    assert not Label.objects.exists()
    done = client.post(f"/annotate/assignment/{assignment.pk}/submit/", {"choice": "down", "rationale": "wrong city?"})
    assert done.status_code == 302  # back to the queue for the next item
    label = Label.objects.get()
    assert (label.kind, label.choice, label.rationale) == ("thumbs", "down", "wrong city?")
    with pytest.raises(ValidationError, match="up or down"):
        assignments.label_create(task=task, annotator=make_user(), data={"choice": "tie"}, source="api")


def test_a_thumbs_item_is_settled_on_its_page_and_its_gold_scores_its_labels(client):
    project = make_project(feedback_types=["thumbs"])
    task = make_task(project=project, kind="thumbs", texts=("Paris.",))
    right, wrong = make_user(), make_user()
    assignments.label_create(task=task, annotator=right, data={"choice": "up"}, source="api")
    assignments.label_create(task=task, annotator=wrong, data={"choice": "down"}, source="api")
    client.force_login(make_user("admin"))
    page = client.get(f"/dashboard/items/{task.pk}/")
    assert page.status_code == 200 and 'value="up"' in page.content.decode()
    settled = client.post(f"/dashboard/items/{task.pk}/", {"choice": "up", "note": "it is", "make_gold": "1"})
    assert settled.status_code == 302
    task.refresh_from_db()
    assert (task.adjudication.answer["choice"], task.is_gold, task.gold) == ("up", True, {"choice": "up"})
    scored = dict(Label.objects.values_list("annotator__username", "gold_correct"))
    assert scored == {right.username: True, wrong.username: False}
    with pytest.raises(ValidationError, match="up"):
        task_gold_set(task=task, gold={"choice": "a"})


def test_an_argilla_export_becomes_items_of_each_kind_with_one_label_a_person(tmp_path):
    records = [
        {"id": "p", "fields": {"prompt": "Hello?", "response1": "Hi!", "response2": "Go away."},
         "responses": {"preference": [{"value": ["response1", "response2"], "user_id": "u1"}],
                       "best": [{"value": "response2", "user_id": "u1"}]}},  # a second answer of u1: one counts
        {"id": "r", "fields": {"prompt": "Count.", "response1": "1 2 3", "response2": "1 3", "response3": "3"},
         "responses": {"ranking": [{"value": ["response1", "response3", "response2"], "user_id": "u2"}]}},
        {"id": "t", "fields": {"prompt": "Sky?", "response": "Blue."},
         "responses": {"ok": [{"value": "bad", "user_id": "u3"}]}},
    ]  # fmt: skip
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    project = make_project(feedback_types=["pairwise", "ranking", "thumbs"])
    report = import_items(project=project, records=read_feedback(path, "argilla"))
    assert (report.created_tasks, report.labels, report.bad) == (3, 3, [])
    by_kind = {label.task.kind: label for label in Label.objects.select_related("task")}
    assert by_kind["pairwise"].choice == "a" and by_kind["thumbs"].choice == "down"
    one, two, three = by_kind["ranking"].task.slots.order_by("position").values_list("candidate_id", flat=True)
    assert by_kind["ranking"].ranking == [[one], [three], [two]]
    assert by_kind["pairwise"].annotator.username == "import-argilla-u1"
