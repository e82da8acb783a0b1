from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from webapp.runs.policy import caddyfile


class Command(BaseCommand):
    help = (
        "Print a Caddyfile that serves the policy server replicas (POLICY_SERVER_URLS) behind one address, "
        "with health checks: run Caddy with it (`caddy run --config FILE --adapter caddyfile`) and set "
        "POLICY_PROXY_URL to that address."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--listen", default=":8100", help="The proxy's address, e.g. :8100 or policy:8100.")

    def handle(self, *args: Any, **options: Any) -> None:
        urls = list(settings.POLICY_SERVER_URLS) or [settings.POLICY_SERVER_URL]
        if len(urls) < 2:
            raise CommandError("POLICY_SERVER_URLS lists fewer than two policy servers: there is nothing to balance")
        self.stdout.write(caddyfile(options["listen"], urls), ending="")
