from __future__ import annotations

import json

import pytest

from tests.factories import make_heads_reward_model, make_serving_version, make_user
from webapp.runs import services
from webapp.runs.models import TrainingRun

pytestmark = pytest.mark.django_db


def test_run_page_shows_progress_metrics_and_the_logged_curves(client):
    v1 = make_serving_version()
    run = TrainingRun.objects.create(trigger=TrainingRun.Trigger.ADMIN)
    services.run_start(run_id=run.pk, parent_version=v1)
    for step, loss in enumerate([0.69, 0.61, 0.52], start=1):
        services.run_progress(
            run_id=run.pk, progress=step / 3, metrics={"step": step, "loss": loss, "rewards/margins": step / 10}
        )
    client.force_login(make_user("admin"))
    page = client.get(f"/dashboard/runs/{run.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'hx-trigger="every 2s"' in html  # a running run refreshes itself
    start = html.index('id="run-chart-data"')
    data = json.loads(html[html.index(">", start) + 1 : html.index("</script>", start)])
    assert data == {"steps": [1, 2, 3], "series": {"loss": [0.69, 0.61, 0.52], "rewards/margins": [0.1, 0.2, 0.3]}}

    services.run_fail(run_id=run.pk, error="ValueError: boom")
    partial = client.get(f"/dashboard/runs/{run.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in partial and "ValueError: boom" in partial
    assert 'hx-trigger="every 2s"' not in partial  # a finished run stops polling


def test_dashboard_pages_are_for_admins_only(client):
    run = TrainingRun.objects.create(trigger=TrainingRun.Trigger.API)
    client.force_login(make_user())
    assert client.get(f"/dashboard/runs/{run.pk}/").status_code == 403
    assert client.get("/dashboard/").status_code == 403
    assert client.post("/dashboard/runs/new/").status_code == 403


def test_dashboard_buttons_queue_each_kind_and_a_bad_kind_is_refused(client, django_capture_on_commit_callbacks):
    client.force_login(make_user("admin"))
    page = client.get("/dashboard/").content.decode()
    methods = page[page.index('id="train-kind"') : page.index("</select>", page.index('id="train-kind"'))]
    for kind in ("policy", "dpo", "kto", "grpo"):  # one Train now button, the method chosen beside it
        assert f'<option value="{kind}"' in methods
    assert 'id="train-reward" name="kind" value="reward"' in page
    with django_capture_on_commit_callbacks():
        for kind in ("dpo", "kto", "grpo", "reward", "reward"):  # the second reward click is harmless
            assert client.post("/dashboard/runs/new/", {"kind": kind}, HTTP_HX_REQUEST="true").status_code == 200
    assert sorted(TrainingRun.objects.values_list("kind", flat=True)) == ["dpo", "grpo", "kto", "reward"]
    bad = client.post("/dashboard/runs/new/", {"kind": "ppo"})
    assert bad.status_code == 400 and b"unknown run kind 'ppo'" in bad.content
    reward = TrainingRun.objects.get(kind="reward")
    made = services.reward_model_register(artifact_path="/a/rm", backbone="tiny", member_paths=[""])
    services.run_start(run_id=reward.pk, parent_version=None)
    services.run_succeed(run_id=reward.pk, reward_model=made, metrics={"n_train_pairs": 8})
    detail = client.get(f"/dashboard/runs/{reward.pk}/").content.decode()
    assert "made rm1" in detail and "Reward model" in detail


def test_the_dashboard_counts_a_heads_model_by_its_heads(client):
    services.reward_model_register(
        artifact_path="/nonexistent/rm1", backbone="tiny", member_paths=["member-0", "member-1"], metrics={}
    )
    make_heads_reward_model(4, path="/nonexistent/rm2")
    client.force_login(make_user("admin"))
    html = client.get("/dashboard/").content.decode()
    cells = [html[html.index('class="rm-members">', html.index(f'id="reward-model-{n}"')) :] for n in (1, 2)]
    assert cells[0].startswith('class="rm-members">2</td>')  # two models
    assert cells[1].startswith('class="rm-members">4 heads</td>')  # one model, four heads


def test_the_run_page_writes_figures_as_people_read_them_not_python_reprs(client):
    from webapp.dashboard.templatetags.figures import figure_text

    run = TrainingRun.objects.create(trigger=TrainingRun.Trigger.ADMIN)
    services.run_start(run_id=run.pk, parent_version=make_serving_version())
    services.run_progress(run_id=run.pk, progress=0.5, metrics={
        "loss": 0.693147180559945, "data": {"pairs": 12, "left_out": {"held out for the gate": 3}},
        "timings": {"train_s": 12.3456789}, "members": [0.1234567, 0.7654321], "calibrated": True,
    })  # fmt: skip
    client.force_login(make_user("admin"))
    html = client.get(f"/dashboard/runs/{run.pk}/").content.decode()
    start = html.index('<table class="metrics">')
    cells = html[start : html.index("</table>", start)]  # the chart's data keeps full precision
    assert "0.6931" in cells and "0.693147180559945" not in cells
    assert "pairs: 12; left_out: held out for the gate: 3" in cells and "{&#x27;" not in cells and "{'" not in cells
    assert "train_s: 12.35" in cells and "0.1235, 0.7654" in cells and ">yes<" in cells
    assert figure_text(1234567) == "1,234,567" and figure_text(None) == "–"
    assert figure_text(list(range(20))).endswith("… 8 more")


@pytest.mark.both_databases
def test_a_dashboard_cards_address_opened_directly_is_a_whole_page(client):
    client.force_login(make_user("admin"))
    for url, card in (("/dashboard/runs/", 'id="runs"'), ("/dashboard/imports/", 'id="imports"'),
                      ("/dashboard/generation/", 'id="generation"')):  # fmt: skip
        page = client.get(url).content.decode()
        assert page.startswith("<!doctype html>") and 'class="topbar"' in page and card in page, url
        fragment = client.get(url, HTTP_HX_REQUEST="true").content.decode()
        assert "<html" not in fragment and card in fragment, url
