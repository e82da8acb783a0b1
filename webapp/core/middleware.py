"""Hostile input that Django would answer with a 500 or not at all: a NUL character in a query or
form value (PostgreSQL cannot store one), and a body over the size limit (413, naming the limit)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse


def _refuse(request: HttpRequest, status: int, code: str, message: str) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"error": {"code": code, "message": message}}, status=status)
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
        if cap is not None and length > cap:
            return _refuse(request, 413, "too_large", f"The request body is {length} bytes; the limit is {cap} bytes.")
        try:
            values = [*request.GET.lists(), *(request.POST.lists() if request.method == "POST" else [])]
        except RequestDataTooBig:
            return _refuse(request, 413, "too_large", f"The form is larger than the limit of {limit} bytes.")
        for key, items in values:
            if "\x00" in key or any("\x00" in item for item in items):
                return _refuse(request, 400, "bad_request", f"{key!r}: a NUL character (\\u0000) is not allowed.")
        return self.get_response(request)
