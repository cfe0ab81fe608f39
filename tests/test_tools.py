"""Tools over a real socket: the OpenAI SDK streams tool calls from the fake OpenAI, `http`
tools POST to a web API on loopback, `mcp` tools run on a real MCP server on loopback, client
tools wait for the client's `tool_result`; slow, hanging and failing tools, barge-in during a
call, round limits and the history."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway import protocol
from gateway.client import AudioChunk, Event, VoiceClient
from tests.audio_fixtures import speech_at
from tests.conftest import make_pipeline, running_gateway
from tests.fakes.mcp_server import tool_server
from tests.fakes.openai import FakeOpenAI
from tests.fakes.webapi import WebAPI

ORDER_TOOL = {
    "name": "order_status",
    "description": "Look up an order by its number.",
    "parameters": {
        "type": "object",
        "properties": {"order": {"type": "string"}},
        "required": ["order"],
    },
}


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(
        tool_calls=[("order_status", {"order": "A17"})], after_tools="Your order: {results}"
    ) as server:
        yield server


def openai_llm(fake: FakeOpenAI) -> dict[str, Any]:
    return {"provider": "openai", "base_url": fake.base_url, "api_key": fake.api_key}


def http_tool(api: WebAPI, **http: Any) -> dict[str, Any]:
    return {
        **ORDER_TOOL,
        "http": {"url": api.url("/orders"), "headers": {"Authorization": "Bearer s3cret"}, **http},
    }


def texts(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, protocol.LLMToken))


def of(events: list[Event], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def typed_turn(client: VoiceClient, text: str) -> list[Event]:
    await client.send(protocol.Text(text=text))
    events, _ = await client.collect_until(protocol.TurnEnd)
    return events


async def test_a_typed_turn_calls_an_http_tool_and_speaks_its_answer(openai: FakeOpenAI) -> None:
    with WebAPI({"status": "shipped"}) as api:
        pipeline = make_pipeline(llm=openai_llm(openai), tools=[http_tool(api)])
        async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url()) as client:
            await client.start()
            events = await typed_turn(client, "where is my order A17")
    (call,) = of(events, protocol.ToolCall)
    assert (call.name, call.arguments, call.runs_on) == ("order_status", {"order": "A17"}, "server")
    (result,) = of(events, protocol.ToolResult)
    assert (result.call_id, result.ok) == (call.call_id, True)
    assert texts(events) == 'Your order: {"status":"shipped"}'
    assert of(events, AudioChunk), "the answer is spoken"
    assert events[-1].reason == protocol.TurnEndReason.COMPLETED
    (seen,) = api.requests
    assert seen.body == {"order": "A17"} and seen.headers["Authorization"] == "Bearer s3cret"
    first, second = (r.body for r in openai.requests if r.path.endswith("/chat/completions"))
    assert first["tools"][0]["function"]["name"] == "order_status"
    calls, result_message = second["messages"][-2:]
    assert calls["role"] == "assistant" and calls["tool_calls"][0]["id"] == call.call_id
    assert result_message == {
        "role": "tool",
        "content": '{"status":"shipped"}',
        "tool_call_id": call.call_id,
    }


async def test_the_next_turn_remembers_the_call_and_its_result(openai: FakeOpenAI) -> None:
    with WebAPI({"status": "shipped"}) as api:
        pipeline = make_pipeline(llm=openai_llm(openai), tools=[http_tool(api)])
        async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url()) as client:
            await client.start()
            await typed_turn(client, "where is my order A17")
            await client.send(protocol.Playback(turn_id=1, played_ms=60_000, finished=True))
            openai.tool_calls = []
            await typed_turn(client, "thanks")
    last = [r.body for r in openai.requests if r.path.endswith("/chat/completions")][-1]
    roles = [m["role"] for m in last["messages"]]
    assert roles[-5:] == ["user", "assistant", "tool", "assistant", "user"]
    assert last["messages"][-3]["content"] == '{"status":"shipped"}'


async def test_a_hanging_tool_times_out_into_ok_false_and_the_turn_still_ends(
    openai: FakeOpenAI,
) -> None:
    with WebAPI({"status": "shipped"}, delay_s=30) as api:
        tool = http_tool(api, timeout_ms=300)
        pipeline = make_pipeline(llm=openai_llm(openai), tools=[tool], tool_use={"filler": None})
        async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url()) as client:
            await client.start()
            events = await typed_turn(client, "where is my order A17")
    (result,) = of(events, protocol.ToolResult)
    assert result.ok is False
    assert events[-1].reason == protocol.TurnEndReason.COMPLETED
    told = [r.body for r in openai.requests if r.path.endswith("/chat/completions")][-1]
    error = json.loads(told["messages"][-1]["content"])["error"]
    assert error == "`order_status` did not answer within 0.3 s"
    assert texts(events).startswith("Your order: {")
    timeouts = REGISTRY.get_sample_value(
        "voxgate_tool_seconds_count",
        {"pipeline": "test", "tool": "order_status", "outcome": "timeout"},
    )
    assert timeouts and timeouts >= 1


async def test_barge_in_during_a_tool_call_cancels_it_and_nothing_of_it_is_spoken(
    openai: FakeOpenAI,
) -> None:
    with WebAPI({"status": "shipped"}, delay_s=30) as api:
        pipeline = make_pipeline(llm=openai_llm(openai), tools=[http_tool(api, timeout_ms=20_000)])
        async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url()) as client:
            await client.start()
            await client.send(protocol.Text(text="where is my order A17"))
            call = await client.expect(protocol.ToolCall)
            async with asyncio.timeout(5):
                while not api.requests:  # the call reached the API
                    await asyncio.sleep(0.01)
            await client.send(protocol.Interrupt())
            events, end = await client.collect_until(protocol.TurnEnd)
            assert await asyncio.to_thread(api.hung_up.wait, 5), "the request was not cancelled"
    assert end.turn_id == call.turn_id and end.reason == protocol.TurnEndReason.INTERRUPTED
    assert of(events, protocol.Interrupted)
    assert not of(events, protocol.ToolResult) and not texts(events)
    chats = [r for r in openai.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 1, "the model was not asked again with a result"


async def test_a_slow_tool_gets_the_filler_first_and_then_the_answer(openai: FakeOpenAI) -> None:
    with WebAPI({"status": "shipped"}, delay_s=0.6) as api:
        pipeline = make_pipeline(
            llm=openai_llm(openai),
            tools=[http_tool(api)],
            tool_use={"filler": {"after_ms": 100, "text": "One moment."}},
        )
        async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url()) as client:
            await client.start()
            events = await typed_turn(client, "where is my order A17")
    tokens = of(events, protocol.LLMToken)
    assert tokens[0].text == "One moment. "
    order = [type(e) for e in events if isinstance(e, protocol.LLMToken | protocol.ToolResult)]
    assert order.index(protocol.ToolResult) == 1, "the filler came while the tool ran"
    assert texts(events) == 'One moment. Your order: {"status":"shipped"}'


async def test_a_fast_tool_gets_no_filler(openai: FakeOpenAI) -> None:
    with WebAPI({"status": "shipped"}) as api:
        pipeline = make_pipeline(llm=openai_llm(openai), tools=[http_tool(api)])
        async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url()) as client:
            await client.start()
            events = await typed_turn(client, "where is my order A17")
    assert "One moment" not in texts(events)


def client_tool_pipeline(**llm: Any) -> Any:
    return make_pipeline(
        llm={
            "tool_calls": [{"name": "show_answer", "arguments": {"text": "Paris"}}],
            "after_tools": "Shown: {results}",
            **llm,
        },
        tools=[{"name": "show_answer", "description": "Show text on the page.", "timeout_ms": 500}],
    )


async def test_a_client_tool_runs_on_the_client_and_its_output_reaches_the_model() -> None:
    async with running_gateway(client_tool_pipeline()) as gw, VoiceClient.connect(gw.url()) as c:
        await c.start()
        await c.send(protocol.Text(text="show me the capital of france"))
        call = await c.expect(protocol.ToolCall)
        assert (call.name, call.arguments, call.runs_on) == (
            "show_answer",
            {"text": "Paris"},
            "client",
        )
        await c.send(protocol.ToolOutput(call_id=call.call_id, output={"shown": True}))
        events, _ = await c.collect_until(protocol.TurnEnd)
    assert texts(events) == 'Shown: {"shown":true}'
    assert not of(events, protocol.ToolResult), "the client knows its own result"


async def test_a_client_tool_nobody_answers_fails_after_its_timeout_and_the_turn_ends() -> None:
    async with running_gateway(client_tool_pipeline()) as gw, VoiceClient.connect(gw.url()) as c:
        await c.start()
        events = await typed_turn(c, "show me the capital of france")
        late = of(events, protocol.ToolCall)[0].call_id
        await c.send(protocol.ToolOutput(call_id=late, output="too late"))
        error = await c.expect(protocol.Error)
    assert texts(events) == 'Shown: {"error": "`show_answer` did not answer within 0.5 s"}'
    assert error.code == protocol.ErrorCode.BAD_MESSAGE and error.fatal is False
    assert f"no tool call `{late}` is waiting" in error.message


async def test_a_client_tool_error_is_told_to_the_model() -> None:
    async with running_gateway(client_tool_pipeline()) as gw, VoiceClient.connect(gw.url()) as c:
        await c.start()
        await c.send(protocol.Text(text="show me the capital of france"))
        call = await c.expect(protocol.ToolCall)
        await c.send(protocol.ToolOutput(call_id=call.call_id, output=None, error="no screen here"))
        events, _ = await c.collect_until(protocol.TurnEnd)
    assert texts(events) == 'Shown: {"error": "no screen here"}'


async def test_tool_rounds_stop_at_max_rounds_and_the_model_then_answers() -> None:
    pipeline = make_pipeline(
        llm={
            "tool_calls": [{"name": "show_answer", "arguments": {"text": "Paris"}}],
            "tool_rounds": 5,
            "after_tools": "Done after {results}",
        },
        tools=[{"name": "show_answer", "description": "Show text.", "timeout_ms": 100}],
        tool_use={"max_rounds": 2, "filler": None},
    )
    async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url()) as c:
        await c.start()
        events = await typed_turn(c, "show it")
    assert len(of(events, protocol.ToolCall)) == 2
    assert texts(events).startswith("Done after {")


async def test_a_call_to_a_tool_nobody_offers_fails_and_the_model_is_told(
    openai: FakeOpenAI,
) -> None:
    openai.tool_calls = [("cancel_order", {"order": "A17"})]  # a name it made up
    with WebAPI({"status": "shipped"}) as api:
        pipeline = make_pipeline(llm=openai_llm(openai), tools=[http_tool(api)])
        async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url()) as client:
            await client.start()
            events = await typed_turn(client, "cancel my order A17")
    assert not api.requests
    (call,) = of(events, protocol.ToolCall)
    assert (call.name, call.runs_on) == ("cancel_order", "server")
    assert of(events, protocol.ToolResult)[0].ok is False
    assert texts(events) == 'Your order: {"error": "there is no tool named `cancel_order`"}'


async def test_a_spoken_turn_calls_an_mcp_servers_tool_through_the_official_sdk() -> None:
    async with (
        tool_server() as server,
        FakeOpenAI(tool_calls=[("weather", {"city": "Lyon"})], after_tools="{results}") as openai,
    ):
        pipeline = make_pipeline(
            llm=openai_llm(openai),
            tools=[{"mcp": {"url": server.url, "only": ["weather", "add"]}}],
        )
        async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url()) as client:
            await client.start()
            await client.send_audio(speech_at(16000, "what is the weather in lyon").tobytes())
            await client.send(protocol.AudioEnd())
            events, _ = await client.collect_until(protocol.TurnEnd)
    (call,) = of(events, protocol.ToolCall)
    assert (call.name, call.runs_on) == ("weather", "server")
    assert of(events, protocol.ToolResult)[0].ok is True
    assert texts(events) == "Sunny in Lyon."
    offered = [t["function"]["name"] for t in openai.requests[-2].body["tools"]]
    assert sorted(offered) == ["add", "weather"]
