from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand

from webapp.accounts.models import User
from webapp.accounts.services import user_ensure
from webapp.feedback.demo import demo_project_ensure
from webapp.feedback.services import project_member_add
from webapp.runs.bootstrap import base_model_ensure, initial_version_ensure


class Command(BaseCommand):
    help = "Build the tiny base policy if missing, serve version 1, and create the admin and demo annotator."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-users", action="store_true", help="Do not create the demo users.")

    def handle(self, *args: Any, **options: Any) -> None:
        base, built = base_model_ensure()
        self.stdout.write(f"Base policy: {base}" + (" (built now)" if built else ""))
        version, created = initial_version_ensure()
        self.stdout.write(
            f"Serving policy version: {version} ({version.artifact_path})" + (" (created now)" if created else "")
        )
        project, added = demo_project_ensure()
        self.stdout.write(
            f"Project {project.name!r}: {added} demo tasks added" if added else f"Project {project.name!r} ready"
        )
        if options["no_users"]:
            return
        accounts = [
            ("admin", os.environ.get("PREFLOOP_ADMIN_PASSWORD", "prefloop-admin"), User.Role.ADMIN),
            ("annotator", os.environ.get("PREFLOOP_ANNOTATOR_PASSWORD", "prefloop-annotator"), User.Role.ANNOTATOR),
        ]
        for username, password, role in accounts:
            user, made = user_ensure(username=username, password=password, role=role)
            project_member_add(project=project, user=user)  # membership is explicit
            note = f"password {password}" if made else "already existed; password unchanged"
            self.stdout.write(f"User {username} ({role}): {note}")
