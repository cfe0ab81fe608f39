"""Conversations that survive drops, deploys and machines, over real sockets (PROTOCOL.md 1.1).

What the LLM is sent is read from the fake OpenAI's recorded requests (tests/fakes/openai.py):
a resumed conversation is one whose next turn carries the earlier turns. Redis is a real
`redis-server` (tests/redis_server.py); "two machines" are two gateways sharing it, in this
process or (for SIGTERM and SIGKILL) as two `python -m gateway serve` processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY
from websockets.exceptions import ConnectionClosed

from gateway import protocol
from gateway.app import PipelineTable
from gateway.client import VoiceClient
from gateway.pipeline import Pipeline
from gateway.security import mint_token
from gateway.server import make_server
from tests.conftest import (
    Gateway,
    make_pipeline,
    run_node,
    running_gateway,
    wait_sessions_closed,
)
from tests.e2e import test_sdk as sdk_tests
from tests.e2e.test_serve import Server, free_port, wait_ready
from tests.fakes.openai import FakeOpenAI
from tests.redis_server import RedisServer
from tests.serving import served

SECRET = "resume-tests-secret-0123456789abcdef"
SYSTEM = "You are a helpful assistant."


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(reply="Noted.") as fake:
        yield fake


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def pipeline(fake: FakeOpenAI, **overrides: Any) -> Pipeline:
    llm = {"provider": "openai", "base_url": fake.base_url, "api_key": fake.api_key}
    return make_pipeline(llm={**llm, "system_prompt": SYSTEM}, **overrides)


def redis_store(server: RedisServer) -> dict[str, Any]:
    return {"provider": "redis", "url": server.url, "key_prefix": f"t{time.monotonic_ns()}:"}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def sent_to_llm(fake: FakeOpenAI) -> list[list[tuple[str, str]]]:
    """Each chat request's messages as (role, content), the system prompt left out."""
    return [
        [(m["role"], m["content"]) for m in r.body["messages"] if m["role"] != "system"]
        for r in fake.seen("chat")
    ]


async def typed_turn(client: VoiceClient, text: str) -> protocol.TurnEnd:
    await client.send(protocol.Text(text=text))
    return await client.expect(protocol.TurnEnd)


async def closed_by_server(client: VoiceClient) -> ConnectionClosed:
    """Read (and drop) whatever comes until the socket closes; how it closed."""
    try:
        while True:
            await client.recv()
    except ConnectionClosed as closed:
        return closed


async def drop(client: VoiceClient) -> None:
    """The network goes: no close frame, the TCP connection just ends."""
    client.ws.transport.abort()
    await asyncio.sleep(0)


@asynccontextmanager
async def session(
    gw: Gateway, *, resume: str | None = None, token: str | None = None, route: str = "/ws/test"
) -> AsyncIterator[tuple[VoiceClient, protocol.SessionStarted]]:
    async with VoiceClient.connect(gw.url(route)) as client:
        started = await client.start(resume=resume, token=token)
        yield client, started


# Resuming after a drop


async def test_a_session_dropped_mid_conversation_resumes_with_its_history(
    openai: FakeOpenAI,
) -> None:
    async with running_gateway(pipeline(openai)) as gw:
        async with session(gw) as (client, first):
            end = await typed_turn(client, "my name is Ada")
            await drop(client)
        await wait_sessions_closed(gw)

        async with session(gw, resume=first.resume_token) as (client, second):
            later = await typed_turn(client, "what is my name")
            (live,) = gw.table.sessions
            history = live.history

    assert first.resumed is False and first.resume_token is not None
    assert second.resumed is True and second.resume_token not in (None, first.resume_token)
    assert (end.turn_id, later.turn_id) == (1, 2), "turn ids go on where they were"
    assert sent_to_llm(openai)[-1] == [
        ("user", "my name is Ada"),
        ("assistant", "Noted."),
        ("user", "what is my name"),
    ]
    assert [m.content for m in history] == ["my name is Ada", "Noted.", "what is my name", "Noted."]


