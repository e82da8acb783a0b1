from __future__ import annotations

import random

import pytest

from tests.factories import make_project, make_task, make_user
from training import aggregation
from webapp.feedback.assignments import label_create
from webapp.feedback.quality import project_quality

pytestmark = pytest.mark.django_db


def test_project_quality_matches_the_library_on_the_stored_raw_labels(client):
    project = make_project(overlap=3)
    people = [make_user(username=f"rater{i}") for i in range(3)]
    rng = random.Random(0)
    triples = []
    for _ in range(12):
        task = make_task(project=project)
        truth = rng.choice("ab")
        for i, person in enumerate(people):
            choice = truth if (i < 2 or rng.random() < 0.5) else ("tie" if truth == "a" else "a")
            label_create(task=task, annotator=person, data={"choice": choice}, source="api")
            triples.append((task.pk, person.username, choice))
    gold = make_task(project=project, is_gold=True, gold={"choice": "a"})
    label_create(task=gold, annotator=people[0], data={"choice": "a"}, source="api")
    label_create(task=gold, annotator=people[2], data={"choice": "b"}, source="api")

    report = project_quality(project=project)
    pairwise = report["kinds"]["pairwise"]
    assert pairwise["labels"] == 36 and pairwise["items_with_overlap"] == 12  # gold kept out
    assert pairwise["fleiss_kappa"] == round(aggregation.fleiss_kappa(triples), 4)
    assert pairwise["krippendorff_alpha"] == round(aggregation.krippendorff_alpha(triples), 4)
    by_name = {a["username"]: a for a in report["annotators"]}
    assert by_name["rater0"]["agreement"] > by_name["rater2"]["agreement"]
    assert (by_name["rater0"]["gold_correct"], by_name["rater0"]["gold_total"]) == (1, 1)
    assert (by_name["rater2"]["gold_correct"], by_name["rater2"]["gold_total"]) == (0, 1)
    assert by_name["rater0"]["trust"] >= by_name["rater2"]["trust"]

    admin = make_user("admin", username="boss", password="boss-pass")
    client.force_login(admin)
    page = client.get(f"/dashboard/quality/?project={project.pk}")
    assert page.status_code == 200
    assert str(pairwise["fleiss_kappa"]) in page.content.decode()
