from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from tests.factories import make_pairwise_task, make_serving_version, make_user
from webapp.feedback import services
from webapp.feedback.models import Label, Message
from webapp.feedback.selectors import context_before
from webapp.runs.models import TrainingRun

pytestmark = pytest.mark.django_db


def test_chat_turn_records_user_turn_and_a_streaming_reply_from_the_serving_version():
    version = make_serving_version()
    user = make_user()
    conv = services.conversation_create(owner=user)
    user_msg, reply = services.chat_turn_start(conversation=conv, text="  Hello there ")
    assert (user_msg.role, user_msg.content) == ("user", "Hello there")
    assert reply.parent_id == user_msg.pk
    assert reply.status == Message.Status.STREAMING
    assert reply.policy_version_id == version.pk
    conv.refresh_from_db()
    assert conv.title == "Hello there"


def test_chat_turn_rejects_an_empty_message_and_stores_nothing():
    conv = services.conversation_create(owner=make_user())
    with pytest.raises(ValidationError):
        services.chat_turn_start(conversation=conv, text="   ")
    assert conv.messages.count() == 0


def test_context_before_follows_the_branch_to_the_root():
    make_serving_version()
    conv = services.conversation_create(owner=make_user())
    _, r1 = services.chat_turn_start(conversation=conv, text="first")
    services.chat_reply_finish(message=r1, content="answer one")
    _, r2 = services.chat_turn_start(conversation=conv, text="second")
    assert context_before(message=r2) == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer one"},
        {"role": "user", "content": "second"},
    ]


def test_label_submit_twice_keeps_the_first_label(django_capture_on_commit_callbacks):
    user = make_user()
    task = make_pairwise_task(created_by=user)
    label, created = services.label_submit(task=task, annotator=user, choice="a", strength=2)
    again, created_again = services.label_submit(task=task, annotator=user, choice="b", strength=1)
    assert (created, created_again) == (True, False)
    assert again.pk == label.pk and again.choice == "a"
    assert Label.objects.count() == 1


@pytest.mark.parametrize(("choice", "strength"), [("maybe", 1), ("a", 0), ("a", 4)])
def test_label_submit_rejects_bad_values(choice, strength):
    user = make_user()
    task = make_pairwise_task(created_by=user)
    with pytest.raises(ValidationError):
        services.label_submit(task=task, annotator=user, choice=choice, strength=strength)
    assert Label.objects.count() == 0


def test_threshold_queues_one_run_after_n_labels(settings, django_capture_on_commit_callbacks):
    settings.TRAIN_EVERY_N_LABELS = 3
    user = make_user()
    with django_capture_on_commit_callbacks() as callbacks:
        for _ in range(2):
            services.label_submit(task=make_pairwise_task(created_by=user), annotator=user, choice="a")
        assert TrainingRun.objects.count() == 0
        services.label_submit(task=make_pairwise_task(created_by=user), annotator=user, choice="b")
        services.label_submit(task=make_pairwise_task(created_by=user), annotator=user, choice="b")
    run = TrainingRun.objects.get()
    assert run.trigger == TrainingRun.Trigger.THRESHOLD
    assert len(callbacks) == 1  # one task sent to the worker, after commit


def test_reward_runs_have_a_threshold_of_their_own(settings, django_capture_on_commit_callbacks):
    settings.TRAIN_EVERY_N_LABELS = 0  # policy updates by hand only
    settings.REWARD_EVERY_N_LABELS = 2
    user = make_user()
    with django_capture_on_commit_callbacks() as callbacks:
        for _ in range(5):
            services.label_submit(task=make_pairwise_task(created_by=user), annotator=user, choice="a")
    run = TrainingRun.objects.get()  # the 2nd label queued it; while it is active no other is queued
    assert (run.kind, run.trigger) == (TrainingRun.Kind.REWARD, TrainingRun.Trigger.THRESHOLD)
    assert len(callbacks) == 1
    run.status = TrainingRun.Status.SUCCEEDED
    run.save()
    # labels are counted since the run was queued: the 3 that came while it ran, and this one
    services.label_submit(task=make_pairwise_task(created_by=user), annotator=user, choice="a")
    assert TrainingRun.objects.filter(kind=TrainingRun.Kind.REWARD).count() == 2
    assert not TrainingRun.objects.filter(kind=TrainingRun.Kind.DPO).exists()


def test_preference_pairs_orient_choices_and_leave_out_ties():
    user = make_user()
    t1 = make_pairwise_task(created_by=user, texts=("good", "bad"))
    t2 = make_pairwise_task(created_by=user, texts=("worse", "better"))
    t3 = make_pairwise_task(created_by=user, texts=("same", "same-ish"))
    services.label_submit(task=t1, annotator=user, choice="a", strength=3)
    services.label_submit(task=t2, annotator=user, choice="b")
    services.label_submit(task=t3, annotator=user, choice="tie")
    from webapp.runs.data import training_data
    from webapp.runs.recipe import Recipe

    data = training_data(project=t1.project, recipe=Recipe(held_out_share=0.0))
    pairs = data.pairs
    assert [(p["chosen"], p["rejected"], p["strength"]) for p in pairs] == [("good", "bad", 3), ("better", "worse", 1)]
    assert [(t["chosen"], t["rejected"]) for t in data.ties] == [("same", "same-ish")]  # for the reward model
    assert pairs[0]["prompt"] == [{"role": "user", "content": "What is the capital of France?"}]
