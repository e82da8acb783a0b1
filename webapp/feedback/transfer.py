"""Import feedback files into a project, and export a project's labels in TRL's formats.

Reading and writing the files is `training.feedback_io` (plain Python, streaming); this module
maps its records to rows of the database and back, in atomic batches.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Prefetch

from training.feedback_io import (
    BadRecord,
    ImportedCandidate,
    ImportedItem,
    ImportedLabel,
    read_feedback,
    rows_from_item,
)
from webapp.accounts.models import User
from webapp.core.jobs import JobGuard, JobStatus, job_enqueue, job_finish, job_guarded, job_start
from webapp.feedback.figures import figures_warm
from webapp.feedback.followups import followup_rows
from webapp.feedback.generation import generation_job_create
from webapp.feedback.models import ImportJob, Label, MessageFeedback, Project, Prompt, Task
from webapp.feedback.projects import DEFAULT_PROJECT_NAME
from webapp.feedback.selectors import context_before, slots_prefetch
from webapp.feedback.services import labels_bulk_create, tasks_bulk_create

IMPORTED_USER_PREFIX = "import-"
logger = logging.getLogger(__name__)
EXPORT_CHUNK = 500


BAD_LINES_KEPT = 1000


@dataclass
class ImportReport:
    items: int = 0
    created_tasks: int = 0
    created_prompts: int = 0
    skipped: int = 0
    labels: int = 0
    bad: list[BadRecord] = field(default_factory=list)
    last_line: int = 0  # the last line of the file read so far (progress)


def _annotator(name: str, cache: dict[str, User]) -> User:
    """The user standing for an annotator named in a file (it cannot log in)."""
    username = f"{IMPORTED_USER_PREFIX}{name}"[:150]
    if username not in cache:
        user, created = User.objects.get_or_create(username=username, defaults={"role": User.Role.ANNOTATOR})
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        cache[username] = user
    return cache[username]


def _label_fields(label: ImportedLabel, candidate_ids: list[int]) -> dict[str, Any]:
    if label.kind == "pairwise":
        return {"choice": label.choice or "", "strength": label.strength}
    if label.kind == "thumbs":
        return {"choice": label.choice or ""}
    if label.kind == "ranking":
        return {"ranking": [[candidate_ids[i] for i in group] for group in (label.ranking or [])]}
    if label.kind == "critique":
        return {"critique": label.critique or "", "rewrite": label.rewrite or ""}
    return {"rating": label.rating}


def import_items(
    *,
    project: Project,
    records: Iterable[ImportedItem | BadRecord],
    batch_size: int = 500,
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Store every good record of `records` in `project`, batch by batch; collect the bad ones.

    Each batch is one transaction, so an interruption leaves whole batches only, and a re-run
    skips the items whose external id the project already has. Prompts without answers are
    answered by the serving version on a worker (a generation job). Labels in the file are stored as
    raw labels of users named `import-<annotator>`.
    """
    report = ImportReport()
    users: dict[str, User] = {}
    batch: list[ImportedItem] = []
    for record in records:
        report.last_line = max(report.last_line, record.line)
        if isinstance(record, BadRecord):
            report.bad.append(record)
            continue
        batch.append(record)
        if len(batch) >= batch_size:
            _import_batch(project, batch, report, users)
            batch = []
            if progress:
                progress(report)
    if batch:
        _import_batch(project, batch, report, users)
    report.bad.sort(key=lambda bad: bad.line)  # a batch's refused items come after the lines read past them
    if progress and batch:
        progress(report)
    if report.created_prompts:  # prompts without answers: the policy writes them on a worker
        with transaction.atomic():
            generation_job_create(project=project)
    return report


