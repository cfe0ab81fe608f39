"""MCP server tools, over streamable HTTP through the official SDK.

A server's tools are listed once per process and event loop, and again after `refresh_s`.
Calls go through one MCP session per server (URL and headers) and loop, kept open for every
voice session's calls: a call then costs one request, where an MCP session opened for each call
would also cost the handshake, a listing (the SDK lists a tool before it trusts its structured
output) and, with a 2025 server, the session's goodbye: three requests with a 2026 server,
seven with a 2025 one (on loopback, 6 and 14 ms a call instead of 1.8 and 2.7).

The SDK's transport is an anyio task group, which only the task that entered it may leave, so
each open session has a task of its own (`_Connection`). It ends when the transport fails or
the server forgets the session (the next call opens another), or when `close_shared_clients`
stops it at the app's shutdown.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from adapters.base import ToolSpec
from gateway.config import MCPTool
from gateway.tools.outcome import ToolFailed, place

if TYPE_CHECKING:
    import httpx2
    from mcp import Client
    from mcp.types import CallToolResult, ContentBlock

T = TypeVar("T")
Key = tuple[str, frozenset[tuple[str, str]]]
"""A server as sessions and listings are shared: its URL and the headers sent to it (two
credentials are two servers: each may be shown other tools)."""

MAX_PAGES = 100
"""Pages of a tool listing read at most, so a server whose cursor never ends cannot hang it."""
CLOSE_S = 2.0
"""How long shutdown waits for servers to take their sessions' goodbyes."""


class _Connection:
    """One MCP session with a server, open for every call on this loop until it breaks."""

    def __init__(self, target: MCPTool) -> None:
        self.stale = False
        """The server forgot the session (HTTP 404 to our session id): it ran nothing, and
        the spec says to open a new session."""
        self._client: Client | None = None
        self._error: Exception | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        # A context of its own: the session outlives the call that opened it, and must not
        # log as that caller.
        self.task = asyncio.get_running_loop().create_task(
            self._run(target), name=f"mcp {place(target.url)}", context=contextvars.Context()
        )

    @property
    def usable(self) -> bool:
        return not self.stale and not self.task.done()

    async def client(self) -> Client:
        await self._ready.wait()
        if self._client is None:
            raise ConnectionError(_reason(self._error) if self._error else "the session closed")
        return self._client

    def stop(self) -> None:
        self._stop.set()

    async def _run(self, target: MCPTool) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async def seen(response: httpx2.Response) -> None:
            if response.status_code == 404 and "mcp-session-id" in response.request.headers:
                self.stale = True

        timeout_s = target.timeout_ms / 1000
        try:
            async with AsyncExitStack() as stack:
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        headers=target.headers,
                        # No read timeout: the server may keep a stream open for hours, and
                        # each request's wait is bounded by its caller.
                        timeout=httpx2.Timeout(timeout_s, read=None),
                        event_hooks={"response": [seen]},
                    )
                )
                async with asyncio.timeout(timeout_s):
                    self._client = await stack.enter_async_context(
                        # The SDK's response cache is off: listings are cached here.
                        Client(streamable_http_client(target.url, http_client=http), cache=None)
                    )
                self._ready.set()
                await self._stop.wait()
        except Exception as error:
            self._error = error
        finally:
            self._client = None
            self._ready.set()


class _Servers:
    """This event loop's open MCP sessions and tool listings."""

    def __init__(self) -> None:
        self._connections: dict[Key, _Connection] = {}
        self._owners: set[asyncio.Task[None]] = set()
        self.listed: dict[Key, tuple[float, list[ToolSpec]]] = {}
        """Each server's tools (before `only`), with the loop time they were listed at."""
        self.listing: dict[Key, asyncio.Task[list[ToolSpec] | ToolFailed]] = {}
        """Listings under way, awaited by every caller that wants one meanwhile."""

    def connection(self, target: MCPTool) -> _Connection:
        key = _key(target)
        connection = self._connections.get(key)
        if connection is None or not connection.usable:
            if connection is not None:
                connection.stop()
            connection = self._connections[key] = _Connection(target)
            self._owners.add(connection.task)
            connection.task.add_done_callback(self._owners.discard)
        return connection

    async def close(self) -> None:
        listings = list(self.listing.values())
        for listing in listings:
            listing.cancel()
        await asyncio.gather(*listings, return_exceptions=True)
        for connection in self._connections.values():
            connection.stop()
        if self._owners:
            _, late = await asyncio.wait(self._owners, timeout=CLOSE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


class _Shared:
    def __init__(self) -> None:
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Servers] = (
            weakref.WeakKeyDictionary()
        )

    def here(self) -> _Servers:
        return self._loops.setdefault(asyncio.get_running_loop(), _Servers())

    async def close(self) -> None:
        servers = self._loops.pop(asyncio.get_running_loop(), None)
        if servers is not None:
            await servers.close()


