"""Import then export round trips on the four real human-feedback files in ../shared/data/."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from training.feedback_io import read_export, read_feedback
from webapp.feedback.models import Label, Project, Prompt, Task

pytestmark = pytest.mark.django_db

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def shared(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests read the shared human-feedback files beside the project")
    return path


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("fmt", "name", "kind", "items", "labels"),
    [
        pytest.param("hh", "hh-rlhf-harmless-base-test.jsonl.gz", "pairwise", 2312, 2312, id="hh"),
        pytest.param("oasst", "oasst-en-100-trees.jsonl", "ranking", 212, 212, id="oasst"),
        pytest.param("pandalm", "pandalm-testset-v1.json", "pairwise", 999, 2997, id="pandalm"),
        pytest.param("defacto", "defacto-test.jsonl", "critique", 1075, 1075, id="defacto"),
    ],
)
def test_import_counts_and_a_rerun_adds_nothing(fmt, name, kind, items, labels):
    out, _ = run("import_feedback", str(shared(name)), "--format", fmt, "--project", fmt, "--quiet")
    assert f"{items} tasks" in out, out
    project = Project.objects.get(name=fmt)
    assert Task.objects.filter(project=project, kind=kind).count() == items
    assert Label.objects.filter(task__project=project).count() == labels
    again, _ = run("import_feedback", str(shared(name)), "--format", fmt, "--project", fmt, "--quiet")
    assert f"0 tasks and 0 prompts added, {items} already in, 0 labels" in again
    assert Task.objects.filter(project=project).count() == items


def test_round_trips_export_what_was_imported(tmp_path):
    for fmt, name in [
        ("hh", "hh-rlhf-harmless-base-test.jsonl.gz"),
        ("oasst", "oasst-en-100-trees.jsonl"),
        ("pandalm", "pandalm-testset-v1.json"),
        ("defacto", "defacto-test.jsonl"),
    ]:
        run("import_feedback", str(shared(name)), "--format", fmt, "--project", fmt, "--quiet")

    def export(kind: str, project: str, suffix: str = ".jsonl", *extra: str) -> list[dict]:
        path = tmp_path / f"{project}-{kind}{suffix}"
        run("export_feedback", "--format", kind, "--out", str(path), "--project", project, *extra)
        return list(read_export(path))

    hh = export("preference", "hh", ".parquet")
    assert len(hh) == 2312  # one human choice per HH pair, never a tie
    # the API streams the same rows (on SQLite, more than 1,000 items once failed: "Expression tree is too large")
    from tests.factories import make_user
    from tests.webapp.api.test_api import client_for

    streamed = client_for(make_user("admin")).get(
        f"/api/projects/{Project.objects.get(name='hh').pk}/export/", {"kind": "preference"}
    )
    lines = b"".join(streamed.streaming_content).decode().splitlines()
    assert streamed.status_code == 200 and len(lines) == 2312
    item = next(read_feedback(DATA / "hh-rlhf-harmless-base-test.jsonl.gz", "hh"))
    human_choice = item.candidates[0 if item.labels[0].choice == "a" else 1].text
    assert any(row["prompt"] == item.messages and row["chosen"][0]["content"] == human_choice for row in hh)
    assert all(row["chosen"][0]["role"] == "assistant" and row["prompt"][-1]["role"] == "user" for row in hh)

    listwise = export("listwise", "oasst")
    assert len(listwise) == 212
    assert sum(len(row["completions"]) >= 3 for row in listwise) == 155
    assert all(row["ranks"] == sorted(row["ranks"]) for row in listwise)

    raw = export("raw", "pandalm")
    assert len(raw) == 2997
    assert {row["annotator"] for row in raw} == {"import-pandalm-1", "import-pandalm-2", "import-pandalm-3"}
    decisive = sum(row["choice"] in ("a", "b") for row in raw)
    assert len(export("preference", "pandalm")) == decisive
    unanimous = export("preference", "pandalm", ".jsonl", "--min-agreement", "1.0")
    assert 0 < len(unanimous) < decisive

    critiques = export("critique", "defacto")
    assert len(critiques) == 1075
    rewrites = sum(row["rewrite"] is not None for row in critiques)
    assert len(export("preference", "defacto")) == rewrites > 0

    assert Prompt.objects.count() == 2312 + 212 + 999 + 1075


def test_bad_lines_are_reported_with_their_numbers_and_good_lines_are_kept(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        '{"prompt": "What is DPO?"}\n'
        "{not json\n"
        '{"prompt": ""}\n'
        '{"messages": [{"role": "user", "content": "Hi"}], "id": "p-4"}\n'
        '{"prompt": "a NUL \\u0000 here"}\n'  # PostgreSQL stores no NUL: once, it aborted the whole file
        '{"prompt": "And after it?"}\n'
    )
    out, err = run("import_feedback", str(path), "--format", "jsonl", "--project", "plain", "--quiet")
    assert "2 tasks and 0 prompts" not in out
    assert "3 prompts added" in out and "3 bad lines" in out
    assert f"{path}:2:" in err and f"{path}:3:" in err and f"{path}:5: a NUL character" in err
    assert Prompt.objects.filter(project__name="plain").count() == 3


def test_import_refuses_a_missing_file_and_export_a_bad_suffix(tmp_path):
    with pytest.raises(CommandError, match="not a file"):
        run("import_feedback", str(tmp_path / "nope.jsonl"), "--format", "jsonl", "--project", "x")
    with pytest.raises(CommandError, match=r"\.jsonl or \.parquet"):
        run("export_feedback", "--format", "raw", "--out", str(tmp_path / "out.csv"))
