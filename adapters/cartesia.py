"""Cartesia TTS over its WebSocket API: one socket per session, one context per reply.

The socket opens at session start (no handshake in a turn) and serves every turn. Each reply is
one Cartesia context: every phrase goes out as soon as the LLM finishes it, with
`continue: true` so prosody carries across phrases, and an empty `continue: false` input ends
it. Several contexts share the socket, so a reply reads only the messages of its own context:
a cut reply's late chunks are dropped. A cut reply cancels its context, so Cartesia stops
generating audio nobody will hear.

A Cartesia that keeps the socket open but stops answering would hold a reply until barge-in or
the session's end, so its silence is bounded by `timeout_ms` while it owes audio: from the
moment a phrase goes out until its first answer (the audio of one phrase cannot be told apart
from the next, so later silence may be Cartesia done with what it got while the LLM writes),
and after the end of the text until `done`, each message restarting the bound.

The SDK opens the socket (URL, auth and version headers) and moves its frames; its per-context
helper (`connection.context()`) is not used: it reads the socket from an unowned background
task that swallows a dropped socket (the reply would wait forever) and dies on a malformed
frame, and it cannot bound a reply's cleanup. Frames are parsed with msgspec, which also decodes
the base64 audio. Requests go out as msgspec-encoded JSON on the SDK's socket: its `send` runs a
typed-dict transform over every request (~145 us each, three or more per reply) that changes
nothing in ours (tests/test_cartesia.py checks it would send the same object).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, cast

import msgspec
from msgspec import Meta
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from gateway.config import TTSBlock
from gateway.errors import PermanentProviderError, ProviderError, status_error

if TYPE_CHECKING:
    from cartesia import AsyncCartesia
    from cartesia.resources.tts import AsyncTTSResourceConnection
    from cartesia.types import WebsocketConnectionOptions
    from cartesia.types.generation_request_param import GenerationRequestParam

PROVIDER = "cartesia"
DEFAULT_BASE_URL = "https://api.cartesia.ai"
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
"""The only `output_format.sample_rate` values Cartesia accepts."""

CANCEL_TIMEOUT_S = 1.0
"""A stuck socket must not hold up the end of a cut reply."""
CLOSE_TIMEOUT_S = 2.0
"""How long `aclose` waits for Cartesia's half of the closing handshake before dropping TCP."""

_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


class CartesiaTTS(TTSBlock, tag="cartesia", frozen=True):
    """Cartesia over its WebSocket API: one socket per session, one context per reply."""

    key_env = "CARTESIA_API_KEY"

    model: Annotated[str | None, Meta(description="A Cartesia model, e.g. `sonic-2`.")] = "sonic-2"
    voice: Annotated[str, Meta(description="A Cartesia voice id.")] = (
        "694f9389-aac1-45b6-b726-9d9369183238"
    )
    language: Annotated[str, Meta(description="Language of the text, e.g. `en`.")] = "en"

    def open(self) -> CartesiaSocket:
        return CartesiaSocket(self)

    def voice_name(self) -> str:
        return self.voice

    def preload(self) -> None:
        """The SDK, imported before serving rather than by the process's first session."""
        import cartesia.resources.tts  # noqa: F401
        import websockets.asyncio.client  # noqa: F401  (its socket)

        api_key = self.resolved_key(os.environ)
        if api_key:  # without one, sessions fail at start, saying so
            _client(api_key, *_base_urls(self))  # its TLS context: ~20 ms, off the loop


class _Message(msgspec.Struct):
    """Any frame Cartesia sends (chunk, done, timestamps, flush_done, error); only the fields
    a reply needs. `data` is base64 on the wire; msgspec decodes it to bytes."""

    type: str
    context_id: str | None = None
    data: bytes | None = None
    status_code: int | None = None
    title: str | None = None
    message: str | None = None
    error: str | None = None
    """The error text of API versions before 2026-03-01."""


class _HTTPError(msgspec.Struct):
    """The JSON body of a refused handshake (API versions from 2026-03-01)."""

    title: str = ""
    message: str = ""