@transaction.atomic
def _import_batch(project: Project, batch: list[ImportedItem], report: ImportReport, users: dict[str, User]) -> None:
    unique: dict[str, ImportedItem] = {}
    for item in batch:  # the same id twice in one file: the first one counts
        unique.setdefault(item.external_id, item)
    prompts_only: list[ImportedItem] = []
    with_tasks: list[ImportedItem] = []
    refused: list[ImportedItem] = []  # of a kind the project does not ask for: a bad line, with the fix in its words
    for i in unique.values():
        (prompts_only if i.kind == "prompt" else with_tasks if i.kind in project.feedback_types else refused).append(i)
    asks = ", ".join(project.feedback_types) or "nothing"
    report.bad += [
        BadRecord(i.line, f"a {i.kind} item, and the project asks for {asks}: add {i.kind} to its judgment kinds")
        for i in refused
    ]
    report.items += len(batch) - len(refused)
    known = set(
        Prompt.objects.filter(project=project, external_id__in=[i.external_id for i in prompts_only]).values_list(
            "external_id", flat=True
        )
    )
    fresh_prompts = [i for i in prompts_only if i.external_id not in known]
    Prompt.objects.bulk_create(
        [
            Prompt(project=project, messages=i.messages, source=Prompt.Source.IMPORT, external_id=i.external_id)
            for i in fresh_prompts
        ]
    )
    report.created_prompts += len(fresh_prompts)
    report.skipped += len(batch) - len(refused) - len(fresh_prompts) - len(with_tasks)
    result = tasks_bulk_create(
        project=project,
        items=[
            {
                "kind": i.kind,
                "messages": i.messages,
                "candidates": [c.text for c in i.candidates],
                "external_id": i.external_id,
                "is_gold": i.meta.get("gold") is not None,  # a file's gold column (jsonl: "gold")
                "gold": i.meta.get("gold"),
            }
            for i in with_tasks
        ],
        created_by=None,
        source=Prompt.Source.IMPORT,
    )
    report.created_tasks += len(result.tasks)
    report.skipped += len(result.skipped)
    by_id = {i.external_id: i for i in with_tasks}
    labels = []
    for task, spec in zip(result.tasks, result.items, strict=True):
        item = by_id[spec["external_id"]]
        candidate_ids = [slot.candidate_id for slot in task.prepared_slots]  # type: ignore[attr-defined]
        seen: set[str] = set()
        for label in item.labels:
            if label.kind != task.kind or label.annotator in seen:
                continue  # a rating attached to a pairwise item, or a person's second label: one counts
            seen.add(label.annotator)
            labels.append(
                Label(
                    task=task,
                    annotator=_annotator(label.annotator, users),
                    kind=task.kind,
                    source=Label.Source.IMPORT,
                    **_label_fields(label, candidate_ids),
                )
            )
    labels_bulk_create(labels=labels)
    report.labels += len(labels)


# ------------------------------------------------------------------------------------ export


def _item_of(task: Task, labels: list[Label]) -> ImportedItem:
    slots = sorted(task.slots.all(), key=lambda s: s.position)
    index = {slot.candidate_id: i for i, slot in enumerate(slots)}
    return ImportedItem(
        line=0,
        external_id=task.prompt.external_id or f"task:{task.pk}",
        kind=task.kind if task.kind != "rating" else "critique",
        messages=task.prompt.messages,
        candidates=[ImportedCandidate(text=slot.candidate.text) for slot in slots],
        labels=[
            ImportedLabel(
                annotator=label.annotator.username,
                kind=label.kind,
                choice=label.choice or None,
                strength=label.strength,
                ranking=_full_ranking(label.ranking, index) if label.ranking else None,
                critique=label.critique or None,
                rewrite=label.rewrite or None,
                rating=label.rating,
            )
            for label in labels
        ],
        meta={"task_id": task.pk, "project": task.project.name},
    )


def _full_ranking(groups: list[list[int]], index: dict[int, int]) -> list[list[int]]:
    """Candidate ids to indexes; a partial (top-k) ranking gets its unranked answers as a last,
    tied group: ranked above unranked is all a top-k ranking says."""
    ranked = [[index[c] for c in group] for group in groups]
    placed = {i for group in ranked for i in group}
    rest = [i for i in sorted(index.values()) if i not in placed]
    return [*ranked, rest] if rest else ranked


