"""Connections that never finish, never read, or send too much, over real TCP sockets.

Each test is an attack seen on 2026-12-02 (issue 13) replayed against an in-process gateway:
the server must free what the attacker holds, and say what was wrong where it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import pytest

from gateway import protocol
from gateway.connections import ConnectionGuard
from tests.conftest import Gateway, make_pipeline, running_gateway
from tests.security.rawsocket import connect, frame, open_session, read_frames, text

# Numbered: the same sentence 40 times is a loop the reply guard cuts (gateway/guard.py).
LONG_REPLY = " ".join(
    f"{n}: Paris is the capital of France and its largest city." for n in range(40)
)


async def until_no_connections(gw: Gateway, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while gw.server.server_state.connections:
            await asyncio.sleep(0.05)


async def test_a_client_that_never_reads_is_disconnected_completely() -> None:
    """Before: `slow_consumer` was logged but the socket stayed ESTABLISHED, megabytes queued."""
    flood = make_pipeline(
        output={"sample_rate": 48000, "lead_ms": 600_000},  # no pacing: fill every buffer
        llm={"reply": LONG_REPLY, "token_ms": 0},
        tts={"chunk_ms": 100},  # 180 words a minute: minutes of audio, megabytes of it
        limits={"outbound_queue": 4, "slow_client_timeout_s": 0.5},
    )
    guard = ConnectionGuard(close_grace_s=0.2)
    async with running_gateway(flood, guard=guard) as gw:
        sock = await open_session(gw.port, "/ws/test", rcvbuf=4096)
        try:
            await asyncio.get_running_loop().sock_sendall(sock, text(protocol.Text(text="go")))
            # Never read. The session gives up on the client, then the connection is freed.
            await until_no_connections(gw, timeout_s=20)
            assert not gw.table.sessions
        finally:
            sock.close()


async def test_request_heads_must_arrive_in_time() -> None:
    """Before: 300 sockets, half silent and half trickling a header line every 10 s, were all
    still open a minute later."""
    guard = ConnectionGuard(handshake_timeout_s=0.5)
    async with running_gateway(guard=guard) as gw:
        silent = [connect(gw.port) for _ in range(15)]
        trickling = [connect(gw.port) for _ in range(15)]
        for sock in trickling:
            sock.sendall(b"GET /ws/test HTTP/1.1\r\n")
        for _ in range(4):
            await asyncio.sleep(0.3)
            for sock in trickling:
                with contextlib.suppress(OSError):  # closed by the server: what we want
                    sock.sendall(b"X-Slow: 1\r\n")
        await until_no_connections(gw, timeout_s=5)
        for sock in silent + trickling:
            assert await closed_by_peer(sock)
            sock.close()


async def closed_by_peer(sock: socket.socket, timeout_s: float = 2) -> bool:
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.get_running_loop().sock_recv(sock, 1024) == b""
    except ConnectionResetError:
        return True


async def test_incomplete_heads_are_capped_per_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "")  # no trusted proxy: 127.0.0.1 is a client
    guard = ConnectionGuard(handshake_timeout_s=30, max_heads_per_address=4)
    async with running_gateway(guard=guard) as gw:
        waiting = [connect(gw.port) for _ in range(4)]
        async with asyncio.timeout(5):
            while guard.waiting.total() < 4:  # the server has seen them
                await asyncio.sleep(0.01)
        extra = connect(gw.port)
        assert await closed_by_peer(extra), "a fifth incomplete head from one address is refused"
        loop = asyncio.get_running_loop()
        waiting[0].setblocking(False)
        await loop.sock_sendall(waiting[0], b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(2):
            answer = await loop.sock_recv(waiting[0], 64)
        assert answer.startswith(b"HTTP/1.1 200"), "the others are served"
        for sock in [*waiting, extra]:
            sock.close()


@pytest.mark.parametrize("size", [262_145, 300_000, 2_000_000])
async def test_an_oversize_frame_gets_the_error_event_then_1009(size: int) -> None:
    async with running_gateway() as gw:
        sock = await open_session(gw.port, "/ws/test")
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(sock, frame(b"\x00" * size, opcode=0x2))
            frames = await read_frames(sock, timeout_s=5)
        finally:
            sock.close()
    texts = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
    errors = [t for t in texts if t["type"] == "error"]
    assert errors and errors[-1]["fatal"] and errors[-1]["code"] == "bad_message", texts
    assert str(size) in errors[-1]["message"]
    opcode, close = frames[-1]
    assert opcode == 0x8 and int.from_bytes(close[:2], "big") == 1009
