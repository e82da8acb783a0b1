"""Hostile input that Django would answer with a 500 or not at all: a NUL character in a query or
form value (PostgreSQL cannot store one), and a body over the size limit (413, naming the limit);
and a database that is down (503, not 500)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

from webapp.core.http import api_error

logger = logging.getLogger(__name__)


def _refuse(request: HttpRequest, status: int, code: str, message: str) -> HttpResponse:
    if request.path.startswith("/api/"):
        return api_error(status, code, message)
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


class HostileInputMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        multipart = request.content_type == "multipart/form-data"  # file uploads: their own limit
        cap = settings.PREFLOOP_MAX_UPLOAD_BYTES if multipart else limit
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _refuse(request, 400, "bad_request", "Content-Length is not a number.")
        if length > cap:
            return _refuse(request, 413, "too_large", f"The request body is {length} bytes; the limit is {cap} bytes.")
        try:
            values = [*request.GET.lists(), *(request.POST.lists() if request.method == "POST" else [])]
        except RequestDataTooBig:
            return _refuse(request, 413, "too_large", f"The form is larger than the limit of {limit} bytes.")
        for key, items in values:
            if "\x00" in key or any("\x00" in item for item in items):
                return _refuse(request, 400, "bad_request", f"{key!r}: a NUL character (\\u0000) is not allowed.")
        return self.get_response(request)


UNAVAILABLE_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Unavailable · Prefloop</title></head>\n'
    "<body><main><h1>Prefloop is unavailable for a moment</h1>\n"
    '<p id="unavailable">The database cannot be reached. Nothing you sent was lost or half saved: '
    "try again in a moment.</p>\n</main></body></html>"
)


class DatabaseUnavailableMiddleware:
    """A view whose database cannot be reached answers 503 with a clear page (the API: its error
    format), not a 500; the next request connects again by itself once the database is back. (An
    exception never leaves an inner middleware: Django turns it into a response there, so
    `process_exception` is where a view's error is seen.)"""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, (OperationalError, InterfaceError)):
            return self._unavailable(request)
        return None

    def _unavailable(self, request: HttpRequest) -> HttpResponse:
        logger.warning("database unavailable while answering %s %s", request.method, request.path)
        if request.path.startswith("/api/"):
            response: HttpResponse = _refuse(
                request, 503, "database_unavailable", "The database is unavailable; nothing was changed."
            )
        else:
            response = HttpResponse(UNAVAILABLE_PAGE, status=503)
        response["Retry-After"] = "5"
        return response
