from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from tests.factories import make_project, make_task, make_user
from webapp.feedback import assignments, services
from webapp.feedback.models import Assignment, Label

pytestmark = pytest.mark.django_db


def test_overlap_serves_each_item_to_k_people_and_never_twice_to_one():
    project = make_project(overlap=2)
    task = make_task(project=project)
    people = [make_user() for _ in range(3)]
    first = assignments.assignment_next(project=project, annotator=people[0])
    assert first is not None and first.task_id == task.pk
    assert assignments.assignment_next(project=project, annotator=people[0]).pk == first.pk  # resume, not a new one
    second = assignments.assignment_next(project=project, annotator=people[1])
    assert second is not None and second.task_id == task.pk
    assert assignments.assignment_next(project=project, annotator=people[2]) is None  # k = 2 reached
    assignments.assignment_submit(assignment=first, data={"choice": "a"})
    assert assignments.assignment_next(project=project, annotator=people[0]) is None  # seen it already


def test_nobody_judges_their_own_chat():
    project = make_project()
    owner = make_user()
    conv = services.conversation_create(owner=owner)
    task = make_task(project=project)
    task.prompt.conversation = conv
    task.prompt.save()
    assert assignments.assignment_next(project=project, annotator=owner) is None
    assert assignments.assignment_next(project=project, annotator=make_user()).task_id == task.pk