def _agreement(labels: list[Label]) -> float:
    """Share of an item's labels that agree with its most common judgment (1.0 for one label)."""
    keys = [(lbl.choice, lbl.rating, str(lbl.ranking[0]) if lbl.ranking else None) for lbl in labels]
    return Counter(keys).most_common(1)[0][1] / len(keys)


def export_rows(*, kind: str, project: Project | None = None, min_agreement: float = 0.0) -> Iterator[dict[str, Any]]:
    """Rows of export `kind` (TRL's formats) from the raw labels, streamed task by task.

    `min_agreement` keeps only items whose labels agree at least that much (see `_agreement`).
    Thumbs from the chat also feed `kto` (up: desirable), and so do the chat's answers scored by
    the user's next message (`kto`: liked when positive; `raw`: with their score). Gold items are
    left out.
    """
    tasks = Task.objects.filter(is_gold=False).select_related("prompt", "project", "adjudication__reviewer")
    tasks = tasks.order_by("id")
    if project is not None:
        tasks = tasks.filter(project=project)
    if kind == "prompt":
        prompts = Prompt.objects.order_by("id")
        if project is not None:
            prompts = prompts.filter(project=project)
        for prompt in prompts.iterator(chunk_size=EXPORT_CHUNK):
            yield {"prompt": prompt.messages}
        return
    if kind != "raw":
        tasks = tasks.filter(labels__isnull=False).distinct()
    with_annotators = Prefetch("labels", queryset=Label.objects.select_related("annotator"))
    for task in tasks.prefetch_related(slots_prefetch(), with_annotators).iterator(chunk_size=EXPORT_CHUNK):
        labels = sorted(task.labels.all(), key=lambda lbl: lbl.pk)
        if labels and min_agreement > 0 and _agreement(labels) < min_agreement:
            continue
        if kind == "raw":
            for label in labels:
                yield _raw_row(task, label)
            continue
        yield from rows_from_item(_item_of(task, labels), kind)
    if kind == "kto":
        yield from _thumb_rows(project)
    if kind in ("kto", "raw") and (project is None or project.name == DEFAULT_PROJECT_NAME):
        yield from followup_rows(kind)  # the chat's answers, scored by the user's next message


