"""A fake Deepgram live transcription API (`/v1/listen` over WebSocket) on 127.0.0.1.

It speaks Deepgram's wire protocol: `Authorization: Token <key>` checked at the upgrade (401
with Deepgram's JSON body and `dg-error` header otherwise), query parameters, binary linear16
audio in, `KeepAlive` / `Finalize` / `CloseStream` text messages, and `Results`,
`SpeechStarted`, `UtteranceEnd` and `Metadata` messages out in Deepgram's shapes. A stream that
gets nothing for `idle_timeout_s` is closed 1011 `NET-0001`, as Deepgram does after 10 s.

It "recognizes" deterministically, in audio time rather than wall time, so a test may send
audio as fast as it likes: the configured transcript's words are revealed in proportion to the
voiced audio received (20 ms frames above about -40 dBFS), each new word as an interim result;
`endpointing` ms of silent audio after speech finalize the words heard with `speech_final`; an
`utterance_end_ms` gap after the last word sends `UtteranceEnd`; `Finalize` flushes pending
words as a `from_finalize` result (and, as documented, answers nothing when nothing is
pending); `CloseStream` flushes, sends `Metadata` and closes 1000. Each new utterance reveals
the transcript again from its first word. Like Deepgram, it answers audio even when nobody
speaks: with interim results, an interim result after each second of audio without one (empty
in silence), and every 3 s of silence an empty final (`speech_final` when endpointing is on),
so a healthy stream always answers within a few seconds of audio.

`muted = True` makes every stream stall the way a failing Deepgram does: the socket stays
open and audio is still read, but nothing is sent, not even the close after `CloseStream`;
a stream's own `muted` stalls that stream only (a stuck stream, while a new one answers).

    async with FakeDeepgram(transcript="what is the capital of france") as fake:
        ... DeepgramSTT config with base_url=fake.base_url, api_key=fake.api_key ...
        assert fake.streams[0].param("model") == "nova-3"
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.fakes.faults import Fault
from tests.fakes.ws import Served, refusal, serving, upgrade_fault

SPEECH_RMS = 330.0
"""RMS (int16 units) above which a frame counts as voiced: about -40 dBFS."""
FRAME_S = 0.02
MODEL_UUID = "1dbdfb4d-85b2-4659-9f5b-ec1bbb1a8d2c"
MODEL_INFO = {"name": "general-nova-3", "version": "2025-04-17.21547", "arch": "nova-3"}
NET_0001 = "NET-0001"
MALFORMED = "<html><body><h1>502 Bad Gateway</h1></body></html>"
"""What a proxy in front of Deepgram sends instead of JSON when it fails."""
INTERIM_EVERY_S = 1.0
"""Audio after which Deepgram sends an interim result if it sent none meanwhile: its docs'
"Using Interim Results" example shows one per second; pipecat PR #1261's logs show an empty
one a second after the last result."""
SILENCE_FINAL_S = 3.0
"""Silence Deepgram finalizes at once, as an empty final: jambonz-feature-server #655 shows an
empty `is_final` result 3.02 s long, #1368 empty ones with `speech_final`."""


@dataclass
class Stream:
    """One `/v1/listen` connection as the fake saw it."""

    params: dict[str, list[str]]
    headers: Headers
    controls: list[str] = field(default_factory=list)
    """Types of the text messages received, in order (`KeepAlive`, `Finalize`, ...)."""
    audio_bytes: int = 0
    audio_messages: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Messages sent, in order."""
    close_code: int | None = None
    """The code the fake closed with, if it closed first."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    muted: bool = False

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[-1] if values else None


