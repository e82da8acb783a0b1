"""Data in and out from the browser: an upload page (any format the importer reads, dropped or
chosen), an import's own page with a progress bar fed by its job and a downloadable report of its
bad lines, and an export page that streams a file."""

from __future__ import annotations

import csv
import io

from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from training.feedback_io import EXPORT_KINDS, FORMATS
from webapp.core.http import AuthedHttpRequest
from webapp.dashboard.views import admin_required
from webapp.feedback.models import ImportJob, JobStatus, Project
from webapp.feedback.transfer import export_download, import_job_create

FORMAT_LABELS = {
    "jsonl": "Prefloop JSON lines: prompts, or prompts with 2 to 9 answers",
    "csv": "CSV with a prompt column",
    "trl": "TRL: prompt, chosen, rejected; or unpaired prompt, completion, label (plain or conversational)",
    "hh": "Anthropic HH-RLHF (chosen and rejected transcripts)",
    "oasst": "Open-Assistant message trees (ranked replies)",
    "pandalm": "PandaLM (two responses, annotators' choices)",
    "defacto": "DeFacto summary critiques",
    "labelstudio": "Label Studio JSON export (pairwise: Pairwise or Choices tags)",
    "argilla": "Argilla records export (responses to a ranking or label question on 1 to 9 answers)",
}
EXPORT_LABELS = {
    "preference": "preference: prompt, chosen, rejected (DPO, reward models)",
    "kto": "kto: prompt, completion, label (unpaired)",
    "listwise": "listwise: rankings (LiPO)",
    "critique": "critique: answers with their rewrites",
    "prompt": "prompt: prompts only (online methods)",
    "raw": "raw: every label as people gave it, with its annotator, rationale and time",
}
assert set(FORMAT_LABELS) == set(FORMATS) and set(EXPORT_LABELS) == set(EXPORT_KINDS)


@require_http_methods(["GET", "POST"])
@admin_required
def project_import(request: AuthedHttpRequest, project_id: int) -> HttpResponse:
    """Upload a file to the project: a worker reads it, and its page shows the progress."""
    project = get_object_or_404(Project, pk=project_id)
    error, status = "", 200
    if request.method == "POST":
        upload, fmt = request.FILES.get("file"), request.POST.get("format", "")
        if upload is None or not upload.size:
            error = "Choose a file (or drop one on the box): an empty upload has nothing to import."
        elif fmt not in FORMATS:
            error = f"Choose the file's format: one of {', '.join(FORMATS)}."
        else:
            job = import_job_create(project=project, created_by=request.user, fmt=fmt, upload=upload)
            return redirect("dashboard:import", job.pk)
        status = 400
    recent = ImportJob.objects.filter(project=project).order_by("-id")[:10]
    context = {"project": project, "formats": FORMAT_LABELS, "error": error, "recent": recent,
               "chosen": request.POST.get("format", "jsonl")}  # fmt: skip
    return render(request, "dashboard/import_upload.html", context, status=status)


@require_GET
@admin_required
def import_detail(request: AuthedHttpRequest, job_id: int) -> HttpResponse:
    """One import: its progress bar and counts (refreshed while it runs) and its bad lines."""
    job = get_object_or_404(ImportJob.objects.select_related("project"), pk=job_id)
    active = job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    template = "dashboard/_import_detail.html" if request.htmx else "dashboard/import_detail.html"
    return render(request, template, {"job": job, "active": active})


@require_GET
@admin_required
def import_bad_lines(request: AuthedHttpRequest, job_id: int) -> HttpResponse:
    """The import's bad lines as CSV: line number and why it was refused."""
    job = get_object_or_404(ImportJob, pk=job_id)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["line", "message"])
    for bad in job.bad:
        writer.writerow([bad.get("line"), bad.get("message")])
    if job.bad_lines > len(job.bad):
        writer.writerow(["", f"... and {job.bad_lines - len(job.bad)} more bad lines, not kept"])
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="import-{job.pk}-bad-lines.csv"'
    return response


@require_GET
@admin_required
def project_export(request: AuthedHttpRequest, project_id: int) -> HttpResponse:
    """The export form; with `kind` set, the file itself, streamed as it is written."""
    project = get_object_or_404(Project, pk=project_id)
    kind = request.GET.get("kind", "")
    error = ""
    if kind:
        try:
            min_agreement = float(request.GET.get("min_agreement") or 0)
        except ValueError:
            min_agreement = -1.0
        if kind not in EXPORT_KINDS:
            error = f"Choose what to export: one of {', '.join(EXPORT_KINDS)}."
        elif not 0 <= min_agreement <= 1:
            error = "The least agreement is a number from 0 to 1."
        else:
            return export_download(request, project=project, kind=kind, min_agreement=min_agreement)
    context = {"project": project, "kinds": EXPORT_LABELS, "error": error, "kind": kind or "preference"}
    return render(request, "dashboard/export.html", context, status=400 if error else 200)