async def test_every_session_started_carries_a_resume_token_and_resumed(
    openai: FakeOpenAI,
) -> None:
    async with running_gateway(pipeline(openai)) as gw, VoiceClient.connect(gw.url()) as client:
        await client.send(
            protocol.SessionStart(
                input=protocol.InputFormat(codec=protocol.InputCodec.PCM16, sample_rate=16000)
            )
        )
        raw = await client.ws.recv()
    assert isinstance(raw, str)
    assert '"resumed":false' in raw and '"resume_token":"' in raw


async def test_a_resume_token_is_spent_by_resuming_and_the_new_one_goes_on(
    openai: FakeOpenAI,
) -> None:
    async with running_gateway(pipeline(openai)) as gw:
        async with session(gw) as (client, first):
            await typed_turn(client, "one")
        async with session(gw, resume=first.resume_token) as (client, second):
            await typed_turn(client, "two")
        async with session(gw, resume=first.resume_token) as (client, replayed):
            pass
        async with session(gw, resume=second.resume_token) as (client, third):
            await typed_turn(client, "three")

    assert (second.resumed, replayed.resumed, third.resumed) == (True, False, True)
    assert [text for _, text in sent_to_llm(openai)[-1]] == [
        "one",
        "Noted.",
        "two",
        "Noted.",
        "three",
    ]


async def test_a_reply_cut_by_a_barge_in_resumes_as_far_as_it_was_heard() -> None:
    long = "Paris is the capital of France. It is known for its museums and its cafes."
    async with (
        FakeOpenAI(reply=long, token_delay_s=0.02) as fake,
        running_gateway(pipeline(fake)) as gw,
    ):
        async with session(gw) as (client, first):
            await client.send(protocol.Text(text="tell me about paris"))
            await client.expect(protocol.LLMToken)
            await client.send(protocol.Interrupt(played_ms=0))
            await client.expect(protocol.TurnEnd)
        async with session(gw, resume=first.resume_token) as (client, _):
            await typed_turn(client, "and lyon?")
    resumed_with = sent_to_llm(fake)[-1]
    assert resumed_with[0] == ("user", "tell me about paris")
    assert resumed_with[-1] == ("user", "and lyon?")
    assert all(long not in text for _, text in resumed_with), "not the whole reply: none was heard"


async def test_tool_calls_and_their_results_survive_a_resume_in_pairs() -> None:
    from tests.fakes.webapi import WebAPI
    from tests.test_tools import http_tool

    async with FakeOpenAI(
        tool_calls=[("order_status", {"order": "A17"})], after_tools="Your order: {results}"
    ) as fake:
        with WebAPI({"status": "shipped"}) as api:
            p = pipeline(fake, tools=[http_tool(api)])
            async with running_gateway(p) as gw:
                async with session(gw) as (client, first):
                    await typed_turn(client, "where is my order A17")
                fake.tool_calls = []
                async with session(gw, resume=first.resume_token) as (client, second):
                    await typed_turn(client, "thanks")

    assert second.resumed
    last = fake.seen("chat")[-1].body["messages"]
    roles = [m["role"] for m in last if m["role"] != "system"]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]
    calls, result = last[-4], last[-3]
    assert result["tool_call_id"] == calls["tool_calls"][0]["id"]
    assert result["content"] == '{"status":"shipped"}'


# Whose conversation it is


async def test_an_unknown_or_malformed_token_starts_a_fresh_conversation(
    openai: FakeOpenAI,
) -> None:
    async with running_gateway(pipeline(openai)) as gw:
        async with session(gw) as (client, first):
            await typed_turn(client, "my name is Ada")
        assert first.resume_token is not None
        tampered = first.resume_token[:-1] + ("A" if first.resume_token[-1] != "A" else "B")
        opened = []
        for token in (tampered, "A" * 43, "not a token", "", "x" * 5000):
            async with session(gw, resume=token) as (client, started):
                await typed_turn(client, "who am I")
                opened.append(started)

    assert [s.resumed for s in opened] == [False] * 5
    assert all(s.resume_token for s in opened)
    assert all(request == [("user", "who am I")] for request in sent_to_llm(openai)[1:])


