"""The worker's tasks, called in-process on the test database: the failures a user can cause.

(The happy paths run in a real Celery worker process in tests/e2e.)
"""

from __future__ import annotations

import pytest

from tests.factories import make_serving_reward_model, make_serving_version, make_user
from webapp.runs import services, updates
from webapp.runs.models import TrainingRun
from worker import tasks

pytestmark = pytest.mark.django_db


def _grpo_update():
    """The GRPO update of the chat project under its recipe, as a run would build it."""
    from webapp.feedback.projects import project_default
    from webapp.runs.data import training_data

    project = project_default()
    recipe = services.recipe_for(project)
    return updates._grpo_update(training_data(project=project, recipe=recipe), recipe, project)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("dpo", "no decisive pairwise labels yet"),
        ("kto", "no thumbs, decisive choices, rankings or rewrites yet for KTO"),
        ("grpo", "GRPO needs a reward model: train one first"),
    ],
)
def test_a_policy_run_without_its_data_fails_with_a_clear_error(kind: str, message: str) -> None:
    make_serving_version()
    run, _ = services.run_create(trigger=TrainingRun.Trigger.API, kind=kind)
    tasks.train_policy(run.pk)  # a Celery task called directly runs in-process
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and message in run.error
    assert run.finished_at is not None  # never left running


