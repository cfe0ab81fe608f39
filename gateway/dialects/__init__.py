"""Other wire protocols on the same session core: Twilio Media Streams and the OpenAI Realtime API.

A dialect is a translating `Transport` around the same `Session` that serves protocol v1.1:
its client's events become v1.1 frames the session already understands (a `session_start`
with the right codec, audio, `audio_end`, `text`, `interrupt`, `playback`), and the session's
messages and audio frames become the dialect's events. So a phone call and a Realtime app get
the turn engine, barge-in, failover, limits, metrics and logs of every other session, and only
this package knows their wire formats. What a dialect's client needs of the audio (Twilio:
mu-law 8 kHz both ways; Realtime: what `session.update` asked for) is set on a per-session
copy of the pipeline, so the session's decoder, encoder and TTS rate are the right ones from
the start.

This module finds which pipeline and dialect an upgrade request is for (PIPELINES.md
`dialects`: protocol v1.1 at `route`, Twilio at `route` + `/twilio`, Realtime at
`/v1/realtime?model=<pipeline name>`) and opens the transport the session will talk through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
from prometheus_client import Counter

from gateway import protocol
from gateway.config import Dialect
from gateway.dialects import realtime, twilio
from gateway.dialects.base import SessionHooks
from gateway.pipeline import Pipeline
from gateway.protocol import SUBPROTOCOL
from gateway.transport import Transport

REALTIME_PATH = "/v1/realtime"
TWILIO_SUFFIX = "/twilio"

DIALECT_SOCKETS = Counter(
    "voxgate_dialect_sockets", "Sockets accepted, by pipeline and dialect", ["pipeline", "dialect"]
)


@dataclass(frozen=True)
class Request:
    """What the upgrade request says that a dialect needs; no framework types past here."""

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    subprotocols: list[str]


@dataclass(frozen=True)
class Found:
    dialect: Dialect
    pipeline: Pipeline

    def origin_allowed(self, origin: str | None) -> bool:
        """The pipeline's browser allow-list. Twilio and server-side Realtime clients send no
        `Origin`; a browser always does, so an absent one is a client no page can drive."""
        allowed = self.pipeline.auth.allowed_origins
        if not allowed or origin in allowed:
            return True
        return origin is None and self.dialect is not Dialect.VOXGATE

    def subprotocol(self, offered: list[str]) -> str | None:
        if self.dialect is Dialect.VOXGATE and SUBPROTOCOL in offered:
            return SUBPROTOCOL
        if self.dialect is Dialect.OPENAI_REALTIME and "realtime" in offered:
            return "realtime"  # OpenAI's browser form: ["realtime", "openai-insecure-api-key.K"]
        return None


@dataclass
class Opened:
    """A dialect's socket, ready for a `Session`: its pipeline (a per-session copy), its
    transport, the token that came with the upgrade, and where the session's hooks go."""

    pipeline: Pipeline
    transport: Transport
    token: str | None
    attach: Callable[[SessionHooks], None] = lambda _: None


def find(pipelines: Mapping[str, Pipeline], request: Request) -> Found | None:
    """The pipeline and dialect `request` asks for; None: nothing is served there (403)."""
    pipeline = pipelines.get(request.path)
    if pipeline is not None and Dialect.VOXGATE in pipeline.dialects:
        return Found(Dialect.VOXGATE, pipeline)
    if request.path.endswith(TWILIO_SUFFIX):
        pipeline = pipelines.get(request.path.removesuffix(TWILIO_SUFFIX))
        if pipeline is not None and Dialect.TWILIO in pipeline.dialects:
            return Found(Dialect.TWILIO, pipeline)
    if request.path == REALTIME_PATH:
        model = request.query.get("model")
        for pipeline in pipelines.values():
            if pipeline.name == model and Dialect.OPENAI_REALTIME in pipeline.dialects:
                return Found(Dialect.OPENAI_REALTIME, pipeline)
    return None


async def open_transport(
    found: Found, socket: Transport, request: Request, session_id: str
) -> Opened | None:
    """The transport and pipeline a session runs on; None when the client left (or broke a
    rule) before there was a session to start."""
    pipeline = found.pipeline
    DIALECT_SOCKETS.labels(pipeline.name, found.dialect.value).inc()
    structlog.contextvars.bind_contextvars(dialect=found.dialect.value)
    query_token = request.query.get("token")
    if found.dialect is Dialect.TWILIO:
        phone = twilio.TwilioTransport(socket, pipeline)
        return Opened(twilio.session_pipeline(pipeline), phone, query_token)
    if found.dialect is Dialect.OPENAI_REALTIME:
        app = realtime.RealtimeTransport(socket, pipeline, session_id)
        if not await app.negotiate():
            return None
        token = realtime.bearer_token(request.headers, request.subprotocols) or query_token
        return Opened(app.pipeline, app, token, app.attach)
    return Opened(pipeline, socket, query_token)


def fatal_error(path: str, message: str) -> str | None:
    """The last word for a socket closed below the session (a frame over the server's cap), in
    the dialect its path speaks: None for Twilio, which takes only its own three messages."""
    if path == REALTIME_PATH:
        return realtime.fatal_error(message)
    if path.endswith(TWILIO_SUFFIX):
        return None
    error = protocol.Error(code=protocol.ErrorCode.BAD_MESSAGE, message=message, fatal=True)
    return protocol.encode(error)
