"""The control API: recipes, cancel, promote permissions and errors (no policy server needed)."""

from __future__ import annotations

import pytest

from tests.factories import make_project, make_serving_version, make_user
from tests.webapp.api.test_api import client_for
from webapp.runs import services
from webapp.runs.models import TrainingRun

pytestmark = pytest.mark.django_db


def test_a_recipe_is_read_patched_and_refused_field_by_field():
    admin, ann = make_user("admin"), make_user()
    project = make_project(name="P")
    url = f"/api/projects/{project.pk}/recipe/"
    body = client_for(admin).get(url).json()
    assert body["recipe"]["method"] == "dpo" and body["kind"] == "dpo" and body["training_data"]["labels"] == 0
    assert client_for(ann).get(url).status_code == 403  # training internals: admins only
    assert client_for(ann).patch(url, {"beta": 0.2}, format="json").status_code == 403
    bad = client_for(admin).patch(url, {"beta": -1, "method": "ppo", "nope": 1}, format="json")
    assert bad.status_code == 400
    assert {"beta", "method", "nope"} <= set(bad.json()["error"]["fields"]), bad.json()
    project.refresh_from_db()
    assert project.recipe == {}  # nothing saved
    ok = client_for(admin).patch(url, {"preset": "rankings", "epochs": 2}, format="json")
    assert ok.status_code == 200 and ok.json()["recipe"]["method"] == "lipo" and ok.json()["recipe"]["epochs"] == 2
    assert client_for(admin).patch(url, {"preset": "magic"}, format="json").status_code == 400
    # PUT replaces: what it leaves out returns to the defaults
    put = client_for(admin).put(url, {"method": "kto"}, format="json").json()["recipe"]
    assert (put["method"], put["epochs"]) == ("kto", 0)


def test_runs_are_queued_per_project_with_the_recipes_method_and_cancelled_through_the_api():
    admin = make_user("admin")
    project = make_project(name="Ranked")
    services.recipe_update(project=project, data={"method": "lipo"})
    client = client_for(admin)
    created = client.post("/api/runs/", {"project": project.pk}, format="json")
    assert created.status_code == 201 and created.json()["kind"] == "lipo" and created.json()["project"] == project.pk
    run_id = created.json()["id"]
    cancelled = client.post(f"/api/runs/{run_id}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/api/runs/{run_id}/cancel/")
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]["message"]
    assert client.post("/api/runs/999999/cancel/").status_code == 404
    assert client_for(make_user()).post(f"/api/runs/{run_id}/cancel/").status_code == 403
    assert client.post("/api/runs/", {"project": 999999}, format="json").status_code == 400
    assert TrainingRun.objects.filter(project=project).count() == 1


def test_promoting_needs_an_admin_and_a_servable_version():
    admin = make_user("admin")
    v1 = make_serving_version()
    assert client_for(make_user()).post(f"/api/versions/{v1.pk}/promote/").status_code == 403
    already = client_for(admin).post(f"/api/versions/{v1.pk}/promote/", {"reason": "x"}, format="json")
    assert already.status_code == 409 and "already serving" in already.json()["error"]["message"]
    assert client_for(admin).post("/api/versions/999999/promote/").status_code == 404
    events = client_for(admin).get("/api/version-events/").json()
    assert events["count"] == 1 and events["results"][0]["action"] == "promote"


def test_the_schema_lists_the_control_endpoints():
    schema = client_for(make_user()).get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for path in (
        "/api/runs/{run_id}/cancel/",
        "/api/versions/{version_id}/promote/",
        "/api/versions/{version_id}/labels/",
        "/api/version-events/",
        "/api/projects/{project_id}/recipe/",
    ):
        assert path in schema["paths"], path


def test_a_weighted_recipe_shows_each_annotators_weight_in_the_api_and_the_form():
    from tests.factories import make_task
    from webapp.feedback.assignments import label_create

    admin = make_user("admin")
    project = make_project(name="Trusted")
    for name, right in (("sure", 5), ("fair", 4)):
        user = make_user(username=name)
        for i in range(6):
            gold = i < 5
            task = make_task(project=project, question=f"{name} {i}?", texts=("x", "y"), is_gold=gold,
                             gold={"choice": "a"} if gold else None)  # fmt: skip
            choice = "a" if i < right or not gold else "b"
            label_create(task=task, annotator=user, data={"choice": choice}, source="api")
    url = f"/api/projects/{project.pk}/recipe/"
    body = client_for(admin).patch(url, {"labels": "weighted", "held_out_share": 0}, format="json").json()
    assert body["training_data"]["weights"] == {"fair": 0.75, "sure": 1.25}, body
    refused = client_for(admin).patch(url, {"method": "kto"}, format="json")
    assert refused.status_code == 400 and "KTO" in refused.json()["error"]["fields"]["labels"]
    from django.test import Client

    browser = Client()
    browser.force_login(admin)
    page = browser.get(f"/dashboard/projects/{project.pk}/recipe/").content.decode()
    assert f'hx-get="/dashboard/projects/{project.pk}/recipe/preview/"' in page  # loaded after the page
    preview = browser.get(f"/dashboard/projects/{project.pk}/recipe/preview/").content.decode()
    assert 'id="preview-weights"' in preview and "sure: 1.25" in preview and "fair: 0.75" in preview
