"""A WebSocket server on a free loopback port, for the fake providers that stream over WebSocket.

Shared by the fakes so each one only writes its protocol: `serving` runs a connection handler
on 127.0.0.1:0 as an async context manager, and `upgrade_fault` answers the opening handshake
the way a provider refuses one (an HTTP status instead of the upgrade: 401, 429 with
`retry-after`, 500, 503) or never answers it at all. Both go through websockets'
`process_request`, so the refusals are real HTTP responses on a real socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from tests.fakes.faults import Fault

Handler = Callable[[ServerConnection], Awaitable[None]]
ProcessRequest = Callable[[ServerConnection, Request], Awaitable[Response | None]]

_REFUSALS = {
    Fault.REFUSE: (503, "Service Unavailable"),
    Fault.UNAUTHORIZED: (401, "Unauthorized"),
    Fault.RATE_LIMIT: (429, "Too Many Requests"),
    Fault.SERVER_ERROR: (500, "Internal Server Error"),
}


@dataclass(frozen=True)
class Served:
    server: Server
    port: int

    def url(self, scheme: str = "http") -> str:
        """The server's root as a provider's `base_url` (`http://127.0.0.1:PORT`)."""
        return f"{scheme}://127.0.0.1:{self.port}"


@asynccontextmanager
async def serving(
    handler: Handler, process_request: ProcessRequest | None = None, connect_delay_s: float = 0.0
) -> AsyncIterator[Served]:
    """Serve `handler` on 127.0.0.1 at a free port until the block exits; every new connection
    waits `connect_delay_s` for its handshake (a stand-in for TCP and TLS over a real RTT)."""

    async def delayed(connection: ServerConnection, request: Request) -> Response | None:
        await asyncio.sleep(connect_delay_s)
        return None if process_request is None else await process_request(connection, request)

    async with serve(
        handler,
        "127.0.0.1",
        0,
        process_request=delayed if connect_delay_s else process_request,
        compression=None,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield Served(server, port)


def refusal(
    connection: ServerConnection, status: int, body: str, headers: dict[str, str] | None = None
) -> Response:
    """An HTTP response that replaces the upgrade, with extra `headers`."""
    response = connection.respond(status, body + "\n")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


async def upgrade_fault(
    connection: ServerConnection, fault: Fault, released: asyncio.Event
) -> Response | None:
    """The handshake answer for `fault`, or None to go on with the upgrade.

    `HANG` holds the handshake until `released` is set (the fake sets it on exit, so the
    server can shut down); the client sees an accepted TCP connection that never answers.
    """
    if fault is Fault.HANG:
        await released.wait()
        return refusal(connection, 503, "Service Unavailable")
    if fault in _REFUSALS:
        status, body = _REFUSALS[fault]
        headers = {"Retry-After": "0"} if fault is Fault.RATE_LIMIT else None
        return refusal(connection, status, body, headers)
    return None
