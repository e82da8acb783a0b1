"""The dashboard overview: labels per day by kind and by project, the open queue, the people who
labelled lately, the serving version and recent jobs, on the page an admin opens."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from tests.factories import make_project, make_serving_version, make_task, make_user
from webapp.accounts.models import User
from webapp.dashboard.overview import active_annotators, labels_per_day, queue_depth
from webapp.feedback.assignments import assignment_next
from webapp.feedback.models import Label
from webapp.feedback.services import label_create

pytestmark = pytest.mark.django_db


def _label(task, who, *, days_ago: int = 0, **data):
    label, _ = label_create(task=task, annotator=who, data=data or {"choice": "a"}, source=Label.Source.API)
    Label.objects.filter(pk=label.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    return label


def test_labels_per_day_split_by_kind_and_project_over_the_window_only():
    ann, other = make_user(), make_user()
    poems, code = make_project(name="Poems", members=[ann, other]), make_project(name="Code", members=[ann])
    _label(make_task(project=poems), ann)
    _label(make_task(project=poems), other)
    _label(make_task(project=code), ann, days_ago=3)
    _label(make_task(project=code, kind="rating", texts=("one",)), ann, days_ago=3, rating=4)
    _label(make_task(project=code), ann, days_ago=30)  # outside the 14 days

    data = labels_per_day()
    assert len(data["days"]) == 14 and data["days"][-1] == timezone.localdate().isoformat()
    assert data["total"] == 4
    kinds = {row["name"]: row["counts"] for row in data["by_kind"]}
    assert kinds["pairwise"][-1] == 2 and kinds["pairwise"][-4] == 1 and kinds["rating"][-4] == 1
    projects = {row["name"]: row["counts"] for row in data["by_project"]}
    assert (sum(projects["Poems"]), sum(projects["Code"])) == (2, 2)
    assert active_annotators() == {"day": 2, "week": 2}


def test_the_queue_counts_open_items_and_the_labels_they_still_want():
    ann = make_user()
    busy = make_project(name="Busy", members=[ann], overlap=2)
    make_project(name="Done", members=[ann], overlap=1)
    make_task(project=busy), make_task(project=busy)
    assert assignment_next(project=busy, annotator=ann) is not None  # a lease takes one of the four places
    rows = {row["project"]: (row["items"], row["wanted"]) for row in queue_depth()}
    assert rows == {"Busy": (2, 3)}


def test_the_dashboard_shows_the_overview():
    make_serving_version()
    ann = make_user(username="ann")
    project = make_project(name="Shown", members=[ann])
    _label(make_task(project=project), ann)
    client = Client()
    client.force_login(make_user(User.Role.ADMIN))
    page = client.get("/dashboard/").content.decode()
    assert re.search(r'id="overview-labels">1<', page) and re.search(r'id="overview-active-day">1<', page)
    assert re.search(r'id="overview-serving">v1<', page)
    data = json.loads(re.search(r'<script id="overview-data" type="application/json">(.*?)</script>', page).group(1))
    assert data["by_project"][0]["name"] == "Shown" and data["by_project"][0]["counts"][-1] == 1
    assert 'id="overview-queue"' in page and ">Shown</a></td><td>1</td>" in page


def test_past_days_are_counted_once_and_today_at_every_request():
    ann = make_user()
    project = make_project(name="Daily", members=[ann])
    _label(make_task(project=project), ann, days_ago=2)
    assert labels_per_day()["total"] == 1
    _label(make_task(project=project), ann)
    assert labels_per_day()["total"] == 2  # today's label shows at once
    _label(make_task(project=project), ann, days_ago=2)  # a backdated label: the kept past is not read again
    assert labels_per_day()["total"] == 2
