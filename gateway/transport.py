"""The socket as the session sees it: frames in, frames out, close; nothing else.

Keeping the session behind this small interface means it never touches ASGI events or
framework types, so the same session code runs under Litestar in production and could run
over any other WebSocket server, and a vanished client always surfaces as one exception type.
"""

from __future__ import annotations

from typing import Any, Protocol

from litestar.connection import WebSocket
from litestar.exceptions import WebSocketDisconnect

from gateway.errors import ClientGone


class Transport(Protocol):
    async def receive(self) -> str | bytes | None:
        """The next frame, or None once the client has gone."""

    async def send_text(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class LitestarTransport:
    """Adapts Litestar's WebSocket to the session's `Transport`; a vanished client is ClientGone."""

    def __init__(self, socket: WebSocket[Any, Any, Any]) -> None:
        self._socket = socket

    async def receive(self) -> str | bytes | None:
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