async def test_a_token_past_resume_ttl_s_starts_a_fresh_conversation(openai: FakeOpenAI) -> None:
    short = pipeline(openai, store={"provider": "memory", "resume_ttl_s": 1})
    async with running_gateway(short) as gw:
        async with session(gw) as (client, first):
            await typed_turn(client, "my name is Ada")
        await wait_sessions_closed(gw)
        await asyncio.sleep(1.1)
        async with session(gw, resume=first.resume_token) as (client, late):
            await typed_turn(client, "who am I")

    assert late.resumed is False
    assert sent_to_llm(openai)[-1] == [("user", "who am I")]


async def test_a_token_of_another_pipeline_starts_a_fresh_conversation(
    openai: FakeOpenAI,
) -> None:
    a = pipeline(openai, name="a", route="/ws/a")
    b = pipeline(openai, name="b", route="/ws/b")
    async with running_gateway(a, b) as gw:
        async with session(gw, route="/ws/a") as (client, first):
            await typed_turn(client, "my name is Ada")
        async with session(gw, route="/ws/b", resume=first.resume_token) as (client, elsewhere):
            await typed_turn(client, "who am I")
        async with session(gw, route="/ws/a", resume=first.resume_token) as (client, home):
            pass

    assert elsewhere.resumed is False
    assert sent_to_llm(openai)[-1] == [("user", "who am I")]
    assert home.resumed is True, "the refused attempt did not spend the owner's token"


async def test_with_token_auth_another_user_cannot_resume_a_conversation(
    openai: FakeOpenAI,
) -> None:
    guarded = pipeline(openai, auth={"mode": "token", "secret": SECRET})
    alice = mint_token(SECRET, "test", 3600, sub="alice")
    mallory = mint_token(SECRET, "test", 3600, sub="mallory")
    nobody = mint_token(SECRET, "test", 3600)
    async with running_gateway(guarded) as gw:
        async with session(gw, token=alice) as (client, first):
            await typed_turn(client, "my card ends in 4242")
        async with session(gw, token=mallory, resume=first.resume_token) as (client, stolen):
            await typed_turn(client, "what is my card")
            mallory_saw = sent_to_llm(openai)[-1]
        async with session(gw, token=nobody, resume=first.resume_token) as (client, anonymous):
            pass
        async with session(gw, token=alice, resume=first.resume_token) as (client, owner):
            await typed_turn(client, "thanks")

    assert (stolen.resumed, anonymous.resumed) == (False, False)
    assert mallory_saw == [("user", "what is my card")], "never another user's history"
    assert owner.resumed is True
    assert sent_to_llm(openai)[-1][0] == ("user", "my card ends in 4242")


# A store that cannot answer


