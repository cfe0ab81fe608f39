"""What the three OpenAI adapters share: the client built from a pipeline block, its lifecycle,
and the translation of the SDK's errors into ours.

One place, so that the three stages fail the same way: a refused key is refused for all of
them, and the failover layer only ever sees `ProviderError`/`PermanentProviderError`. The SDK's
own retries are off (`max_retries=0`): the failover chain decides when to try again and where,
and a retry hidden inside the SDK would spend the turn's `timeout_ms` on a provider that failed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import ssl
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.config import ProviderBlock
from gateway.errors import PermanentProviderError, ProviderError

if TYPE_CHECKING:
    import openai

PROVIDER = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
KEYLESS = "none"
"""Sent to a self-hosted server configured without a key (Ollama, vLLM without `--api-key`):
the SDK refuses to run without one, and these servers ignore it."""

OPENAI_HOSTS = ("api.openai.com", ".openai.azure.com")
"""OpenAI's own APIs, the only hosts OPENAI_API_KEY is sent to."""

KEEPALIVE_S = 55.0
"""How long an idle connection to the provider is kept for the next request: long enough to
span the pause between a user's turns (httpx's default, 5 s, made nearly every turn pay a new
TCP and TLS handshake), shorter than the minute after which servers commonly drop it."""
MAX_CONNECTIONS = 1000
"""Connections per endpoint and process: a session uses up to three at once (STT, LLM, TTS)."""


def import_sdk() -> None:
    """Import the SDK before serving (the blocks' `preload`, on a worker thread): the ~0.25 s
    it takes would otherwise delay the process's first session's start. Not with the
    pipeline file: checking a file needs no SDK."""
    import openai.resources.models  # the start's probe

    # Building a client imports its aiohttp transport (aiohttp opens nothing before the
    # first request): the first session's client then finds it loaded.
    openai.DefaultAioHttpClient(verify=_tls())


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS context of every client of the process, built as the SDK's client would build
    its own: loading the CA bundle takes ~20 ms, which a client built on the event loop at
    the first session's start stalled every session for."""
    import httpx2

    return httpx2.create_ssl_context()


class _Shared:
    """One `AsyncOpenAI` client per event loop, endpoint and key, shared by every session:
    connections are opened once and reused turn after turn and session after session, and
    the SDK's client (whose construction is not cheap) is built once. Closed by the app's
    lifespan (`close_shared_clients`)."""

    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str, str], openai.AsyncOpenAI]
        ] = weakref.WeakKeyDictionary()

    def client(self, base_url: str, api_key: str) -> openai.AsyncOpenAI:
        import httpx2  # the SDK loads with the first session, not with the pipeline file
        import openai

        clients = self._clients.setdefault(asyncio.get_running_loop(), {})
        client = clients.get((base_url, api_key))
        if client is None or client.is_closed():
            limits = httpx2.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_S,
            )
            client = openai.AsyncOpenAI(
                api_key=api_key,
                base_url=base_url,
                max_retries=0,
                http_client=openai.DefaultAioHttpClient(limits=limits, verify=_tls()),
            )
            clients[(base_url, api_key)] = client
        return client

    async def close(self) -> None:
        clients = self._clients.pop(asyncio.get_running_loop(), {})
        for client in clients.values():
            await client.close()


SHARED = _Shared()


async def close_shared_clients() -> None:
    """Close this event loop's shared clients (the app's lifespan, at shutdown)."""
    await SHARED.close()