class _Recognizer:
    """The transcript revealed by the audio of one stream; every method returns the messages
    Deepgram would send in answer."""

    def __init__(self, fake: FakeDeepgram, stream: Stream) -> None:
        self.words = fake.transcript.split()
        self.words_per_second = fake.words_per_second
        self.segment_s = fake.segment_s
        self.answer_finalize = fake.answer_finalize
        self.rate = int(stream.param("sample_rate") or 16000)
        self.interim = stream.param("interim_results") == "true"
        endpointing = stream.param("endpointing") or "10"  # Deepgram's default
        self.endpointing_s = None if endpointing == "false" else int(endpointing) / 1000
        utterance_end = stream.param("utterance_end_ms")
        self.utterance_end_s = int(utterance_end) / 1000 if utterance_end and self.interim else None
        self.vad_events = stream.param("vad_events") == "true"
        self.request_id = str(uuid.uuid4())
        self.audio_sha256 = hashlib.sha256()
        self.frame_bytes = int(self.rate * FRAME_S) * 2
        self.carry = b""
        self.t = 0.0
        """Seconds of audio received."""
        self.last_results_t = 0.0
        """Audio time of the last `Results` sent."""
        self.last_voiced_t = 0.0
        self.in_speech = False
        self.silence_s = 0.0
        self.last_word_end: float | None = None
        """End of the last word heard, until its utterance's `UtteranceEnd` is sent."""
        self._new_utterance()

    def _new_utterance(self) -> None:
        self.voiced_s = 0.0
        self.revealed = 0
        self.finalized = 0
        self._finalized_at(self.t)

    def _finalized_at(self, t: float) -> None:
        self.window_start = t
        self.voiced_since_final_s = 0.0

    def audio(self, chunk: bytes) -> list[dict[str, Any]]:
        self.audio_sha256.update(chunk)
        data = self.carry + chunk
        whole = len(data) - len(data) % self.frame_bytes
        self.carry = data[whole:]
        replies: list[dict[str, Any]] = []
        for start in range(0, whole, self.frame_bytes):
            frame = np.frombuffer(data[start : start + self.frame_bytes], dtype="<i2")
            replies += self._frame(math.sqrt(float(np.mean(frame.astype(np.float32) ** 2))))
        return replies

    def _frame(self, rms: float) -> list[dict[str, Any]]:
        self.t += FRAME_S
        voiced = rms >= SPEECH_RMS
        replies = self._voiced() if voiced else self._silent()
        quiet_since = max(self.window_start, self.last_voiced_t)
        if not voiced and self.t - quiet_since >= SILENCE_FINAL_S - 1e-9:
            replies += self._final() or self._silence_final()
        if self.interim and self.t - self.last_results_t >= INTERIM_EVERY_S - 1e-9:
            replies.append(self._results(is_final=False))
        return replies

    def _voiced(self) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = []
        if not self.in_speech and self.vad_events:
            replies.append(
                {"type": "SpeechStarted", "channel": [0, 1], "timestamp": self._at(-FRAME_S)}
            )
        self.in_speech, self.silence_s = True, 0.0
        self.last_voiced_t = self.t
        self.voiced_s += FRAME_S
        self.voiced_since_final_s += FRAME_S
        heard = min(len(self.words), math.ceil(round(self.voiced_s * self.words_per_second, 6)))
        if heard > self.revealed:
            self.revealed = heard
            if self.interim:
                replies.append(self._results(is_final=False))
        if self.revealed:
            self.last_word_end = self._at()  # the last word lasts while the voice does
        if self.segment_s is not None and self.voiced_since_final_s >= self.segment_s:
            replies += self._final()
        return replies

    def _silent(self) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = []
        if self.in_speech:
            self.silence_s += FRAME_S
            if self.endpointing_s is not None and self.silence_s >= self.endpointing_s - 1e-9:
                self.in_speech = False
                replies += self._final(speech_final=True)
        if self._utterance_ended():
            replies += self._final()  # Deepgram finalizes what it heard before the gap
            assert self.last_word_end is not None
            replies.append(
                {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": self.last_word_end}
            )
            self.last_word_end, self.in_speech = None, False
            self._new_utterance()
        return replies

    def _utterance_ended(self) -> bool:
        """`utterance_end_ms` of audio went by since the last word heard."""
        if self.utterance_end_s is None or self.last_word_end is None:
            return False
        return self.t - self.last_word_end >= self.utterance_end_s - 1e-9

    def control(self, kind: str, raw: str) -> list[dict[str, Any]]:
        if kind == "KeepAlive":
            return []
        if kind == "Finalize":
            if not self.answer_finalize:
                return []
            replies = self._final(from_finalize=True)
            self.in_speech = False
            self._new_utterance()
            return replies
        if kind == "CloseStream":
            return [*self._final(), self._metadata()]
        return [
            {
                "type": "Error",
                "variant": "SchemaError",
                "description": f"unknown message type {kind!r}",
                "message": raw,
            }
        ]

    def _final(
        self, speech_final: bool = False, from_finalize: bool = False
    ) -> list[dict[str, Any]]:
        """The pending words as a final result, if any are pending."""
        if self.revealed == self.finalized:
            return []
        result = self._results(True, speech_final, from_finalize)
        self.finalized = self.revealed
        self._finalized_at(self.t)
        if speech_final:
            self._new_utterance()
        return [result]

    def _silence_final(self) -> list[dict[str, Any]]:
        """An empty final for the silence since the last final."""
        result = self._results(True, speech_final=self.endpointing_s is not None)
        self._finalized_at(self.t)
        return [result]

    def _at(self, offset: float = 0.0) -> float:
        return round(self.t + offset, 3)

    def _results(
        self, is_final: bool, speech_final: bool = False, from_finalize: bool = False
    ) -> dict[str, Any]:
        self.last_results_t = self.t
        words = self.words[self.finalized : self.revealed]
        start = self.window_start
        step = (self.t - start) / max(1, len(words))
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(self.t - start, 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": " ".join(words),
                        "confidence": 0.99 if words else 0.0,
                        "words": [
                            {
                                "word": word.lower().strip(".,?!"),
                                "start": round(start + i * step, 3),
                                "end": round(start + (i + 1) * step, 3),
                                "confidence": 0.99,
                                "punctuated_word": word,
                            }
                            for i, word in enumerate(words)
                        ],
                    }
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": MODEL_INFO,
                "model_uuid": MODEL_UUID,
            },
        }

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self.audio_sha256.hexdigest(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "duration": self._at(),
            "channels": 1,
            "models": [MODEL_UUID],
            "model_info": {MODEL_UUID: MODEL_INFO},
        }


