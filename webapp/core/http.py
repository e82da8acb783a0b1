"""Request types for views that require a signed-in user, and responses that stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
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


def streaming_response(request: HttpRequest | Request, chunks: Iterator[Any], **kwargs: Any) -> StreamingHttpResponse:
    """A response that sends each chunk as it is made, under WSGI and ASGI alike.

    Under ASGI (`prefloop_serve`), Django reads a synchronous iterator to its end before sending
    anything, so a chat answer arrived all at once and an export was held whole in memory. There
    the response gets an asynchronous iterator instead, which asks a worker thread for one chunk at
    a time (the request's own thread, so database cursors stay in one thread).
    """
    raw = getattr(request, "_request", request)  # a REST framework request wraps Django's
    content: Iterator[Any] | AsyncIterator[Any] = _one_at_a_time(chunks) if isinstance(raw, ASGIRequest) else chunks
    return StreamingHttpResponse(content, **kwargs)


_DONE = object()


async def _one_at_a_time(chunks: Iterator[Any]) -> AsyncIterator[Any]:
    pull = sync_to_async(lambda: next(chunks, _DONE), thread_sensitive=True)
    try:
        while (chunk := await pull()) is not _DONE:
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:  # the client went away: let the generator's own clean-up run
            await sync_to_async(close, thread_sensitive=True)()


def api_error(status: int, code: str, message: str) -> JsonResponse:
    """An answer in the API's error format, `{"error": {"code", "message"}}`, for answers made
    outside REST framework's views (middleware, URL-level handlers, the lockout)."""
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)
