"""Request types for views that require a signed-in user (for type checking only)."""

from __future__ import annotations

from typing import cast

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails
from rest_framework.request import Request

from webapp.accounts.models import User


class AuthedHttpRequest(HttpRequest):
    """What a `login_required` view receives: a signed-in user, and htmx details."""

    user: User  # type: ignore[assignment]
    htmx: HtmxDetails


def api_user(request: Request) -> User:
    """The signed-in user of a REST request (its view's permissions already required one)."""
    return cast(User, request.user)
