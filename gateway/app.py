"""The Litestar app: one WebSocket endpoint per pipeline route, health, readiness, metrics,
and the demo page at `/`.

Routes come from a `PipelineTable` looked up at connect time rather than baked into the
router, so a reload (SIGHUP) can add, change or remove pipelines while calls in progress keep
the `Pipeline` object they started with. The socket handler reads raw ASGI events because
Litestar's typed receive helpers turn a binary frame into "" in text mode, and our frames mix
JSON and audio.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, MediaType, Response, get, websocket
from litestar.connection import WebSocket
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import dialects, telemetry, tracing
from gateway.audio.vad import VADModels
from gateway.capacity import Capacity
from gateway.config import Dialect
from gateway.pipeline import Pipeline, missing_keys, unusable
from gateway.protocol import CloseCode
from gateway.providers import shared
from gateway.providers.health import ProviderHealth
from gateway.session import Session
from gateway.store import Stores
from gateway.transport import LitestarTransport

DEMO_PAGE = Path(__file__).parent / "static" / "index.html"
TRACES_FLUSH_S = 5.0
"""At exit, how long queued spans may take to reach the collector."""
_REFUSALS = {
    "address_full": "too many connections from your address",
    "address_unauthenticated": "too many connections from your address without a session",
    "unauthenticated_full": "too many connections waiting to start",
    "route_full": "at capacity",
    "process_full": "at capacity",
}


class RouteStatus(msgspec.Struct, kw_only=True):
    name: str
    route: str
    available: bool
    missing_keys: list[str]


@dataclass
class PipelineTable:
    """The pipelines being served, by route, and the sessions open on this process."""

    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    sessions: set[Session] = field(default_factory=set)
    """Every open socket's session, authenticated or not (a drain waits for them all)."""
    capacity: Capacity = field(default_factory=Capacity)
    health: ProviderHealth = field(default_factory=ProviderHealth)
    """Provider breakers, shared by all sessions of this process."""
    vad_models: VADModels = field(default_factory=VADModels)
    """The VAD models all sessions of this process share."""
    stores: Stores = field(default_factory=Stores)
    """The conversation stores (gateway/store), one per `store:` block, run by the lifespan."""

    @classmethod
    def of(cls, pipelines: list[Pipeline], capacity: Capacity | None = None) -> PipelineTable:
        return cls({p.route: p for p in pipelines}, capacity=capacity or Capacity())

    def replace(self, pipelines: list[Pipeline]) -> None:
        self.pipelines = {p.route: p for p in pipelines}

    async def preload(self, pipeline: Pipeline) -> None:
        """Load and warm what `pipeline`'s sessions share (embedded models, the end-of-turn
        model, the VAD) before it is served, so its first session waits for none of it."""
        await asyncio.to_thread(shared.preload, pipeline)
        await self.vad_models.preload(pipeline.vad, pipeline.input.sample_rate)
        telemetry.declare(pipeline.name)


