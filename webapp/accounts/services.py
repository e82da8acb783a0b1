from __future__ import annotations

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from knox.models import AuthToken

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


def token_create(*, user: User) -> tuple[AuthToken, str]:
    """A new API token for `user`: the stored row (its digest, never the token) and the token itself,
    which is shown once. It expires after REST_KNOX's TOKEN_TTL (PREFLOOP_TOKEN_TTL_HOURS)."""
    return AuthToken.objects.create(user=user)


def token_for_user(*, user: User) -> str:
    """A fresh API token for `user` (scripts and tests)."""
    return token_create(user=user)[1]


class AdminExists(Exception):
    """There is an admin already: the first-admin path does nothing."""


def admin_exists() -> bool:
    """Whether anyone may administer this installation (the admin role, or a Django superuser)."""
    return User.objects.filter(Q(role=User.Role.ADMIN) | Q(is_superuser=True)).exists()


@transaction.atomic
def admin_create_first(*, username: str, password: str, email: str = "") -> User:
    """The installation's first admin (from the environment or `manage.py prefloop_admin`).

    Refuses with AdminExists once any admin exists, so a value left in the environment never
    resets a password; the password must pass Django's validators (ValidationError names why).
    """
    if admin_exists():
        raise AdminExists("an admin exists already")
    candidate = User(username=username, email=email, role=User.Role.ADMIN)
    validate_password(password, user=candidate)
    user, _ = user_ensure(username=username, password=password, role=User.Role.ADMIN, email=email)
    return user


def user_create_by_admin(*, username: str, password: str, role: str = User.Role.ANNOTATOR, email: str = "") -> User:
    """An account an admin makes for someone. The password must pass Django's validators and the
    name must be free (ValidationError names why)."""
    account_check_new(username=username, password=password, email=email)
    if role not in User.Role.values:
        raise ValidationError({"role": f"one of {', '.join(User.Role.values)}"})
    user, _ = user_ensure(username=username, password=password, role=role, email=email)
    return user


def account_check_new(*, username: str, password: str, email: str = "") -> None:
    """Raise ValidationError (per field, in words) unless a new account may take this name and password."""
    errors: dict[str, list[str]] = {}
    try:
        User.username_validator(username)
    except ValidationError as exc:
        errors["username"] = exc.messages
    if not username:
        errors["username"] = ["a user name is needed"]
    elif User.objects.filter(username__iexact=username).exists():
        errors["username"] = [f"the name {username!r} is taken"]
    try:
        validate_password(password, user=User(username=username, email=email))
    except ValidationError as exc:
        errors["password"] = exc.messages
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def user_set_active(*, user: User, active: bool, by: User) -> User:
    """Deactivate a person (they can no longer sign in and their API tokens are revoked) or let them
    back in. Nobody deactivates themselves, and the last active admin stays."""
    if not active:
        if user.pk == by.pk:
            raise ValueError("you cannot deactivate yourself")
        admins = User.objects.filter(Q(role=User.Role.ADMIN) | Q(is_superuser=True), is_active=True)
        if user.is_prefloop_admin and not admins.exclude(pk=user.pk).exists():
            raise ValueError("the last active admin stays active")
        AuthToken.objects.filter(user=user).delete()
    user.is_active = active
    user.save(update_fields=["is_active"])
    return user