_decode = msgspec.json.Decoder(_Message).decode
_encode = msgspec.json.Encoder().encode


async def _send(connection: AsyncTTSResourceConnection, request: Mapping[str, object]) -> None:
    """What the SDK's `send` sends, without its transform (see the module's docstring)."""
    await connection._connection.send(_encode(request).decode())


@functools.cache
def _client(api_key: str | None, base_url: str, websocket_base_url: str) -> AsyncCartesia:
    """One SDK client per endpoint and key per process: building one builds an httpx client
    and its SSL context (about 20 ms of event-loop time) that the WebSocket path never uses."""
    from cartesia import AsyncCartesia  # the SDK loads with a session, not a file check

    return AsyncCartesia(
        api_key=api_key,
        base_url=base_url,
        websocket_base_url=websocket_base_url,
        max_retries=0,  # failover decides when to try again
    )


def _base_urls(config: CartesiaTTS) -> tuple[str, str]:
    """The block's REST and WebSocket base URLs."""
    base_url = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
    return base_url, _websocket_base_url(base_url)


def _websocket_base_url(base_url: str) -> str:
    """The SDK turns any `base_url` into `wss://`; a plain `http://` server needs `ws://`."""
    scheme, sep, rest = base_url.partition("://")
    if not sep or scheme.lower() not in _WS_SCHEMES:
        raise PermanentProviderError(
            PROVIDER, f"tts.base_url {base_url!r} is not an http(s):// or ws(s):// URL"
        )
    return f"{_WS_SCHEMES[scheme.lower()]}://{rest}"


