"""PolicyClient's failures against real sockets: nobody listening, a server that never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.processes import free_port
from training.policy_client import PolicyClient, PolicyServerError


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


def test_connection_refused_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with PolicyClient(url, timeout=5) as client, pytest.raises(PolicyServerError) as caught:
        client.models()
    assert "cannot connect" in str(caught.value)
    assert f"{url}/v1/models" in str(caught.value)
    assert caught.value.status_code is None


def test_timeout_is_a_policy_server_error(silent_server: str) -> None:
    with PolicyClient(silent_server, timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(PolicyServerError) as caught:
            client.chat([{"role": "user", "content": "hi"}], model="base")
        assert time.monotonic() - started < 5
        assert "timed out after 0.5 s" in str(caught.value)
        with pytest.raises(PolicyServerError, match="timed out"):
            list(client.chat_stream([{"role": "user", "content": "hi"}], model="base"))


def test_wait_ready_gives_up_after_its_timeout(silent_server: str) -> None:
    with PolicyClient(f"http://127.0.0.1:{free_port()}/v1/") as client:
        assert not client.base_url.endswith(("/v1", "/"))
        started = time.monotonic()
        with pytest.raises(PolicyServerError, match="not ready after 1 s"):
            client.wait_ready(timeout=1.0)
        assert 0.9 < time.monotonic() - started < 5
    with PolicyClient(silent_server) as client, pytest.raises(PolicyServerError, match="not ready"):
        client.wait_ready(timeout=1.0)


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="must start with http"):
        PolicyClient("127.0.0.1:8100")
    with pytest.raises(ValueError, match="timeout=0"):
        PolicyClient("http://127.0.0.1:8100", timeout=0)


@pytest.fixture
def nul_server() -> Iterator[str]:
    """A real HTTP server that answers every chat completion with a NUL character in the text, as a
    small byte-level model can sample one (plain and streamed)."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server calls it by this name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body.get("stream"):
                chunks = [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in ("a\x00", "b")]
                payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
                kind = "text/event-stream"
            else:
                payload = json.dumps({"choices": [{"index": 0, "message": {"content": "a\x00b"}}]})
                kind = "application/json"
            data = payload.encode()
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_nul_character_from_the_model_is_dropped_so_the_text_can_be_stored(nul_server: str) -> None:
    with PolicyClient(nul_server, timeout=5) as client:
        assert client.chat([{"role": "user", "content": "hi"}], model="base") == ["ab"]
        assert "".join(client.chat_stream([{"role": "user", "content": "hi"}], model="base")) == "ab"
