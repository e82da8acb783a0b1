from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from webapp.runs.policy import PolicyServerError, adapter_load, policy_client
from webapp.runs.selectors import version_serving


class Command(BaseCommand):
    help = (
        "Load the serving version's adapter into the policy server under its name (policy-vN). "
        "Run it after the policy server (re)starts without the adapter, e.g. a vLLM container."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--wait", type=float, default=0, help="Seconds to wait for the server to come up.")

    def handle(self, *args: Any, **options: Any) -> None:
        version = version_serving()
        if version is None:
            raise CommandError("No policy version is serving: run `python manage.py prefloop_setup` first.")
        client = policy_client()
        try:
            if options["wait"]:
                client.wait_ready(timeout=options["wait"])
            adapter_load(version)
        except PolicyServerError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{version} ({version.artifact_path}) is served as {version.adapter_name!r}.")
