"""Session slots go to authenticated clients only; strangers are bounded on their own.

Before (issue 13): a slot was counted at accept, so ten silent sockets held a
`max_sessions: 10` token route full for `start_timeout_s` and a user with a valid token got
1013; reconnecting kept the route full for good.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from gateway import protocol
from gateway.capacity import Capacity, default_max_sessions, route_limit
from gateway.client import VoiceClient
from gateway.loader import load_pipeline
from gateway.security import mint_token
from tests.conftest import make_pipeline, running_gateway, wait_sessions_closed
from tests.security.test_tokens import SECRET, start_with
from tests.test_session import closed_with

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
GUARDED = make_pipeline(
    auth={"mode": "token", "secret": SECRET},
    limits={"max_sessions": 10, "start_timeout_s": 10},
)


async def silent_sockets(stack: AsyncExitStack, url: str, count: int) -> list[ClientConnection]:
    """Open sockets that never send session_start (nothing but the upgrade)."""
    return [await stack.enter_async_context(connect(url)) for _ in range(count)]


async def until_accepted(gw_sessions: set[object], count: int) -> None:
    async with asyncio.timeout(5):
        while len(gw_sessions) < count:
            await asyncio.sleep(0.01)


async def test_silent_sockets_do_not_take_a_token_routes_session_slots() -> None:
    capacity = Capacity(max_unauthenticated_per_address=50, max_sockets_per_address=0)
    async with running_gateway(GUARDED, capacity=capacity) as gw, AsyncExitStack() as stack:
        await silent_sockets(stack, gw.url(), 10)
        await until_accepted(gw.table.sessions, 10)
        async with VoiceClient.connect(gw.url()) as user:
            await user.send(start_with(mint_token(SECRET, "test", 3600)))
            started = await user.expect(protocol.SessionStarted)
    assert started.pipeline == "test"


async def test_the_slot_goes_to_whoever_authenticates_first() -> None:
    one = make_pipeline(limits={"max_sessions": 1})
    async with running_gateway(one) as gw, VoiceClient.connect(gw.url()) as early:
        await until_accepted(gw.table.sessions, 1)  # accepted, no session_start yet
        async with VoiceClient.connect(gw.url()) as late:
            await late.start()  # authenticates first: the slot is its
            await early.send(start_with(None))
            code, reason = await closed_with(early)
            async with VoiceClient.connect(gw.url()) as third:
                refused_at_accept, _ = await closed_with(third)
    assert code == 1013 and "at capacity" in reason
    assert refused_at_accept == 1013, "a full route refuses new sockets at once"


async def test_unauthenticated_sockets_are_capped_per_address() -> None:
    capacity = Capacity(max_unauthenticated_per_address=3)
    async with running_gateway(capacity=capacity) as gw, AsyncExitStack() as stack:
        waiting = await silent_sockets(stack, gw.url(), 3)
        async with VoiceClient.connect(gw.url()) as fourth:
            code, reason = await closed_with(fourth)
        assert code == 1013 and "without a session" in reason
        await waiting[0].close()
        async with asyncio.timeout(5):
            while gw.table.capacity.unauthenticated["127.0.0.1"] > 2:
                await asyncio.sleep(0.01)
        async with VoiceClient.connect(gw.url()) as next_one:
            await next_one.start()  # a freed place is free again


async def test_unauthenticated_sockets_are_capped_per_process() -> None:
    capacity = Capacity(max_unauthenticated=2, max_unauthenticated_per_address=100)
    async with running_gateway(capacity=capacity) as gw, AsyncExitStack() as stack:
        await silent_sockets(stack, gw.url(), 2)
        async with VoiceClient.connect(gw.url()) as third:
            code, reason = await closed_with(third)
    assert code == 1013 and "waiting to start" in reason


async def test_sockets_are_capped_per_address() -> None:
    capacity = Capacity(max_sockets_per_address=2)
    async with running_gateway(capacity=capacity) as gw:
        async with VoiceClient.connect(gw.url()) as a, VoiceClient.connect(gw.url()) as b:
            await a.start()
            await b.start()
            async with VoiceClient.connect(gw.url()) as c:
                code, reason = await closed_with(c)
        await wait_sessions_closed(gw)
        assert not gw.table.capacity.sockets, "every address is forgotten once it has gone"
    assert code == 1013 and "too many connections from your address" in reason


async def test_a_socket_without_session_start_is_closed_within_start_timeout() -> None:
    quick = make_pipeline(limits={"start_timeout_s": 0.3})
    async with running_gateway(quick) as gw, connect(gw.url()) as silent:
        code, reason = await closed_with_raw(silent)
    assert code == 1008 and "start_timeout_s" in reason


async def closed_with_raw(ws: ClientConnection) -> tuple[int | None, str]:
    async with asyncio.timeout(5):
        await ws.wait_closed()
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or ""


def test_the_default_start_timeout_is_short() -> None:
    assert make_pipeline().limits.start_timeout_s <= 5


async def test_a_proxys_client_address_header_names_the_address_to_count() -> None:
    """Behind Fly's proxy every connection comes from the proxy: per-address limits count the
    address it puts in `fly-client-ip` instead, so one client cannot crowd out the others."""
    capacity = Capacity(max_sockets_per_address=1, address_header="fly-client-ip")
    async with running_gateway(capacity=capacity) as gw:
        alice = {"fly-client-ip": "203.0.113.7"}
        bob = {"fly-client-ip": "198.51.100.9"}
        async with connect(gw.url(), additional_headers=alice) as first:
            async with connect(gw.url(), additional_headers=bob) as other:
                await other.send(protocol.encode(start_with(None)))
                started = protocol.decode_server(await other.recv())
                assert isinstance(started, protocol.SessionStarted)
            async with connect(gw.url(), additional_headers=alice) as second:
                code, reason = await closed_with_raw(second)
            await first.close()
    assert code == 1013 and "your address" in reason


# ---- defaults that follow measured capacity -------------------------------------------------


def test_a_process_takes_fifty_conversations_per_cpu_unless_told() -> None:
    cores = len(os.sched_getaffinity(0))
    assert Capacity().max_sessions == 50 * cores == default_max_sessions()


def test_a_route_with_an_embedded_model_takes_one_and_a_half_per_cpu_by_default() -> None:
    local = load_pipeline(PIPELINES / "local.yaml", {})
    cloud = load_pipeline(PIPELINES / "deepgram-openai-cartesia.yaml", {})
    limit = max(1, int(1.5 * len(os.sched_getaffinity(0))))
    assert route_limit(local) == limit
    assert route_limit(cloud) is None, "only the process's limit"
    told = msgspec.structs.replace(
        local, limits=msgspec.structs.replace(local.limits, max_sessions=9)
    )
    assert route_limit(told) == 9, "an explicit limits.max_sessions wins"
    capacity = Capacity()
    capacity.sessions[local.route] = limit
    assert capacity.session_refusal(local) == "route_full"
    assert capacity.session_refusal(cloud) is None