async def test_with_redis_unreachable_sessions_start_fresh_with_a_warning_and_a_metric(
    openai: FakeOpenAI,
) -> None:
    dead = {"provider": "redis", "url": f"redis://:hunter2@127.0.0.1:{free_port()}/0"}
    unavailable = metric("voxgate_store_loads_total", backend="redis", outcome="unavailable")
    with structlog.testing.capture_logs() as logs:
        async with running_gateway(pipeline(openai, store=dead)) as gw:
            started_at = time.perf_counter()
            async with session(gw, resume="A" * 43) as (client, started):
                took_s = time.perf_counter() - started_at
                end = await typed_turn(client, "hello")

    assert started.resumed is False and started.resume_token
    assert end.reason == protocol.TurnEndReason.COMPLETED
    assert took_s < 1.0
    assert metric("voxgate_store_loads_total", backend="redis", outcome="unavailable") == (
        unavailable + 1
    )
    warnings = [e for e in logs if e["event"] == "store_unavailable"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert "hunter2" not in str(logs)


async def test_a_hung_redis_delays_a_resume_by_at_most_load_timeout_ms(
    openai: FakeOpenAI, tmp_path: Path
) -> None:
    with RedisServer(tmp_path / "redis") as hung:
        store = {**redis_store(hung), "load_timeout_ms": 100}
        async with running_gateway(pipeline(openai, store=store)) as gw:
            async with session(gw) as (client, first):
                await typed_turn(client, "my name is Ada")
            await wait_sessions_closed(gw)
            hung.pause()
            try:
                started_at = time.perf_counter()
                async with session(gw, resume=first.resume_token) as (client, during):
                    took_s = time.perf_counter() - started_at
                    end = await typed_turn(client, "hello")
            finally:
                hung.resume()

    assert during.resumed is False and end.reason == protocol.TurnEndReason.COMPLETED
    assert took_s < 0.6, f"session start took {took_s:.3f} s"


async def test_a_session_that_cannot_start_gives_its_conversation_back_for_the_retry(
    openai: FakeOpenAI, redis_server: RedisServer
) -> None:
    store = redis_store(redis_server)
    healthy = pipeline(openai, store=store)
    broken = pipeline(
        openai,
        store=store,
        stt={"provider": "deepgram", "api_key": "k", "base_url": f"http://127.0.0.1:{free_port()}"},
    )
    async with running_gateway(healthy) as a, running_gateway(broken) as b:
        async with session(a) as (client, first):
            await typed_turn(client, "my name is Ada")
        await wait_sessions_closed(a)
        async with VoiceClient.connect(b.url()) as client:
            with pytest.raises(ConnectionClosed) as refused:
                await client.start(resume=first.resume_token)
        async with asyncio.timeout(5):  # its provider probe goes on: no task check here
            while b.table.sessions:
                await asyncio.sleep(0.01)
        async with session(a, resume=first.resume_token) as (client, retried):
            await typed_turn(client, "who am I")

    assert refused.value.rcvd is not None and refused.value.rcvd.code == 1013
    assert retried.resumed is True
    assert sent_to_llm(openai)[-1][0] == ("user", "my name is Ada")


# Two gateways sharing one Redis


async def test_a_conversation_started_on_one_gateway_continues_on_another(
    openai: FakeOpenAI, redis_server: RedisServer
) -> None:
    shared = pipeline(openai, store=redis_store(redis_server))
    async with running_gateway(shared) as one, running_gateway(shared) as other:
        async with session(one) as (client, first):
            await typed_turn(client, "my name is Ada")
            await drop(client)
        await wait_sessions_closed(one)
        async with session(other, resume=first.resume_token) as (client, moved):
            end = await typed_turn(client, "what is my name")
        async with session(one, resume=moved.resume_token) as (client, back):
            await typed_turn(client, "thanks")

    assert moved.resumed and back.resumed and end.turn_id == 2
    assert [text for _, text in sent_to_llm(openai)[-1]] == [
        "my name is Ada",
        "Noted.",
        "what is my name",
        "Noted.",
        "thanks",
    ]


# Two `voxgate serve` processes: a deploy's drain, a machine lost mid-turn


def pipeline_file(fake: FakeOpenAI) -> str:
    return (
        "name: talk\n"
        "vad: {provider: none}\n"
        "stt: {provider: scripted}\n"
        f"llm: {{provider: openai, base_url: '{fake.base_url}', api_key: {fake.api_key}}}\n"
        "tts: {provider: scripted, ttfb_ms: 0, words_per_minute: 6000}\n"
        "store:\n"
        "  provider: redis\n"
        "  url: ${REDIS_URL}\n"
        "  key_prefix: ${REDIS_PREFIX}\n"
    )


@contextmanager
def two_gateways(folder: Path, redis: RedisServer) -> Iterator[tuple[Server, Server]]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "REDIS_URL": redis.url}
    env["REDIS_PREFIX"] = f"serve{time.monotonic_ns()}:"
    servers: list[Server] = []
    try:
        for name in ("one", "two"):
            port = free_port()
            log = folder.parent / f"{name}.log"
            cmd = [sys.executable, "-m", "gateway", "serve", "--pipelines", str(folder)]
            cmd += ["--port", str(port)]
            with log.open("wb") as sink:
                process = subprocess.Popen(cmd, stderr=sink, env=env)
            servers.append(Server(process, port, log))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.process.kill()
            server.process.wait(10)


