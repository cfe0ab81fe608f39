"""What resuming a conversation costs: the store's `open`, a save per turn, a session start over
a socket, and a drain under load that moves every session to another process.

    .venv/bin/python bench/resume.py [--resumes 2000] [--sessions 200] [--drain 100]

Redis is a private `redis-server` on loopback (tests/redis_server.py), memory is this process.

1. `open`: a conversation of 10 turns (20 messages) is saved and flushed, then resumed; the
   time of `ConversationStore.open` alone, p50/p99 over `--resumes`.
2. save per turn: what a session pays on the voice path at the end of a turn (its history to
   the record's types, `save`: msgpack encode, hash, queue), and how many saves the writer
   writes per second in the background.
3. session start over a socket (`session_start` sent -> `session_started` read) against a
   `voxgate serve` process, fresh and resuming, `--sessions` each, one at a time.
4. drain: `--drain` sessions on one process, each after one turn; SIGTERM it; every client
   reconnects to a second process with its token as it gets its 1001. Counts the resumed and
   the time from SIGTERM to the last resumed session's first turn.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.base import ChatMessage  # noqa: E402
from bench.gateway_process import free_port, start_server  # noqa: E402
from gateway import protocol  # noqa: E402
from gateway.client import VoiceClient  # noqa: E402
from gateway.history import to_record  # noqa: E402
from gateway.store import (  # noqa: E402
    Conversation,
    ConversationStore,
    MemoryStoreConfig,
    RedisStoreConfig,
    StoreConfig,
)
from tests.redis_server import RedisServer  # noqa: E402

TURNS = 10


def history(turns: int = TURNS) -> list[ChatMessage]:
    return [
        message
        for n in range(turns)
        for message in (
            ChatMessage("user", f"question {n}: where is my order, it was due on Tuesday?"),
            ChatMessage("assistant", f"answer {n}: it left the warehouse this morning " * 3),
        )
    ]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5) * 1e3:.2f} ms, p99 {pct(values, 0.99) * 1e3:.2f} ms"


async def store_costs(name: str, config: StoreConfig, resumes: int) -> dict[str, Any]:
    record = to_record(history())
    conversation = Conversation(pipeline="bench", sub="user-1", turns=TURNS, history=record)
    opens: list[float] = []
    async with ConversationStore(config, max_pending=100_000) as store:
        for _ in range(resumes):
            token = (await store.open(None, pipeline="bench", sub="user-1")).token
            store.save(token, conversation)
            await store.flush()
            started = time.perf_counter()
            opened = await store.open(token, pipeline="bench", sub="user-1")
            opens.append(time.perf_counter() - started)
            assert opened.resumed
        await store.flush()
        # The voice path's share of a save: the history to the record, then `save`.
        messages = history()
        tokens = [
            (await store.open(None, pipeline="bench", sub="user-1")).token for _ in range(5000)
        ]
        started = time.perf_counter()
        for token in tokens:
            store.save(
                token,
                Conversation(
                    pipeline="bench", sub="user-1", turns=TURNS, history=to_record(messages)
                ),
            )
        save_s = (time.perf_counter() - started) / len(tokens)
        started = time.perf_counter()
        await store.flush()
        written_per_s = len(tokens) / (time.perf_counter() - started)
    return {"backend": name, "open": opens, "save_s": save_s, "writes_per_s": written_per_s}


def pipeline_file(store: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "name": "bench",
            "vad": {"provider": "none"},
            "stt": {"provider": "scripted"},
            "llm": {"provider": "scripted", "reply": "Noted.", "ttft_ms": 5, "token_ms": 1},
            "tts": {"provider": "scripted", "ttfb_ms": 1, "words_per_minute": 60000},
            "store": store,
        }
    )


async def session_starts(port: int, sessions: int) -> tuple[list[float], list[float]]:
    url = f"ws://127.0.0.1:{port}/ws/bench"
    fresh: list[float] = []
    resumed: list[float] = []
    for _ in range(sessions):
        async with VoiceClient.connect(url) as client:
            started = time.perf_counter()
            first = await client.start()
            fresh.append(time.perf_counter() - started)
            await client.send(protocol.Text(text="remember this"))
            await client.expect(protocol.TurnEnd)
        async with VoiceClient.connect(url) as client:
            started = time.perf_counter()
            again = await client.start(resume=first.resume_token)
            resumed.append(time.perf_counter() - started)
            assert again.resumed, "a resume that did not resume"
    return fresh, resumed


async def drain(one: int, two: int, server: Any, sessions: int) -> dict[str, Any]:
    results: list[tuple[bool, float]] = []
    drained = asyncio.Event()
    ready = 0
    all_ready = asyncio.Event()

    async def caller() -> None:
        nonlocal ready
        async with VoiceClient.connect(f"ws://127.0.0.1:{one}/ws/bench") as client:
            first = await client.start()
            await client.send(protocol.Text(text="remember this"))
            await client.expect(protocol.TurnEnd)
            ready += 1
            if ready == sessions:
                all_ready.set()
            try:
                while True:
                    await client.recv()
            except Exception:
                pass
            code = client.ws.close_code
        await drained.wait()
        async with VoiceClient.connect(f"ws://127.0.0.1:{two}/ws/bench") as client:
            moved = await client.start(resume=first.resume_token)
            await client.send(protocol.Text(text="what did I say?"))
            end = await client.expect(protocol.TurnEnd)
        results.append(
            (bool(moved.resumed) and code == 1001 and end.turn_id == 2, time.perf_counter())
        )

    tasks = [asyncio.create_task(caller()) for _ in range(sessions)]
    await all_ready.wait()
    sent = time.perf_counter()
    server.send_signal(signal.SIGTERM)
    drained.set()
    await asyncio.gather(*tasks)
    return {
        "sessions": sessions,
        "resumed": sum(ok for ok, _ in results),
        "last_s": max(t for _, t in results) - sent,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resumes", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--drain", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as redis:
        print("1-2. the store, in this process")
        for name, config in (
            ("memory", MemoryStoreConfig()),
            ("redis", RedisStoreConfig(url=redis.url, key_prefix="bench:")),
        ):
            costs = await store_costs(name, config, args.resumes)
            print(
                f"  {name:6} open (resume): {ms(costs['open'])}; save per turn on the voice "
                f"path: {costs['save_s'] * 1e6:.1f} us; writer: {costs['writes_per_s']:.0f} "
                "saves/s"
            )

        print("3. session start over a socket (session_start -> session_started)")
        for name, store in (
            ("memory", {"provider": "memory"}),
            ("redis", {"provider": "redis", "url": redis.url, "key_prefix": "bench3:"}),
        ):
            folder = Path(tmp) / f"p-{name}"
            folder.mkdir()
            (folder / "bench.yaml").write_text(pipeline_file(store))
            port = free_port()
            server, _ = start_server(port, folder)
            try:
                fresh, resumed = await session_starts(port, args.sessions)
            finally:
                server.terminate()
                server.wait()
            print(f"  {name:6} fresh:   {ms(fresh)}")
            print(f"  {name:6} resumed: {ms(resumed)}")

        print("4. drain under load: SIGTERM one process, every session resumes on the other")
        folder = Path(tmp) / "p-drain"
        folder.mkdir()
        store = {"provider": "redis", "url": redis.url, "key_prefix": "bench4:"}
        (folder / "bench.yaml").write_text(pipeline_file(store))
        one, two = free_port(), free_port()
        first, _ = start_server(one, folder)
        second, _ = start_server(two, folder)
        try:
            outcome = await drain(one, two, first, args.drain)
        finally:
            for server in (first, second):
                if server.poll() is None:
                    server.terminate()
                server.wait()
        print(
            f"  {outcome['resumed']}/{outcome['sessions']} resumed on the other process; "
            f"the last one's first turn there {outcome['last_s']:.2f} s after SIGTERM"
        )


if __name__ == "__main__":
    asyncio.run(main())
