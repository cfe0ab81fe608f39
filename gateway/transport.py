"""The socket as the session sees it: frames in, frames out, close; nothing else.

Keeping the session behind this small interface means it never touches ASGI events or
framework types, so the same session code runs under Litestar in production and could run
over any other WebSocket server, and a vanished client always surfaces as one exception type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from litestar.connection import WebSocket
from litestar.exceptions import WebSocketDisconnect

from gateway.errors import ClientGone

FRAMES_WAITING = "voxgate.frames_waiting"
"""The ASGI scope extension through which our WebSocket protocol (`gateway.connections`) says
how many received frames wait for the app: `{"count": () -> int}`."""


class Transport(Protocol):
    async def receive(self) -> str | bytes | None:
        """The next frame, or None once the client has gone."""

    async def send_text(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class LitestarTransport:
    """Adapts Litestar's WebSocket to the session's `Transport`; a vanished client is ClientGone.

    Binary frames are one continuous audio stream (PROTOCOL.md), so audio frames that have all
    arrived by the time the session asks come back joined, up to `join_up_to` bytes: a client
    sending faster than real time (push-to-talk, a recording, a microphone catching up after
    the network stalled) costs one pass through the decoder, VAD, turn engine and STT instead of
    one per frame (bench/cloud.py: ~0.2 ms of CPU per frame saved). A live microphone's next
    frame has not arrived yet, so it is never held back waiting for one.
    """

    def __init__(self, socket: WebSocket[Any, Any, Any], join_up_to: int = 0) -> None:
        self._socket = socket
        self._join_up_to = join_up_to
        waiting: Any = (socket.scope.get("extensions") or {}).get(FRAMES_WAITING)
        self._waiting: Callable[[], int] | None = waiting["count"] if waiting else None
        self._held: list[str | bytes | None] = []
        """The frame read while joining audio that did not join (text, or over the size)."""

    async def receive(self) -> str | bytes | None:
        frame = self._held.pop() if self._held else await self._receive_one()
        if not isinstance(frame, bytes) or self._waiting is None:
            return frame
        joined = [frame]
        size = len(frame)
        while self._waiting():
            after = await self._receive_one()  # waiting: returns without suspending
            if not isinstance(after, bytes) or size + len(after) > self._join_up_to:
                self._held.append(after)
                break
            joined.append(after)
            size += len(after)
        return frame if len(joined) == 1 else b"".join(joined)

    async def _receive_one(self) -> str | bytes | None:
        try:
            event = await self._socket.receive()
        except WebSocketDisconnect:
            return None
        if event["type"] != "websocket.receive":
            return None
        text = event.get("text")
        return text if text is not None else event.get("bytes") or b""

    async def send_text(self, data: str) -> None:
        await self._send({"type": "websocket.send", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def _send(self, event: dict[str, object]) -> None:
        try:
            await self._socket.send(event)  # type: ignore[arg-type]
        except (WebSocketDisconnect, OSError, RuntimeError) as e:
            # uvicorn raises ClientDisconnected (an OSError) once the peer is gone.
            raise ClientGone(str(e)) from e
