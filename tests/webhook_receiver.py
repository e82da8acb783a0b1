"""A real HTTP server that receives Prefloop's webhooks and checks each signature as a receiver
would (HMAC-SHA256 over "<timestamp>.<body>", compared in constant time); it answers the statuses
it is told to, in order, then 200."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    url: str
    secret: str = ""
    statuses: list[int] = field(default_factory=list)  # answers to give first, in order
    received: list[dict[str, Any]] = field(default_factory=list)  # every request: headers, body, verdict

    def events(self, *, valid_only: bool = True) -> list[str]:
        return [r["body"]["event"] for r in self.received if r["valid"] or not valid_only]


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            timestamp = self.headers.get("X-Prefloop-Timestamp", "")
            mac = hmac.new(receiver.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            valid = hmac.compare_digest(f"sha256={mac}", self.headers.get("X-Prefloop-Signature", ""))
            status = receiver.statuses.pop(0) if receiver.statuses else (200 if valid else 401)
            receiver.received.append({"headers": dict(self.headers), "body": json.loads(body), "valid": valid,
                                      "status": status})  # fmt: skip
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"not now")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
