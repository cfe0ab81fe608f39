"""The one writer per socket: a bounded queue of outgoing frames and the task that sends them.

Every stage hands its output here instead of awaiting the socket, so a slow or stalled client
never holds a provider stream open mid-chunk. The queue is bounded: when it stays full for
`slow_client_timeout_s` the client is not reading and `SlowConsumer` ends the session (close
1013), which keeps a stalled socket's memory at one queue's worth. Audio of an interrupted
turn is dropped here, at the last moment before the socket, so not one more frame of it goes
out once `interrupted` is decided.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec

from gateway import protocol
from gateway.errors import SlowConsumer
from gateway.timings import TurnTimeline


class AudioOut(msgspec.Struct):
    turn_id: int
    frame: bytes
    timeline: TurnTimeline


class TurnEndOut(msgspec.Struct):
    """Encoded when sent, so its metrics include the first audio frame's real send time;
    `report` then gets the final metrics (for the turn's log line and histograms)."""

    turn_id: int
    reason: protocol.TurnEndReason
    timeline: TurnTimeline
    report: Callable[[protocol.TurnMetrics], None]


Outgoing = protocol.Message | AudioOut | TurnEndOut


class Outbound:
    def __init__(
        self,
        send_text: Callable[[str], Awaitable[None]],
        send_bytes: Callable[[bytes], Awaitable[None]],
        maxsize: int,
        stall_timeout_s: float,
    ) -> None:
        self._send_text = send_text
        self._send_bytes = send_bytes
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize)
        self._stall_timeout_s = stall_timeout_s
        self._dropped_turns: set[int] = set()

    async def put(self, item: Outgoing) -> None:
        """Queue a frame; raises SlowConsumer when the client has not read for too long."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            try:
                async with asyncio.timeout(self._stall_timeout_s):
                    await self._queue.put(item)
            except TimeoutError:
                raise SlowConsumer(
                    f"client read nothing for {self._stall_timeout_s:g}s "
                    f"with {self._queue.maxsize} frames waiting"
                ) from None

    def drop_turn(self, turn_id: int) -> None:
        """Discard every queued and future audio frame of `turn_id`."""
        self._dropped_turns.add(turn_id)
        # Only recent turns can still have frames queued; forget the rest (long calls).
        if len(self._dropped_turns) > 16:
            self._dropped_turns.remove(min(self._dropped_turns))

    def qsize(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            if isinstance(item, AudioOut):
                if item.turn_id in self._dropped_turns:
                    continue
                await self._send_bytes(item.frame)
                item.timeline.audio_sent(loop.time())
            elif isinstance(item, TurnEndOut):
                metrics = item.timeline.metrics()
                await self._send_text(
                    protocol.encode(
                        protocol.TurnEnd(turn_id=item.turn_id, reason=item.reason, metrics=metrics)
                    )
                )
                item.report(metrics)
            else:
                await self._send_text(protocol.encode(item))
