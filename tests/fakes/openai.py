"""A fake OpenAI API on 127.0.0.1: Chat Completions, speech, transcriptions and the model list,
over real HTTP/1.1 and streamed the way OpenAI streams them (SSE `data:` lines sent one by one,
speech as chunked raw PCM).

A small asyncio server rather than an ASGI app, because the faults need the socket itself:
never answering, closing in the middle of a body, and noticing the moment a client hangs up,
which is how a test proves that cancelling a stream really ended the request.

    async with FakeOpenAI(reply="Hi there!") as fake:
        fake.fail("chat", Fault.DROP, after=3)
        ... AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key) ...
        assert fake.requests[0].body["model"] == "gpt-4o-mini"
"""

from __future__ import annotations

import asyncio
import dataclasses
import http
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tests.fakes.faults import Fault

PCM_RATE = 24000
SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"

ENDPOINTS = {
    ("POST", "/v1/chat/completions"): "chat",
    ("POST", "/v1/audio/speech"): "speech",
    ("POST", "/v1/audio/transcriptions"): "transcriptions",
    ("GET", "/v1/models"): "models",
}

MODELS = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-4o-mini-tts", "gpt-4o-mini-transcribe", "whisper-1")

_STATUS_FAULTS = {
    Fault.UNAUTHORIZED: (
        401,
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    Fault.RATE_LIMIT: (
        429,
        "Rate limit reached for requests. Please try again in 0s.",
        "requests",
        "rate_limit_exceeded",
    ),
    Fault.SERVER_ERROR: (
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    Fault.REFUSE: (503, "The server is overloaded or not ready yet.", "server_error", None),
}

_DEFAULT_AFTER = {Fault.DROP: 1}
"""Body chunks sent before the fault hits, unless `fail` says otherwise."""


@dataclass
class Request:
    """One request as the fake saw it."""

    method: str
    path: str
    headers: dict[str, str]
    """Names lower-cased."""
    body: dict[str, Any]
    """The JSON body, or the multipart form's fields (an uploaded file as bytes)."""
    disconnected: bool = False
    """The client hung up before the response was complete."""


@dataclass(frozen=True)
class _Body:
    content_type: str
    chunks: list[bytes]
    streamed: bool
    """Sent with `transfer-encoding: chunked`, one chunk at a time; else with a length."""
    delay_s: float = 0.0
    delay_from: int = 1
    """`delay_s` is the pause before each chunk from this one on."""


class FakeOpenAI:
    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        reply: str = "Hello there! How can I help?",
        token_delay_s: float = 0.0,
        transcript: str = "what is the capital of france",
        seconds_per_word: float = 0.3,
        audio_chunk_bytes: int = 4801,
        tool_calls: list[tuple[str, dict[str, Any]]] | None = None,
        after_tools: str = "It says {results}",
        connect_delay_s: float = 0.0,
    ) -> None:
        self.connect_delay_s = connect_delay_s
        """Every new connection waits this long before its first request is read (a stand-in
        for TCP and TLS over a real RTT); requests on a kept-alive connection do not."""
        self.api_key = api_key
        self.reply = reply
        self.token_delay_s = token_delay_s
        self.transcript = transcript
        self.seconds_per_word = seconds_per_word
        self.audio_chunk_bytes = audio_chunk_bytes
        self.tool_calls = tool_calls or []
        """(name, arguments) the model calls when offered tools and the user spoke last."""
        self.after_tools = after_tools
        """The reply after tool results; `{results}` is their contents, joined."""
        """Odd by default, so that chunks split samples as a network may."""
        self.requests: list[Request] = []
        self.connections = 0
        """Connections accepted so far (each a TCP, and in production TLS, handshake)."""
        self._faults: dict[str, tuple[Fault, int | None]] = {}
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def fail(self, endpoint: str, fault: Fault, after: int | None = None) -> None:
        """Answer every request to `endpoint` (chat, speech, transcriptions, models) with
        `fault` until `fail(endpoint, Fault.NONE)`.

        `after`: body chunks (SSE events, audio pieces, halves of a JSON document) sent
        before DROP or HANG hits; HANG without it never sends the headers. MALFORMED answers
        a proxy's HTML page, or with `after` a broken SSE event in a stream. With `after`, a
        status fault (SERVER_ERROR...) comes as an `error` event inside the stream, as OpenAI
        reports failures after the headers went out.
        """
        assert endpoint in ENDPOINTS.values(), endpoint
        self._faults[endpoint] = (fault, after if after is not None else _DEFAULT_AFTER.get(fault))

    def seen(self, endpoint: str) -> list[Request]:
        return [r for r in self.requests if ENDPOINTS.get((r.method, r.path)) == endpoint]

    async def __aenter__(self) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Closing the sockets ends every handler at its next read or write (a hanging one
        # included), so they finish on their own rather than being cancelled.
        for writer in self._connections.values():
            writer.transport.abort()
        await asyncio.gather(*self._connections)
        await self._server.wait_closed()

    # ---- HTTP/1.1 ---------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        self.connections += 1
        try:
            await asyncio.sleep(self.connect_delay_s)
            while (request := await _read_request(reader)) is not None:
                self.requests.append(request)
                if not await self._answer(_Exchange(reader, writer, request)):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            del self._connections[task]
            writer.close()

    async def _answer(self, ex: _Exchange) -> bool:
        """Serve one request; False when the connection must not serve another."""
        request = ex.request
        endpoint = ENDPOINTS.get((request.method, request.path))
        if endpoint is None:
            message = f"Invalid URL ({request.method} {request.path})"
            return await ex.error(404, message, "invalid_request_error", None)
        presented = request.headers.get("authorization", "").removeprefix("Bearer ")
        if presented != self.api_key:
            # Echoed like a careless compatible server would: it must not reach our logs.
            message = f"Incorrect API key provided: {presented}."
            return await ex.error(401, message, "invalid_request_error", "invalid_api_key")
        fault, after = self._faults.get(endpoint, (Fault.NONE, None))
        if fault in _STATUS_FAULTS and after is None:
            return await ex.error(*_STATUS_FAULTS[fault])
        model = request.body.get("model")
        if endpoint != "models" and model not in MODELS:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return await ex.error(404, message, "invalid_request_error", "model_not_found")
        if fault is Fault.HANG and after is None:
            await ex.idle(None)
            return False
        body = {
            "chat": self._chat,
            "speech": self._speech,
            "transcriptions": self._transcription,
            "models": self._models,
        }[endpoint](request.body)
        if fault is Fault.MALFORMED:
            body = _malformed(body, after)
        elif fault in _STATUS_FAULTS and after is not None:
            _, message, kind, code = _STATUS_FAULTS[fault]
            error = _sse(_error(message, kind, code))
            body = dataclasses.replace(body, chunks=[*body.chunks[:after], error])
        return await ex.respond(body, fault, after)

    # ---- endpoints ----------------------------------------------------------------------------

    def _chat(self, request: dict[str, Any]) -> _Body:
        completion = {
            "id": f"chatcmpl-fake{len(self.requests)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request["model"],
            "system_fingerprint": "fp_fake",
        }
        usage = bool((request.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**completion, "choices": [choice], **({"usage": None} if usage else {})})

        messages = request.get("messages") or [{}]
        calls = self.tool_calls if request.get("tools") else []  # names as the model wrote them
        if calls and messages[-1].get("role") == "user":
            events = [chunk({"role": "assistant", "content": None, "refusal": None})]
            events += self._tool_call_chunks(calls, chunk)
            events.append(chunk({}, "tool_calls"))
            words: list[str] = []
        else:
            reply = self.reply
            if messages[-1].get("role") == "tool":
                trailing = []
                for message in reversed(messages):
                    if message.get("role") != "tool":
                        break
                    trailing.insert(0, message["content"])
                reply = self.after_tools.replace("{results}", " ".join(trailing))
            words = reply.split(" ")
            events = [chunk({"role": "assistant", "content": "", "refusal": None})]
            events += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
            events.append(chunk({}, "stop"))
        if usage:
            counts = {"prompt_tokens": 20, "completion_tokens": len(words)}
            counts["total_tokens"] = sum(counts.values())
            events.append(_sse({**completion, "choices": [], "usage": counts}))
        events.append(b"data: [DONE]\n\n")
        # The role and the first word come at once; `token_delay_s` is the pace after that.
        return _Body(SSE, events, streamed=True, delay_s=self.token_delay_s, delay_from=2)

    def _tool_call_chunks(self, calls: list[tuple[str, dict[str, Any]]], chunk: Any) -> list[bytes]:
        """As OpenAI streams them: per call, a first delta with its index, id, type and
        name and empty arguments, then the arguments' JSON text in fragments."""
        events = []
        for index, (name, arguments) in enumerate(calls):
            call_id = f"call_fake{len(self.requests)}_{index}"
            function = {"name": name, "arguments": ""}
            first = {"index": index, "id": call_id, "type": "function", "function": function}
            events.append(chunk({"tool_calls": [first]}))
            text = json.dumps(arguments)
            for start in range(0, len(text), 7):
                part = {"index": index, "function": {"arguments": text[start : start + 7]}}
                events.append(chunk({"tool_calls": [part]}))
        return events

    def _speech(self, request: dict[str, Any]) -> _Body:
        """A 200 Hz tone as long as the text takes to say at `seconds_per_word` / speed."""
        words = len(str(request.get("input", "")).split())
        seconds = words * self.seconds_per_word / float(request.get("speed", 1.0))
        t = np.arange(round(seconds * PCM_RATE)) / PCM_RATE
        pcm = (8000 * np.sin(2 * np.pi * 200 * t)).astype("<i2").tobytes()
        size = self.audio_chunk_bytes
        return _Body("audio/pcm", [pcm[i : i + size] for i in range(0, len(pcm), size)], True)

    def _transcription(self, form: dict[str, Any]) -> _Body:
        words = self.transcript.split(" ")
        counts = {"input_tokens": 50, "output_tokens": len(words)}
        usage = {"type": "tokens", **counts, "total_tokens": sum(counts.values())}
        if form.get("stream") != "true":
            return _document({"text": self.transcript, "usage": usage})
        events = [
            _sse({"type": "transcript.text.delta", "delta": w if i == 0 else " " + w})
            for i, w in enumerate(words)
        ]
        events.append(
            _sse({"type": "transcript.text.done", "text": self.transcript, "usage": usage})
        )
        return _Body(SSE, events, streamed=True)

    def _models(self, _: dict[str, Any]) -> _Body:
        models = [
            {"id": m, "object": "model", "created": 1686935002, "owned_by": "openai"}
            for m in MODELS
        ]
        return _document({"object": "list", "data": models})


class _Exchange:
    """One request's response on its connection, watching for the client hanging up."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.request = request

    async def send(self, data: bytes) -> bool:
        if self.reader.at_eof():
            self.request.disconnected = True
            return False
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            self.request.disconnected = True
            return False
        return True

    async def idle(self, seconds: float | None) -> bool:
        """Wait `seconds` (None: until the client leaves); False if the client hung up."""
        try:
            async with asyncio.timeout(seconds):
                # Clients send nothing while a response is under way: any read ends in EOF.
                await self.reader.read(1)
        except TimeoutError:
            return True
        self.request.disconnected = True
        return False

    async def error(self, status: int, message: str, kind: str, code: str | None) -> bool:
        extra = {"retry-after": "0"} if status == 429 else {}
        payload = json.dumps(_error(message, kind, code)).encode()
        head = {"content-type": JSON, "content-length": str(len(payload)), **extra}
        return await self.send(_head(status, head) + payload)

    async def respond(self, body: _Body, fault: Fault, after: int | None) -> bool:
        head = {"content-type": body.content_type}
        if body.streamed:
            head["transfer-encoding"] = "chunked"
        else:
            head["content-length"] = str(sum(map(len, body.chunks)))
        if not await self.send(_head(200, head)):
            return False
        for i, chunk in enumerate(body.chunks):
            if i == after and fault is Fault.DROP:
                return False  # the connection closes in the middle of the body
            if i == after and fault is Fault.HANG:
                await self.idle(None)
                return False
            if i >= body.delay_from and body.delay_s and not await self.idle(body.delay_s):
                return False
            framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if body.streamed else chunk
            if not await self.send(framed):
                return False
        return await self.send(b"0\r\n\r\n") if body.streamed else True


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
    lines += [f"{k}: {v}" for k, v in {"x-request-id": "req_fake", **headers}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _error(message: str, kind: str, code: str | None) -> dict[str, Any]:
    """OpenAI's error shape, in bodies and inside streams."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _document(data: dict[str, Any]) -> _Body:
    """A JSON document in two halves, so that a DROP can cut it in the middle."""
    payload = json.dumps(data).encode()
    half = len(payload) // 2
    return _Body(JSON, [payload[:half], payload[half:]], streamed=False)


def _malformed(body: _Body, after: int | None) -> _Body:
    if body.content_type == SSE and after is not None:  # a broken event in the stream
        return dataclasses.replace(body, chunks=[*body.chunks[:after], b'data: {"choices": [{\n\n'])
    # What a proxy in the way sends instead.
    return _Body("text/html; charset=utf-8", [b"<html><h1>502 Bad Gateway</h1></html>"], False)


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        raw = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        raw = await _read_chunked(reader)
    else:
        raw = b""
    content_type = headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        body = _form(content_type, raw)
    else:
        body = json.loads(raw) if raw else {}
    return Request(method, target.partition("?")[0], headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    raw = b""
    while size := int((await reader.readline()).split(b";")[0], 16):
        raw += await reader.readexactly(size)
        await reader.readline()
    await reader.readline()
    return raw


def _form(content_type: str, raw: bytes) -> dict[str, Any]:
    """multipart/form-data fields: text as str, files as bytes."""
    boundary = content_type.partition("boundary=")[2].strip('"').encode()
    fields: dict[str, Any] = {}
    for part in raw.split(b"--" + boundary)[1:-1]:
        head, _, value = part.removeprefix(b"\r\n").removesuffix(b"\r\n").partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        assert name is not None, head
        fields[name[1].decode()] = value if b"filename=" in head else value.decode()
    return fields
