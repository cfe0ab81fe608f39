"""A web API on 127.0.0.1 for `http` tools: answers POSTs with JSON, slowly or never if asked,
and records what it was sent. The standard library's threading HTTP server, so it runs beside
the gateway's event loop, not on it, the way a remote API would.

    with WebAPI({"status": "shipped"}) as api:
        ... url=api.url("/orders") ...
        assert api.requests[0].body == {"order": "A17"}
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any


class WebAPI:
    def __init__(self, answer: Any, *, delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        """How long each answer takes; a long delay plays a hanging API."""
        self.requests: list[Seen] = []
        self.hung_up = threading.Event()
        """Set when a client closed its connection before the answer was sent."""
        self._release = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                api.requests.append(Seen(self.path, dict(self.headers.items()), body))
                if not api._wait(self.connection):
                    return  # the client hung up, or the test is over
                data = json.dumps(api.answer).encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    api.hung_up.set()

            def log_message(self, *args: Any) -> None:
                """Quiet: the tests read `requests`."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _wait(self, connection: socket.socket) -> bool:
        """Sit out `delay_s`; False (and `hung_up` set) when the client closes meanwhile."""
        deadline = time.monotonic() + self.delay_s
        while (left := deadline - time.monotonic()) > 0:
            if self._release.is_set():
                return False
            readable, _, _ = select.select([connection], [], [], min(left, 0.02))
            if readable and not connection.recv(1, socket.MSG_PEEK):
                self.hung_up.set()
                return False
        return True

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> WebAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
