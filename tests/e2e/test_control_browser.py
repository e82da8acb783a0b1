"""Control of the loop in a real Chromium: roll back and promote (a rejected candidate asks for a
confirmation), cancel a running run, and launch LiPO and robust DPO from a project's recipe form."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import serve_version_one
from tests.e2e.test_annotate_browser import login
from tests.e2e.test_loop_browser import send
from tests.factories import make_project, make_task, make_user
from webapp.feedback.assignments import label_create
from webapp.feedback.projects import project_default
from webapp.runs import services
from webapp.runs.artifacts import artifact_store
from webapp.runs.models import ModelVersion, TrainingRun, VersionEvent

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _trained_version(files, parent: ModelVersion, name: str) -> ModelVersion:
    """A real adapter trained from `parent` (a few DPO steps), registered as a candidate."""
    from training.dpo import DPOTrainConfig, PreferencePair, train_dpo

    store = artifact_store()
    pairs = [
        PreferencePair(prompt=[{"role": "user", "content": f"Q{i}?"}], chosen="Yes.", rejected="No.") for i in range(4)
    ]
    with store.write_version(name) as folder:
        train_dpo(
            base_model_path=files.base_model,
            adapter_path=parent.artifact_path,
            pairs=pairs,
            out_dir=folder,
            config=DPOTrainConfig(max_steps=2),
        )
    return services.version_register(artifact_path=store.version_uri(name), base_model="tiny", parent=parent)


def _new_run(**filters) -> TrainingRun:
    """The run a click just queued (the request may still be on its way)."""
    deadline = time.monotonic() + 30
    while not TrainingRun.objects.filter(**filters).exists():
        assert time.monotonic() < deadline, f"no run {filters} was queued"
        time.sleep(0.2)
    return TrainingRun.objects.get(**filters)


def _dialogs(page, answer: str) -> list[str]:
    """Accept every dialog (answering prompts with `answer`); return the messages shown."""
    seen: list[str] = []

    def handle(dialog) -> None:
        seen.append(dialog.message)
        dialog.accept(answer) if dialog.type == "prompt" else dialog.accept()

    page.on("dialog", handle)
    return seen


def test_an_admin_rolls_back_and_the_next_chat_answer_comes_from_that_version(
    live_server, loop_settings, loop_files, builtin_policy_server, page
):
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    v1 = serve_version_one(files=loop_files)
    v2 = services.version_serve(version=_trained_version(loop_files, v1, "v2-test"), reason="test setup")
    v3 = _trained_version(loop_files, v2, "v3-test")
    failed = "held-out preference accuracy 0.100 < 0.5"
    services.version_gate_record(
        version=v3,
        gate={
            "verdict": "rejected",
            "reason": failed,
            "checks": [{"name": "heldout_accuracy", "passed": False, "summary": failed}],
        },
    )
    make_user("admin", username="boss", password="boss-password")
    login(page, live_server, "boss", "boss-password")
    seen = _dialogs(page, "v2 answers rudely")

    page.goto(f"{live_server.url}/dashboard/")
    assert page.locator("#version-3 .version-gate").inner_text().startswith("rejected")
    assert failed in page.locator("#version-3 .version-gate").inner_text()
    page.locator("#version-1 button.promote-version").click()  # "Roll back"
    page.locator("#version-1.version-serving").wait_for()
    assert ModelVersion.objects.get(pk=v1.pk).status == ModelVersion.Status.SERVING
    event = VersionEvent.objects.filter(action="rollback").get()
    assert (event.version, event.previous, event.actor.username, event.reason) == (v1, v2, "boss", "v2 answers rudely")
    assert "Rolled back" in page.locator("#version-events").inner_text()

    page.goto(f"{live_server.url}/")
    page.click("#new-chat")
    assert page.locator("#serving-version").inner_text() == "v1"
    send(page, "What is the capital of France?")
    assert page.locator(".message.assistant").last.locator(".version").inner_text() == "v1"

    # Promoting the rejected candidate asks for a confirmation that names what it failed.
    page.goto(f"{live_server.url}/dashboard/")
    seen.clear()
    page.locator("#version-3 button.promote-version").click()
    page.locator("#version-3.version-serving").wait_for()
    assert any("rejected by the gate" in m and failed in m for m in seen), seen
    assert ModelVersion.objects.get(pk=v3.pk).status == ModelVersion.Status.SERVING


def test_an_admin_cancels_a_running_run_and_no_version_is_registered(
    live_server, loop_settings, loop_files, builtin_policy_server, start_worker, page
):
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    serve_version_one(files=loop_files)
    project = project_default()
    services.recipe_update(project=project, data={"held_out_share": 0, "auto_train_every": 0, "max_steps": 5000})
    ann = make_user(username="ann")
    for i in range(4):
        task = make_task(project=project, question=f"Q {i}?", texts=("Yes.", "No, never."))
        label_create(task=task, annotator=ann, data={"choice": "a", "strength": 2}, source="api")
    start_worker(policy_url=builtin_policy_server, files=loop_files, env={"RUN_HEARTBEAT_S": "1"})
    make_user("admin", username="boss", password="boss-password")
    login(page, live_server, "boss", "boss-password")
    _dialogs(page, "")

    page.goto(f"{live_server.url}/dashboard/")
    page.click("#train-now")
    run = _new_run()
    deadline = time.monotonic() + 180
    while run.progress == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING and run.progress > 0, run.error
    page.locator(f"#run-{run.pk} button.cancel-run").click()
    asked = time.monotonic()
    page.locator(f"#run-{run.pk}.status-cancelled").wait_for(timeout=30_000)
    assert time.monotonic() - asked < 15  # within seconds: the next step stops it
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED and run.result_version is None
    assert ModelVersion.objects.count() == 1
    versions_dir = artifact_store().root / "versions"
    assert not [p.name for p in versions_dir.iterdir() if p.name.startswith(".tmp")]  # nothing half written


def _open_recipe(page, live_server, project) -> None:
    page.goto(f"{live_server.url}/dashboard/projects/{project.pk}/recipe/")


def _train_from_form_and_wait(page, project) -> TrainingRun:
    page.click("#recipe-train")
    run = _new_run(project=project)
    deadline = time.monotonic() + 300
    while run.is_active and time.monotonic() < deadline:
        time.sleep(1)
        run.refresh_from_db()
    return run


def test_lipo_and_robust_dpo_launched_from_the_recipe_form_produce_promoted_versions(
    live_server, loop_settings, loop_files, builtin_policy_server, start_worker, page
):
    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    serve_version_one(files=loop_files)
    ann = make_user(username="ann")
    rankings = make_project(name="Rankings", feedback_types=["ranking"])
    for i in range(4):
        task = make_task(project=rankings, kind="ranking", question=f"R {i}?", texts=("Best.", "Fine I guess.", "No."))
        ids = list(task.slots.order_by("position").values_list("candidate_id", flat=True))
        label_create(task=task, annotator=ann, data={"ranking": [[ids[0]], [ids[1]], [ids[2]]]}, source="api")
    noisy = make_project(name="Noisy", feedback_types=["pairwise"], recipe={"auto_train_every": 0})
    for i in range(6):
        task = make_task(project=noisy, question=f"N {i}?", texts=("Yes.", "No, never."))
        label_create(task=task, annotator=ann, data={"choice": "a" if i % 3 else "b", "strength": 1}, source="api")
    # a second annotator, right on 4 of 5 gold items (trust 0.8): weighted, each of her labels counts less
    fair = make_user(username="fair")
    for i in range(5):
        gold = make_task(project=noisy, question=f"G {i}?", texts=("x", "y"), is_gold=True, gold={"choice": "a"})
        label_create(task=gold, annotator=fair, data={"choice": "a" if i else "b"}, source="api")
        label_create(task=gold, annotator=ann, data={"choice": "a"}, source="api")
    for i in range(3):
        task = make_task(project=noisy, question=f"F {i}?", texts=("Sure.", "Not at all."))
        label_create(task=task, annotator=fair, data={"choice": "b", "strength": 1}, source="api")
    start_worker(policy_url=builtin_policy_server, files=loop_files)
    make_user("admin", username="boss", password="boss-password")
    login(page, live_server, "boss", "boss-password")

    # A bad value is refused with its reason, and nothing is saved.
    _open_recipe(page, live_server, rankings)
    page.fill("#recipe-held_out_share", "0.9")
    page.click("#recipe-save")
    assert "held_out_share" in page.locator("#recipe-errors").inner_text()
    rankings.refresh_from_db()
    assert rankings.recipe == {}

    # LiPO, from the "rankings" preset: the preview shows the lists it trains on.
    _open_recipe(page, live_server, rankings)
    page.click("#preset-rankings")
    page.locator("#recipe-saved").wait_for()
    assert page.locator("#recipe-method").input_value() == "lipo"
    page.fill("#recipe-held_out_share", "0")
    page.fill("#recipe-max_steps", "4")
    page.click("#recipe-save")
    page.locator("#recipe-saved").wait_for()
    page.locator("#preview-labels").wait_for()  # the preview loads after the page
    assert "4 lists" in page.locator("#recipe-preview").inner_text()
    lipo = _train_from_form_and_wait(page, rankings)
    assert lipo.status == TrainingRun.Status.SUCCEEDED, lipo.error
    assert lipo.kind == "lipo" and lipo.result_version.status == ModelVersion.Status.SERVING, lipo.result_version.gate
    assert lipo.result_version.config["method"] == "lipo"

    # Robust DPO with its ε, on labels weighted by trust, chosen in the form.
    _open_recipe(page, live_server, noisy)
    page.select_option("#recipe-method", "robust_dpo")
    page.fill("#recipe-robust_epsilon", "0.25")
    page.select_option("select[name=labels]", "weighted")
    page.fill("#recipe-held_out_share", "0")
    page.click("#recipe-save")
    page.locator("#recipe-saved").wait_for()
    weights = page.locator("#preview-weights").inner_text()
    assert "ann: 1.1538" in weights and "fair: 0.6923" in weights, weights  # 2·trust - 1 = 1 and 0.6, mean 1
    robust = _train_from_form_and_wait(page, noisy)
    assert robust.status == TrainingRun.Status.SUCCEEDED, robust.error
    version = robust.result_version
    assert version.status == ModelVersion.Status.SERVING, version.gate
    assert (version.config["loss_type"], version.config["label_smoothing"]) == ("robust", 0.25)
    assert robust.metrics["data"]["weights"] == {"ann": 1.1538, "fair": 0.6923} and robust.n_pairs == 9
    assert version.parent == lipo.result_version
