from __future__ import annotations

from django.db import transaction
from rest_framework.authtoken.models import Token

from webapp.accounts.models import User


@transaction.atomic
def user_ensure(*, username: str, password: str, role: str, email: str = "") -> tuple[User, bool]:
    """Create the user if missing (idempotent); return it and whether it was created.

    An existing user keeps its password: running set-up twice never resets a changed password.
    """
    user, created = User.objects.get_or_create(username=username, defaults={"email": email, "role": role})
    if created:
        user.set_password(password)
        if role == User.Role.ADMIN:
            user.is_staff = True
            user.is_superuser = True
        user.save()
    return user, created


def token_for_user(*, user: User) -> str:
    """The user's REST API token, created on first use."""
    token, _ = Token.objects.get_or_create(user=user)
    return token.key
