"""Similar items on an item's page: a worker's embedding job (all-MiniLM-L6-v2, the real encoder)
embeds the project's items, and each item lists the nearest ones by meaning."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import Client

from tests.factories import make_project, make_task, make_user
from training.embeddings import nearest
from webapp.accounts.models import User
from webapp.feedback.models import EmbeddingJob, ItemVector
from webapp.feedback.similar import embedding_job_run

pytestmark = pytest.mark.django_db

ITEMS = [
    ("How do I keep my cat from scratching the sofa?", ("Give it a scratching post.", "Trim its claws.")),
    ("Why does my kitten scratch the couch?", ("Cats mark their territory.", "It sharpens its claws.")),
    ("What is a good recipe for tomato soup?", ("Roast tomatoes with garlic.", "Simmer tinned tomatoes.")),
    ("How long should I simmer a vegetable soup?", ("About forty minutes.", "Until the carrots are soft.")),
    ("How do I change a flat bicycle tyre?", ("Lever the tyre off the rim.", "Patch the inner tube.")),
]


def test_nearest_finds_the_most_similar_rows_and_leaves_the_query_out():
    matrix = np.eye(4, dtype=np.float32)
    matrix[1] = np.array([0.8, 0.6, 0, 0], dtype=np.float32)
    found = nearest(matrix, matrix[[0]], k=2, exclude=[0])
    assert [j for j, _ in found[0]] == [1, 2] or [j for j, _ in found[0]] == [1, 3]
    assert found[0][0][1] == pytest.approx(0.8)


def test_an_items_page_lists_the_items_nearest_in_meaning():
    project = make_project(name="Similar")
    tasks = [make_task(project=project, question=q, texts=answers) for q, answers in ITEMS]
    page = Client()
    page.force_login(make_user(User.Role.ADMIN))
    first = page.get(f"/dashboard/items/{tasks[0].pk}/").content.decode()
    assert 'id="similar-pending"' in first  # no vector yet: the project's job is queued, once
    page.get(f"/dashboard/items/{tasks[2].pk}/")
    (job,) = EmbeddingJob.objects.filter(project=project)
    assert job.status == "queued"

    embedding_job_run(job_id=job.pk)  # what the worker's task runs
    job.refresh_from_db()
    assert (job.status, job.items_done, job.items_total) == ("succeeded", 5, 5), job.error
    assert ItemVector.objects.filter(project=project).count() == 5
    cats = page.get(f"/dashboard/items/{tasks[0].pk}/").content.decode()
    assert 'id="similar-items"' in cats
    assert cats.index(f'href="/dashboard/items/{tasks[1].pk}/"') < cats.index(f'href="/dashboard/items/{tasks[2].pk}/"')
    soups = ItemVector.objects.get(task=tasks[2]).neighbours
    assert soups[0][0] == tasks[3].pk and len(soups) == 4  # the other soup first; itself never

    newer = make_task(project=project, question="My cat scratches the armchair, what can I do?")
    page.get(f"/dashboard/items/{newer.pk}/")
    embedding_job_run(job_id=EmbeddingJob.objects.filter(project=project, status="queued").get().pk)
    assert ItemVector.objects.get(task=newer).neighbours[0][0] in (tasks[0].pk, tasks[1].pk)
    assert newer.pk in [pk for pk, _ in ItemVector.objects.get(task=tasks[0]).neighbours]  # old items see new ones
