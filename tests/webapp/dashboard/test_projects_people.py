"""Projects and people from the browser's pages (a Django test client posting the pages' forms):
make and edit a project, archive it, set who works on it in which role, make accounts, invite
people, deactivate them, and a person's page."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from tests.factories import make_project, make_serving_version, make_task, make_user
from tests.webapp.api.test_api import client_for
from webapp.accounts.models import User
from webapp.accounts.services import token_for_user
from webapp.feedback.assignments import assignment_next, assignment_skip, assignment_submit
from webapp.feedback.models import Invitation, Project, ProjectMember, Task
from webapp.feedback.people import invitation_create

pytestmark = pytest.mark.django_db

FORM = {
    "name": "Poems",
    "guidelines": "# Judge the poems\n\n**Rhyme** matters. <script>alert('x')</script><img src=x onerror=alert(1)>",
    "feedback_types": ["pairwise", "ranking"],
    "overlap": "2",
    "gold_rate": "0.1",
    "lease_seconds": "600",
    "answers_per_prompt": "2",
    "temperature": "0.7",
    "top_p": "0.9",
    "max_tokens": "",
    "regenerate_share": "1",
    "queue_order": "random",
    "queue_epsilon": "0.1",
}


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(make_user(User.Role.ADMIN, username="boss"))
    return client


def test_an_admin_makes_a_project_from_its_page_and_annotators_see_its_guidelines_rendered_safely(admin_client):
    made = admin_client.post("/dashboard/projects/new/", FORM)
    project = Project.objects.get(name="Poems")
    assert made.status_code == 302 and made["Location"] == f"/dashboard/projects/{project.pk}/?created=1"
    assert (project.feedback_types, project.overlap, project.gold_rate, project.queue_order) == (
        ["pairwise", "ranking"], 2, 0.1, "random"
    )  # fmt: skip
    assert project.max_tokens is None  # empty: the server's own
    page = admin_client.get(f"/dashboard/projects/{project.pk}/?created=1").content.decode()
    assert 'id="project-created"' in page and 'id="recipe-form"' in page  # the recipe is on the same page
    annotator = make_user(username="ann")
    ProjectMember.objects.create(project=project, user=annotator)
    viewer = Client()
    viewer.force_login(annotator)
    html = viewer.get(f"/annotate/{project.pk}/").content.decode()
    guidelines = html[html.index('id="guidelines"') :]
    assert "<h1>Judge the poems</h1>" in guidelines and "<strong>Rhyme</strong>" in guidelines
    assert "<script>" not in html.split("</head>")[1].replace("<script src=", "")  # no raw script from the text
    assert "alert(" not in html and "onerror" not in html


def test_bad_settings_are_refused_in_words_and_change_nothing(admin_client):
    for bad, field, words in [
        ({"feedback_types": []}, "feedback_types", "non-empty list"),
        ({"overlap": "0"}, "overlap", "overlap"),
        ({"temperature": "7"}, "temperature", "less than or equal to 2"),
        ({"name": ""}, "name", "blank"),
        ({"answers_per_prompt": "5", "feedback_types": ["pairwise"]}, "answers_per_prompt", ""),
    ]:
        answer = admin_client.post("/dashboard/projects/new/", {**FORM, **bad})
        assert answer.status_code == 400, bad
        errors = answer.content.decode()
        assert 'id="project-errors"' in errors and f"<strong>{field}</strong>" in errors and words in errors, bad
    assert not Project.objects.exists()
    project = make_project(name="Kept", overlap=1)
    answer = admin_client.post(f"/dashboard/projects/{project.pk}/", {**FORM, "name": "Kept", "overlap": "-3"})
    assert answer.status_code == 400 and 'value="-3"' in answer.content.decode()  # what was typed stays
    project.refresh_from_db()
    assert project.overlap == 1
    saved = admin_client.post(f"/dashboard/projects/{project.pk}/", {**FORM, "name": "Renamed", "overlap": "3"})
    assert saved.status_code == 302
    project.refresh_from_db()
    assert (project.name, project.overlap) == ("Renamed", 3)
    assert admin_client.post(f"/dashboard/projects/{project.pk}/", {**FORM, "name": "Renamed"}).status_code == 302


def test_a_project_made_without_judgment_kinds_asks_for_pairwise():
    admin = make_user(User.Role.ADMIN)
    made = client_for(admin).post("/api/projects/", {"name": "Plain"}, format="json")
    assert made.status_code == 201 and made.json()["feedback_types"] == ["pairwise"]
    assert Project.objects.create(name="Shell").feedback_types == ["pairwise"]
    empty = client_for(admin).post("/api/projects/", {"name": "Empty", "feedback_types": []}, format="json")
    assert empty.status_code == 400 and "non-empty list" in str(empty.json())


def test_an_archived_project_serves_nothing_new_and_comes_back(admin_client):
    annotator = make_user(username="ann")
    project = make_project(name="Old", members=[annotator])
    task = make_task(project=project, texts=("one", "two"))
    make_task(project=project, texts=("three", "four"))
    held = assignment_next(project=project, annotator=annotator)
    assert admin_client.post(f"/dashboard/projects/{project.pk}/archive/").status_code == 302
    project.refresh_from_db()
    assert project.is_archived
    api = client_for(annotator)
    assert api.get(f"/api/projects/{project.pk}/").status_code == 404  # gone from the annotator's view
    assert "Old" not in Client().get("/annotate/").content.decode()
    viewer = Client()
    viewer.force_login(annotator)
    assert "Old" not in viewer.get("/annotate/").content.decode()
    assignment_submit(assignment=held, data={"choice": "a"})  # a lease held before archiving may finish: no lost work
    assert task.labels.count() + project.tasks.exclude(pk=task.pk).get().labels.count() == 1
    assert assignment_next(project=project, annotator=make_user(User.Role.ADMIN)) is None  # nothing new
    admin_view = admin_client.get("/dashboard/projects/").content.decode()
    assert "archived" in admin_view
    patched = client_for(User.objects.get(username="boss")).patch(
        f"/api/projects/{project.pk}/", {"archived": False}, format="json"
    )
    assert patched.status_code == 200 and patched.json()["archived"] is False
    assert api.get(f"/api/projects/{project.pk}/").status_code == 200
    assert api.post(f"/api/projects/{project.pk}/next/").status_code == 200


def test_members_get_roles_from_the_project_page(admin_client):
    project = make_project(name="Roles")
    ann, rev = make_user(username="ann"), make_user(username="rev")
    url = f"/dashboard/projects/{project.pk}/members/"
    assert admin_client.post(url, {"username": "ann"}).status_code == 302
    assert admin_client.post(url, {"username": "rev", "role": "reviewer"}).status_code == 302
    roles = dict(ProjectMember.objects.filter(project=project).values_list("user__username", "role"))
    assert roles == {"ann": "annotator", "rev": "reviewer"}
    admin_client.post(url, {"username": "ann", "role": "admin"})  # the same person again: the role changes
    assert ProjectMember.objects.get(project=project, user=ann).role == "admin"
    unknown = admin_client.post(url, {"username": "ghost"})
    assert unknown.status_code == 400 and "no such person: &#x27;ghost&#x27;" in unknown.content.decode()
    bad_role = admin_client.post(url, {"username": "ann", "role": "king"})
    assert bad_role.status_code == 400 and "unknown role" in bad_role.content.decode()
    admin_client.post(url, {"username": "rev", "remove": "1"})
    assert not ProjectMember.objects.filter(project=project, user=rev).exists()
    via_api = client_for(User.objects.get(username="boss")).post(
        f"/api/projects/{project.pk}/members/", {"username": "rev", "role": "reviewer"}, format="json"
    )
    assert via_api.status_code == 201 and via_api.json() == {"username": "rev", "role": "reviewer"}


def test_the_recipe_saved_from_the_project_page_goes_back_there(admin_client):
    project = make_project(name="Recipe here")
    saved = admin_client.post(
        f"/dashboard/projects/{project.pk}/recipe/", {"method": "dpo", "beta": "0.2", "next": "project"}
    )
    assert saved.status_code == 302
    assert saved["Location"].endswith(f"/dashboard/projects/{project.pk}/?recipe_saved=1#recipe")
    assert project.__class__.objects.get(pk=project.pk).recipe["beta"] == 0.2


def test_an_admin_makes_accounts_and_bad_ones_are_refused_in_words(admin_client):
    project = make_project(name="Work")
    made = admin_client.post(
        "/dashboard/people/new/",
        {"username": "newbie", "password": "a-long-enough-passphrase", "role": "annotator",
         "project": str(project.pk), "project_role": "reviewer"},
    )  # fmt: skip
    assert made.status_code == 302
    newbie = User.objects.get(username="newbie")
    assert newbie.check_password("a-long-enough-passphrase") and not newbie.is_prefloop_admin
    assert ProjectMember.objects.get(user=newbie).role == "reviewer"
    for bad, words in [
        ({"username": "newbie", "password": "a-long-enough-passphrase"}, "is taken"),
        ({"username": "other", "password": "123"}, "too short"),
        ({"username": "bad name!", "password": "a-long-enough-passphrase"}, "Enter a valid username"),
        ({"username": "x2", "password": "a-long-enough-passphrase", "project": "999"}, "no project"),
    ]:
        answer = admin_client.post("/dashboard/people/new/", bad)
        assert answer.status_code == 400 and words in answer.content.decode(), bad
    assert User.objects.count() == 2


def test_deactivating_a_person_signs_them_out_of_everything_and_keeps_their_labels(admin_client):
    person = make_user(username="leaver", password="leaver-password-1")
    project = make_project(name="Job", members=[person])
    make_task(project=project)
    make_task(project=project, texts=("x", "y"))
    assignment_submit(assignment=assignment_next(project=project, annotator=person), data={"choice": "b"})
    lease = assignment_next(project=project, annotator=person)
    token = token_for_user(user=person)
    answer = admin_client.post("/dashboard/person/leaver/active/", {"active": "0"})
    assert answer.status_code == 302
    person.refresh_from_db()
    lease.refresh_from_db()
    assert not person.is_active and person.labels.count() == 1 and lease.status == "expired"
    assert not _signs_in("leaver", "leaver-password-1")
    assert Client().get("/api/tasks/", HTTP_AUTHORIZATION=f"Token {token}").status_code == 401
    boss = User.objects.get(username="boss")
    me = admin_client.post("/dashboard/person/boss/active/", {"active": "0"})
    assert me.status_code == 409 and "cannot deactivate yourself" in me.content.decode()
    boss.refresh_from_db()
    assert boss.is_active
    admin_client.post("/dashboard/person/leaver/active/", {"active": "1"})
    assert _signs_in("leaver", "leaver-password-1")


def _signs_in(username: str, password: str) -> bool:
    """Whether the login page lets this name and password in (a redirect away from it)."""
    answer = Client().post("/login/", {"username": username, "password": password})
    return answer.status_code == 302


def test_an_invitation_makes_one_account_once_in_its_role(admin_client):
    project = make_project(name="Invited")
    page = admin_client.post(
        "/dashboard/people/invitations/",
        {"note": "Ada", "role": "annotator", "project": str(project.pk), "project_role": "annotator", "days": "2"},
    )
    assert page.status_code == 200
    link = re.search(r'id="invite-link" value="([^"]+)"', page.content.decode()).group(1)
    path = "/" + link.split("/", 3)[3]
    token = path.rstrip("/").rsplit("/", 1)[1]
    invitation = Invitation.objects.get()
    assert token not in invitation.digest and len(invitation.digest) == 64  # only a digest is kept
    assert token not in admin_client.get("/dashboard/people/").content.decode()  # shown once

    guest = Client()
    assert "work on <strong>Invited</strong>" in guest.get(path).content.decode()
    differ = guest.post(path, {"username": "ada", "password": "lovelace-1843!", "password_again": "other"})
    assert differ.status_code == 400 and "the two passwords differ" in differ.content.decode()
    weak = guest.post(path, {"username": "ada", "password": "ada", "password_again": "ada"})
    assert weak.status_code == 400 and not User.objects.filter(username="ada").exists()
    accepted = guest.post(path, {"username": "ada", "password": "lovelace-1843!", "password_again": "lovelace-1843!"})
    assert accepted.status_code == 302 and accepted["Location"] == "/annotate/"
    ada = User.objects.get(username="ada")
    assert ProjectMember.objects.get(user=ada, project=project).role == "annotator"
    assert "Invited" in guest.get("/annotate/").content.decode()  # signed in, and a member
    again = Client().post(path, {"username": "eve", "password": "lovelace-1843!", "password_again": "lovelace-1843!"})
    assert again.status_code == 404 and "was accepted" in again.content.decode()
    assert not User.objects.filter(username="eve").exists()

    boss = User.objects.get(username="boss")
    expired, expired_token = invitation_create(by=boss, days=1)
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert "was expired" in Client().get(f"/invitations/{expired_token}/").content.decode()
    revoked, revoked_token = invitation_create(by=boss)
    assert admin_client.post(f"/dashboard/people/invitations/{revoked.pk}/revoke/").status_code == 302
    assert Client().get(f"/invitations/{revoked_token}/").status_code == 404
    assert Client().get("/invitations/not-a-token/").status_code == 404
    bad_days = admin_client.post("/dashboard/people/invitations/", {"days": "400"})
    assert bad_days.status_code == 400 and "at most 90 days" in bad_days.content.decode()
    bad_days = admin_client.post("/dashboard/people/invitations/", {"days": "soon"})
    assert bad_days.status_code == 400 and "not a number of days" in bad_days.content.decode()


def test_a_persons_page_shows_their_pace_quality_and_what_they_skipped(admin_client):
    person = make_user(username="worker")
    project = make_project(name="Paced", members=[person])
    for i in range(3):
        make_task(project=project, texts=(f"a{i}", f"b{i}"), question=f"Question number {i}?")
    for _ in range(2):
        assignment_submit(assignment=assignment_next(project=project, annotator=person), data={"choice": "a"})
    assignment_skip(assignment=assignment_next(project=project, annotator=person), reason="not my language")
    html = admin_client.get("/dashboard/person/worker/").content.decode()
    assert 'id="person-labels">2<' in html
    assert re.search(r'id="person-median">\d+\.\d s<', html)
    assert "not my language" in html and "Question number" in html
    data = html[html.index('id="person-chart-data"') :]
    assert f'"{timezone.localdate().isoformat()}"' in data and "2]" in data.replace(" ", "")  # today: 2 labels
    assert admin_client.get("/dashboard/person/nobody/").status_code == 404


TRL_FILE = (
    b'{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}\n'
    b'{"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello!"}],'
    b' "rejected": [{"role": "assistant", "content": "Go away."}]}\n'
    b'{"prompt": "broken", "chosen": 3, "rejected": "y"}\n'
    b"not json at all\n"
)


def test_an_upload_from_its_page_becomes_an_import_job_with_a_report_of_its_bad_lines(admin_client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from webapp.feedback.models import ImportJob, Label
    from webapp.feedback.transfer import import_job_run

    project = make_project(name="Uploads")
    empty = admin_client.post(f"/dashboard/projects/{project.pk}/import/", {"format": "trl"})
    assert empty.status_code == 400 and "Choose a file" in empty.content.decode()
    unknown = admin_client.post(
        f"/dashboard/projects/{project.pk}/import/", {"format": "xml", "file": SimpleUploadedFile("a.xml", b"<a/>")}
    )
    assert unknown.status_code == 400 and "one of jsonl, csv, trl" in unknown.content.decode()
    assert not ImportJob.objects.exists()
    sent = admin_client.post(
        f"/dashboard/projects/{project.pk}/import/", {"format": "trl", "file": SimpleUploadedFile("p.jsonl", TRL_FILE)}
    )
    job = ImportJob.objects.get()
    assert sent.status_code == 302 and sent["Location"] == f"/dashboard/imports/{job.pk}/"
    assert (job.lines_total, job.progress) == (4, 0.0)
    import_job_run(job_id=job.pk)  # what the worker does (the e2e tests run a real one)
    job.refresh_from_db()
    assert (job.status, job.items, job.labels, job.bad_lines, job.lines_read) == ("succeeded", 2, 2, 2, 4)
    page = admin_client.get(f"/dashboard/imports/{job.pk}/").content.decode()
    assert 'id="import-progress" max="1" value="1.0000"' in page
    assert 'line <span id="import-lines-read">4</span>' in page
    assert "must be a string or a list of one assistant message" in page
    report = admin_client.get(f"/dashboard/imports/{job.pk}/bad-lines.csv")
    rows = report.content.decode().splitlines()
    assert report["Content-Type"].startswith("text/csv") and rows[0] == "line,message"
    assert [r.split(",")[0] for r in rows[1:]] == ["3", "4"]
    chosen = {lab.task.slots.get(position={"a": 0, "b": 1}[lab.choice]).candidate.text for lab in Label.objects.all()}
    assert chosen == {"4", "Hello!"}  # the chosen answers, wherever the hash put them
    assert 'hx-trigger="every 1s"' not in page  # a finished import stops refreshing


def test_the_export_page_streams_the_file_and_refuses_bad_choices_in_words(admin_client):
    annotator = make_user(username="ann")
    project = make_project(name="Out put", members=[annotator])
    make_task(project=project, texts=("good", "bad"))
    assignment_submit(assignment=assignment_next(project=project, annotator=annotator), data={"choice": "a"})
    assert 'id="export-form"' in admin_client.get(f"/dashboard/projects/{project.pk}/export/").content.decode()
    download = admin_client.get(f"/dashboard/projects/{project.pk}/export/", {"kind": "preference"})
    assert download.status_code == 200
    assert download["Content-Disposition"] == 'attachment; filename="out-put-preference.jsonl"'
    rows = [json.loads(line) for line in b"".join(download.streaming_content).decode().splitlines()]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("good", "bad")]
    for bad, words in [
        ({"kind": "yaml"}, "Choose what to export"),
        ({"kind": "raw", "min_agreement": "2"}, "from 0 to 1"),
        ({"kind": "raw", "min_agreement": "lots"}, "from 0 to 1"),
    ]:
        answer = admin_client.get(f"/dashboard/projects/{project.pk}/export/", bad)
        assert answer.status_code == 400 and words in answer.content.decode(), bad


def _judged(project, texts, choices, question="Which is kinder?", rationales=None):
    """An item of `project` judged by one new annotator per choice."""
    task = make_task(project=project, texts=texts, question=question, required_labels=len(choices))
    for i, choice in enumerate(choices):
        person = make_user()
        ProjectMember.objects.create(project=project, user=person)
        data = {"choice": choice, "rationale": (rationales or [""] * len(choices))[i]}
        assignment_submit(assignment=assignment_next(project=project, annotator=person), data=data)
    task.refresh_from_db()
    return task


def test_the_explorer_finds_disagreements_by_search_and_filter_in_keyset_pages(admin_client, monkeypatch):
    from webapp.feedback import explore

    project = make_project(name="Explored", overlap=3)
    split = _judged(project, ("Be well!", "Whatever."), ["a", "a", "b"], question="Say goodbye nicely",
                    rationales=["warm", "warm", "the second is honest about not caring"])  # fmt: skip
    agreed = _judged(project, ("Hello!", "Go away."), ["a", "a"], question="Greet a neighbour")
    assert (split.n_labels, round(split.disagreement, 3), agreed.n_labels, agreed.disagreement) == (3, 0.333, 2, 0.0)
    page = admin_client.get("/dashboard/explore/", {"disagreement": "1", "sort": "disagreement"}).content.decode()
    assert f'href="/dashboard/items/{split.pk}/"' in page and f'href="/dashboard/items/{agreed.pk}/"' not in page
    cases = [("honest", split), ("neighbour", agreed), ("whatever", split), ("greet a", agreed)]
    if connection.vendor == "postgresql":  # full-text search: English stems and web-search syntax
        cases += [("greeting", agreed), ("goodbye -neighbour", split), ('"the second"', split)]
    for q, found in cases:
        html = admin_client.get("/dashboard/explore/", {"q": q}).content.decode()
        others = {split.pk, agreed.pk} - {found.pk}
        assert f"/dashboard/items/{found.pk}/" in html and f"/dashboard/items/{others.pop()}/" not in html, q
    bad = admin_client.get("/dashboard/explore/", {"project": "x", "sort": "size"})
    assert bad.status_code == 400 and "not a number" in bad.content.decode() and "one of newest" in bad.content.decode()
    for odd in ({"project": "²"}, {"version": "9" * 30}, {"sort": "disagreement", "after": "inf:3"},
                {"sort": "newest", "after": "0:" + "9" * 30}, {"sort": "newest", "after": "0:٣"}):  # fmt: skip
        assert admin_client.get("/dashboard/explore/", odd).status_code == 400, odd  # in words, never a 500
    monkeypatch.setattr(explore, "PAGE_SIZE", 2)
    for i in range(3):
        _judged(project, (f"x{i}", f"y{i}"), ["a", "b"], question=f"Q{i}")
    seen, url, pages = [], "/dashboard/explore/?sort=disagreement", 0
    while url:
        html = admin_client.get(url).content.decode()
        pages += 1
        seen += [int(pk) for pk in re.findall(r'href="/dashboard/items/(\d+)/"', html)]
        found = re.search(r'href="([^"]+)" id="explore-next"', html)
        url = found.group(1).replace("&amp;", "&") if found else ""
    assert (len(seen), len(set(seen)), pages) == (5, 5, 3)  # every item once, over three pages
    disagreements = [Task.objects.get(pk=pk).disagreement for pk in seen]
    assert disagreements == sorted(disagreements, reverse=True)


def test_a_reviewer_settles_a_disagreement_beside_the_labels_and_the_recipe_can_train_on_it(client):
    from webapp.runs.data import training_data
    from webapp.runs.recipe import Recipe

    project = make_project(name="Reviewed", overlap=2, recipe={"held_out_share": 0})
    task = _judged(project, ("Be well!", "Whatever."), ["a", "b"], rationales=["kind", "short"])
    reviewer, outsider = make_user(username="rev"), make_user(username="nosy")
    ProjectMember.objects.create(project=project, user=reviewer, role="reviewer")
    ProjectMember.objects.create(project=project, user=outsider)
    client.force_login(outsider)
    assert client.get("/dashboard/explore/").status_code == 403
    assert client.get(f"/dashboard/items/{task.pk}/").status_code == 403
    client.force_login(reviewer)
    assert "Review the items people disagree on" in client.get("/annotate/").content.decode()
    page = client.get(f"/dashboard/items/{task.pk}/").content.decode()
    assert "kind" in page and "short" in page and "Be well!" in page  # every label with its rationale
    refused = client.post(f"/dashboard/items/{task.pk}/", {"choice": "maybe"})
    assert refused.status_code == 400 and 'id="item-error"' in refused.content.decode()
    settled = client.post(f"/dashboard/items/{task.pk}/", {"choice": "a", "note": "B is rude."})
    assert settled.status_code == 302
    task.refresh_from_db()
    assert task.adjudication.answer["choice"] == "a" and task.adjudication.note == "B is rude."
    assert sorted(task.labels.values_list("choice", flat=True)) == ["a", "b"]  # beside them, never over them
    assert "Settled by <strong>rev</strong>" in client.get(f"/dashboard/items/{task.pk}/").content.decode()
    raw = training_data(project=project, recipe=Recipe.from_dict({"labels": "raw", "held_out_share": 0}))
    settled_data = training_data(
        project=project, recipe=Recipe.from_dict({"labels": "adjudicated", "held_out_share": 0})
    )
    assert len(raw.pairs) == 2 and [p["chosen"] for p in settled_data.pairs] == [raw.pairs[0]["chosen"]]
    assert settled_data.excluded["replaced by a reviewer's final answer"] == 1
    from webapp.feedback.transfer import export_rows

    rows = list(export_rows(kind="raw", project=project))
    assert [r["adjudication"]["choice"] for r in rows] == ["a", "a"]
    assert rows[0]["adjudication"]["reviewer"] == "rev" and {r["rationale"] for r in rows} == {"kind", "short"}


def test_the_explorers_search_reads_gin_indexes_on_postgresql_and_matches_substrings_on_sqlite():
    from django.contrib.postgres.search import SearchQuery, SearchVector
    from django.db.models import TextField
    from django.db.models.functions import Cast

    from webapp.feedback.explore import _search
    from webapp.feedback.models import Candidate, Label, Prompt

    sql = str(_search(Task.objects.all(), "kind words").query)
    if connection.vendor != "postgresql":  # no full-text index there: a case-insensitive substring
        assert "LIKE" in sql.upper() and "to_tsvector" not in sql
        return
    assert sql.count("to_tsvector") == 3  # the prompt, the answers and the rationales
    query = SearchQuery("kind words", config="english", search_type="websearch")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # tiny tables: make the planner show what it can use
        for model, expression, index in [
            (Prompt, Cast("messages", TextField()), "feedback_prompt_search"),
            (Candidate, "text", "feedback_candidate_search"),
            (Label, "rationale", "feedback_label_search"),
        ]:
            plan = (
                model.objects.annotate(found=SearchVector(expression, config="english")).filter(found=query).explain()
            )
            assert f"Index Scan on {index}" in plan, plan


def test_an_empty_install_says_what_is_missing_and_how_to_fix_it(admin_client):
    from django.utils import timezone

    from webapp.core.models import WorkerBeat

    page = html.unescape(admin_client.get("/dashboard/").content.decode())
    missing = page[page.index('id="missing-parts"') :]
    assert "No policy version serves" in missing and "prefloop_setup --no-users" in missing
    assert "No worker listens on the 'cpu', 'gpu', 'generate' queues" in missing
    assert "no open project" in missing
    make_serving_version()
    make_project(name="Open")
    WorkerBeat.objects.create(hostname="w1", queues=["cpu", "gpu"], seen_at=timezone.now())
    page = html.unescape(admin_client.get("/dashboard/").content.decode())
    missing = page[page.index('id="missing-parts"') :]
    assert "No worker listens on the 'generate' queue:" in missing and "-Q generate" in missing
    assert "No policy version serves" not in missing and "no open project" not in missing
    WorkerBeat.objects.create(hostname="w2", queues=["generate"], seen_at=timezone.now())
    assert 'id="missing-parts"' not in admin_client.get("/dashboard/").content.decode()


def test_a_ranking_is_settled_by_places_and_read_by_letters(admin_client):
    project = make_project(name="Ranked", feedback_types=["ranking"])
    task = make_task(project=project, kind="ranking", texts=("first", "second", "third"))
    ids = [slot.candidate_id for slot in task.slots.order_by("position")]
    url = f"/dashboard/items/{task.pk}/"
    odd = admin_client.post(url, {f"place-{ids[0]}": "²", f"place-{ids[1]}": "1", f"place-{ids[2]}": "1"})
    assert odd.status_code == 400 and 'id="item-error"' in odd.content.decode()
    settled = admin_client.post(url, {f"place-{ids[0]}": "2", f"place-{ids[1]}": "1", f"place-{ids[2]}": "1"})
    assert settled.status_code == 302
    task.refresh_from_db()
    assert task.adjudication.answer["ranking"] == [[ids[1], ids[2]], [ids[0]]]
    assert "<strong>B = C &gt; A</strong>" in admin_client.get(url).content.decode()
