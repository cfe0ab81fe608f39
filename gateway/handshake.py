"""The rules a socket must pass before it is a session: one valid `session_start`, in time.

Until the first frame is accepted the gateway calls no provider and holds no decoder, so a
stranger, a port scanner or a misconfigured client costs one small read; every way of failing
here is a close with the protocol's code (PROTOCOL.md) and a reason that says what to fix.
"""

from __future__ import annotations

import asyncio

import msgspec

from gateway import protocol
from gateway.errors import ClientGone, ProtocolViolation
from gateway.pipeline import Pipeline
from gateway.protocol import CloseCode
from gateway.transport import Transport


def check_frame_size(frame: str | bytes, limit: int) -> None:
    """Close 1009 for a frame over the pipeline's `max_message_bytes`."""
    size = len(frame) if isinstance(frame, bytes) else len(frame.encode())
    if size > limit:
        raise ProtocolViolation(
            CloseCode.TOO_BIG, f"frame of {size} bytes exceeds max_message_bytes {limit}"
        )


async def receive_start(transport: Transport, pipeline: Pipeline) -> protocol.SessionStart:
    """The client's `session_start`, checked against the pipeline's codecs (the token is
    checked by the caller, once it knows the route has its secret)."""
    try:
        async with asyncio.timeout(pipeline.limits.start_timeout_s):
            frame = await transport.receive()
    except TimeoutError:
        raise ProtocolViolation(
            CloseCode.POLICY, "no session_start within start_timeout_s"
        ) from None
    if frame is None:
        raise ClientGone()
    if isinstance(frame, bytes):
        raise ProtocolViolation(CloseCode.POLICY, "audio before session_start")
    check_frame_size(frame, pipeline.limits.max_message_bytes)
    try:
        message = protocol.decode_client(frame)
    except msgspec.DecodeError as e:
        raise ProtocolViolation(
            CloseCode.POLICY, f"first frame is not a valid session_start: {e}"
        ) from None
    if not isinstance(message, protocol.SessionStart):
        raise ProtocolViolation(
            CloseCode.POLICY, f"first frame must be session_start, not {type(message).__name__}"
        )
    if message.input.codec not in pipeline.input.codecs:
        accepted = ", ".join(pipeline.input.codecs)
        raise ProtocolViolation(
            CloseCode.POLICY,
            f"codec {message.input.codec} not accepted here; use one of: {accepted}",
        )
    return message
