"""Streaming responses reach the client chunk by chunk under ASGI, as under WSGI: Django's ASGI
handler reads a synchronous iterator to its end before sending anything."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator

from django.core.handlers.asgi import ASGIRequest
from django.test import RequestFactory

from webapp.core.http import streaming_response


def _run(coroutine) -> object:
    """Run `coroutine` on a loop of its own in another thread (the browser tests leave one running here)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _asgi_request() -> ASGIRequest:
    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": [], "server": ("t", 80)}
    import io

    return ASGIRequest(scope, io.BytesIO())


def _held(release: threading.Event, closed: list[bool]) -> Iterator[str]:
    try:
        yield "first"
        if not release.wait(timeout=10):
            raise TimeoutError("never released")
        yield "second"
    finally:
        closed.append(True)


def test_under_asgi_the_first_chunk_is_sent_before_the_iterator_ends():
    release, closed = threading.Event(), []
    response = streaming_response(_asgi_request(), _held(release, closed), content_type="text/plain")

    async def read() -> list[bytes]:
        chunks = aiter(response)
        first = await asyncio.wait_for(anext(chunks), timeout=5)  # buffered, this would wait for release
        release.set()
        return [first, *[chunk async for chunk in chunks]]

    assert _run(read()) == [b"first", b"second"] and closed == [True]


def test_a_client_that_leaves_closes_the_iterator():
    release, closed = threading.Event(), []
    response = streaming_response(_asgi_request(), _held(release, closed), content_type="text/plain")

    async def leave() -> None:
        chunks = aiter(response)
        assert await anext(chunks) == b"first"
        await chunks.aclose()

    _run(leave())
    assert closed == [True]


def test_under_wsgi_the_iterator_is_passed_as_it_is():
    release, closed = threading.Event(), []
    response = streaming_response(RequestFactory().get("/"), _held(release, closed), content_type="text/plain")
    chunks = iter(response)
    assert next(chunks) == b"first"
    release.set()
    assert list(chunks) == [b"second"] and closed == [True]
