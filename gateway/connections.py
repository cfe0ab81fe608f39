"""uvicorn's HTTP and WebSocket protocols with the limits a public voice gateway needs.

uvicorn leaves three doors open that an attacker on the internet walks through:
- a connection that never finishes its request head (silent, or one header line every few
  seconds: slowloris) is held forever; here the head must arrive within
  `handshake_timeout_s`, and a source address may have only `max_heads_per_address` heads
  incomplete at once (`max_heads` in all; a trusted proxy's connections count only there);
- a WebSocket whose peer stops reading is never freed: the close frame cannot be written to
  a full send buffer, and closing a transport waits for that buffer to drain; here the
  transport is aborted once the session is over and the close handshake has had
  `close_grace_s`;
- a frame above the transport's size cap is closed with a bare 1009; here the client first
  gets its dialect's fatal `error` event, as a frame over the pipeline's limit does.
The counts are per process, in one `ConnectionGuard` the server's protocol classes share.

uvicorn also stops reading a WebSocket after every message until the app has taken it: two
`epoll_ctl` calls and an event-loop pass per frame, ~15% of what a live microphone's 20 ms
frame costs the server (bench/README.md). Here reading stops once `PAUSE_AFTER_FRAMES` frames
wait, or one larger than `SMALL_FRAME_BYTES` does, so what a client can make the server hold is
still bounded by about what one read brings in.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode

from gateway import dialects
from gateway.transport import FRAMES_WAITING

PAUSE_AFTER_FRAMES = 8
"""Frames waiting for the app beyond which reading pauses until the app has taken them all."""
SMALL_FRAME_BYTES = 16_384
"""A frame larger than this pauses reading at once, as uvicorn does for every frame."""

PROXY = "proxy"
"""Where connections from trusted proxies are counted (no per-address cap)."""


@dataclass
class ConnectionGuard:
    handshake_timeout_s: float = 5.0
    max_heads_per_address: int = 16
    max_heads: int = 512
    close_grace_s: float = 2.0
    waiting: Counter[str] = field(default_factory=Counter)
    """Connections per source address whose request head is not complete yet."""

    def admit_head(self, address: str) -> bool:
        if address != PROXY and self.waiting[address] >= self.max_heads_per_address:
            return False
        if self.waiting.total() >= self.max_heads:
            return False
        self.waiting[address] += 1
        return True

    def head_done(self, address: str) -> None:
        self.waiting[address] -= 1
        if self.waiting[address] <= 0:
            del self.waiting[address]


class GuardedHTTP(H11Protocol):
    """h11 with a deadline for each request head and a cap on heads awaited per address."""

    guard: ClassVar[ConnectionGuard]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = self.client[0] if self.client else ""
        # A trusted proxy (FORWARDED_ALLOW_IPS; uvicorn's default: this host) carries many
        # clients' connections: only the process-wide cap applies to it.
        self._address = PROXY if _trusted(peer, self.config.forwarded_allow_ips) else peer
        self._deadline: asyncio.TimerHandle | None = None
        self._awaited: object = None
        if not self.guard.admit_head(self._address):
            self._address = ""  # nothing counted, nothing to give back
            transport.abort()
            return
        self._await_head()

    def _await_head(self) -> None:
        """Start the clock for the next request head (the first, or the next keep-alive one)."""
        self._awaited = self.scope
        self._deadline = self.loop.call_later(self.guard.handshake_timeout_s, self._expire)

    def _head_arrived(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
            if self._address:
                self.guard.head_done(self._address)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.scope is not self._awaited:  # a new request (or a WebSocket upgrade) began
            self._head_arrived()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._deadline is None:
            if self.guard.admit_head(self._address):
                self._await_head()
            else:
                self.transport.close()

    def _expire(self) -> None:
        self._head_arrived()
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)


class GuardedWebSocket(WebSocketsSansIOProtocol):
    """The sans-I/O WebSocket protocol that frees a socket whose peer stopped reading and
    explains an oversize frame before closing 1009. It tells the app how many received frames
    wait for it (`gateway.transport.FRAMES_WAITING`), so audio that arrived together is
    handled together, and lets a few small frames wait before it stops reading."""

    guard: ClassVar[ConnectionGuard]

    async def run_asgi(self) -> None:
        self.scope["extensions"][FRAMES_WAITING] = {"count": self.queue.qsize}
        await super().run_asgi()
        if not self.disconnected:
            self.loop.call_later(self.guard.close_grace_s, self._abort)

    def send_receive_event_to_app(self) -> None:
        size = sum(len(frame) for frame in self.frames)
        paused = self.read_paused
        self.read_paused = True  # keeps uvicorn from pausing after this frame: decided here
        super().send_receive_event_to_app()
        self.read_paused = paused
        if not paused and (size > SMALL_FRAME_BYTES or self.queue.qsize() > PAUSE_AFTER_FRAMES):
            self.read_paused = True  # uvicorn's `receive` resumes once the queue is empty
            self.transport.pause_reading()

    def _abort(self) -> None:
        if not self.disconnected:
            self.transport.abort()  # discards what a non-reading peer never took

    def handle_parser_exception(self) -> None:
        error = self.conn.parser_exc
        if isinstance(error, PayloadTooBig) and self.handshake_complete:
            message = f"{error}: send audio in smaller chunks (close 1009)"
            if (event := dialects.fatal_error(self.scope["path"], message)) is not None:
                text = Frame(Opcode.TEXT, event.encode())
                self.transport.write(text.serialize(mask=False))
        super().handle_parser_exception()


def _trusted(peer: str, allowed: str | list[str]) -> bool:
    hosts = allowed.split(",") if isinstance(allowed, str) else allowed
    hosts = [h.strip() for h in hosts if h.strip()]
    if "*" in hosts:
        return True
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer in hosts
    return any(ip in ipaddress.ip_network(h, strict=False) for h in hosts if _is_ip(h))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def protocol_classes(
    guard: ConnectionGuard,
) -> tuple[type[GuardedHTTP], type[GuardedWebSocket]]:
    """The classes uvicorn instantiates per connection, bound to this server's guard."""
    http = type("HTTP", (GuardedHTTP,), {"guard": guard})
    ws = type("WebSocket", (GuardedWebSocket,), {"guard": guard})
    return http, ws
