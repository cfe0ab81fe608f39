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
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import structlog
import uvicorn

from adapters import registry
from gateway.app import PipelineTable, create_app
from gateway.errors import GatewayError, PipelineError
from gateway.loader import availability, expand_paths, load_pipelines
from gateway.pipeline import Pipeline, missing_keys

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
        table.draining = True
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
    table: PipelineTable, host: str, port: int, drain_timeout_s: float = 25.0
) -> GatewayServer:
    max_frame = max((p.limits.max_message_bytes for p in table.pipelines.values()), default=1 << 20)
    config = uvicorn.Config(
        create_app(table),
        host=host,
        port=port,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=max_frame + 1024,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    return GatewayServer(config, table, drain_timeout_s)


def warn_missing_keys(pipelines: Sequence[Pipeline], env: Mapping[str, str]) -> None:
    """One warning per route whose providers lack API keys here, naming every variable once:
    a route that cannot serve must say so when the server starts, not at a user's first turn."""
    for pipeline in pipelines:
        if missing := missing_keys(pipeline, env):
            log.warning(
                "keys_missing",
                route=pipeline.route,
                missing=missing,
                status=availability(pipeline, env),
                hint="set them where the gateway runs and restart it; `voxgate check` lists all",
            )


class PortInUse(GatewayError):
    """Another process already listens on the address `voxgate serve` was asked for."""


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything says "serving", so a busy port is one clear
    message rather than a log line that promises a server and an exit code that denies it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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


class PipelineReloader:
    """Re-reads the pipeline files into the table; a broken file keeps the old set serving.

    Sessions hold their own `Pipeline` object, so a reload never changes a call in progress.
    """

    def __init__(
        self, sources: Sequence[str], table: PipelineTable, env: Mapping[str, str]
    ) -> None:
        self._sources = sources
        self._table = table
        self._env = env
        self._stamp = self._mtimes()

    def _mtimes(self) -> dict[Path, float]:
        stamps: dict[Path, float] = {}
        for source in map(Path, self._sources):
            files = sorted(source.glob("*.y*ml")) if source.is_dir() else [source]
            stamps.update({f: f.stat().st_mtime for f in files if f.exists()})
        return stamps

    def reload(self) -> bool:
        try:
            pipelines = load_pipelines(expand_paths(self._sources), self._env)
        except PipelineError as e:
            log.error("pipeline_reload_failed", errors=str(e))
            return False
        self._table.replace(pipelines)
        log.info("pipelines_reloaded", routes=sorted(self._table.pipelines))
        warn_missing_keys(pipelines, self._env)
        return True

    async def watch(self, interval_s: float = 1.0) -> None:
        """Reload whenever a pipeline file changes (polling: no extra dependency, tiny cost)."""
        while True:
            await asyncio.sleep(interval_s)
            stamp = self._mtimes()
            if stamp != self._stamp:
                self._stamp = stamp
                self.reload()


async def serve(
    sources: Sequence[str],
    host: str,
    port: int,
    env: Mapping[str, str],
    watch: bool = False,
    max_sessions: int = 1000,
    drain_timeout_s: float = 25.0,
) -> None:
    table = PipelineTable.of(load_pipelines(expand_paths(sources), env), max_sessions)
    warn_missing_keys(list(table.pipelines.values()), env)
    with listen(host, port) as sock:  # a busy port fails before the models load
        started = time.perf_counter()
        for pipeline in table.pipelines.values():
            await asyncio.to_thread(registry.preload, pipeline)
        log.info("providers_loaded", seconds=round(time.perf_counter() - started, 3))
        reloader = PipelineReloader(sources, table, env)
        server = make_server(table, host, port, drain_timeout_s)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reloader.reload)
        async with asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(reloader.watch()) if watch else None
            await server.serve(sockets=[sock])
            if watcher is not None:
                watcher.cancel()