def export_download(request: Any, *, project: Project, kind: str, min_agreement: float) -> Any:
    """The project's rows of `kind` as a JSON-lines download, streamed as they are written (the
    export page and the API's export alike)."""
    import json

    from django.utils.text import slugify

    from webapp.core.http import streaming_response

    rows = export_rows(kind=kind, project=project, min_agreement=min_agreement)
    lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    response = streaming_response(request, lines, content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="{slugify(project.name)}-{kind}.jsonl"'
    return response


def _raw_row(task: Task, label: Label) -> dict[str, Any]:
    slots = sorted(task.slots.all(), key=lambda s: s.position)
    return {
        "label_id": label.pk,
        "task_id": task.pk,
        "project": task.project.name,
        "kind": label.kind,
        "annotator": label.annotator.username,
        "source": label.source,
        "prompt": task.prompt.messages,
        "candidates": [{"id": s.candidate_id, "text": s.candidate.text} for s in slots],
        "choice": label.choice or None,
        "strength": label.strength,
        "ranking": label.ranking,
        "critique": label.critique or None,
        "rewrite": label.rewrite or None,
        "rating": label.rating,
        "rationale": label.rationale or None,
        "created_at": label.created_at.isoformat(),
        "adjudication": _adjudication_of(task),
    }


def _adjudication_of(task: Task) -> dict[str, Any] | None:
    """A reviewer's final answer for the item, beside each of its raw labels (None: not settled)."""
    adjudication = getattr(task, "adjudication", None)
    if adjudication is None:
        return None
    return {"reviewer": adjudication.reviewer.username, "note": adjudication.note or None, **adjudication.answer}


def _thumb_rows(project: Project | None) -> Iterator[dict[str, Any]]:
    if project is not None and project.name != DEFAULT_PROJECT_NAME:
        return
    thumbs = MessageFeedback.objects.select_related("message__conversation").order_by("id")
    for thumb in thumbs.iterator(chunk_size=EXPORT_CHUNK):
        context = context_before(message=thumb.message)
        if context and thumb.message.content.strip():
            yield {
                "prompt": context,
                "completion": [{"role": "assistant", "content": thumb.message.content}],
                "label": thumb.value == MessageFeedback.Value.UP,
            }


# ------------------------------------------------------------------------------ background import


def import_job_create(*, project: Project, created_by: User | None, fmt: str, upload: Any) -> ImportJob:
    """Keep `upload` (a Django UploadedFile) in IMPORT_DIR and queue its import on a worker."""
    from django.conf import settings

    folder = Path(settings.IMPORT_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    name = str(upload.name or "upload")
    path = folder / f"{uuid.uuid4().hex}{''.join(Path(name).suffixes[-2:])}"
    size = lines = 0
    gzipped, last = None, b"\n"
    with path.open("wb") as out:
        for chunk in upload.chunks():
            if not chunk:
                continue
            if gzipped is None:
                gzipped = chunk[:2] == b"\x1f\x8b"
            out.write(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1  # a last line without its newline
    job = ImportJob.objects.create(
        project=project, created_by=created_by, format=fmt, file_name=name[:255], path=str(path), size_bytes=size,
        lines_total=0 if gzipped else lines,
    )  # fmt: skip
    transaction.on_commit(lambda: _enqueue_import(job.pk))
    return job


def _enqueue_import(job_id: int) -> None:
    """Send the job to a worker; with the broker down it waits, and the reaper sends it later."""
    job = ImportJob.objects.filter(pk=job_id).first()
    if job is not None:
        job_enqueue(job)


def import_job_run(*, job_id: int) -> ImportJob | None:
    """Import a queued job's file under the job lifecycle (webapp.core.jobs), recording counts after
    every batch. A message delivered twice runs it once (only a queued job starts); a cancel stops
    it between batches, keeping what was imported; however it ends, its upload is removed
    (`ImportJob.job_ended`)."""
    job = job_start(ImportJob, job_id)
    if job is None:
        return None

    def body(guard: JobGuard) -> None:
        def record(report: ImportReport) -> None:
            ImportJob.objects.filter(pk=job_id).update(**report_counts(report))
            logger.info("import %s: %d items, %d bad lines so far", job_id, report.items, len(report.bad))
            guard.check()

        try:
            report = import_items(project=job.project, records=read_feedback(job.path, job.format), progress=record)
        except (OSError, ValueError) as exc:
            error = f"cannot read it as {job.format}: {exc}"
            job_finish(ImportJob, job_id, JobStatus.FAILED, error=error, attempt=guard.attempt)
            return
        job_finish(ImportJob, job_id, JobStatus.SUCCEEDED, attempt=guard.attempt, **report_counts(report))
        if report.labels:  # the project's quality report, ready for the first page that asks
            figures_warm(job.project)

    job_guarded(ImportJob, job_id, body, cancelled="cancelled while it ran; the items imported before stay")
    return ImportJob.objects.get(pk=job_id)


def report_counts(report: ImportReport) -> dict[str, Any]:
    """An import's counts, how far it read, and its first 1,000 bad lines, as the API and an ImportJob
    show them."""
    return {
        "items": report.items,
        "created_tasks": report.created_tasks,
        "created_prompts": report.created_prompts,
        "skipped": report.skipped,
        "labels": report.labels,
        "bad_lines": len(report.bad),
        "bad": [{"line": b.line, "message": b.message} for b in report.bad[:BAD_LINES_KEPT]],
        "lines_read": report.last_line,
    }
