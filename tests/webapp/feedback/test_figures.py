"""Stored figures (webapp.feedback.figures): kept while the data stays as it was, computed again in
the request when that is quick, and by a worker while the page shows the stored one when it is not."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from tests.factories import make_project, make_task, make_user
from webapp.accounts.models import User
from webapp.feedback import figures
from webapp.feedback.explore import task_gold_set
from webapp.feedback.models import Figure, Label
from webapp.feedback.services import label_create

pytestmark = [pytest.mark.django_db, pytest.mark.both_databases]
CALLS: list[tuple] = []


def count_figure(project, *params) -> int:
    """A figure that counts how often it was computed."""
    CALLS.append((project.pk, *params))
    return len(CALLS)


@pytest.fixture
def counted(monkeypatch):
    CALLS.clear()
    monkeypatch.setitem(figures.FIGURES, "count", f"{__name__}.count_figure")
    ann = make_user()
    project = make_project(name="Figures", members=[ann])
    return project, ann


def _label(project, who):
    label_create(task=make_task(project=project), annotator=who, data={"choice": "a"}, source=Label.Source.API)


def test_a_figure_is_kept_until_its_data_or_its_inputs_change(counted):
    project, ann = counted
    assert figures.figure("count", project) == 1
    assert figures.figure("count", project) == 1  # nothing changed: the stored figure, not computed again
    _label(project, ann)
    assert figures.figure("count", project) == 2  # a new label: computed once more, in the request (quick)
    assert figures.figure("count", project, {"beta": 0.2}) == 3  # other inputs (a recipe): their own figure
    assert figures.figure("count", project, {"beta": 0.2}) == 3
    task = make_task(project=project)
    task_gold_set(task=task, gold={"choice": "a"})  # a change no newest id shows
    assert figures.figure("count", project) == 4


def test_a_slow_figure_is_served_as_stored_while_one_worker_computes_it(counted, django_capture_on_commit_callbacks):
    project, ann = counted
    assert figures.figure("count", project) == 1
    Figure.objects.update(seconds=12.0)  # as a project of a million labels takes
    _label(project, ann)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert figures.figure("count", project) == 1  # the stored figure, at once
        assert figures.figure("count", project) == 1
    assert len(sent) == 1  # one refresh queued for both requests
    age = figures.figure_age("count", project)
    assert age["stale"] is True and age["seconds"] == 12.0
    stored = Figure.objects.get()
    figures.figure_refresh(figure_id=stored.pk)  # what the worker's prefloop.figure_refresh does
    assert figures.figure("count", project) == 2 and figures.figure_age("count", project)["stale"] is False
    assert figures.figure_refresh(figure_id=stored.pk + 1000) is None  # a figure deleted meanwhile: nothing


def test_a_refresh_lost_with_its_worker_is_queued_again(counted, django_capture_on_commit_callbacks):
    project, ann = counted
    figures.figure("count", project)
    Figure.objects.update(seconds=12.0)
    _label(project, ann)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        figures.figure("count", project)
        Figure.objects.update(refresh_queued_at=timezone.now() - figures.REFRESH_RETRY - timedelta(seconds=1))
        figures.figure("count", project)
    assert len(sent) == 2


def test_the_quality_page_says_its_figures_are_being_updated():
    ann = make_user()
    project = make_project(name="Slow", members=[ann])
    _label(project, ann)
    client = Client()
    client.force_login(make_user(User.Role.ADMIN))
    fresh = client.get(f"/dashboard/quality/?project={project.pk}").content.decode()
    assert "being counted" not in fresh
    Figure.objects.update(seconds=30.0)
    _label(project, ann)
    stale = client.get(f"/dashboard/quality/?project={project.pk}").content.decode()
    assert "newer labels are being counted on a worker" in stale


def test_a_large_projects_first_figure_is_left_to_a_worker_and_its_pages_say_so(
    counted, monkeypatch, django_capture_on_commit_callbacks
):
    project, ann = counted
    _label(project, ann)
    _label(project, ann)
    monkeypatch.setattr(figures, "LARGE_PROJECT", 2)  # two items stand for half a million
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert figures.figure("count", project) is None  # nothing computed in the request
        assert figures.figure("count", project) is None
    assert len(sent) == 1 and CALLS == [] and figures.figure_age("count", project)["pending"] is True
    figures.figure_refresh(figure_id=Figure.objects.get().pk)
    assert figures.figure("count", project) == 1 and figures.figure_age("count", project)["pending"] is False

    client = Client()
    client.force_login(make_user(User.Role.ADMIN))
    quality = client.get(f"/dashboard/quality/?project={project.pk}").content.decode()
    assert "computing these figures for the first time" in quality and 'id="agreement"' not in quality
    person = client.get(f"/dashboard/person/{ann.username}/").content.decode()
    assert 'id="person-quality-pending"' in person and "Figures" in person
    preview = client.get(f"/dashboard/projects/{project.pk}/recipe/preview/").content.decode()
    assert "a worker is counting" in preview and 'hx-trigger="load delay:3s"' in preview