class CartesiaSocket:
    """One session's Cartesia socket. `probe` adds nothing to `start`: a socket that opens
    (key accepted, server answering) is what serving traffic needs."""

    def __init__(self, config: CartesiaTTS) -> None:
        self._config = config
        base_url, websocket_base_url = _base_urls(config)
        self._url = f"{websocket_base_url}/tts/websocket"
        api_key = config.resolved_key(os.environ)
        if not api_key:
            raise PermanentProviderError(
                PROVIDER, f"no API key: set {config.key_env} on the server (or tts.api_key)"
            )
        self._client = _client(api_key, base_url, websocket_base_url)
        self._socket_options = cast(
            "WebsocketConnectionOptions",  # the SDK passes every key on to websockets' connect
            {"open_timeout": config.timeout_ms / 1000, "close_timeout": CLOSE_TIMEOUT_S},
        )
        self._connection: AsyncTTSResourceConnection | None = None
        self._turn = asyncio.Lock()
        """One reply on the socket at a time: a cut reply's cancel goes out before the next
        reply's first request, and two replies never read the socket together."""

    async def start(self) -> None:
        self._connection = await self._connect()

    async def probe(self) -> None:
        """`start` already proved the endpoint works."""

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(WebSocketException, OSError):
                await connection.close()

    async def synthesize(
        self, phrases: AsyncIterator[str], sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        if sample_rate not in SAMPLE_RATES:
            raise PermanentProviderError(
                PROVIDER,
                f"cannot make {sample_rate} Hz audio (Cartesia makes {SAMPLE_RATES}): "
                "set output.sample_rate to one of them",
            )
        async with self._turn:
            first = await anext(phrases, None)
            if first is None:
                return
            context = _Context(self._config, sample_rate)
            events: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
            tasks: list[asyncio.Task[None]] = []
            try:
                connection = await self._begin(context.say(first))
                context.owe()  # only now: the receiver that could hear an answer starts below
                tasks += (
                    asyncio.create_task(
                        _reporting(_send_rest(connection, context, phrases), events)
                    ),
                    asyncio.create_task(_reporting(_receive(connection, context, events), events)),
                )
                while (event := await events.get()) is not None:
                    if isinstance(event, Exception):
                        raise event
                    yield event
            finally:
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.wait(tasks)
                if not context.done and self._connection is not None:
                    await _cancel(self._connection, context.id)

    async def _connect(self) -> AsyncTTSResourceConnection:
        manager = self._client.tts.websocket_connect(
            websocket_connection_options=self._socket_options
        )
        try:
            return await manager.enter()
        except InvalidStatus as error:
            status, body = error.response.status_code, error.response.body
            raise _rejection(status, _http_detail(body)) from error
        except TimeoutError as error:
            raise ProviderError(
                PROVIDER,
                f"no WebSocket handshake from {self._url} within timeout_ms "
                f"({self._config.timeout_ms} ms)",
            ) from error
        except (OSError, WebSocketException) as error:
            raise ProviderError(PROVIDER, f"cannot connect to {self._url}: {error}") from error

    async def _begin(self, request: GenerationRequestParam) -> AsyncTTSResourceConnection:
        """Send a reply's first request, on a new socket if Cartesia closed ours meanwhile.

        Cartesia closes sockets idle for 5 minutes. Nothing of this reply went out on the
        closed socket, so opening another is not a retry, and the turn need not fall back.
        """
        connection = self._connection
        if connection is None:
            raise ProviderError(PROVIDER, "synthesize() before start(), or after aclose()")
        try:
            await _send(connection, request)
            return connection
        except ConnectionClosed:
            pass  # closed while idle
        except (WebSocketException, OSError) as error:
            raise _socket_failure(error) from error
        await self.aclose()
        connection = self._connection = await self._connect()
        try:
            await _send(connection, request)
        except (WebSocketException, OSError) as error:
            raise _socket_failure(error) from error
        return connection


class _Context:
    """The requests of one reply. Cartesia wants every input of a context to repeat the same
    model, voice and format; `options` may add fields or override the model, voice, language
    and buffering, not the audio format or the context."""

    def __init__(self, config: CartesiaTTS, sample_rate: int) -> None:
        self.id = str(uuid.uuid4())
        self.done = False
        """Cartesia ended the context (`done` or `error`): nothing left to cancel."""
        self._timeout_ms = config.timeout_ms
        self._ended = False
        self.deadline: float | None = None
        """Loop time by which Cartesia must send something; None while it owes nothing."""
        self.wait: asyncio.Timeout | None = None
        """The receiver's wait, which `owe` arms when it had no deadline."""
        self._fields: dict[str, Any] = {
            "model_id": config.model,
            "voice": {"mode": "id", "id": config.voice},
            "language": config.language,
            # Phrases come whole from our splitter: Cartesia's own buffering (3 s by default)
            # would only add latency ("custom buffering" in its docs).
            "max_buffer_delay_ms": 0,
            **config.options,
            # What the gateway relies on: raw pcm16 at the pipeline's rate, our context.
            "output_format": {
                "container": "raw",
                "encoding": "pcm_s16le",
                "sample_rate": sample_rate,
            },
            "context_id": self.id,
        }

    def say(self, phrase: str) -> GenerationRequestParam:
        # Cartesia joins a context's transcripts verbatim and our phrases come stripped.
        return self._request(phrase + " ", more=True)

    def end(self) -> GenerationRequestParam:
        self._ended = True
        return self._request("", more=False)

    def owe(self) -> None:
        """Text is going out: Cartesia owes an answer from now, unless it already owed one.

        A receiver's wait armed for an earlier deadline is left as it is (it checks the
        deadline when it ends); one armed for none must now end by this one."""
        if self.deadline is not None:
            return
        self.deadline = asyncio.get_running_loop().time() + self._timeout_ms / 1000
        wait = self.wait
        if wait is not None and not wait.expired() and wait.when() is None:
            wait.reschedule(self.deadline)

    def heard(self) -> None:
        """A message of this context came. After the end of the text the context owes `done`,
        so the bound starts again; before it, Cartesia may have said all it was sent."""
        self.deadline = None
        if self._ended:
            self.owe()

    def stalled(self) -> ProviderError:
        return ProviderError(
            PROVIDER,
            f"sent nothing for timeout_ms ({self._timeout_ms} ms) while it owed audio for "
            "text it was sent: the stream is stalled",
        )

    def _request(self, transcript: str, more: bool) -> GenerationRequestParam:
        return cast(
            "GenerationRequestParam", {**self._fields, "transcript": transcript, "continue": more}
        )


async def _send_rest(
    connection: AsyncTTSResourceConnection, context: _Context, phrases: AsyncIterator[str]
) -> None:
    async for phrase in phrases:
        request = context.say(phrase)
        context.owe()  # before sending: the answer may be read before `send` returns
        await _send(connection, request)
    request = context.end()
    context.owe()
    await _send(connection, request)


async def _receive(
    connection: AsyncTTSResourceConnection,
    context: _Context,
    events: asyncio.Queue[bytes | Exception | None],
) -> None:
    # One wait for many messages: each message moves the deadline without re-arming the timer
    # (a timer per audio chunk was most of what a chunk cost to receive); a wait that ends at
    # a deadline since moved is entered again (`recv_bytes` may be cancelled without loss).
    loop = asyncio.get_running_loop()
    while True:
        try:
            async with asyncio.timeout_at(context.deadline) as context.wait:
                while not _received(await connection.recv_bytes(), context, events):
                    pass
                return
        except TimeoutError:
            if context.deadline is not None and loop.time() >= context.deadline:
                raise context.stalled() from None
        finally:
            context.wait = None


def _received(
    frame: bytes, context: _Context, events: asyncio.Queue[bytes | Exception | None]
) -> bool:
    """Handle one message; True once the context is done."""
    try:
        message = _decode(frame)
    except msgspec.DecodeError as error:
        raise ProviderError(
            PROVIDER, f"sent a frame that is not Cartesia's JSON ({error}): {frame[:80]!r}"
        ) from None
    if message.context_id not in (None, context.id):
        return False  # a cut reply's late message
    context.heard()
    if message.type == "chunk" and message.data:
        events.put_nowait(message.data)
    elif message.type == "done":
        context.done = True
        events.put_nowait(None)
        return True
    elif message.type == "error":
        context.done = True
        text = message.message or message.error or message.title or "no message"
        raise _rejection(message.status_code, text)
    # timestamps, phoneme_timestamps and flush_done carry no audio
    return False


async def _reporting(
    work: Awaitable[None], events: asyncio.Queue[bytes | Exception | None]
) -> None:
    """Run one half of a reply, handing its failure to the generator that yields the audio."""
    try:
        await work
    except (WebSocketException, OSError) as error:
        events.put_nowait(_socket_failure(error))
    except Exception as error:
        events.put_nowait(error)


async def _cancel(connection: AsyncTTSResourceConnection, context_id: str) -> None:
    """Ask Cartesia to stop a cut reply; a socket that cannot take it is failing anyway, and
    the next reply finds out."""
    with contextlib.suppress(TimeoutError, WebSocketException, OSError):
        async with asyncio.timeout(CANCEL_TIMEOUT_S):
            await _send(connection, {"context_id": context_id, "cancel": True})


def _socket_failure(error: WebSocketException | OSError) -> ProviderError:
    if isinstance(error, ConnectionClosed):
        return ProviderError(PROVIDER, f"the socket closed ({error})")
    return ProviderError(PROVIDER, f"socket error: {error}")


def _http_detail(body: bytes | None) -> str:
    text = (body or b"").decode(errors="replace").strip()
    try:
        parsed = msgspec.json.decode(text, type=_HTTPError)
    except msgspec.DecodeError:
        return text[:200] or "no details"
    return ": ".join(part for part in (parsed.title, parsed.message) if part) or "no details"


def _rejection(status: int | None, detail: str) -> ProviderError:
    """Our error for a status Cartesia answered with, at the handshake or in an error frame."""
    return status_error(
        PROVIDER,
        status,
        detail,
        key="tts.api_key / CARTESIA_API_KEY",
        request="tts.base_url, model, voice, language and options",
    )
