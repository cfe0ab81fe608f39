"""Web API tools: the model's arguments are POSTed as JSON, and the answer's body is what the
model reads.

One `httpx.AsyncClient` per event loop serves every session's calls, so a tool called turn
after turn reuses a kept-alive connection instead of paying TCP and TLS each time; the app's
lifespan closes it (`close_shared_clients`).
"""

from __future__ import annotations

import asyncio
import weakref
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.config import HTTPTool
from gateway.tools.outcome import ToolFailed, place

if TYPE_CHECKING:
    import httpx

KEEPALIVE_S = 55.0
"""How long an idle connection is kept for the next call: long enough to span the pause
between a caller's turns, shorter than the minute after which servers commonly drop it."""
MAX_CONNECTIONS = 1000
"""Connections at once per process: every session's calls share the pool."""
QUOTED_CHARS = 200
"""How much of a failed answer's body its failure quotes: enough for an API's error message."""


class _Shared:
    """One client per event loop, shared by every session."""

    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def client(self) -> httpx.AsyncClient:
        import httpx  # loaded with the first call, not with the pipeline file

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=MAX_CONNECTIONS,
                    max_keepalive_connections=MAX_CONNECTIONS,
                    keepalive_expiry=KEEPALIVE_S,
                ),
                # Every session shares the client: a cookie an API set in one caller's call
                # must not be sent with another caller's.
                cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            )
            self._clients[loop] = client
        return client

    async def close(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


SHARED = _Shared()


async def close_shared_clients() -> None:
    """Close this event loop's shared client (the app's lifespan, at shutdown)."""
    await SHARED.close()


async def call_http(target: HTTPTool, arguments: dict[str, Any]) -> str:
    """POST `arguments` to the tool's API; its answer as the model reads it (JSON compacted,
    to spend fewer of the model's tokens). The body is read as it streams and no further than
    `max_bytes`, so an endless or huge answer costs neither memory nor the model's context.
    Cancelling the call closes its connection."""
    import httpx

    where = place(target.url)
    try:
        async with SHARED.client().stream(
            "POST",
            target.url,
            json=arguments,
            headers=target.headers,
            timeout=target.timeout_ms / 1000,
        ) as response:
            if not response.is_success:
                # A character is at most four bytes: enough of the body for the quote.
                start, _ = await _read(response, QUOTED_CHARS * 4)
                quote = _without_secrets(_decode(response, start)[:QUOTED_CHARS], target)
                raise ToolFailed("status", f"{where} answered HTTP {response.status_code}: {quote}")
            body, more = await _read(response, target.max_bytes)
            if more:
                raise ToolFailed(
                    "too_large",
                    f"{where} answered with more than the tool's max_bytes ({target.max_bytes})",
                )
            if not _is_json(response.headers.get("content-type", "")):
                return _decode(response, body)
    except httpx.TimeoutException:
        raise ToolFailed(
            "unreachable", f"{where} did not answer within {target.timeout_ms} ms"
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise ToolFailed(
            "unreachable", f"could not reach {where} ({type(error).__name__}: {error})"
        ) from None
    try:
        return msgspec.json.encode(msgspec.json.decode(body)).decode()
    except msgspec.DecodeError as error:
        raise ToolFailed(
            "bad_answer", f"{where} answered with JSON that does not parse ({error})"
        ) from None


async def _read(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether it had more (left unread)."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


def _decode(response: httpx.Response, body: bytes) -> str:
    return body.decode(response.encoding or "utf-8", errors="replace")


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _without_secrets(text: str, target: HTTPTool) -> str:
    """`text` without the tool's header values (or their last word: the token of `Bearer
    <token>`), which an API's error page may echo and which must not reach the logs. Short
    words are left alone: they are no secret, and replacing them would garble the quote."""
    for value in target.headers.values():
        for secret in (value, value.rpartition(" ")[2]):
            if len(secret) >= 8:
                text = text.replace(secret, "***")
    return text
