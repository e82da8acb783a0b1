from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from training.feedback_io import FORMAT_KINDS, FORMATS, read_feedback
from webapp.feedback.models import Project
from webapp.feedback.transfer import ImportReport, import_items


class Command(BaseCommand):
    help = (
        "Import prompts and human feedback into a project, streaming: plain prompt lists (jsonl, csv) and "
        "TRL, HH-RLHF, Open-Assistant, PandaLM, DeFacto, Label Studio and Argilla files. Bad lines are "
        "reported with their line number; each batch is atomic, and a re-run skips what is already in."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--format", required=True, choices=sorted(FORMATS))
        parser.add_argument("--project", required=True, help="Project name; created when missing.")
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--overlap", type=int, default=None, help="Overlap k for a project created now.")
        parser.add_argument("--quiet", action="store_true", help="No progress line.")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["path"]
        if not path.is_file():
            raise CommandError(f"{path} is not a file")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        project, created = Project.objects.get_or_create(
            name=options["project"],
            defaults={"feedback_types": list(FORMAT_KINDS[options["format"]]), "overlap": options["overlap"] or 1},
        )
        missing = [k for k in list(FORMAT_KINDS[options["format"]]) if k not in project.feedback_types]
        if missing:  # the project is asked for the judgments the file holds
            project.feedback_types = [*project.feedback_types, *missing]
            project.save(update_fields=["feedback_types"])

        def progress(report: ImportReport) -> None:
            if not options["quiet"]:
                sys.stderr.write(
                    f"\r{report.items} read · {report.created_tasks + report.created_prompts} new · "
                    f"{report.skipped} already in · {report.labels} labels · {len(report.bad)} bad lines"
                )
                sys.stderr.flush()

        try:
            report = import_items(
                project=project,
                records=read_feedback(path, options["format"]),
                batch_size=options["batch_size"],
                progress=progress,
            )
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {path}: {exc}") from exc
        if not options["quiet"]:
            sys.stderr.write("\n")
        for bad in report.bad:
            self.stderr.write(f"{path}:{bad.line}: {bad.message}")
        verb = "created" if created else "updated"
        self.stdout.write(
            f"Project {project.name!r} {verb}: {report.items} items read, {report.created_tasks} tasks and "
            f"{report.created_prompts} prompts added, {report.skipped} already in, {report.labels} labels, "
            f"{len(report.bad)} bad lines."
        )