SHARED = _Shared()


async def close_shared_clients() -> None:
    """End this event loop's MCP sessions (the app's lifespan, at shutdown)."""
    await SHARED.close()


async def list_tools(target: MCPTool) -> list[ToolSpec]:
    """The server's tools (those in `only`, when it is set), listed at most once per
    `refresh_s`: callers who want them while they are being listed share that listing. A
    failed listing is not kept: the next caller lists again."""
    servers = SHARED.here()
    key = _key(target)
    loop = asyncio.get_running_loop()
    listed = servers.listed.get(key)
    if listed is not None and loop.time() - listed[0] < target.refresh_s:
        tools = listed[1]
    else:
        listing = servers.listing.get(key)
        if listing is None:
            listing = servers.listing[key] = loop.create_task(_list(servers, target))
            listing.add_done_callback(lambda _: servers.listing.pop(key, None))
        # Shielded: a caller that gives up (barge-in) leaves the listing to the others.
        outcome = await asyncio.shield(listing)
        if isinstance(outcome, ToolFailed):
            raise ToolFailed(outcome.kind, str(outcome))
        tools = outcome
    return [tool for tool in tools if target.only is None or tool.name in target.only]


async def call_mcp(target: MCPTool, name: str, arguments: dict[str, Any]) -> str:
    """Call the server's tool `name`; its result as the model reads it: the text it returned,
    or its structured result as JSON when it returned no text."""
    from mcp import MCPError
    from mcp.types import CONNECTION_CLOSED
    from pydantic import ValidationError

    where = place(target.url)
    if name not in {tool.name for tool in await list_tools(target)}:
        raise ToolFailed("unknown_tool", f"`{name}` is not one of the tools offered by {where}")
    try:
        result = await _on_server(target, lambda client: client.call_tool(name, arguments))
    except MCPError as error:
        if error.code == CONNECTION_CLOSED:
            raise ToolFailed("unreachable", f"lost the connection to {where}") from None
        raise ToolFailed("tool_error", f"{where} refused the call: {error.message}") from None
    except (ValidationError, RuntimeError) as error:
        # The SDK checks a result against the tool's declared output schema.
        raise ToolFailed(
            "bad_answer", f"{where} answered with a result that is not usable ({_reason(error)})"
        ) from None
    except Exception as error:
        raise ToolFailed("unreachable", f"could not reach {where} ({_reason(error)})") from None
    text = _text(result)
    # A huge answer would fill the model's context (and the next request's) for every turn
    # after; the SDK has read it whole by now, so this bounds the conversation, not the read.
    if len(text.encode()) > target.max_bytes:
        raise ToolFailed(
            "too_large",
            f"`{name}` on {where} answered with more than the tool's max_bytes "
            f"({target.max_bytes})",
        )
    if result.is_error:
        raise ToolFailed("tool_error", text or f"`{name}` failed without saying why")
    return text


async def _list(servers: _Servers, target: MCPTool) -> list[ToolSpec] | ToolFailed:
    """Its failure as a value: the listing's task may outlive every caller that awaited it,
    and nobody would be left to retrieve a raised one."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(target.timeout_ms / 1000):
            tools = await _on_server(target, _all_tools)
    except TimeoutError:
        return ToolFailed(
            "unreachable",
            f"{place(target.url)} did not list its tools within {target.timeout_ms} ms",
        )
    except Exception as error:
        return ToolFailed(
            "unreachable", f"could not list the tools of {place(target.url)}: {_reason(error)}"
        )
    servers.listed[_key(target)] = (loop.time(), tools)
    return tools


async def _all_tools(client: Client) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools += [ToolSpec(t.name, t.description or "", t.input_schema) for t in page.tools]
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


async def _on_server(target: MCPTool, send: Callable[[Client], Awaitable[T]]) -> T:
    """`send` on the server's open session; when the server had forgotten that session (it
    restarted, or it ended the session idle), once more on a new one."""
    servers = SHARED.here()
    connection = servers.connection(target)
    try:
        return await send(await connection.client())
    except Exception:
        if not connection.stale:
            raise
    return await send(await servers.connection(target).client())


def _text(result: CallToolResult) -> str:
    from mcp.types import TextContent

    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    if not texts and result.structured_content is not None:
        return msgspec.json.encode(result.structured_content).decode()
    return "\n".join(
        block.text if isinstance(block, TextContent) else _note(block) for block in result.content
    )


def _note(block: ContentBlock) -> str:
    """What the model is told of content it cannot read (an image, audio, a resource)."""
    return msgspec.json.encode({"type": block.type}).decode()


def _reason(error: BaseException) -> str:
    from mcp import MCPError

    # The SDK's task groups wrap a transport's failure (an exception group of one).
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, MCPError):
        return error.message
    if isinstance(error, ConnectionError) and str(error):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _key(target: MCPTool) -> Key:
    return target.url, frozenset(target.headers.items())
