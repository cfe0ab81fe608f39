"""The server-side tool executors against real servers on 127.0.0.1: a web API (a Litestar app)
for `http` tools, and the official SDK's `MCPServer` over streamable HTTP for `mcp` tools.
Both run under uvicorn on this test's event loop; nothing of httpx or the MCP SDK is replaced.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from litestar import Litestar, Request, post
from litestar.response import Response, Stream

from adapters.base import ToolSpec
from gateway.config import HTTPTool
from gateway.providers.shared import close_shared
from gateway.tools import http, mcp
from gateway.tools.outcome import ToolFailed
from tests.conftest import gateway_tasks
from tests.fakes.mcp_server import SECRET, ToolServer, serving, tool_server, weather_tools


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(autouse=True)
async def executors_closed() -> AsyncIterator[None]:
    """Every test ends with the executors' shared state closed, and no task of theirs left."""
    yield
    await close_shared()
    assert gateway_tasks() == [] and mcp_sessions() == [], "an executor left tasks running"


# A web API --------------------------------------------------------------------------------


@dataclass
class Seen:
    body: Any
    authorization: str | None
    client_port: int


@dataclass
class WebAPI:
    base_url: str
    seen: list[Seen]
    hung_up: asyncio.Event
    """Set when a client closed the connection of an answer still being sent."""
    release: asyncio.Event
    """Set at the end of the test: the sleepy answer stops waiting."""

    def tool(self, path: str, **keys: Any) -> HTTPTool:
        return HTTPTool(url=f"{self.base_url}{path}", headers={"Authorization": SECRET}, **keys)


async def _saw(request: Request[Any, Any, Any]) -> Any:
    body = await request.json()
    port = request.client.port if request.client is not None else 0
    request.app.state.seen.append(Seen(body, request.headers.get("authorization"), port))
    return body


@post("/weather", status_code=200)
async def weather_api(request: Request[Any, Any, Any]) -> Response[str]:
    body = await _saw(request)
    # Pretty-printed, as some APIs answer: the model is given it compacted.
    pretty = json.dumps({"city": body["city"], "sky": "sunny"}, indent=2)
    return Response(pretty, media_type="application/json")


@post("/note", status_code=200, media_type="text/plain")
async def note_api(request: Request[Any, Any, Any]) -> str:
    await _saw(request)
    return "Bring an umbrella to Zürich."


@post("/broken", status_code=200)
async def broken_api(request: Request[Any, Any, Any]) -> Response[str]:
    await _saw(request)
    echoed = f"the database is down (you sent Authorization: {request.headers['authorization']})"
    return Response(echoed + " " + "x" * 500, status_code=500, media_type="text/plain")


@post("/garbled", status_code=200)
async def garbled_api(request: Request[Any, Any, Any]) -> Response[str]:
    await _saw(request)
    return Response("{'not': json", media_type="application/json")


@post("/endless", status_code=200)
async def endless_api(request: Request[Any, Any, Any]) -> Stream:
    await _saw(request)

    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 1024
            await asyncio.sleep(0)

    return Stream(chunks(), media_type="text/plain")


@post("/trickle", status_code=200)
async def trickle_api(request: Request[Any, Any, Any]) -> Stream:
    await _saw(request)
    hung_up: asyncio.Event = request.app.state.hung_up

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"."
                await asyncio.sleep(0.05)
        finally:
            hung_up.set()

    return Stream(chunks(), media_type="text/plain")


@post("/sleepy", status_code=200)
async def sleepy_api(request: Request[Any, Any, Any]) -> str:
    await _saw(request)
    await request.app.state.release.wait()
    return "too late"


@pytest.fixture
async def web_api() -> AsyncIterator[WebAPI]:
    handlers = [weather_api, note_api, broken_api, garbled_api, endless_api, trickle_api]
    app = Litestar([*handlers, sleepy_api])
    api = WebAPI("", [], asyncio.Event(), asyncio.Event())
    app.state.seen, app.state.hung_up, app.state.release = api.seen, api.hung_up, api.release
    async with serving(app) as port:
        api.base_url = f"http://127.0.0.1:{port}"
        yield api
        api.release.set()
        await http.close_shared_clients()


async def failure(call: Any) -> ToolFailed:
    with pytest.raises(ToolFailed) as failed:
        await call
    return failed.value


async def test_an_http_tool_posts_the_arguments_as_json_with_its_headers(web_api: WebAPI) -> None:
    await http.call_http(web_api.tool("/weather"), {"city": "Paris", "days": [1, 2]})

    [seen] = web_api.seen
    assert seen.body == {"city": "Paris", "days": [1, 2]}
    assert seen.authorization == SECRET


async def test_an_http_tool_json_answer_reaches_the_model_compacted(web_api: WebAPI) -> None:
    answer = await http.call_http(web_api.tool("/weather"), {"city": "Paris"})

    assert answer == '{"city":"Paris","sky":"sunny"}'


