"""Runs the app under uvicorn with the settings a voice gateway needs, plus pipeline reload.

Shared by `voxgate serve`, the tests and the benchmarks, so all three exercise the same
server: the sans-I/O websockets protocol (it applies TCP backpressure to `send`, which the
slow-client rule depends on), no per-message compression (audio does not compress and
deflate costs memory per socket), and a frame cap just above the largest pipeline limit so
uvicorn never buffers a frame the session would reject anyway.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from types import FrameType

import structlog
import uvicorn

from gateway.app import PipelineTable, create_app
from gateway.capacity import Capacity
from gateway.connections import ConnectionGuard, protocol_classes
from gateway.errors import GatewayError
from gateway.loader import expand_paths, load_pipelines
from gateway.reload import PipelineReloader, warn_missing_keys

log = structlog.get_logger()


class GatewayServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains instead of closing sockets with 1012.

    A deploy (Fly sends SIGTERM, then SIGKILL after `kill_timeout`) must not cut callers off
    mid-sentence: readiness turns 503 and new sockets get 1013 at once, sessions finish the
    turn in progress and get 1001 (the SDK reconnects, landing on another machine), and only
    then, or after `drain_timeout_s`, does uvicorn's own shutdown start. A second SIGTERM, or
    SIGINT, stops at once as before.
    """

    def __init__(
        self, config: uvicorn.Config, table: PipelineTable, drain_timeout_s: float
    ) -> None:
        super().__init__(config)
        self.table = table
        self._drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            host, port = self.config.host, bound_port(self)
            log.info(
                "serving",
                url=f"http://{host}:{port}/",
                routes=sorted(self.table.pipelines),
                hint="open the url for the demo page; Ctrl-C stops",
            )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._drain is None and self._loop is not None:
            self._captured_signals.append(sig)  # uvicorn re-raises it once shut down
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        self._drain = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        table = self.table
        table.capacity.draining = True
        log.info("draining", sessions=len(table.sessions), timeout_s=self._drain_timeout_s)
        for session in list(table.sessions):
            session.request_drain()
        try:
            async with asyncio.timeout(self._drain_timeout_s):
                while table.sessions:  # noqa: ASYNC110 (only while draining; sessions end anywhere)
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning("drain_timeout", sessions_left=len(table.sessions))
        self.should_exit = True


def make_server(
    table: PipelineTable,
    host: str,
    port: int,
    drain_timeout_s: float = 25.0,
    guard: ConnectionGuard | None = None,
) -> GatewayServer:
    max_frame = max((p.limits.max_message_bytes for p in table.pipelines.values()), default=1 << 20)
    http, ws = protocol_classes(guard or ConnectionGuard())
    config = uvicorn.Config(
        create_app(table),
        host=host,
        port=port,
        http=http,
        ws=ws,
        timeout_keep_alive=5,
        ws_per_message_deflate=False,
        ws_max_size=max_frame + 1024,
        lifespan="on",
        log_config=None,  # its loggers go through ours (`telemetry.configure_logging`)
        log_level="warning",
        access_log=False,
    )
    return GatewayServer(config, table, drain_timeout_s)


class PortInUse(GatewayError):
    """Another process already listens on the address `voxgate serve` was asked for."""


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything says "serving", so a busy port is one clear
    message rather than a log line that promises a server and an exit code that denies it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # sockets whose `proto` says TCP, and accepted sockets inherit it. With 0, every frame after
    # the first of a burst (reply audio, tokens, turn_end) waited for the client's delayed ACK:
    # ~40 ms on loopback, a round trip on the internet.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} on {host} is already in use (another voxgate, or another server): "
                f"stop that one, or choose another port with `--port {port + 1}`"
            ) from None
        raise
    sock.set_inheritable(True)
    return sock


def bound_port(server: uvicorn.Server) -> int:
    """The port actually bound (useful with port 0)."""
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


async def serve(
    sources: Sequence[str],
    host: str,
    port: int,
    env: Mapping[str, str],
    watch: bool = False,
    capacity: Capacity | None = None,
    guard: ConnectionGuard | None = None,
    drain_timeout_s: float = 25.0,
) -> None:
    table = PipelineTable.of(load_pipelines(expand_paths(sources), env), capacity)
    warn_missing_keys(list(table.pipelines.values()), env)
    with listen(host, port) as sock:  # a busy port fails before the models load
        started = time.perf_counter()
        for pipeline in table.pipelines.values():
            await table.preload(pipeline)
        # What start-up made (modules, SDKs, models: ~150k objects with the cloud SDKs) lives
        # as long as the process: out of the collector's sight, a full collection no longer
        # walks it all (~50 ms of a stalled event loop, which landed in the first turns of 10
        # sessions). No session exists yet, so nothing frozen here is ever garbage.
        gc.collect()
        gc.freeze()
        log.info(
            "providers_loaded",
            seconds=round(time.perf_counter() - started, 3),
            frozen_objects=gc.get_freeze_count(),
        )
        reloader = PipelineReloader(sources, table, env)
        server = make_server(table, host, port, drain_timeout_s, guard)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.request)
        async with asyncio.TaskGroup() as tasks:
            reloading = tasks.create_task(reloader.run(1.0 if watch else None))
            await server.serve(sockets=[sock])
            reloading.cancel()
