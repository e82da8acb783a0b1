"""The production web server: `python manage.py prefloop_serve` (compose and the tests run it).

It migrates the database, collects the static files (served by WhiteNoise), creates the first admin
from PREFLOOP_ADMIN_USERNAME and PREFLOOP_ADMIN_PASSWORD when there is none yet (no demo accounts,
ever), and serves `webapp.asgi` with uvicorn on PREFLOOP_ADDR.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from webapp.accounts.services import AdminExists, admin_create_first, admin_exists
from webapp.env import env_int


def parse_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(f"PREFLOOP_ADDR={addr!r} must be HOST:PORT, e.g. 0.0.0.0:8000")
    return host.strip("[]") or "127.0.0.1", int(port)


class Command(BaseCommand):
    help = "Migrate, collect static files, create the first admin from the environment, and serve (uvicorn)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--addr", default=os.environ.get("PREFLOOP_ADDR", "127.0.0.1:8000"))
        parser.add_argument(
            "--workers",
            type=int,
            default=env_int("PREFLOOP_WEB_WORKERS", 2, minimum=1),
            help="Server processes (PREFLOOP_WEB_WORKERS, default 2).",
        )
        parser.add_argument("--no-migrate", action="store_true", help="Leave the database schema as it is.")

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = parse_addr(options["addr"])
        if not options["no_migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        self._first_admin()
        if settings.DEBUG:
            self.stderr.write("DJANGO_DEBUG is on: never expose this server like that.")
        import uvicorn

        self.stdout.write(f"Prefloop serves http://{host}:{port}/ with {options['workers']} worker(s).")
        uvicorn.run(
            "webapp.asgi:application",
            host=host,
            port=port,
            workers=options["workers"],
            lifespan="off",
            proxy_headers=True,
            forwarded_allow_ips=os.environ.get("PREFLOOP_FORWARDED_ALLOW_IPS", "127.0.0.1"),
            log_level=os.environ.get("PREFLOOP_SERVER_LOG_LEVEL", "info").lower(),
            access_log=False,
        )

    def _first_admin(self) -> None:
        username = os.environ.get("PREFLOOP_ADMIN_USERNAME", "").strip()
        password = os.environ.get("PREFLOOP_ADMIN_PASSWORD", "")
        if username and password:
            try:
                admin_create_first(
                    username=username, password=password, email=os.environ.get("PREFLOOP_ADMIN_EMAIL", "")
                )
                self.stdout.write(f"Admin {username} created from the environment.")
            except AdminExists:
                pass
            except ValidationError as exc:
                raise CommandError("PREFLOOP_ADMIN_PASSWORD is refused: " + " ".join(exc.messages)) from None
        elif not admin_exists():
            self.stdout.write(
                "No admin yet: set PREFLOOP_ADMIN_USERNAME and PREFLOOP_ADMIN_PASSWORD, "
                "or run `python manage.py prefloop_admin NAME` once."
            )
