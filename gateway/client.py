"""A small asyncio client for the wire protocol: tests, load runs and Python apps use it.

It speaks exactly what PROTOCOL.md says through the same msgspec types as the server, so a
change to the protocol breaks this client and its tests in the same commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from gateway import protocol


class AudioChunk(msgspec.Struct, frozen=True):
    header: protocol.AudioHeader
    payload: bytes


M = TypeVar("M", bound=protocol.Message | AudioChunk)


Event = protocol.ServerMessage | AudioChunk


class VoiceClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, **kwargs: Any) -> AsyncIterator[VoiceClient]:
        kwargs.setdefault("subprotocols", [protocol.SUBPROTOCOL])
        kwargs.setdefault("compression", None)
        # A reply is a few hundred frames; a small queue would stop reading mid-reply, and
        # then a close handshake waits for close_timeout behind unread audio.
        kwargs.setdefault("max_queue", 4096)
        kwargs.setdefault("close_timeout", 2)
        async with connect(url, **kwargs) as ws:
            yield cls(ws)

    async def send(self, message: protocol.Message) -> None:
        await self.ws.send(protocol.encode(message))

    async def start(
        self,
        codec: protocol.InputCodec = protocol.InputCodec.PCM16,
        sample_rate: int | None = 16000,
        *,
        resume: str | None = None,
        token: str | None = None,
    ) -> protocol.SessionStarted:
        """Start the session; `resume` continues the conversation of an earlier
        `session_started.resume_token`, `token` is `session_start.auth.token`."""
        fmt = protocol.InputFormat(codec=codec, sample_rate=sample_rate)
        auth = protocol.Auth(token=token) if token is not None else None
        await self.send(protocol.SessionStart(input=fmt, auth=auth, resume=resume))
        return await self.expect(protocol.SessionStarted)

    async def send_audio(self, pcm: bytes, chunk_bytes: int = 640, pace_s: float = 0.0) -> None:
        """Stream audio in chunks (640 bytes = 20 ms of 16 kHz pcm16), optionally paced."""
        for start in range(0, len(pcm), chunk_bytes):
            await self.ws.send(pcm[start : start + chunk_bytes])
            await asyncio.sleep(pace_s)

    async def recv(self) -> Event:
        frame = await self.ws.recv()
        if isinstance(frame, bytes):
            header, payload = protocol.unpack_audio(frame)
            return AudioChunk(header, payload)
        return protocol.decode_server(frame)

    async def expect(self, kind: type[M]) -> M:
        """The next event of `kind`, skipping others (audio included)."""
        while True:
            event = await self.recv()
            if isinstance(event, kind):
                return event

    async def collect_until(self, kind: type[M]) -> tuple[list[Event], M]:
        """Every event up to and including the next one of `kind`."""
        events: list[Event] = []
        while True:
            event = await self.recv()
            events.append(event)
            if isinstance(event, kind):
                return events, event
