"""What the dialects share: the session hooks they may call, and sending on the client's socket.

A dialect answers some client events itself (`session.updated`, `conversation.item.added`, a
Realtime `error`), on the socket the session's own writer also uses. Those sends happen
outside the session's outbound queue, so they get the same rule the queue has: a client that
takes nothing for `slow_client_timeout_s` is a slow consumer, and the session ends (1013)
instead of waiting on it forever.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway.errors import SlowConsumer
from gateway.transport import Transport


class SessionHooks(Protocol):
    """What a dialect may ask of the session beyond protocol v1.1 frames (gateway/session.py)."""

    def instruct(self, system_prompt: str) -> None: ...

    async def truncate(self, turn_id: int, played_ms: int) -> None: ...


async def send_text(socket: Transport, data: str, timeout_s: float) -> None:
    """`socket.send_text`, or SlowConsumer when the client has not taken it in `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            await socket.send_text(data)
    except TimeoutError:
        raise SlowConsumer(f"client read nothing for {timeout_s:g}s") from None
