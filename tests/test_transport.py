"""The session's socket over a real uvicorn server with our WebSocket protocol: audio frames
that arrived together come back as one chunk; order, size and the client's leaving are kept;
a few small frames may wait for the app without the server pausing its reads, many may not."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import uvicorn
from litestar import Litestar, WebSocket, websocket

from gateway.connections import (
    PAUSE_AFTER_FRAMES,
    SMALL_FRAME_BYTES,
    ConnectionGuard,
    protocol_classes,
)
from gateway.errors import ClientGone
from gateway.transport import FRAMES_WAITING, LitestarTransport
from tests.security import rawsocket
from tests.serving import served

FRAME = bytes(range(256)) * 2 + bytes(128)  # 640 bytes: 20 ms of 16 kHz pcm16
CLOSE = 0x8


@asynccontextmanager
async def echo_server(join_up_to: int) -> AsyncIterator[tuple[int, list[str], asyncio.Event]]:
    """Answers each frame the transport returns with its kind and size, and records them;
    the event is set once the client is gone."""
    received: list[str] = []
    gone = asyncio.Event()

    @websocket("/echo")
    async def echo(socket: WebSocket) -> None:  # type: ignore[type-arg]
        await socket.accept()
        transport = LitestarTransport(socket, join_up_to)
        while True:
            frame = await transport.receive()
            seen = "gone" if frame is None else f"{type(frame).__name__} {len(frame)}"
            received.append(seen)
            if frame is None:
                gone.set()
                return
            with suppress(ClientGone):
                await transport.send_text(seen)

    async with serving(echo) as port:
        yield port, received, gone


@asynccontextmanager
async def serving(handler: Any) -> AsyncIterator[int]:
    http, ws = protocol_classes(ConnectionGuard())
    config = uvicorn.Config(
        Litestar([handler]), host="127.0.0.1", port=0, http=http, ws=ws, log_config=None
    )
    async with served(uvicorn.Server(config)) as port:
        yield port


@asynccontextmanager
async def busy_app_server() -> AsyncIterator[tuple[int, Callable[[], int]]]:
    """An app that accepts and then never reads: how many frames the server queued for it."""
    waiting: list[Callable[[], int]] = []
    done = asyncio.Event()

    @websocket("/echo")
    async def busy(socket: WebSocket) -> None:  # type: ignore[type-arg]
        await socket.accept()
        extension: Any = (socket.scope["extensions"] or {})[FRAMES_WAITING]
        waiting.append(extension["count"])
        await done.wait()

    async with serving(busy) as port:
        try:
            yield port, lambda: waiting[0]() if waiting else 0
        finally:
            done.set()


@asynccontextmanager
async def upgraded(port: int) -> AsyncIterator[socket.socket]:
    with rawsocket.connect(port) as sock:
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, rawsocket.upgrade_request("/echo"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        yield sock


async def replies(sock: socket.socket, count: int) -> list[str]:
    frames = await rawsocket.read_frames(sock, timeout_s=2.0, count=count)
    return [payload.decode() for _, payload in frames]


async def send_at_once(sock: socket.socket, *frames: bytes) -> None:
    """All frames in one write: the server reads them together, as it does a burst."""
    await asyncio.get_running_loop().sock_sendall(sock, b"".join(frames))


AUDIO = rawsocket.frame(FRAME, opcode=0x2)


async def test_audio_frames_that_arrive_together_are_received_as_one_chunk() -> None:
    async with echo_server(join_up_to=1 << 20) as (port, _, _), upgraded(port) as sock:
        await send_at_once(sock, *[AUDIO] * 5, rawsocket.frame(b"end"))
        assert await replies(sock, 2) == ["bytes 3200", "str 3"]


async def test_a_text_frame_between_audio_frames_keeps_its_place() -> None:
    async with echo_server(join_up_to=1 << 20) as (port, _, _), upgraded(port) as sock:
        await send_at_once(sock, AUDIO, AUDIO, rawsocket.frame(b"{}"), AUDIO, AUDIO, AUDIO)
        assert await replies(sock, 3) == ["bytes 1280", "str 2", "bytes 1920"]


async def test_joined_audio_is_never_larger_than_the_limit() -> None:
    async with echo_server(join_up_to=1300) as (port, _, _), upgraded(port) as sock:
        await send_at_once(sock, *[AUDIO] * 5)
        assert await replies(sock, 3) == ["bytes 1280", "bytes 1280", "bytes 640"]


async def test_a_frame_that_arrives_alone_is_not_held_for_the_next() -> None:
    async with echo_server(join_up_to=1 << 20) as (port, _, _), upgraded(port) as sock:
        for _ in range(3):
            await send_at_once(sock, AUDIO)
            assert await replies(sock, 1) == ["bytes 640"]


async def test_a_client_that_leaves_right_after_its_audio_has_that_audio_handled_first() -> None:
    async with echo_server(join_up_to=1 << 20) as (port, received, gone):
        async with upgraded(port) as sock:
            await send_at_once(sock, AUDIO, AUDIO, AUDIO, rawsocket.frame(b"\x03\xe8", CLOSE))
            await rawsocket.read_frames(sock, timeout_s=2.0)
        await asyncio.wait_for(gone.wait(), 2.0)
        assert received == ["bytes 1920", "gone"]


async def queued_after(count: Callable[[], int], expected: int) -> int:
    """The frames queued once `expected` are (or 0.3 s went by), after a moment for more."""
    for _ in range(60):
        if count() >= expected:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)  # a server still reading would queue the rest meanwhile
    return count()


async def test_a_few_small_frames_waiting_for_the_app_do_not_stop_the_server_reading() -> None:
    async with busy_app_server() as (port, count), upgraded(port) as sock:
        await send_at_once(sock, AUDIO)
        assert await queued_after(count, 1) == 1
        await send_at_once(sock, AUDIO, AUDIO)  # read although the app took nothing yet
        assert await queued_after(count, 3) == 3


async def test_a_client_whose_frames_pile_up_is_not_read_until_the_app_catches_up() -> None:
    async with busy_app_server() as (port, count), upgraded(port) as sock:
        await send_at_once(sock, *[AUDIO] * (PAUSE_AFTER_FRAMES + 1))
        assert await queued_after(count, PAUSE_AFTER_FRAMES + 1) == PAUSE_AFTER_FRAMES + 1
        await send_at_once(sock, AUDIO)
        assert await queued_after(count, PAUSE_AFTER_FRAMES + 2) == PAUSE_AFTER_FRAMES + 1


async def test_a_large_frame_stops_the_server_reading_until_the_app_takes_it() -> None:
    large = rawsocket.frame(bytes(SMALL_FRAME_BYTES + 1), opcode=0x2)
    async with busy_app_server() as (port, count), upgraded(port) as sock:
        await send_at_once(sock, large)
        assert await queued_after(count, 1) == 1
        await send_at_once(sock, AUDIO)
        assert await queued_after(count, 2) == 1
