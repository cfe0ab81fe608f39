"""Re-reads the pipeline files while serving, on SIGHUP or when a file changes.

Reading YAML, validating it and loading a new pipeline's models all block, so all of it runs
on a worker thread: a hostile or huge file in the folder must not stall the calls in progress
(a 6-level alias file once froze every session for 2.8 s when the reload ran on the loop).
A broken set of files keeps the old set serving; sessions hold their own `Pipeline`, so a
reload never changes a call in progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from gateway.app import PipelineTable
from gateway.errors import PipelineError, ProviderError
from gateway.loader import availability, expand_paths, load_pipelines
from gateway.pipeline import Pipeline, missing_keys

log = structlog.get_logger()


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


class PipelineReloader:
    def __init__(
        self, sources: Sequence[str], table: PipelineTable, env: Mapping[str, str]
    ) -> None:
        self._sources = sources
        self._table = table
        self._env = env
        self._stamp = self._mtimes()
        self._requested = asyncio.Event()

    def request(self) -> None:
        """Reload soon (the SIGHUP handler: it must not block)."""
        self._requested.set()

    async def run(self, watch_interval_s: float | None) -> None:
        """Reload on each request and, with `watch_interval_s`, when a file's mtime changes
        (polling: no extra dependency, a few stat calls per second)."""
        while True:
            try:
                async with asyncio.timeout(watch_interval_s):
                    await self._requested.wait()
            except TimeoutError:
                stamp = await asyncio.to_thread(self._mtimes)
                if stamp == self._stamp:
                    continue
                self._stamp = stamp
            self._requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        try:
            pipelines = await asyncio.to_thread(self._load)
            for pipeline in pipelines:
                await self._table.preload(pipeline)
        except (PipelineError, ProviderError) as e:  # ProviderError: a model that will not load
            log.error("pipeline_reload_failed", errors=str(e))
            return False
        self._table.replace(pipelines)
        log.info("pipelines_reloaded", routes=sorted(self._table.pipelines))
        warn_missing_keys(pipelines, self._env)
        return True

    def _load(self) -> list[Pipeline]:
        return load_pipelines(expand_paths(self._sources), self._env)

    def _mtimes(self) -> dict[Path, float]:
        stamps: dict[Path, float] = {}
        for source in map(Path, self._sources):
            files = sorted(source.glob("*.y*ml")) if source.is_dir() else [source]
            stamps.update({f: f.stat().st_mtime for f in files if f.exists()})
        return stamps
