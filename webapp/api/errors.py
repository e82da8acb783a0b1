"""One error shape for the REST API: `{"error": {"code", "message", "fields"?}}` with a 4xx status."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from training.policy_client import PolicyServerError


class DatabaseUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "database_unavailable"
    default_detail = "The database is unavailable; nothing was changed. Try again in a moment."


class PolicyUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "policy_unavailable"
    default_detail = "The policy server could not answer."


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten(v) for v in detail)
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        exc = ValidationError({"detail": exc.messages})
    elif isinstance(exc, (OperationalError, InterfaceError)):
        exc = DatabaseUnavailable()
    elif isinstance(exc, PolicyServerError):
        exc = PolicyUnavailable(f"The policy server could not answer: {exc}")
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = getattr(exc, "default_code", "error")
    if isinstance(exc, APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else code
    body: dict[str, Any] = {"code": code, "message": _flatten(response.data)}
    if isinstance(exc, ValidationError) and isinstance(response.data, dict):
        body["fields"] = response.data
    response.data = {"error": body}
    return response
