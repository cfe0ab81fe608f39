"""A fake Twilio: the Twilio side of a bidirectional Media Stream (TwiML `<Connect><Stream>`).

Written from Twilio's "Media Streams - WebSocket Messages" reference, not from the gateway:
- Twilio opens the WebSocket to the stream URL and sends `connected` (`protocol: "Call"`,
  `version: "1.0.0"`), then `start` once: `streamSid`, `accountSid`, `callSid`, `tracks`,
  `customParameters` (the `<Parameter>`s of the `<Stream>`), `mediaFormat` (`audio/x-mulaw`,
  8000 Hz, 1 channel). Every message after `connected` carries `sequenceNumber` (a string
  counting up from "1") and `streamSid`.
- The caller's audio comes as `media` every 20 ms, silence included: `media.track`
  ("inbound"), `media.chunk` (a string counting up from "1"), `media.timestamp` (ms since the
  stream started, as a string), `media.payload` (base64 mu-law 8 kHz mono). Key presses come
  as `dtmf` (`dtmf.track` "inbound_track", `dtmf.digit`); hanging up sends `stop`
  (`stop.accountSid`, `stop.callSid`) and closes the socket.
- From the server Twilio takes `media` (`media.payload`: base64 mu-law 8 kHz, played in the
  order sent), `mark` (echoed back with the same `mark.name` once the audio sent before it
  has played, at once when none is queued) and `clear` (drops every queued sample and sends
  back every pending mark at once). Each must name the stream's `streamSid`.

Playback is real time: 160 bytes (20 ms) leave the queue every 20 ms of the loop's clock.
What the caller heard, every message the server sent, and how far the server got ahead of
the ear are recorded for the tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TICK_S = 0.02
FRAME = 160
SILENCE = b"\xff" * FRAME  # mu-law silence


@dataclass
class _Mark:
    name: str


@dataclass
class FakeTwilioCall:
    ws: ClientConnection
    parameters: dict[str, str]
    stream_sid: str = "MZ00000000000000000000000000000001"
    call_sid: str = "CA00000000000000000000000000000001"
    account_sid: str = "AC00000000000000000000000000000001"
    heard: bytearray = field(default_factory=bytearray)
    """Every sample the caller heard, in order."""
    sent_by_server: list[dict[str, Any]] = field(default_factory=list)
    media_sizes: list[int] = field(default_factory=list)
    clears: int = 0
    marks_returned: list[str] = field(default_factory=list)
    max_ahead_bytes: int = 0
    """The most audio ever queued at the phone, unplayed: how far the server got ahead."""
    close_code: int | None = None
    _queue: deque[bytes | _Mark] = field(default_factory=deque)
    _queued_bytes: int = 0
    _speech: bytearray = field(default_factory=bytearray)
    _sequence: int = 0
    _chunk: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    # ---- what Twilio sends ---------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        if message["event"] != "connected":
            self._sequence += 1
            message = {"sequenceNumber": str(self._sequence), **message}
            message["streamSid"] = self.stream_sid
        await self.ws.send(json.dumps(message))

    async def begin(self) -> None:
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": self.parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._microphone()),
            loop.create_task(self._speaker()),
            loop.create_task(self._listen()),
        ]

    def say(self, mulaw: bytes) -> None:
        """The caller speaks `mulaw` (from the next 20 ms frame on)."""
        self._speech += mulaw

    @property
    def speaking(self) -> bool:
        return bool(self._speech)

    async def press(self, digit: str) -> None:
        await self._send({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": digit}})

    async def hang_up(self) -> None:
        await self._stop_tasks()
        stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
        with suppress(ConnectionClosed):
            await self._send({"event": "stop", "stop": stop})
            await self.ws.close()

    async def _microphone(self) -> None:
        """A `media` message every 20 ms for the whole call: speech when the caller talks."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            frame = bytes(self._speech[:FRAME]).ljust(FRAME, b"\xff")
            del self._speech[:FRAME]
            self._chunk += 1
            media = {
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str((self._chunk - 1) * 20),
                "payload": base64.b64encode(frame).decode(),
            }
            await self._send({"event": "media", "media": media})
            next_at += TICK_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    # ---- what Twilio does with the server's messages ------------------------------------------

    async def _listen(self) -> None:
        try:
            async for raw in self.ws:
                assert isinstance(raw, str), "Twilio takes JSON text messages only"
                message = json.loads(raw)
                self.sent_by_server.append(message)
                assert message.get("streamSid") == self.stream_sid, message
                match message["event"]:
                    case "media":
                        audio = base64.b64decode(message["media"]["payload"])
                        self.media_sizes.append(len(audio))
                        self._queue.append(audio)
                        self._queued_bytes += len(audio)
                        self.max_ahead_bytes = max(self.max_ahead_bytes, self._queued_bytes)
                    case "mark":
                        self._queue.append(_Mark(message["mark"]["name"]))
                        await self._return_marks()
                    case "clear":
                        self.clears += 1
                        pending = [m for m in self._queue if isinstance(m, _Mark)]
                        self._queue.clear()
                        self._queued_bytes = 0
                        for mark in pending:
                            await self._return(mark)
                    case other:
                        raise AssertionError(f"Twilio does not take `{other}`")
        except ConnectionClosed:
            pass
        if self.ws.close_code is not None:
            self.close_code = self.ws.close_code

    async def _speaker(self) -> None:
        """Plays the queue in real time: 160 bytes every 20 ms, marks as their audio ends."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            budget = FRAME
            while budget and self._queue and not isinstance(self._queue[0], _Mark):
                audio = self._queue[0]
                assert isinstance(audio, bytes)
                take = audio[:budget]
                self.heard += take
                budget -= len(take)
                self._queued_bytes -= len(take)
                if len(take) == len(audio):
                    self._queue.popleft()
                else:
                    self._queue[0] = audio[len(take) :]
            await self._return_marks()
            next_at += TICK_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _return_marks(self) -> None:
        """Marks at the head of the queue: all audio before them has played."""
        while self._queue and isinstance(self._queue[0], _Mark):
            mark = self._queue.popleft()
            assert isinstance(mark, _Mark)
            await self._return(mark)

    async def _return(self, mark: _Mark) -> None:
        self.marks_returned.append(mark.name)
        with suppress(ConnectionClosed):
            await self._send({"event": "mark", "mark": {"name": mark.name}})

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError, ConnectionClosed):
                await task
        self._tasks = []

    def check(self) -> None:
        """Raise what went wrong in the call's tasks (a message Twilio would not take)."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError("the fake Twilio failed") from task.exception()

    async def wait_closed(self) -> int | None:
        """The close code the server sent (after it closed the socket)."""
        await self.ws.wait_closed()
        await self._stop_tasks()
        return self.ws.close_code


@asynccontextmanager
async def twilio_call(
    url: str, parameters: dict[str, str] | None = None
) -> AsyncIterator[FakeTwilioCall]:
    """A call connected to `url` with `<Parameter>`s `parameters`; hung up at the end."""
    async with connect(url, compression=None, max_queue=4096, close_timeout=2) as ws:
        call = FakeTwilioCall(ws, parameters or {})
        await call.begin()
        try:
            yield call
        finally:
            await call.hang_up()
