"""Create the first admin of an installation, once (the production path has no demo accounts)."""

from __future__ import annotations

import getpass
import os
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from webapp.accounts.services import AdminExists, admin_create_first


class Command(BaseCommand):
    help = (
        "Create the first admin: the password is read from --password-env (the name of an environment "
        "variable) or asked for twice. Does nothing once an admin exists."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument("--password-env", help="Read the password from this environment variable.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["password_env"]:
            password = os.environ.get(options["password_env"], "")
            if not password:
                raise CommandError(f"the environment variable {options['password_env']} is empty or unset")
        else:
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("the two passwords differ")
        try:
            user = admin_create_first(username=options["username"], password=password, email=options["email"])
        except AdminExists:
            self.stdout.write("An admin exists already: nothing done.")
            return
        except ValidationError as exc:
            raise CommandError("the password is refused: " + " ".join(exc.messages)) from None
        self.stdout.write(self.style.SUCCESS(f"Admin {user.username} created."))