def create_app(table: PipelineTable) -> Litestar:
    @get("/healthz", media_type=MediaType.JSON)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", media_type=MediaType.JSON)
    async def readyz() -> Response[dict[str, object]]:
        ready = bool(table.pipelines) and not table.capacity.draining
        body: dict[str, object] = {"ready": ready, "pipelines": sorted(table.pipelines)}
        return Response(body, status_code=200 if ready else 503)

    @get("/", media_type=MediaType.HTML)
    async def demo() -> bytes:
        return DEMO_PAGE.read_bytes()

    @get("/pipelines")
    async def pipelines() -> list[RouteStatus]:
        """The routes for a client to offer (the demo page's list), each with whether this
        server can serve it and, if not, which variables it lacks (names, never values)."""
        return [
            RouteStatus(
                name=p.name,
                route=p.route,
                available=not unusable(p, os.environ),
                missing_keys=missing_keys(p, os.environ),
            )
            for p in sorted(table.pipelines.values(), key=lambda p: p.route)
        ]

    @get("/metrics", media_type=CONTENT_TYPE_LATEST)
    async def metrics() -> bytes:
        return generate_latest()

    @websocket("/{route:path}")
    async def voice(socket: WebSocket[Any, Any, Any]) -> None:
        # The route's dialect (gateway/dialects): protocol v1.1 at `route`, Twilio Media
        # Streams at `route`/twilio, OpenAI Realtime at /v1/realtime?model=<name>.
        offered = list(socket.scope.get("subprotocols") or [])
        request = dialects.Request(
            socket.scope["path"], socket.query_params, socket.headers, offered
        )
        found = dialects.find(table.pipelines, request)
        if found is None or not found.origin_allowed(socket.headers.get("origin")):
            # Closing before accept answers the upgrade with HTTP 403: no socket is opened.
            await socket.close(code=CloseCode.POLICY)
            return
        pipeline = found.pipeline
        subprotocol = found.subprotocol(offered)
        client = socket.scope.get("client")
        header = table.capacity.address_header
        address = (socket.headers.get(header) if header else None) or (client[0] if client else "")
        if refusal := table.capacity.refusal(pipeline, address):
            telemetry.SESSIONS_REFUSED.labels(pipeline.name, refusal).inc()
            await socket.accept(subprotocols=subprotocol)
            reason = "server restarting" if refusal == "draining" else _REFUSALS[refusal]
            await socket.close(
                code=CloseCode.TRY_AGAIN_LATER, reason=f"{reason}: retry in a few seconds"
            )
            return
        await socket.accept(subprotocols=subprotocol)
        session_id = uuid.uuid4().hex
        # Twilio and OpenAI Realtime clients cannot send a resume token: no store for them.
        resumable = found.dialect is Dialect.VOXGATE
        with table.capacity.socket(pipeline, address) as seat:
            opened = await dialects.open_transport(
                found,
                LitestarTransport(socket, pipeline.limits.max_message_bytes),
                request,
                session_id,
            )
            if opened is None:
                return  # the client left before there was a session to start
            session = Session(
                opened.pipeline,
                opened.transport,
                session_id,
                seat,
                opened.token,
                table.health,
                table.vad_models,
                dialect=found.dialect.value,
                store=await table.stores.get(opened.pipeline.store) if resumable else None,
            )
            opened.attach(session)
            table.sessions.add(session)
            try:
                await session.run()
            finally:
                table.sessions.discard(session)

    @asynccontextmanager
    async def tracing_sessions(_: Litestar) -> AsyncIterator[None]:
        """Traces (gateway/tracing) when the `OTEL_*` variables ask for them: on before the
        first session, and what is queued sent at exit (bounded: a collector that is down
        delays shutdown by at most `TRACES_FLUSH_S`)."""
        tracing.configure_tracing()
        try:
            yield
        finally:
            await asyncio.to_thread(tracing.shutdown_tracing, TRACES_FLUSH_S)

    @asynccontextmanager
    async def keeping_conversations(_: Litestar) -> AsyncIterator[None]:
        """The conversation stores: started with the app (a Redis is connected before the
        first session), closed after the last session, flushing what is still to be saved
        (each store within its `drain_timeout_s`)."""
        async with table.stores:
            await table.stores.start(p.store for p in table.pipelines.values())
            yield

    @asynccontextmanager
    async def probing_providers(_: Litestar) -> AsyncIterator[None]:
        """The provider probes, and what sessions share (provider clients, VAD models), live
        exactly as long as the app."""
        try:
            async with table.health.probing():
                yield
        finally:
            await shared.close_shared()
            table.vad_models.close()

    return Litestar(
        route_handlers=[demo, healthz, readyz, pipelines, metrics, voice],
        lifespan=[tracing_sessions, probing_providers, keeping_conversations],
        debug=False,
        logging_config=None,  # ours (`telemetry.configure_logging`): JSON lines, warnings up
    )
