"""A fake Cartesia TTS WebSocket (`/tts/websocket`) on 127.0.0.1, faithful to Cartesia's wire.

It checks the handshake like Cartesia (`Authorization: Bearer KEY` or `X-API-Key` plus a
`Cartesia-Version` header, or browsers' `?api_key=&cartesia_version=`), answers each context's
inputs with base64 `pcm_s16le` chunks as they arrive (a 440 Hz tone, `MS_PER_WORD` per word,
so a test knows how much audio a transcript makes), ends a context with `done` after its
`continue: false` input, stops one on `cancel`, and answers invalid requests with error frames
in Cartesia's shape (API version 2026-03-01 and later). Like the real service, chunks already
on their way when a cancel arrives still reach the client (`chunks_after_cancel`).
`mute_after_chunks` makes it stall like a failing service: after that many chunks of a context
it sends nothing more for it (no audio, no `done`), while the socket stays open and read.

Shapes follow docs.cartesia.ai (api-reference/tts/websocket, use-the-api/api-errors): chunks
carry `status_code: 206` and `step_time`; `done` also carries 206.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import msgspec
import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.fakes.faults import Fault
from tests.fakes.ws import Served, refusal, serving

API_KEY = "test-cartesia-key"
MS_PER_WORD = 200
CHUNK_MS = 40
TONE_HZ = 440

MALFORMED_FRAME = "upstream connect error or disconnect/reset before headers"
"""What a proxy in front of a service sends when the service behind it is gone."""


@dataclass(frozen=True)
class ErrorFrame:
    """An error Cartesia reports in-band, as a `type: error` frame."""

    status_code: int
    error_code: str | None
    title: str
    message: str


CONCURRENCY_LIMITED = ErrorFrame(
    429,
    "concurrency_limited",
    "Too many concurrent requests",
    "You have exceeded your plan's concurrency limit.",
)
GENERATION_FAILED = ErrorFrame(500, None, "Internal server error", "Generation failed.")

_UPGRADE_FAULTS = {
    Fault.REFUSE: ErrorFrame(503, None, "Service unavailable", "Try again later."),
    Fault.UNAUTHORIZED: ErrorFrame(401, "unauthorized", "Unauthorized", "Invalid API key."),
    Fault.RATE_LIMIT: CONCURRENCY_LIMITED,
    Fault.SERVER_ERROR: ErrorFrame(500, None, "Internal server error", "Unexpected error."),
}


class Handshake(msgspec.Struct, frozen=True):
    """One opening handshake as the fake saw it."""

    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    query: dict[str, str]


class _Voice(msgspec.Struct):
    mode: Literal["id"]
    id: str


class _OutputFormat(msgspec.Struct):
    container: Literal["raw"]
    encoding: Literal["pcm_s16le"]
    sample_rate: Literal[8000, 16000, 22050, 24000, 44100, 48000]


class _Generation(msgspec.Struct):
    context_id: str
    model_id: str
    transcript: str
    voice: _Voice
    output_format: _OutputFormat
    more: bool = msgspec.field(name="continue", default=False)
    add_timestamps: bool = False


@dataclass(frozen=True)
class _Context:
    task: asyncio.Task[None]
    sample_rate: int
    inputs: asyncio.Queue[_Generation]


class FakeCartesia:
    """`async with FakeCartesia() as fake:` then point `base_url` at `fake.base_url`.

    `fault` is read at each handshake and each request, so a test may change it between
    turns. Records: `handshakes` (accepted or not), `connections` (accepted sockets),
    `requests` (generation requests as sent), `cancels` (context ids), `late_chunks` (chunks
    sent after a context's cancel).
    """

    def __init__(
        self,
        api_key: str = API_KEY,
        fault: Fault = Fault.NONE,
        chunk_delay_s: float = 0.0,
        chunks_after_cancel: int = 2,
        mute_after_chunks: int | None = None,
        connect_delay_s: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.connect_delay_s = connect_delay_s
        """Every new connection's handshake waits this long (TCP and TLS over a real RTT)."""
        self.fault = fault
        self.reject_with: ErrorFrame | None = None
        """Answer every generation request with this error frame."""
        self.chunk_delay_s = chunk_delay_s
        self.chunks_after_cancel = chunks_after_cancel
        self.mute_after_chunks = mute_after_chunks
        """Chunks each context gets before the fake goes silent on it; None: never."""
        self.handshakes: list[Handshake] = []
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.cancels: list[str] = []
        self.late_chunks: Counter[str] = Counter()
        self._sockets: set[ServerConnection] = set()
        self._served: Served | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def base_url(self) -> str:
        assert self._served is not None, "use FakeCartesia as an async context manager"
        return self._served.url()

    async def __aenter__(self) -> FakeCartesia:
        self._served = await self._stack.enter_async_context(
            serving(self._serve, self._check_upgrade, self.connect_delay_s)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    def contexts(self) -> list[str]:
        """Context ids in the order their first request arrived."""
        return list(dict.fromkeys(r["context_id"] for r in self.requests))

    def transcripts(self, context_id: str) -> list[str]:
        return [r["transcript"] for r in self.requests if r["context_id"] == context_id]

    @staticmethod
    def audio_bytes(transcript: str, sample_rate: int) -> int:
        """How much pcm_s16le the fake makes for `transcript`."""
        return _samples(len(transcript.split()), sample_rate) * 2

    async def close_sockets(self) -> None:
        """Close every open socket normally, as Cartesia does after 5 idle minutes."""
        for socket in list(self._sockets):
            await socket.close(1000, "connection idle")

    async def _check_upgrade(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        url = urlsplit(request.path)
        headers = {name.lower(): value for name, value in request.headers.raw_items()}
        query = dict(parse_qsl(url.query))
        self.handshakes.append(Handshake(url.path, headers, query))
        if url.path != "/tts/websocket":
            return _refuse(connection, ErrorFrame(404, None, "Not found", f"No route {url.path}"))
        if self.fault in _UPGRADE_FAULTS:
            return _refuse(connection, _UPGRADE_FAULTS[self.fault])
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        key = bearer or headers.get("x-api-key") or query.get("api_key")
        if key != self.api_key:
            return _refuse(connection, ErrorFrame(401, None, "Unauthorized", "Invalid API key."))
        if not (headers.get("cartesia-version") or query.get("cartesia_version")):
            missing = "Missing the Cartesia-Version header (or cartesia_version query parameter)."
            return _refuse(connection, ErrorFrame(400, None, "Bad request", missing))
        return None

    async def _serve(self, socket: ServerConnection) -> None:
        self.connections += 1
        self._sockets.add(socket)
        contexts: dict[str, _Context] = {}
        try:
            async for frame in socket:
                await self._handle(socket, frame, contexts)
        except ConnectionClosed:
            pass
        finally:
            self._sockets.discard(socket)
            for context in contexts.values():
                context.task.cancel()
            await asyncio.gather(*(c.task for c in contexts.values()), return_exceptions=True)

    async def _handle(
        self, socket: ServerConnection, frame: str | bytes, contexts: dict[str, _Context]
    ) -> None:
        try:
            message = msgspec.json.decode(frame)
        except msgspec.DecodeError as error:
            await _send_error(socket, None, ErrorFrame(400, None, "Invalid JSON", str(error)))
            return
        context_id = message.get("context_id") if isinstance(message, dict) else None
        if isinstance(message, dict) and message.get("cancel") is True:
            self.cancels.append(str(context_id))
            await self._cancel(socket, contexts.pop(str(context_id), None), str(context_id))
            return
        self.requests.append(message)
        if self.fault is Fault.HANG:
            return
        if self.fault is Fault.MALFORMED:
            await socket.send(MALFORMED_FRAME)
            return
        if self.reject_with is not None:
            await _send_error(socket, context_id, self.reject_with)
            return
        try:
            request = msgspec.convert(message, _Generation)
        except msgspec.ValidationError as error:
            await _send_error(
                socket, context_id, ErrorFrame(400, None, "Invalid request", str(error))
            )
            return
        if not request.model_id.startswith("sonic"):
            unknown = f"Model {request.model_id!r} is not a text-to-speech model."
            await _send_error(socket, context_id, ErrorFrame(400, None, "Invalid model", unknown))
            return
        context = contexts.get(request.context_id)
        if context is None:
            rate = request.output_format.sample_rate
            inputs: asyncio.Queue[_Generation] = asyncio.Queue()
            task = asyncio.create_task(self._stream(socket, request.context_id, rate, inputs))
            context = contexts[request.context_id] = _Context(task, rate, inputs)
        context.inputs.put_nowait(request)

    async def _stream(
        self,
        socket: ServerConnection,
        context_id: str,
        rate: int,
        inputs: asyncio.Queue[_Generation],
    ) -> None:
        """Audio for a context's inputs in order, then `done` after `continue: false`."""
        offset_s = 0.0
        sent = 0
        try:
            while True:
                request = await inputs.get()
                words = request.transcript.split()
                if words and request.add_timestamps:
                    await socket.send(_timestamps(context_id, words, offset_s))
                for chunk in _chunks(_samples(len(words), rate), rate):
                    if self._muted(sent):
                        return
                    await self._send_chunk(socket, context_id, chunk)
                    sent += 1
                    if self.fault is Fault.DROP:
                        socket.transport.abort()
                        return
                    await asyncio.sleep(self.chunk_delay_s)
                offset_s += len(words) * MS_PER_WORD / 1000
                if self._muted(sent):
                    return
                if not request.more:
                    done = {"type": "done", "done": True, "status_code": 206}
                    frame = msgspec.json.encode({**done, "context_id": context_id}).decode()
                    await socket.send(frame)
                    return
        except ConnectionClosed:
            return

    def _muted(self, chunks_sent: int) -> bool:
        return self.mute_after_chunks is not None and chunks_sent >= self.mute_after_chunks

    async def _cancel(
        self, socket: ServerConnection, context: _Context | None, context_id: str
    ) -> None:
        """Stop a context; what was already on its way still goes out."""
        if context is None or context.task.done():
            return
        context.task.cancel()
        late = CHUNK_MS * context.sample_rate // 1000
        for _ in range(self.chunks_after_cancel):
            await self._send_chunk(socket, context_id, _tone(late, context.sample_rate))
            self.late_chunks[context_id] += 1

    async def _send_chunk(self, socket: ServerConnection, context_id: str, pcm: bytes) -> None:
        chunk = {
            "type": "chunk",
            "data": base64.b64encode(pcm).decode(),
            "done": False,
            "status_code": 206,
            "step_time": 12.5,
            "context_id": context_id,
        }
        await socket.send(msgspec.json.encode(chunk).decode())


def _refuse(connection: ServerConnection, error: ErrorFrame) -> Response:
    """Cartesia's HTTP error object (as text/plain: `refusal` sets the content type)."""
    body = {
        "error_code": error.error_code,
        "title": error.title,
        "message": error.message,
        "request_id": str(uuid.uuid4()),
    }
    headers = {"Retry-After": "1"} if error.status_code == 429 else None
    return refusal(connection, error.status_code, msgspec.json.encode(body).decode(), headers)


async def _send_error(socket: ServerConnection, context_id: Any, error: ErrorFrame) -> None:
    frame: dict[str, Any] = {
        "type": "error",
        "done": True,
        "status_code": error.status_code,
        "error_code": error.error_code,
        "title": error.title,
        "message": error.message,
        "request_id": f"{uuid.uuid4()}:{context_id}:{uuid.uuid4()}",
    }
    if isinstance(context_id, str):
        frame["context_id"] = context_id
    await socket.send(msgspec.json.encode(frame).decode())


def _timestamps(context_id: str, words: list[str], offset_s: float) -> str:
    step = MS_PER_WORD / 1000
    starts = [offset_s + i * step for i in range(len(words))]
    frame = {
        "type": "timestamps",
        "done": False,
        "status_code": 206,
        "context_id": context_id,
        "word_timestamps": {"words": words, "start": starts, "end": [s + step for s in starts]},
    }
    return msgspec.json.encode(frame).decode()


def _samples(words: int, rate: int) -> int:
    return words * MS_PER_WORD * rate // 1000


def _tone(samples: int, rate: int) -> bytes:
    t = np.arange(samples) / rate
    return bytes((8000 * np.sin(2 * np.pi * TONE_HZ * t)).astype("<i2").tobytes())


def _chunks(samples: int, rate: int) -> list[bytes]:
    pcm = _tone(samples, rate)
    size = CHUNK_MS * rate // 1000 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]
