from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from training.feedback_io import EXPORT_KINDS, write_export
from webapp.feedback.models import Project
from webapp.feedback.transfer import export_rows


class Command(BaseCommand):
    help = (
        "Export labels in TRL's formats: preference (prompt/chosen/rejected/margin), kto, prompt (for GRPO), "
        "listwise, critique, or raw per-annotator labels; to .jsonl or .parquet, streamed."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--format", required=True, choices=sorted(EXPORT_KINDS))
        parser.add_argument("--out", required=True, type=Path, help="A .jsonl or .parquet file.")
        parser.add_argument("--project", help="Only this project (default: all).")
        parser.add_argument(
            "--min-agreement",
            type=float,
            default=0.0,
            help="Keep items whose labels agree at least this much (0 to 1).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        out: Path = options["out"]
        if out.suffix not in (".jsonl", ".parquet"):
            raise CommandError(f"--out must end in .jsonl or .parquet, not {out.suffix or 'nothing'}")
        if not 0 <= options["min_agreement"] <= 1:
            raise CommandError("--min-agreement must be between 0 and 1")
        project = None
        if options["project"]:
            project = Project.objects.filter(name=options["project"]).first()
            if project is None:
                raise CommandError(f"no project named {options['project']!r}")
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = export_rows(kind=options["format"], project=project, min_agreement=options["min_agreement"])
        count = write_export(rows, out, options["format"])
        self.stdout.write(f"Wrote {count} {options['format']} rows to {out}.")
