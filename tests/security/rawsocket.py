"""A WebSocket client made of a bare TCP socket: for attacks a real client library refuses to
make (never reading, a tiny receive buffer, half-written request heads, oversize frames)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

from gateway import protocol


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    return sock


def upgrade_request(route: str, host: str = "127.0.0.1") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {route} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (FIN set)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def text(message: protocol.Message) -> bytes:
    return frame(protocol.encode(message).encode())


async def open_session(port: int, route: str, rcvbuf: int | None = None) -> socket.socket:
    """Upgrade and send a pcm16 session_start; the 101 response is read, nothing more."""
    sock = connect(port, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, upgrade_request(route))
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    start = protocol.SessionStart(
        input=protocol.InputFormat(codec=protocol.InputCodec.PCM16, sample_rate=16000)
    )
    await loop.sock_sendall(sock, text(start))
    return sock


async def read_frames(
    sock: socket.socket, timeout_s: float, count: int | None = None
) -> list[tuple[int, bytes]]:
    """(opcode, payload) of every server frame until the close frame, `count` frames or
    `timeout_s`."""
    loop = asyncio.get_running_loop()
    buffer = b""
    frames: list[tuple[int, bytes]] = []
    try:
        async with asyncio.timeout(timeout_s):
            while (not frames or frames[-1][0] != 0x8) and len(frames) != count:
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 2:
                    size, start = buffer[1] & 0x7F, 2
                    if size == 126:
                        (size,), start = struct.unpack("!H", buffer[2:4]), 4
                    elif size == 127:
                        (size,), start = struct.unpack("!Q", buffer[2:10]), 10
                    if len(buffer) < start + size:
                        break
                    frames.append((buffer[0] & 0x0F, buffer[start : start + size]))
                    buffer = buffer[start + size :]
    except TimeoutError:
        pass
    return frames