def ws(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws/talk"


async def test_a_drained_gateways_conversation_continues_on_the_other_process(
    openai: FakeOpenAI, redis_server: RedisServer, tmp_path: Path
) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "talk.yaml").write_text(pipeline_file(openai))
    with two_gateways(folder, redis_server) as (one, two):
        await asyncio.gather(wait_ready(one), wait_ready(two))
        async with VoiceClient.connect(ws(one)) as client:
            first = await client.start()
            await typed_turn(client, "my name is Ada")
            one.process.send_signal(signal.SIGTERM)  # a deploy: drain, then exit
            closed = await closed_by_server(client)
        async with VoiceClient.connect(ws(two)) as client:
            moved = await client.start(resume=first.resume_token)
            end = await typed_turn(client, "what is my name")
        # uvicorn re-raises the SIGTERM once it has shut down (gateway/server.py)
        assert one.process.wait(15) == -signal.SIGTERM, one.log.read_text()[-3000:]

    assert closed.rcvd is not None and closed.rcvd.code == 1001
    assert moved.resumed and end.turn_id == 2
    assert sent_to_llm(openai)[-1] == [
        ("user", "my name is Ada"),
        ("assistant", "Noted."),
        ("user", "what is my name"),
    ]


async def test_a_gateway_killed_mid_turn_loses_only_the_turn_in_flight(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with FakeOpenAI(reply="Noted, and here is a long answer.", token_delay_s=0.3) as fake:
        folder = tmp_path / "pipelines"
        folder.mkdir()
        (folder / "talk.yaml").write_text(pipeline_file(fake))
        with two_gateways(folder, redis_server) as (one, two):
            await asyncio.gather(wait_ready(one), wait_ready(two))
            async with VoiceClient.connect(ws(one)) as client:
                first = await client.start()
                await typed_turn(client, "my name is Ada")
                await client.send(protocol.Playback(turn_id=1, played_ms=60_000, finished=True))
                await client.send(protocol.Text(text="tell me a long story"))
                await client.expect(protocol.LLMToken)  # mid-reply
                one.process.kill()
                await closed_by_server(client)
            async with VoiceClient.connect(ws(two)) as client:
                moved = await client.start(resume=first.resume_token)
                end = await typed_turn(client, "what is my name")

    assert moved.resumed and end.turn_id == 2, "the counter as saved after turn 1"
    *_, killed, resumed = sent_to_llm(fake)
    assert killed[-1] == ("user", "tell me a long story")
    assert resumed == [*killed[:-1], ("user", "what is my name")]
    assert resumed == [
        ("user", "my name is Ada"),
        ("assistant", "Noted, and here is a long answer."),
        ("user", "what is my name"),
    ]


# The JS SDK resumes by itself


node = sdk_tests.node  # the SDK's e2e fixture: node, with dist/ freshly built


@asynccontextmanager
async def gateway_on(port: int, *pipelines: Pipeline) -> AsyncIterator[int]:
    async with served(make_server(PipelineTable.of(list(pipelines)), "127.0.0.1", port)) as bound:
        yield bound


async def test_the_sdk_continues_a_conversation_across_a_server_restart(
    node: str, openai: FakeOpenAI, redis_server: RedisServer, tmp_path: Path
) -> None:
    p = pipeline(openai, vad={"provider": "none"}, store=redis_store(redis_server))
    script = sdk_tests.SDK / "test" / "e2e" / "resume-restart.mjs"
    marker = tmp_path / "turn-1-ended"
    async with gateway_on(0, p) as port:
        url = f"ws://127.0.0.1:{port}/ws/test"
        client = asyncio.create_task(run_node(node, script, url, str(marker)))
        async with asyncio.timeout(20):
            while not marker.exists() and not client.done():
                await asyncio.sleep(0.01)
    # Restarted: a new gateway on the same port, the conversations in Redis.
    async with gateway_on(port, p):
        result = await client

    assert result["resumed"] == [False, True] and result["tokens"] == 2
    assert result["reconnects"][0] == 1012, "uvicorn's shutdown closes with 1012"
    assert result["turn_ids"] == [1, 2] and result["text"] == "Noted."
    assert sent_to_llm(openai)[-1] == [
        ("user", "my name is Ada"),
        ("assistant", "Noted."),
        ("user", "what is my name"),
    ]