class OpenAIAdapter:
    """One session's stage on the process's shared `AsyncOpenAI` client for its endpoint and
    key; `stage` names the pipeline key (`llm`, `tts`, `stt`) that error messages point at."""

    def __init__(self, config: ProviderBlock, stage: str) -> None:
        self._stage = stage
        self._key_variable = config.key_variable()
        self._base_url = config.base_url or DEFAULT_BASE_URL
        self._host = urlsplit(self._base_url).netloc or self._base_url
        self._timeout_ms = config.timeout_ms
        self._timeout_s = config.timeout_ms / 1000
        if not config.model:
            raise PermanentProviderError(PROVIDER, f"{stage}.model is not set: name a model")
        self._model: str = config.model
        self._shared_key = (self._base_url, _api_key(config, stage))
        self._client = SHARED.client(*self._shared_key)

    @property
    def official(self) -> bool:
        """OpenAI's own API (or Azure's), as opposed to a compatible server."""
        return _is_official(self._base_url)

    async def start(self) -> None:
        """Make sure the pool has a connection for this session's first turn: one cheap
        request now, on an idle kept-alive connection if there is one, on a new one (TCP and
        TLS, overlapping the other providers' connects) if every connection is busy. So
        sessions that start together open as many connections as their first turns will need
        at once (warming only after an idle spell gave ten such sessions one, and their first
        turns 3x the later ones' time with 100 ms per new connection), and sessions that
        start apart reuse one. A refused key fails the start (the chain then skips this
        provider); other failures are left to the first turn, which fails over as any other."""
        try:
            await self.probe()
        except PermanentProviderError:
            raise  # a refused key is known now, not at the first turn
        except ProviderError:
            pass

    async def aclose(self) -> None:
        """Nothing of the session's own: the client is shared."""

    async def probe(self) -> None:
        """`GET /models`: cheap, authenticated, and served by compatible servers too (Ollama,
        vLLM, llama.cpp), unlike `/models/{id}`. Unparsed: the SDK fails on a non-JSON page
        with its own internal errors, and a probe must only ever raise ours."""
        with self.translated_errors():
            response = await self._client.models.with_raw_response.list(timeout=self._timeout_s)
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            raise self.wrong_content("/models", content_type)

    def wrong_content(self, endpoint: str, content_type: str) -> ProviderError:
        """A 200 with the wrong kind of body: a proxy's page, or not an OpenAI API at all."""
        return ProviderError(
            PROVIDER,
            f"{self._host} answered {endpoint} with {content_type or 'an untyped body'}: "
            f"is {self._stage}.base_url an OpenAI-compatible API?",
        )

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """Raise ours for the SDK's (and for raw httpx2 errors of streamed bodies)."""
        import anyio
        import httpx2
        import openai

        # What reading a streamed body raises when the connection breaks: the SDK wraps these
        # in `APIConnectionError` for SSE streams, but not for raw bodies such as speech audio.
        broken_stream = (httpx2.HTTPError, httpx2.StreamError, ssl.SSLError, anyio.EndOfStream)
        stage, host = self._stage, self._host
        try:
            yield
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            # The server's message is left out: a compatible server may echo the key.
            env = f" / {self._key_variable}" if self._key_variable else ""
            raise PermanentProviderError(
                PROVIDER,
                f"{host} refused the API key ({e.status_code}): check {stage}.api_key{env}",
            ) from None
        except (
            openai.BadRequestError,
            openai.NotFoundError,
            openai.UnprocessableEntityError,
        ) as e:
            raise PermanentProviderError(
                PROVIDER,
                f"{host} rejected the request ({e.message}): check {stage}.model "
                f"({self._model!r}) and {stage}.options",
            ) from None
        except openai.RateLimitError as e:
            raise ProviderError(PROVIDER, f"{host} is rate limiting us ({e.message})") from None
        except openai.APIStatusError as e:
            raise ProviderError(PROVIDER, f"{host} failed ({e.message})") from None
        except (openai.APITimeoutError, httpx2.TimeoutException) as e:
            failure = _connection_failure(e)
            if failure is None:
                raise ProviderError(
                    PROVIDER,
                    f"no answer from {host} within {stage}.timeout_ms ({self._timeout_ms} ms)",
                ) from None
            raise self._unreachable(failure) from None
        except openai.APIConnectionError as e:
            raise self._unreachable(e.__cause__) from None
        except broken_stream as e:
            raise ProviderError(
                PROVIDER, f"the stream from {host} broke off ({type(e).__name__}: {e})"
            ) from None
        except json.JSONDecodeError as e:
            raise ProviderError(
                PROVIDER,
                f"{host} answered with something that is not JSON ({e}): "
                f"is {stage}.base_url an OpenAI-compatible API?",
            ) from None
        except openai.OpenAIError as e:  # an `error` object inside a stream, and the rest
            raise ProviderError(PROVIDER, f"{host} reported an error: {e}") from None

    def _unreachable(self, cause: BaseException | None) -> ProviderError:
        detail = f" ({cause})" if cause is not None else ""
        return ProviderError(
            PROVIDER,
            f"lost or could not open the connection to {self._base_url}{detail}: "
            f"check {self._stage}.base_url and the network",
        )


def _connection_failure(error: BaseException) -> BaseException | None:
    """The aiohttp error under a "timeout" that was not one. The SDK's aiohttp transport maps
    every `aiohttp.ClientConnectionError` to httpx's `ConnectTimeout`, so a refused connection
    or a server hanging up arrives as a timeout; its cause says which it was."""
    import aiohttp

    cause = error.__cause__ or error.__context__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(cause, TimeoutError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _api_key(config: ProviderBlock, stage: str) -> str:
    """The block's key; OPENAI_API_KEY only for OpenAI itself, so that OpenAI's key is never
    sent to another host a pipeline points `base_url` at (`OpenAIBlock.key_variable`)."""
    key = config.resolved_key(os.environ)
    if key:
        return key
    if config.key_variable() is None:
        return KEYLESS
    raise PermanentProviderError(
        PROVIDER, f"no API key: set OPENAI_API_KEY on the server (or {stage}.api_key)"
    )


def _is_official(base_url: str) -> bool:
    host = urlsplit(base_url).netloc or base_url
    return host == "api.openai.com" or host.endswith(".openai.azure.com")