def test_grpo_with_a_reward_model_but_no_prompt_fails_with_a_clear_error() -> None:
    make_serving_version()
    from webapp.feedback.projects import project_default

    make_serving_reward_model(
        artifact_path="/nonexistent/rm", backbone="tiny", member_paths=[""], project=project_default()
    )
    run, _ = services.run_create(trigger=TrainingRun.Trigger.API, kind=TrainingRun.Kind.GRPO)
    tasks.train_policy(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "no prompts yet for GRPO" in run.error


def test_a_reward_run_with_too_few_pairs_fails_with_a_clear_error() -> None:
    make_user()
    run, _ = services.run_create(trigger=TrainingRun.Trigger.API, kind=TrainingRun.Kind.REWARD)
    tasks.train_reward(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert "a reward model needs at least 2 preference pairs; the labels give 0" in run.error


def test_a_finished_run_redelivered_is_left_alone() -> None:
    run, _ = services.run_create(trigger=TrainingRun.Trigger.API, kind=TrainingRun.Kind.REWARD)
    services.run_fail(run_id=run.pk, error="earlier failure")
    tasks.train_reward(run.pk)
    run.refresh_from_db()
    assert run.error == "earlier failure"


def test_grpo_can_be_rewarded_by_follow_up_likelihood_without_any_label(settings, tiny_policy_path, tmp_path) -> None:
    from training.dpo import DPOTrainConfig, create_initial_adapter
    from webapp.feedback.models import Prompt
    from webapp.feedback.projects import project_default

    settings.POLICY_BASE_MODEL = settings.FOLLOWUP_MODEL = str(tiny_policy_path)
    settings.GRPO_REWARD, settings.GRPO_MAX_STEPS, settings.POLICY_MAX_TOKENS = "followup", 1, 8
    for text in ("What is the capital of Italy?", "Say something kind.", "What is the capital of Italy?"):
        Prompt.objects.create(project=project_default(), messages=[{"role": "user", "content": text}], source="api")
    update = _grpo_update()  # no reward model exists: the follow-up reward needs none
    assert update.n_examples == 2  # distinct prompts
    adapter = create_initial_adapter(tiny_policy_path, tmp_path / "v1", DPOTrainConfig())
    logs: list[dict] = []
    metrics = update.train(str(adapter), tmp_path / "v2", logs.append)
    assert metrics["reward"] == "followup" and metrics["steps"] == 1
    assert logs and logs[-1]["reward"] == logs[-1]["rewards/reward_fn/mean"]  # the follow-up reward, logged
    assert (tmp_path / "v2" / "adapter_model.safetensors").is_file()


def test_the_training_device_follows_train_device(settings) -> None:
    import torch

    settings.TRAIN_DEVICE = "cpu"
    assert updates.device_options() == {"use_cpu": True, "bf16": False}
    settings.TRAIN_DEVICE = "auto"
    assert updates.device_options()["use_cpu"] is (not torch.cuda.is_available())
    if not torch.cuda.is_available():
        settings.TRAIN_DEVICE = "cuda"
        with pytest.raises(RuntimeError, match="TRAIN_DEVICE=cuda but no CUDA device is visible to this process"):
            updates.device_options()


def test_a_heads_ensemble_is_trained_once_and_rewards_grpo_through_its_heads(settings, tiny_policy_path, tmp_path):
    from tests.factories import make_pairwise_task
    from training.reward import RewardEnsemble
    from webapp.feedback.assignments import label_create
    from webapp.feedback.models import Prompt
    from webapp.feedback.projects import project_default
    from webapp.runs.artifacts import local_path
    from webapp.runs.models import RewardModel

    settings.ARTIFACT_DIR, settings.ARTIFACT_STORE_URL = tmp_path / "artifacts", ""
    settings.REWARD_BACKBONE = settings.POLICY_BASE_MODEL = str(tiny_policy_path)
    settings.REWARD_ENSEMBLE_METHOD, settings.REWARD_ENSEMBLE_SIZE, settings.REWARD_MAX_STEPS = "heads", 3, 2
    settings.REWARD_LABEL_SMOOTHING = 0.1
    owner, annotator = make_user(), make_user(username="ann")
    for i in range(6):
        task = make_pairwise_task(created_by=owner, question=f"What is {i} plus {i}?", texts=(f"{2 * i}.", "No."))
        label_create(task=task, annotator=annotator, data={"choice": "a", "strength": 2}, source="api")
    run, _ = services.run_create(trigger=TrainingRun.Trigger.API, kind=TrainingRun.Kind.REWARD)
    tasks.train_reward(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    reward_model = RewardModel.objects.get()
    assert reward_model.member_paths == [""]  # one model in the version's folder
    assert reward_model.config["ensemble_method"] == "heads" and reward_model.metrics["members"][0]["heads"] == 3
    assert reward_model.config["label_smoothing"] == 0.1  # the setting reaches the training config
    # REWARD_CALIBRATE is on by default, but six labels hold out too few pairs to fit a temperature on
    assert reward_model.config["calibrate"] is True
    calibration = reward_model.metrics.get("calibration", {"skipped": "no held-out pair: fewer than the 20"})
    assert "fewer than the 20" in calibration["skipped"] and "temperatures" not in calibration
    assert reward_model.n_members == 3  # what the dashboard shows
    scored = RewardEnsemble.load([local_path(reward_model.artifact_path)]).score(
        [[{"role": "user", "content": "What is 1 plus 1?"}]], ["2."]
    )
    assert len(scored["members"]) == 3 and scored["std"][0] > 0  # the heads are the members, and they differ
    # GRPO reads the heads as the ensemble: mean - lambda x variance over the three
    Prompt.objects.create(
        project=project_default(), messages=[{"role": "user", "content": "What is 1 plus 1?"}], source="api"
    )
    settings.GRPO_REWARD, settings.GRPO_UWO_LAMBDA = "reward_model", 0.5
    update = _grpo_update()
    assert update.notes["reward_model"] == reward_model.name
    rewards = update.data["reward_fn"]([[{"role": "user", "content": "What is 1 plus 1?"}]], ["2."])
    heads = scored["members"]
    mean = sum(h[0] for h in heads) / 3
    variance = sum((h[0] - mean) ** 2 for h in heads) / 3
    assert rewards[0] == pytest.approx(mean - 0.5 * variance, rel=1e-4)


def test_the_queue_serves_first_the_items_the_reward_ensemble_disagrees_on(settings, tiny_policy_path, tmp_path):
    """Active selection with a real ensemble: a reward run ranks the open items by its heads'
    disagreement (training.active), and `uncertainty` projects serve them in that order."""
    from tests.factories import make_project, make_task
    from training.active import item_disagreements
    from training.reward import RewardEnsemble
    from webapp.feedback.assignments import assignment_next, assignment_submit
    from webapp.feedback.models import Task
    from webapp.runs.artifacts import local_path
    from webapp.runs.models import RewardModel

    settings.ARTIFACT_DIR, settings.ARTIFACT_STORE_URL = tmp_path / "artifacts", ""
    settings.REWARD_BACKBONE = settings.POLICY_BASE_MODEL = str(tiny_policy_path)
    settings.REWARD_ENSEMBLE_METHOD, settings.REWARD_ENSEMBLE_SIZE, settings.REWARD_MAX_STEPS = "heads", 3, 2
    annotator = make_user(username="ann")
    project = make_project(name="Active", feedback_types=["pairwise", "ranking"], queue_order="uncertainty",
                           queue_epsilon=0.0)  # fmt: skip
    for i in range(6):
        make_task(project=project, question=f"What is {i} plus {i}?", texts=(f"{2 * i}.", "No."))
    for _ in range(6):  # judged through the queue, as people do
        assignment_submit(assignment=assignment_next(project=project, annotator=annotator), data={"choice": "a"})
    texts = [("Yes.", "No."), ("Four.", "A dog."), ("1", "2 and 3"), ("Blue sky.", "Blue."), ("A", "B", "C")]
    open_items = [
        make_task(
            project=project, question=f"Open question {i}?", texts=t, kind="ranking" if len(t) > 2 else "pairwise"
        )
        for i, t in enumerate(texts)
    ]
    run, _ = services.run_create(trigger=TrainingRun.Trigger.API, kind=TrainingRun.Kind.REWARD, project=project)
    tasks.train_reward(run.pk)  # sends prefloop.rescore_queue to the broker; called here in-process
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    tasks.rescore_queue(project.pk)

    ensemble = RewardEnsemble.load([local_path(RewardModel.objects.get().artifact_path)])
    prompts = [[{"role": "user", "content": f"Open question {i}?"}] for i, t in enumerate(texts) for _ in t]
    members = ensemble.score(prompts, [x for t in texts for x in t])["members"]
    expected = item_disagreements(members, [len(t) for t in texts])
    stored = [Task.objects.get(pk=t.pk).priority for t in open_items]
    assert stored == pytest.approx(expected, rel=1e-5) and len(set(stored)) == len(stored) and max(stored) > 0
    order = [t.pk for _, t in sorted(zip(stored, open_items, strict=True), key=lambda pair: -pair[0])]
    served = [assignment_next(project=project, annotator=make_user()).task_id for _ in open_items]
    assert served == order  # the most informative first


def test_chat_answers_are_scored_by_the_users_next_message_and_reach_exports_api_and_kto(settings, tiny_policy_path):
    """Follow-ups as feedback: a worker scores each answer the user replied to (FOLLOWUP_MODEL),
    and the score shows in the API, the kto and raw exports and a KTO run's data."""
    from tests.webapp.api.test_api import client_for
    from training.followup import FollowupScorer
    from webapp.feedback import services as feedback
    from webapp.feedback.models import Message
    from webapp.feedback.projects import project_default
    from webapp.feedback.transfer import export_rows
    from webapp.runs.data import training_data

    settings.FOLLOWUP_MODEL = str(tiny_policy_path)
    user = make_user(username="chatter")
    conversation = feedback.conversation_create(owner=user)
    _, first = feedback.chat_turn_start(conversation=conversation, text="What colour is grass?")
    feedback.chat_reply_finish(message=first, content="Grass is green.")
    _, second = feedback.chat_turn_start(conversation=conversation, text="Thanks, that helps!")
    feedback.chat_reply_finish(message=second, content="You are welcome.")  # no reply yet: not scored
    _, failed = feedback.chat_turn_start(conversation=conversation, text="And the sky?")
    feedback.chat_reply_finish(message=failed, content="", failed=True)
    tasks.score_followups()

    scored = {m.pk: m.followup_score for m in Message.objects.filter(role="assistant")}
    expected = FollowupScorer.from_pretrained(tiny_policy_path).score_replies(
        [([{"role": "user", "content": "What colour is grass?"}], "Grass is green.", "Thanks, that helps!"),
         ([{"role": "user", "content": "What colour is grass?"}, {"role": "assistant", "content": "Grass is green."},
           {"role": "user", "content": "Thanks, that helps!"}], "You are welcome.", "And the sky?")]
    )  # fmt: skip
    assert scored[first.pk] == pytest.approx(expected[0], abs=1e-4)
    assert scored[second.pk] == pytest.approx(expected[1], abs=1e-4)
    assert scored[failed.pk] is None  # a failed answer, and one nobody replied to yet, are not scored

    listed = client_for(make_user("admin")).get("/api/followups/").json()
    assert listed["count"] == 2 and listed["results"][0]["reply"] == "And the sky?"
    assert client_for(user).get("/api/followups/").status_code == 403
    kto = [r for r in export_rows(kind="kto", project=project_default()) if "followup_score" in r]
    assert {r["completion"][0]["content"]: r["label"] for r in kto} == {
        "Grass is green.": expected[0] > 0,
        "You are welcome.": expected[1] > 0,
    }
    raw = [r for r in export_rows(kind="raw") if r.get("kind") == "followup"]
    assert {r["message"] for r in raw} == {first.pk, second.pk} and raw[0]["reply"] == "Thanks, that helps!"

    margin = min(abs(s) for s in expected) / 2
    recipe = services.recipe_update(project=project_default(), data={"method": "kto", "followup_margin": margin})
    data = training_data(project=project_default(), recipe=recipe)
    assert sorted(t["completion"] for t in data.thumbs) == ["Grass is green.", "You are welcome."]
    off = services.recipe_update(project=project_default(), data={"followup_margin": 0})
    assert training_data(project=project_default(), recipe=off).thumbs == []  # only when asked for

    settings.FOLLOWUP_SCORE = False  # an operator who does not want a model loaded for it
    feedback.chat_reply_finish(message=failed, content="It is blue.")
    feedback.chat_turn_start(conversation=conversation, text="Thanks.")
    tasks.score_followups()
    failed.refresh_from_db()
    assert failed.followup_score is None