async def test_an_http_tool_text_answer_reaches_the_model_as_it_is(web_api: WebAPI) -> None:
    assert await http.call_http(web_api.tool("/note"), {}) == "Bring an umbrella to Zürich."


async def test_http_tool_calls_reuse_one_kept_alive_connection(web_api: WebAPI) -> None:
    for city in ("Paris", "Oslo", "Rome"):
        await http.call_http(web_api.tool("/weather"), {"city": city})

    assert len({seen.client_port for seen in web_api.seen}) == 1


async def test_an_http_tool_answer_longer_than_max_bytes_fails_as_too_large(
    web_api: WebAPI,
) -> None:
    # The answer never ends: only a reader that stops at max_bytes comes back.
    failed = await failure(http.call_http(web_api.tool("/endless", max_bytes=4096), {}))

    assert failed.kind == "too_large"
    assert "4096" in str(failed)


async def test_an_http_tool_error_status_fails_quoting_the_answer_without_the_tools_secret(
    web_api: WebAPI,
) -> None:
    failed = await failure(http.call_http(web_api.tool("/broken"), {}))

    assert failed.kind == "status"
    message = str(failed)
    assert "answered HTTP 500: the database is down" in message
    assert "s3cret-token-4711" not in message
    assert len(message) < 300, "the quote is the answer's first 200 characters"


async def test_an_http_tool_answer_that_claims_json_but_is_not_fails_as_a_bad_answer(
    web_api: WebAPI,
) -> None:
    failed = await failure(http.call_http(web_api.tool("/garbled"), {}))

    assert failed.kind == "bad_answer"


async def test_an_http_tool_slower_than_its_timeout_fails_as_unreachable(
    web_api: WebAPI,
) -> None:
    failed = await failure(http.call_http(web_api.tool("/sleepy", timeout_ms=200), {}))

    assert failed.kind == "unreachable"
    assert "did not answer within 200 ms" in str(failed)


async def test_an_http_tool_nobody_listens_for_fails_as_unreachable() -> None:
    tool = HTTPTool(url=f"http://127.0.0.1:{unused_port()}/weather", headers={"X-Key": SECRET})

    failed = await failure(http.call_http(tool, {}))

    assert failed.kind == "unreachable"
    assert "s3cret" not in str(failed)


async def test_a_cancelled_http_tool_call_hangs_up_on_the_api(web_api: WebAPI) -> None:
    # The toolbox bounds each call with asyncio.timeout: the connection must go with it.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await http.call_http(web_api.tool("/trickle"), {})

    await asyncio.wait_for(web_api.hung_up.wait(), 2)
    assert await http.call_http(web_api.tool("/note"), {}) == "Bring an umbrella to Zürich."


# An MCP server ------------------------------------------------------------------------------


@pytest.fixture
async def weather() -> AsyncIterator[ToolServer]:
    async with tool_server() as server:
        yield server


def names(specs: list[ToolSpec]) -> list[str]:
    return sorted(spec.name for spec in specs)


async def test_an_mcp_servers_tools_are_offered_with_their_descriptions_and_schemas(
    weather: ToolServer,
) -> None:
    specs = {spec.name: spec for spec in await mcp.list_tools(weather.tool())}

    assert sorted(specs) == ["add", "chart", "forecast", "report", "slow", "weather"]
    assert specs["add"].description == "Add two numbers."
    assert specs["add"].parameters["properties"].keys() == {"a", "b"}
    assert specs["add"].parameters["required"] == ["a", "b"]


async def test_only_the_mcp_tools_named_in_only_are_offered(weather: ToolServer) -> None:
    assert names(await mcp.list_tools(weather.tool(only=["weather", "add"]))) == ["add", "weather"]


async def test_an_mcp_tool_call_returns_the_text_the_tool_answered(weather: ToolServer) -> None:
    tool = weather.tool()

    assert await mcp.call_mcp(tool, "weather", {"city": "Oslo"}) == "Sunny in Oslo."
    assert await mcp.call_mcp(tool, "add", {"a": 2, "b": 3}) == "5"
    assert weather.authorization == SECRET.encode()


async def test_an_mcp_tool_answer_without_text_reaches_the_model_as_its_structured_json(
    weather: ToolServer,
) -> None:
    answer = await mcp.call_mcp(weather.tool(), "forecast", {"city": "Oslo"})

    assert answer == '{"city":"Oslo","rain_mm":3}'


async def test_mcp_content_the_model_cannot_read_is_named_by_its_type(
    weather: ToolServer,
) -> None:
    answer = await mcp.call_mcp(weather.tool(), "chart", {"city": "Oslo"})

    assert answer == '{"type":"image"}\nOslo\'s week'


async def test_an_mcp_tool_that_reports_an_error_fails_as_tool_error_with_its_words(
    weather: ToolServer,
) -> None:
    failed = await failure(mcp.call_mcp(weather.tool(), "weather", {"city": "Atlantis"}))

    assert failed.kind == "tool_error"
    assert str(failed).endswith("no weather station in Atlantis")


