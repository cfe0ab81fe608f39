"""Shared fixtures: a real gateway on a loopback port, test pipelines, and real speech audio."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from gateway.app import PipelineTable
from gateway.audio.vad import VADModel, VADModels
from gateway.capacity import Capacity
from gateway.config import VAD
from gateway.connections import ConnectionGuard
from gateway.pipeline import Pipeline
from gateway.server import GatewayServer, make_server
from tests.audio_fixtures import speech_at
from tests.serving import served

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


def make_pipeline(**overrides: Any) -> Pipeline:
    """A scripted pipeline with fast providers; `overrides` are nested dicts of pipeline keys
    (merged into the block, or replacing it when they name another `provider`)."""
    base: dict[str, Any] = {
        "name": "test",
        "route": "/ws/test",
        "vad": {"provider": "silero", "min_silence_ms": 300, "min_speech_ms": 100},
        "stt": {
            "provider": "scripted",
            "transcript": "what is the capital of france",
            "latency_ms": 50,
        },
        "llm": {
            "provider": "scripted",
            "reply": "Paris is the capital of France.",
            "ttft_ms": 40,
            "token_ms": 5,
        },
        "tts": {"provider": "scripted", "ttfb_ms": 30},
    }
    for key, value in overrides.items():
        old = base.get(key)
        # Keys of the same provider block merge; another provider replaces the block.
        same_block = (
            isinstance(value, dict)
            and isinstance(old, dict)
            and value.get("provider", old.get("provider")) == old.get("provider")
        )
        base[key] = {**old, **value} if same_block else value
    return msgspec.convert(base, Pipeline)


class Gateway:
    def __init__(self, table: PipelineTable, port: int, server: GatewayServer) -> None:
        self.table = table
        self.port = port
        self.server = server

    def url(self, route: str = "/ws/test") -> str:
        return f"ws://127.0.0.1:{self.port}{route}"


@asynccontextmanager
async def running_gateway(
    *pipelines: Pipeline, capacity: Capacity | None = None, guard: ConnectionGuard | None = None
) -> AsyncIterator[Gateway]:
    table = PipelineTable.of(list(pipelines) or [make_pipeline()], capacity)
    server = make_server(table, "127.0.0.1", 0, guard=guard)
    async with served(server) as port:
        yield Gateway(table, port, server)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    async with running_gateway() as gw:
        yield gw


@pytest.fixture(scope="session")
def speech() -> bytes:
    """About two seconds of real synthetic speech as 16 kHz pcm16, then 0.6 s of silence."""
    voice = speech_at(16000, "what is the capital of france")
    return bytes(np.concatenate((voice, np.zeros(9600, dtype=np.int16))).tobytes())


SERVER_TASKS = {"ProviderHealth.run", "_Connection._run", "ConversationStore._write"}
"""The server's own tasks, which live as long as it does (the provider probes' owner, an MCP
server's session shared by every session, a conversation store's writer)."""


def gateway_tasks() -> list[asyncio.Task[Any]]:
    """Tasks running code of ours: after a session ends there must be none of its own left."""
    ours = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if code is not None and code.co_qualname in SERVER_TASKS:
            continue
        if "/gateway/" in filename or "/adapters/" in filename:
            ours.append(task)
    return ours


async def wait_sessions_closed(gw: Gateway, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while gw.table.sessions:
            await asyncio.sleep(0.01)
    assert gateway_tasks() == [], "a session left tasks running"


async def run_node(
    node: str,
    script: Path,
    *args: str,
    timeout_s: float = 30,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run a node script that prints one JSON line last; that line, parsed. `env` adds to this
    process's environment.

    A subprocess on the event loop, so an in-process gateway keeps serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        node,
        str(script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().strip().splitlines()
    assert lines, f"{script.name} printed nothing (exit {proc.returncode})\n{err.decode()}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert proc.returncode == 0, (
        f"exit {proc.returncode}: {json.dumps(result)[:4000]}\n{err.decode()}"
    )
    return result


Silero = Callable[[], VADModel]


@pytest.fixture
def silero() -> Iterator[Silero]:
    """Silero VAD models at 16 kHz from one set of process VAD models, as a server's sessions
    get theirs (frames of models open at once are batched together)."""
    models = VADModels()

    def model() -> VADModel:
        opened = models.open(VAD(), 16000)
        assert opened is not None
        return opened

    yield model
    models.close()
