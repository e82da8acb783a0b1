from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from webapp.runs.policy import PolicyServerError, adapter_load, replicas
from webapp.runs.selectors import version_serving


class Command(BaseCommand):
    help = (
        "Load the serving version's adapter under its name (policy-vN) on every policy server replica "
        "(POLICY_SERVER_URLS), or on one (--url). Run it when a policy server (re)starts without the "
        "adapter, e.g. a vLLM container, before it takes traffic."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--wait", type=float, default=0, help="Seconds to wait for each server to come up.")
        parser.add_argument("--url", default="", help="Only this replica (one of POLICY_SERVER_URLS).")

    def handle(self, *args: Any, **options: Any) -> None:
        version = version_serving()
        if version is None:
            raise CommandError("No policy version is serving: run `python manage.py prefloop_setup` first.")
        clients = replicas()
        if options["url"]:
            clients = [c for c in clients if c.base_url == options["url"].rstrip("/")]
            if not clients:
                raise CommandError(f"{options['url']} is not one of POLICY_SERVER_URLS")
        try:
            if options["wait"]:
                for client in clients:
                    client.wait_ready(timeout=options["wait"])
            adapter_load(version, only=clients)
        except PolicyServerError as exc:
            raise CommandError(str(exc)) from exc
        where = ", ".join(c.base_url for c in clients)
        self.stdout.write(f"{version} ({version.artifact_path}) is served as {version.adapter_name!r} on {where}.")