def test_expired_lease_frees_the_slot_for_someone_else_and_late_work_is_kept():
    project = make_project(overlap=1, lease_seconds=60)
    make_task(project=project)
    slow, quick = make_user(), make_user()
    held = assignments.assignment_next(project=project, annotator=slow)
    assert assignments.assignment_next(project=project, annotator=quick) is None
    Assignment.objects.filter(pk=held.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    again = assignments.assignment_next(project=project, annotator=quick)
    assert again is not None and again.task_id == held.task_id
    held.refresh_from_db()
    assert held.status == Assignment.Status.EXPIRED
    label, created = assignments.assignment_submit(assignment=held, data={"choice": "b"})  # late, still kept
    assert created and label.choice == "b"


def test_skip_needs_a_reason_and_the_item_is_not_served_again():
    project = make_project()
    make_task(project=project)
    person = make_user()
    served = assignments.assignment_next(project=project, annotator=person)
    with pytest.raises(ValidationError, match="say why"):
        assignments.assignment_skip(assignment=served, reason="  ")
    skipped = assignments.assignment_skip(assignment=served, reason="not my language")
    assert skipped.status == Assignment.Status.SKIPPED and skipped.skip_reason == "not my language"
    assert assignments.assignment_next(project=project, annotator=person) is None
    assert assignments.assignment_next(project=project, annotator=make_user()) is not None


def test_gold_items_are_mixed_in_and_scored():
    project = make_project(gold_rate=0.5)
    for _ in range(6):
        make_task(project=project)
    gold = [make_task(project=project, is_gold=True, gold={"choice": "a"}) for _ in range(6)]
    person = make_user()
    rng = random.Random(0)
    served = []
    while (a := assignments.assignment_next(project=project, annotator=person, rng=rng)) is not None:
        served.append(a.task.is_gold)
        assignments.assignment_submit(assignment=a, data={"choice": "a" if a.task.pk % 2 else "b"})
    assert served.count(True) == 6 and served.count(False) == 6
    assert 0 < served[:6].count(True) < 6  # interleaved, not all at the end
    scored = Label.objects.filter(task__in=gold)
    assert {label.gold_correct for label in scored} <= {True, False}
    assert scored.filter(gold_correct=True).count() == sum(t.pk % 2 for t in gold)


@pytest.mark.parametrize(
    ("kind", "texts", "data", "fragment"),
    [
        pytest.param("pairwise", ("x", "y"), {"choice": "c"}, "choice must be", id="pairwise-bad-choice"),
        pytest.param("pairwise", ("x", "y"), {"choice": "a", "strength": 5}, "strength", id="pairwise-strength"),
        pytest.param("ranking", ("x", "y", "z"), {"ranking": [[0], [1]]}, "not a candidate", id="ranking-unknown"),
        pytest.param("rating", ("x",), {"rating": 9}, "rating must be", id="rating-range"),
        pytest.param("critique", ("x",), {"critique": " "}, "critique must", id="critique-empty"),
        pytest.param("thumbs", ("x",), {"choice": "a"}, "up or down", id="thumbs-bad-choice"),
    ],
)
def test_bad_labels_are_refused_with_a_clear_message(kind, texts, data, fragment):
    task = make_task(project=make_project(), kind=kind, texts=texts)
    with pytest.raises(ValidationError, match=fragment):
        assignments.label_create(task=task, annotator=make_user(), data=data, source="api")
    assert Label.objects.count() == 0


def test_ranking_full_order_with_ties_and_partial_only_where_allowed():
    strict = make_task(project=make_project(), kind="ranking", texts=("x", "y", "z"))
    ids = list(strict.slots.values_list("candidate_id", flat=True))
    label, _ = assignments.label_create(
        task=strict, annotator=make_user(), data={"ranking": [[ids[2]], [ids[0], ids[1]]]}, source="api"
    )
    assert label.ranking == [[ids[2]], [ids[0], ids[1]]]
    with pytest.raises(ValidationError, match="rank every candidate"):
        assignments.label_create(
            task=strict, annotator=make_user(), data={"ranking": [[ids[0]], [ids[1]]]}, source="api"
        )
    with pytest.raises(ValidationError, match="twice"):
        assignments.label_create(
            task=strict, annotator=make_user(), data={"ranking": [[ids[0]], [ids[0]], [ids[1], ids[2]]]}, source="api"
        )
    partial = make_task(project=make_project(allow_partial_ranking=True), kind="ranking", texts=("x", "y", "z"))
    pids = list(partial.slots.values_list("candidate_id", flat=True))
    top2, _ = assignments.label_create(
        task=partial, annotator=make_user(), data={"ranking": [[pids[1]], [pids[0]]]}, source="api"
    )
    assert top2.ranking == [[pids[1]], [pids[0]]]


def test_idempotency_key_returns_the_first_label():
    person = make_user()
    t1, t2 = make_task(), make_task()
    first, created = assignments.label_create(
        task=t1, annotator=person, data={"choice": "a"}, source="api", idempotency_key="k-1"
    )
    again, created_again = assignments.label_create(
        task=t2, annotator=person, data={"choice": "b"}, source="api", idempotency_key="k-1"
    )
    assert (created, created_again) == (True, False) and again.pk == first.pk
    assert Label.objects.count() == 1


def _all_at_once(people, action) -> None:
    """Run `action(person)` for every person in threads released together; fail on any error."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(people))

    def run(person):
        try:
            barrier.wait()
            action(person)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(p,)) for p in people]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_fill_every_slot_and_never_over_assign_an_item():
    project = make_project(overlap=2)
    tasks = [make_task(project=project) for _ in range(5)]
    people = [make_user() for _ in range(16)]
    results: list[int | None] = []

    def claim(person):
        assignment = assignments.assignment_next(project=project, annotator=person)
        results.append(assignment.task_id if assignment else None)

    _all_at_once(people, claim)
    served = [r for r in results if r is not None]
    # 5 items x overlap 2: no more (over-assignment), and no fewer (a claim that met only locked
    # rows must wait for them rather than answer "nothing left").
    assert len(served) == 10, results
    for task in tasks:
        assert Assignment.objects.filter(task=task).count() == 2
    assert results.count(None) == 6


@pytest.mark.django_db(transaction=True)
def test_many_claiming_at_once_are_never_told_nothing_is_left_while_items_are_open(monkeypatch):
    """More people than a claim's batch of candidates, at once: when the others fill a whole batch
    first, a claim reads the next one instead of answering "nothing left" (it once did: 26 of 50
    simulated annotators were sent away with more than 5,000 items open)."""
    monkeypatch.setattr(assignments, "CLAIM_BATCH", 4)  # the batch of 50, shrunk to fit a test
    project = make_project(overlap=1)
    for _ in range(30):
        make_task(project=project)
    people = [make_user() for _ in range(12)]
    results: list[int | None] = []

    def claim(person):
        for _ in range(2):
            assignment = assignments.assignment_next(project=project, annotator=person)
            results.append(assignment.task_id if assignment else None)
            if assignment is not None:
                assignments.assignment_submit(assignment=assignment, data={"choice": "a"}, source="api")

    _all_at_once(people, claim)
    assert None not in results, results  # 24 claims, 30 open items: every claim is served
    assert len(set(results)) == 24  # each item to one person (overlap 1)


def test_the_queue_keeps_each_items_count_of_open_slots_through_every_change():
    """`Task.taken` (what the open-queue index reads) equals the leased and submitted assignments
    after claims, submits, skips, expiries, and a submit after the lease expired."""
    from datetime import timedelta

    from django.db.models import Count, Q
    from django.utils import timezone

    from webapp.feedback.models import Task

    project = make_project(overlap=2)
    for _ in range(4):
        make_task(project=project)
    people = [make_user() for _ in range(5)]

    def consistent() -> None:
        counted = Task.objects.filter(project=project).annotate(
            n=Count("assignments", filter=Q(assignments__status__in=assignments.OPEN_STATUSES))
        )
        assert [(t.taken, t.n) for t in counted] == [(t.n, t.n) for t in counted]

    served = [assignments.assignment_next(project=project, annotator=p) for p in people]
    consistent()
    assignments.assignment_submit(assignment=served[0], data={"choice": "a"}, source="api")
    assignments.assignment_skip(assignment=served[1], reason="not my language")
    consistent()
    Assignment.objects.filter(pk=served[2].pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert assignments.leases_expire() == 1
    consistent()
    late = Assignment.objects.get(pk=served[2].pk)
    assignments.assignment_submit(assignment=late, data={"choice": "b"}, source="api")  # the work is kept
    consistent()
    again = assignments.assignment_next(project=project, annotator=people[1])
    assert again is not None and again.task_id != served[1].task_id  # never the skipped one again
    consistent()


@pytest.mark.both_databases
def test_when_nothing_is_left_for_a_person_the_page_says_who_the_open_items_wait_for():
    from django.test import Client
    from django.urls import reverse

    ann = make_user(username="ann")
    project = make_project(members=[ann], feedback_types=["pairwise"], overlap=2)
    for i in range(2):
        make_task(project=project, question=f"Q{i}?")
    page = Client()
    page.force_login(ann)
    url = reverse("feedback:project", args=[project.pk])
    first = page.get(url).content.decode()
    assert "items still open: 2" in first and 'id="for-you-count">1<' in first  # one is on the page, leased
    for _ in range(2):
        served = assignments.assignment_current(project=project, annotator=ann) or assignments.assignment_next(
            project=project, annotator=ann
        )
        assignments.assignment_submit(assignment=served, data={"choice": "a"})
    done = page.get(url).content.decode()
    assert "Nothing left for you" in done and 'id="for-you-count">0<' in done
    assert "The 2 items still open wait for other people" in done  # not a bare "2 open" beside "nothing left"