class FakeDeepgram:
    def __init__(
        self,
        *,
        api_key: str = "dg-test-key",
        transcript: str = "what is the capital of france",
        words_per_second: float = 5.0,
        segment_s: float | None = None,
        idle_timeout_s: float = 10.0,
        answer_finalize: bool = True,
        fault: Fault = Fault.NONE,
        connect_delay_s: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.connect_delay_s = connect_delay_s
        """Every new stream's handshake waits this long (TCP and TLS over a real RTT)."""
        self.transcript = transcript
        self.words_per_second = words_per_second
        """Voiced audio per word revealed."""
        self.segment_s = segment_s
        """Voiced audio after which pending words are finalized mid-utterance (without
        `speech_final`), as Deepgram does in long speech; None: only at pauses."""
        self.idle_timeout_s = idle_timeout_s
        self.answer_finalize = answer_finalize
        """False: `Finalize` is recorded but never answered, like a stuck stream."""
        self.fault = fault
        """Applies to every new stream; tests may change it between streams."""
        self.muted = False
        """True: every stream reads audio but sends nothing, as a stalled Deepgram does; tests
        may switch it at any time."""
        self.attempts = 0
        """Upgrade requests seen, refused ones included."""
        self.streams: list[Stream] = []
        self._released = asyncio.Event()
        self._served: Served | None = None
        self._exit = contextlib.AsyncExitStack()

    @property
    def base_url(self) -> str:
        """The API root, as `stt.base_url` (the SDK adds `/v1/listen`)."""
        assert self._served is not None, "use `async with FakeDeepgram()`"
        return self._served.url("http")

    async def __aenter__(self) -> FakeDeepgram:
        self._served = await self._exit.enter_async_context(
            serving(self._handle, self._process_request, self.connect_delay_s)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()
        await self._exit.aclose()

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        self.attempts += 1
        request_id = str(uuid.uuid4())
        if urlsplit(request.path).path != "/v1/listen":
            return _error(connection, 404, "NOT_FOUND", "Not found.", request_id)
        auth = request.headers.get("Authorization")
        if self.fault is Fault.UNAUTHORIZED or auth != f"Token {self.api_key}":
            return _error(connection, 401, "INVALID_AUTH", "Invalid credentials.", request_id)
        response = await upgrade_fault(connection, self.fault, self._released)
        if response is not None:
            response.headers["dg-request-id"] = request_id
            response.headers["dg-error"] = response.reason_phrase
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        stream = Stream(parse_qs(urlsplit(ws.request.path).query), ws.request.headers)
        self.streams.append(stream)
        recognizer = _Recognizer(self, stream)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        frame = await ws.recv()
                except TimeoutError:
                    await self._close(ws, stream, 1011, NET_0001)
                    return
                kind = None
                if isinstance(frame, bytes) and frame:
                    stream.audio_bytes += len(frame)
                    stream.audio_messages += 1
                    replies = recognizer.audio(frame)
                else:
                    # An empty binary frame is Deepgram's deprecated way to say CloseStream.
                    text = frame if isinstance(frame, str) else '{"type": "CloseStream"}'
                    kind = _message_type(text)
                    stream.controls.append(kind)
                    replies = recognizer.control(kind, text)
                if self.muted or stream.muted:
                    continue
                try:
                    for reply in replies:
                        if not await self._send(ws, stream, reply):
                            return
                except ConnectionClosed:
                    # The client closed without waiting for answers: what it sent before its
                    # close still arrived (and is billed), so read it all the same.
                    continue
                if kind == "CloseStream":
                    await self._close(ws, stream, 1000, "")
                    return
        except ConnectionClosed:
            return
        finally:
            stream.ended.set()

    async def _send(self, ws: ServerConnection, stream: Stream, message: dict[str, Any]) -> bool:
        """Send one message, with the stream's fault; False when the fault ended the stream."""
        first_results = message["type"] == "Results" and not any(
            m["type"] == "Results" for m in stream.sent
        )
        stream.sent.append(message)
        if first_results and self.fault is Fault.MALFORMED:
            await ws.send(MALFORMED)
            return True
        await ws.send(json.dumps(message))
        if first_results and self.fault is Fault.DROP:
            ws.transport.abort()  # no close frame: what a network failure looks like
            return False
        return True

    async def _close(self, ws: ServerConnection, stream: Stream, code: int, reason: str) -> None:
        stream.close_code = code
        await ws.close(code, reason)


def _message_type(text: str) -> str:
    try:
        message = json.loads(text)
    except ValueError:
        return "<not JSON>"
    kind = message.get("type") if isinstance(message, dict) else None
    return kind if isinstance(kind, str) else "<no type>"


def _error(
    connection: ServerConnection, status: int, code: str, message: str, request_id: str
) -> Response:
    """Deepgram's refusal of an upgrade: a JSON body and the `dg-error` header."""
    body = json.dumps({"err_code": code, "err_msg": message, "request_id": request_id})
    return refusal(connection, status, body, {"dg-error": message, "dg-request-id": request_id})
