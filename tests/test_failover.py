"""The failover rules, provider-independent: scripted providers that fail as configured.

Each provider's own faults (refusals, 429, drops, 401 on the wire) are covered with its fake
server in test_deepgram/test_openai/test_cartesia; here the chain's rules are checked once.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY

from adapters.base import ChatMessage
from adapters.catalog import LLMProvider
from adapters.scripted import ScriptedLLM
from gateway import protocol
from gateway.client import VoiceClient
from gateway.errors import PermanentProviderError, ProviderError
from gateway.providers.failover import FailoverLLM
from gateway.providers.health import ProviderHealth, State, breaker_key
from tests.conftest import make_pipeline, running_gateway

QUESTION = [ChatMessage("user", "hi")]


def llm(**fallback: Any) -> LLMProvider:
    """A primary that fails before its first token, and one scripted fallback."""
    primary = {"provider": "scripted", "model": "a", "reply": "from the primary", "ttft_ms": 0}
    backup = {"provider": "scripted", "model": "b", "reply": "from the fallback", "ttft_ms": 0}
    return msgspec.convert({**primary, **fallback, "fallback": [backup]}, ScriptedLLM)


async def reply(chain: FailoverLLM) -> str:
    async with aclosing(chain.stream(QUESTION)) as deltas:
        return "".join([d async for d in deltas])


def primary_key(config: LLMProvider) -> str:
    return breaker_key("llm", "scripted", config.base_url, config.model, config.api_key)


async def test_failure_before_the_first_token_moves_the_same_turn_to_the_fallback() -> None:
    health = ProviderHealth()
    config = llm(fail_after_tokens=0)
    chain = FailoverLLM(config, health, pipeline="test")
    await chain.start()

    assert await reply(chain) == "from the fallback"
    assert health.state(primary_key(config)) is State.DOWN


async def test_no_first_token_within_timeout_ms_counts_as_a_failure() -> None:
    health = ProviderHealth()
    config = llm(ttft_ms=5000, timeout_ms=50)
    chain = FailoverLLM(config, health, pipeline="test")

    assert await reply(chain) == "from the fallback"
    assert health.state(primary_key(config)) is State.DOWN


async def test_failure_after_output_started_ends_the_turn_and_the_next_turn_uses_the_fallback() -> (
    None
):
    health = ProviderHealth()
    config = llm(fail_after_tokens=2)
    chain = FailoverLLM(config, health, pipeline="test")
    seen: list[str] = []

    async def read_all() -> None:
        async with aclosing(chain.stream(QUESTION)) as deltas:
            async for delta in deltas:
                seen.append(delta)

    labels = {"pipeline": "test", "stage": "llm", "provider": "scripted"}
    failures = {**labels, "kind": "ProviderError"}
    before = REGISTRY.get_sample_value("voxgate_provider_failures_total", failures) or 0.0
    with pytest.raises(ProviderError, match="after 2 tokens"):
        await read_all()
    assert "".join(seen) == "from the", "what reached the client is not taken back"
    assert await reply(chain) == "from the fallback"
    assert REGISTRY.get_sample_value("voxgate_provider_failures_total", failures) == before + 1


async def test_a_refused_key_is_never_tried_again() -> None:
    health = ProviderHealth()
    config = llm()
    key = primary_key(config)
    health.failed(key, PermanentProviderError("scripted", "401"), probe=_never_called)

    assert await reply(FailoverLLM(config, health, pipeline="test")) == "from the fallback"
    assert health.state(key) is State.REFUSED


async def test_a_down_provider_gets_traffic_back_only_after_a_background_probe() -> None:
    health = ProviderHealth(first_probe_s=0.05)
    config = llm()
    key = primary_key(config)
    probed = asyncio.Event()

    async def probe() -> None:
        probed.set()

    health.failed(key, ProviderError("scripted", "503"), probe)
    assert await reply(FailoverLLM(config, health, pipeline="test")) == "from the fallback"
    async with health.probing():
        await probed.wait()
        while health.state(key) is not State.HEALTHY:
            await asyncio.sleep(0.01)
    assert await reply(FailoverLLM(config, health, pipeline="test")) == "from the primary"


async def test_a_probe_that_fails_keeps_the_provider_down_and_backs_off() -> None:
    health = ProviderHealth(first_probe_s=0.01, max_probe_s=0.04)
    key = "llm:scripted:default:x"
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1
        raise ProviderError("scripted", "still down")

    health.failed(key, ProviderError("scripted", "503"), probe)
    async with health.probing():
        while calls < 4:
            await asyncio.sleep(0.01)
    assert health.state(key) is State.DOWN


async def test_every_provider_failing_reports_all_of_them() -> None:
    config = llm(fail_after_tokens=0)
    both = msgspec.structs.replace(
        config, fallback=[msgspec.structs.replace(config.fallback[0], fail_after_tokens=0)]
    )
    with pytest.raises(ProviderError, match="all 2 providers failed"):
        await reply(FailoverLLM(both, ProviderHealth(), pipeline="test"))


async def test_the_gateway_answers_from_the_fallback_when_the_primary_fails_first() -> None:
    pipeline = make_pipeline(
        llm={
            "fail_after_tokens": 0,
            "fallback": [
                {"provider": "scripted", "model": "b", "reply": "Backup here.", "ttft_ms": 0}
            ],
        }
    )
    async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="hello"))
        events, end = await client.collect_until(protocol.TurnEnd)

    tokens = "".join(e.text for e in events if isinstance(e, protocol.LLMToken))
    assert (tokens, end.reason) == ("Backup here.", "completed")
    assert not any(isinstance(e, protocol.Error) for e in events)


async def _never_called() -> None:
    raise AssertionError("a refused provider is not probed")
