"""A real MCP server on 127.0.0.1: the official SDK's `MCPServer` over streamable HTTP under
uvicorn, with tools of every kind of result. It counts its listings and HTTP requests and can
play a server of the 2025 protocol (which knows nothing of the 2026 one, and forgets sessions
when restarted).

    async with tool_server() as server:
        ... MCPTool(url=server.url) ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from litestar import Litestar
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import MCPTool
from gateway.tools import mcp
from tests.serving import served

SECRET = "Bearer s3cret-token-4711"


@asynccontextmanager
async def serving(app: ASGIApp | Litestar, port: int = 0) -> AsyncIterator[int]:
    """`app` under uvicorn on 127.0.0.1 (lifespan on: the MCP app needs it); the port."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    async with served(uvicorn.Server(config)) as bound:
        yield bound


def weather_tools() -> Counting:
    """A server with tools of every kind of result, counting how often it is listed."""
    server = Counting("weather")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def weather(city: str) -> str:
        """Today's weather in a city."""
        if city == "Atlantis":
            raise ToolError("no weather station in Atlantis")
        return f"Sunny in {city}."

    @server.tool()
    def forecast(city: str) -> CallToolResult:
        """Tomorrow's forecast, as data only."""
        return CallToolResult(content=[], structured_content={"city": city, "rain_mm": 3})

    @server.tool()
    def chart(city: str) -> CallToolResult:
        """A chart of the week."""
        image = ImageContent(type="image", data="iVBORw0KGgo=", mime_type="image/png")
        return CallToolResult(content=[image, TextContent(type="text", text=f"{city}'s week")])

    @server.tool()
    def report(kib: int) -> str:
        """A report of `kib` KiB."""
        return "x" * kib * 1024

    @server.tool()
    async def slow(seconds: float) -> str:
        """Answers late."""
        await asyncio.sleep(seconds)
        return "finally"

    return server


class Counting(MCPServer):
    listings = 0

    async def list_tools(self) -> Any:
        self.listings += 1
        return await super().list_tools()


@dataclass
class ToolServer:
    """The MCP endpoint as the network sees it: counts its HTTP requests and, playing a server
    of the 2025 protocol, knows nothing of the 2026 one (and can forget its sessions)."""

    mcp_server: Counting
    era: str = "2026"
    port: int = 0
    requests: int = 0
    authorization: bytes | None = None
    """The Authorization header of the last request."""
    sessions: set[bytes] = field(default_factory=set)
    forgotten: set[bytes] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def tool(self, **keys: Any) -> MCPTool:
        return MCPTool(url=self.url, headers={"Authorization": SECRET}, **keys)

    def forget_sessions(self) -> None:
        """As a restarted server does: requests of the sessions so far answer 404."""
        self.forgotten |= self.sessions

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ToolServer]:
        async with serving(self.endpoint(self.mcp_server.streamable_http_app()), self.port) as port:
            self.port = port
            yield self

    def endpoint(self, app: ASGIApp) -> ASGIApp:
        async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            self.requests += 1
            headers = dict(scope["headers"])
            self.authorization = headers.get(b"authorization")
            if self.era == "2025" and headers.get(b"mcp-protocol-version", b"") >= b"2026":
                # What a 2025 server says to a request without a session.
                return await plain(send, 400, b"Bad Request: Missing session ID")
            if headers.get(b"mcp-session-id") in self.forgotten:
                return await plain(send, 404, b"Session not found")

            async def noting(message: Message) -> None:
                if message["type"] == "http.response.start":
                    sessions = [v for k, v in message["headers"] if k == b"mcp-session-id"]
                    self.sessions.update(sessions)
                await send(message)

            await app(scope, receive, noting)

        return endpoint


async def plain(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def tool_server(era: str = "2026") -> AsyncIterator[ToolServer]:
    server = ToolServer(weather_tools(), era)
    async with server.running():
        yield server
        # Sessions end while their server still answers (a 2025 one is told goodbye).
        await mcp.close_shared_clients()