async def test_an_mcp_tool_answer_longer_than_max_bytes_fails_as_too_large(
    weather: ToolServer,
) -> None:
    tool = weather.tool(max_bytes=4096)

    assert len(await mcp.call_mcp(tool, "report", {"kib": 4})) == 4096
    failed = await failure(mcp.call_mcp(tool, "report", {"kib": 5}))
    assert failed.kind == "too_large"
    assert "`report`" in str(failed) and "4096" in str(failed)


async def test_calling_a_tool_the_mcp_server_does_not_offer_fails_as_unknown_tool(
    weather: ToolServer,
) -> None:
    missing = await failure(mcp.call_mcp(weather.tool(), "tides", {}))
    left_out = await failure(mcp.call_mcp(weather.tool(only=["weather"]), "add", {"a": 1}))

    assert missing.kind == left_out.kind == "unknown_tool"
    assert "`tides`" in str(missing)


async def test_an_mcp_server_is_listed_once_while_its_listing_is_fresh(
    weather: ToolServer,
) -> None:
    tool = weather.tool()

    # Sessions starting together share one listing; later ones reuse it.
    await asyncio.gather(*(mcp.list_tools(tool) for _ in range(5)))
    await mcp.list_tools(tool)
    await mcp.list_tools(weather.tool(only=["add"]))
    await mcp.call_mcp(tool, "add", {"a": 1, "b": 1})

    assert weather.mcp_server.listings == 1


async def test_an_mcp_server_is_listed_again_after_refresh_s(weather: ToolServer) -> None:
    tool = weather.tool(refresh_s=0.1)

    await mcp.list_tools(tool)
    await asyncio.sleep(0.15)
    await mcp.list_tools(tool)

    assert weather.mcp_server.listings == 2


async def test_mcp_calls_cost_one_request_each_once_the_tools_are_listed(
    weather: ToolServer,
) -> None:
    tool = weather.tool()
    await mcp.call_mcp(tool, "add", {"a": 0, "b": 0})
    before = weather.requests

    answers = await asyncio.gather(
        *(mcp.call_mcp(tool, "add", {"a": i, "b": 1}) for i in range(10))
    )

    assert answers == [str(i + 1) for i in range(10)]
    assert weather.requests - before == 10


async def test_a_cancelled_mcp_call_leaves_the_session_usable(weather: ToolServer) -> None:
    tool = weather.tool()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await mcp.call_mcp(tool, "slow", {"seconds": 5})

    assert await mcp.call_mcp(tool, "add", {"a": 1, "b": 2}) == "3"


async def test_an_mcp_server_that_is_down_fails_as_unreachable_and_is_not_remembered() -> None:
    server = ToolServer(weather_tools(), port=unused_port())
    tool = server.tool()

    listing = await failure(mcp.list_tools(tool))
    call = await failure(mcp.call_mcp(tool, "add", {"a": 1, "b": 2}))

    assert listing.kind == call.kind == "unreachable"
    assert "s3cret" not in str(listing)
    async with server.running():
        assert await mcp.call_mcp(tool, "add", {"a": 1, "b": 2}) == "3"
        await mcp.close_shared_clients()


async def test_an_mcp_server_gone_mid_session_fails_the_call_and_is_reached_on_its_return() -> None:
    server = ToolServer(weather_tools())
    async with server.running():
        tool = server.tool()
        assert await mcp.call_mcp(tool, "add", {"a": 1, "b": 2}) == "3"

    async with asyncio.timeout(5):  # neither a hang nor a cancellation of the caller
        failed = await failure(mcp.call_mcp(tool, "add", {"a": 1, "b": 2}))
    assert failed.kind == "unreachable"

    async with server.running():  # on the same port
        assert await mcp.call_mcp(tool, "add", {"a": 2, "b": 2}) == "4"
        await mcp.close_shared_clients()


async def test_a_2025_server_that_forgot_our_session_is_called_on_a_new_one() -> None:
    async with tool_server(era="2025") as server:
        tool = server.tool()
        assert await mcp.call_mcp(tool, "add", {"a": 1, "b": 2}) == "3"
        assert len(server.sessions) == 1, "the 2025 handshake opened a session"

        server.forget_sessions()

        assert await mcp.call_mcp(tool, "add", {"a": 2, "b": 2}) == "4"
        assert len(server.sessions) == 2


def mcp_sessions() -> list[asyncio.Task[Any]]:
    """The tasks holding MCP sessions open (server tasks: `gateway_tasks` leaves them out)."""
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "_Connection._run"]


async def test_closing_the_shared_clients_ends_every_mcp_session(weather: ToolServer) -> None:
    await mcp.call_mcp(weather.tool(), "add", {"a": 1, "b": 2})
    assert mcp_sessions() != [], "the session is kept open between calls"

    await close_shared()

    assert mcp_sessions() == [] and gateway_tasks() == []
