"""Deepgram live transcription (`/v1/listen` over WebSocket), one socket per session.

The SDK opens the socket (URL, query, `Authorization: Token` header) and moves its frames;
this module owns the timing. Its `start_listening()` is not used: it needs a task of its own
and turns a dropped socket into an error callback. The socket is opened by `start` and kept
until `aclose`. `events()` is its only reader and the session's listener consumes it for the
whole session, so it also keeps the stream alive: its receive waits end when a KeepAlive is
due (Deepgram closes a stream that gets neither audio nor KeepAlive for ~10 s).

Turns: Deepgram's `is_final` segments go out as `Final`s as they come, flagged with its
`speech_final` (its endpointing), and an `UtteranceEnd` after an open utterance becomes an empty
`speech_final` `Final`, so a turn ends even when endpointing missed it. When the gateway's own
VAD ends the turn, `finalize` sends `Finalize`; Deepgram answers with a `from_finalize` result
when it had audio to flush, and the session gets exactly one `Final` for it. Deepgram does not
answer when it had nothing to flush (documented as "not guaranteed"), so a `Final` with what
arrived meanwhile goes out after a short grace instead, or at once when Deepgram's finals
already cover every second of audio sent (its own endpointing got there first: nothing is left
to flush, and waiting the grace only delayed the reply); but a Finalize left unanswered while
words were pending means a stuck stream, which fails like one so the fallback hears the
utterance again.

Stalls: Deepgram answers the audio it gets about every second (interim results, empty ones in
silence) and finalizes silence every few seconds, so a stream that keeps its socket open but
stops answering is told apart from a quiet user by the audio it left unanswered. Once Deepgram
owes an answer for that much audio, `events()` fails the stream when nothing at all came for
the stall bound, and an unanswered Finalize does not close the turn empty meanwhile: the turn
waits for any sign of life, or for the stall, which sends the utterance to the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import warnings
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import msgspec
from msgspec import Meta
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from adapters.base import Final, Partial, STTEvent
from gateway.config import Ms, STTBlock
from gateway.errors import PermanentProviderError, ProviderError, status_error

if TYPE_CHECKING:
    from deepgram import DeepgramClientEnvironment
    from deepgram.listen.v1.socket_client import AsyncV1SocketClient

PROVIDER = "deepgram"


class DeepgramSTT(STTBlock, tag="deepgram", frozen=True):
    """Deepgram live transcription (`/v1/listen` over WebSocket), one connection per session."""

    key_env = "DEEPGRAM_API_KEY"
    billed_by_audio = True

    model: Annotated[str | None, Meta(description="A Deepgram model, e.g. `nova-3`.")] = "nova-3"
    language: Annotated[str, Meta(description="BCP-47 language, e.g. `en-US`.")] = "en-US"
    interim_results: Annotated[
        bool, Meta(description="Send partial transcripts while the user speaks.")
    ] = True
    endpointing_ms: Annotated[
        Ms, Meta(description="Silence after which Deepgram marks `speech_final`; 0 turns it off.")
    ] = 300
    utterance_end_ms: Annotated[
        int,
        Meta(ge=1000, le=5000, description="Gap between words that sends `UtteranceEnd`."),
    ] = 1000
    smart_format: Annotated[
        bool, Meta(description="Punctuation, numbers and casing in transcripts.")
    ] = True

    def open(self, sample_rate: int) -> DeepgramStream:
        return DeepgramStream(self, sample_rate)

    def preload(self) -> None:
        """The SDK, imported and warmed before serving rather than by the process's first
        session: it builds each message model's conversions on first use, so the controls a
        turn sends go through the same calls now."""
        _import_sdk()
        from deepgram.listen.v1.types import ListenV1Finalize, ListenV1KeepAlive

        ListenV1Finalize(type="Finalize").dict()
        ListenV1KeepAlive(type="KeepAlive").dict()
        _rest_client()  # its TLS context: ~20 ms, not on the loop at the first start


class _Alternative(msgspec.Struct):
    transcript: object = None


class _Channel(msgspec.Struct):
    alternatives: list[_Alternative] = []


class _Message(msgspec.Struct):
    """What the stream reads of a Deepgram message, decoded straight from its frame.

    The SDK's `recv` builds a pydantic model of the whole message (every word's timing and
    confidence) by matching it against each message type: ~55 us for a two-word Results,
    against ~1.5 us for these fields, and it grows with the words. Like the SDK's models
    these are not validated: a missing or mistyped scalar is judged where it is read, and
    `channel` is Results' object or the channel list of the other messages.
    """

    type: object = None
    channel: _Channel | list[Any] | None = None
    is_final: object = None
    speech_final: object = None
    from_finalize: object = None
    start: object = None
    duration: object = None
    last_word_end: object = None
    variant: object = None
    description: object = None


class _Kind(msgspec.Struct):
    type: object = None


_MESSAGE = msgspec.json.Decoder(_Message)
_KIND = msgspec.json.Decoder(_Kind)


def _decode(frame: str) -> _Message | None:
    """The message in a text frame; None for JSON that is not an object (ignored, as the SDK
    ignores what it cannot match). Raises `msgspec.DecodeError` for a frame that is not JSON."""
    try:
        return _MESSAGE.decode(frame)
    except msgspec.ValidationError:
        pass  # a `channel` of another shape: the type still says what was owed
    try:
        return _Message(type=_KIND.decode(frame).type)
    except msgspec.ValidationError:
        return None


@functools.cache
def _import_sdk() -> None:
    """Import the SDK when a stream is first opened (not with the pipeline file), without the
    deprecation warnings of deepgram-sdk 7.17: its async socket is `websockets.legacy`,
    deprecated since websockets 14, and it imports `InvalidStatusCode` by its deprecated name,
    where its listen client is imported, which `client.listen.v1` would do lazily."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"websockets\.(legacy|exceptions\.)", DeprecationWarning)
        import deepgram.client
        import deepgram.listen.client  # `client.listen`, resolved lazily
        import deepgram.listen.v1.client  # noqa: F401


KEEPALIVE_S = 4.0
"""Deepgram closes a stream that got neither audio nor KeepAlive for 10 s (1011 NET-0001) and
advises a KeepAlive every 3 to 5 s of silence."""

FINALIZE_GRACE_S = 0.5
"""How long a Finalize sent with no words pending may go unanswered before the turn closes
anyway: long enough for a network round trip and a flush of the last fraction of a second."""

COVERED_SLACK_S = 0.02
"""Audio sent but not yet inside a final (`start` + `duration`) below which Deepgram has nothing
left to flush: one of its 20 ms processing frames."""

STALL_MIN_S = 5.0
"""The shortest stall bound, whatever `timeout_ms` says: five of Deepgram's answer intervals
(an interim result about every second of audio), so a slow but live stream is never failed,
and a dead one costs the user at most a few seconds."""

INTERIM_ANSWER_S = 2.0
"""Audio after which Deepgram, sending interim results, has always answered: it sends one about
every second of audio, speech or silence (docs "Using Interim Results"; the logs in pipecat
PR #1261 show an empty one a second after the last)."""

FINAL_ANSWER_S = 6.0
"""The same without interim results: Deepgram finalizes silence in windows of about 3 s, empty
(jambonz-feature-server #655), and speech in segments of up to about 5 s (#998)."""

CLOSE_S = 2.0
"""Bound on `aclose`: a stream that is not closing must not hold up a session's end."""

SEND_MIN_S = 0.05
"""Audio goes out in messages of at least this much, or after waiting this long: a live
microphone's 32 ms VAD frames one message each cost a masked WebSocket frame, a random mask
key and a send syscall every frame, the largest part of a cloud turn's CPU after the VAD.
Deepgram advises 20-250 ms per message; LiveKit's plugin sends 50 ms. Audio that waits is
never older than this (the end of the speech gate's tail, which Deepgram's endpointing needs,
goes out on time), and `finalize` sends it first, so a final comes no later."""

_WS_SCHEMES = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _environment(base_url: str | None) -> DeepgramClientEnvironment:
    """The SDK's hosts for a `base_url` (the API root, as in Deepgram's docs): the live socket
    goes to `wss://` for `https://` and to `ws://` for `http://`."""
    from deepgram import DeepgramClientEnvironment

    if base_url is None:
        return DeepgramClientEnvironment.PRODUCTION
    scheme, sep, rest = base_url.rstrip("/").partition("://")
    ws_scheme = _WS_SCHEMES.get(scheme.lower())
    if not sep or ws_scheme is None:
        raise PermanentProviderError(
            PROVIDER,
            f"stt.base_url {base_url!r} is not a URL: use the API root, such as "
            "https://api.deepgram.com or http://host:port for a self-hosted server",
        )
    http = f"{'https' if ws_scheme == 'wss' else 'http'}://{rest}"
    socket = f"{ws_scheme}://{rest}"
    return DeepgramClientEnvironment(base=http, production=socket, agent=socket, agent_rest=http)


@functools.cache
def _rest_client() -> httpx.AsyncClient:
    """The SDK builds an HTTP client for its REST endpoints unless given one, and a new one
    costs a TLS context (~25 ms of CPU on the event loop) per session; the live socket never
    uses it, so every session shares this one, which never opens a connection."""
    return httpx.AsyncClient()


def _refusal(status: int | None) -> ProviderError:
    """The error for an HTTP status that replaced the WebSocket upgrade (the SDK keeps no
    body to quote)."""
    return status_error(
        PROVIDER,
        status,
        "",
        key="stt.api_key / DEEPGRAM_API_KEY",
        request="stt.model, stt.language, stt.options and stt.base_url",
    )


def _closed(error: ConnectionClosed) -> ProviderError:
    frame = error.rcvd
    if frame is None:
        return ProviderError(PROVIDER, "the stream dropped without a close frame")
    reason = f" {frame.reason}" if frame.reason else ""
    return ProviderError(PROVIDER, f"closed the stream ({frame.code}{reason})")


class _Utterance:
    """Deepgram's results for the user's current utterance, turned into the session's events.

    `segments` are the finals already sent in this utterance (a partial shows them before the
    interim text). While a Finalize waits for its `from_finalize` result, `held` collects the
    finals that arrive meanwhile: they go out together as the one `Final` that ends the turn.
    """

    def __init__(self) -> None:
        self.segments: list[str] = []
        self.held: list[str] | None = None
        self.deadline: float | None = None
        """Loop time by which the Finalize in flight must have been answered; None while it is
        held for a stream that went quiet (see `hold`)."""
        self.owed = False
        """Words were pending at Finalize: Deepgram owes a result, silence is a stuck stream."""
        self.words_pending = False
        """An interim with words came after the last final."""
        self.through_s = 0.0
        """The stream's audio sent when the Finalize in flight went out: what it flushes."""

    def finalizing(self, now: float, owed_s: float, flushed: bool, through_s: float) -> None:
        """`flushed`: Deepgram's finals already cover all the audio sent, so no answer will
        come and the turn may close at once (unless words are pending)."""
        self.through_s = through_s
        self.owed = self.owed or self.words_pending
        grace = 0.0 if flushed else FINALIZE_GRACE_S
        self.deadline = now + (owed_s if self.owed else grace)
        if self.held is None:
            self.held = []

    def hold(self) -> None:
        """Wait for the next message instead of closing the turn: Deepgram owes an answer for
        audio it got, so its silence is not an empty flush but possibly a stall."""
        self.deadline = None

    def alive(self, now: float) -> None:
        """Deepgram sent something: a held Finalize gets its grace again from now."""
        if self.held is not None and self.deadline is None:
            self.deadline = now + FINALIZE_GRACE_S

    def close(self) -> Final:
        """The `Final` that ends a finalized turn, with whatever arrived since `finalize`."""
        text = " ".join(self.held or [])
        self.held, self.deadline, self.owed = None, None, False
        self.segments.clear()
        return Final(text, speech_final=True)

    def result(
        self, now: float, text: str, is_final: bool, speech_final: bool, flushed: bool
    ) -> STTEvent | None:
        if not is_final:
            if not text:
                return None
            self.words_pending = True
            return Partial(" ".join([*self.segments, *(self.held or []), text]))
        self.words_pending = False
        if self.held is not None:
            if text:
                self.held.append(text)
            if flushed or speech_final:  # Deepgram's own endpoint leaves nothing to flush
                return self.close()
            # Nothing is pending now, so Deepgram may not answer the Finalize at all.
            self.owed = False
            self.deadline = min(self.deadline or now, now + FINALIZE_GRACE_S)
            return None
        if speech_final or flushed:  # a flush answered after its turn closed still ends one
            if not text and not self.segments:
                return None  # finalized silence: no turn is open, so none ends
            self.segments.clear()
            return Final(text, speech_final=True)
        if not text:
            return None
        self.segments.append(text)
        return Final(text, speech_final=False)

    def utterance_end(self, quiet_until_s: float) -> Final | None:
        """Deepgram heard no words from the last one until `quiet_until_s` of the stream's
        audio: end the turn unless a final already did. A Finalize in flight for audio beyond
        that (a client faster than real time spoke again before it) waits for its answer."""
        if self.held is not None:
            if quiet_until_s + COVERED_SLACK_S < self.through_s:
                return None
            return self.close()
        if not self.segments:
            return None
        self.segments.clear()
        return Final("", speech_final=True)


def _results_fields(message: _Message) -> tuple[str, bool, bool, bool]:
    """Transcript, is_final, speech_final and from_finalize of a Results message."""
    channel = message.channel
    alternatives = channel.alternatives if isinstance(channel, _Channel) else []
    text = alternatives[0].transcript if alternatives else None
    if not isinstance(text, str):
        raise ProviderError(PROVIDER, "sent Results without channel.alternatives[0].transcript")
    return (
        text.strip(),
        message.is_final is True,
        message.speech_final is True,
        message.from_finalize is True,
    )


def _end_s(message: _Message) -> float:
    """Where a result ends in the stream's audio; 0 when the fields are missing or mistyped,
    which only keeps the Finalize's grace."""
    start, duration = message.start, message.duration
    numbers = (int, float)
    if isinstance(start, numbers) and isinstance(duration, numbers):
        return float(start) + float(duration)
    return 0.0


class _Unanswered:
    """The audio sent since Deepgram's last message, and when its silence means a stall.

    Deepgram owes an answer once it got `answer_s` of audio without sending anything; the
    stream is stalled when, from then on, nothing came for `stall_s` since that audio began.
    Audio alone counts: a client that stops sending owes Deepgram nothing to answer.
    """

    def __init__(self, bytes_per_s: int, answer_s: float, stall_s: float) -> None:
        self._bytes_per_s = bytes_per_s
        self._answer_s = answer_s
        self.stall_s = stall_s
        self.seconds = 0.0
        """Seconds of audio sent since the last message."""
        self._since: float | None = None
        self.stall_at: float | None = None
        """Loop time at which the stream counts as stalled; None while nothing is owed."""

    def sent(self, now: float, size: int) -> bool:
        """Count audio that went out; True when Deepgram has just come to owe an answer."""
        if self._since is None:
            self._since = now
        self.seconds += size / self._bytes_per_s
        if self.stall_at is not None or self.seconds < self._answer_s:
            return False
        self.stall_at = max(self._since + self.stall_s, now)
        return True

    def answered(self) -> None:
        self.seconds, self._since, self.stall_at = 0.0, None, None


class DeepgramStream:
    """One live stream per session. `keepalive_s` and `stall_s` (default: `timeout_ms`, at
    least `STALL_MIN_S`) are parameters so tests can shorten them."""

    def __init__(
        self,
        config: DeepgramSTT,
        sample_rate: int,
        *,
        keepalive_s: float = KEEPALIVE_S,
        stall_s: float | None = None,
    ) -> None:
        _import_sdk()
        self._config = config
        self._sample_rate = sample_rate
        self._keepalive_s = keepalive_s
        self._timeout_s = config.timeout_ms / 1000
        self._stack = AsyncExitStack()
        self._socket: AsyncV1SocketClient | None = None
        self._closing = False
        self._utterance = _Utterance()
        self._unanswered = _Unanswered(
            sample_rate * 2,
            INTERIM_ANSWER_S if config.interim_results else FINAL_ANSWER_S,
            max(self._timeout_s, STALL_MIN_S) if stall_s is None else stall_s,
        )
        self._last_sent = 0.0
        """Loop time of the last audio or KeepAlive sent."""
        self._waiting = bytearray()
        """Audio not sent yet: less than `SEND_MIN_S` of it."""
        self._waiting_since: float | None = None
        self._flush: asyncio.TimerHandle | None = None
        """Ends the receive wait of `events()` when waiting audio is due: the wait itself is
        moved only then, not for every frame that waits."""
        self._send_min_bytes = int(SEND_MIN_S * sample_rate) * 2
        self._sent_s = 0.0
        """Seconds of audio sent on the stream so far."""
        self._finalized_s = 0.0
        """Where Deepgram's last final result ends, in seconds of the stream's audio."""
        self._wait: asyncio.Timeout | None = None
        """The receive wait of `events()`, which `finalize` and a stall bound shorten."""

    async def start(self) -> None:
        """Open the live stream: the handshake (and so the key) is checked before any turn."""
        from deepgram import AsyncDeepgramClient
        from deepgram.core.api_error import ApiError

        config = self._config
        api_key = config.resolved_key(os.environ)
        if not api_key:
            raise PermanentProviderError(
                PROVIDER, f"no API key: set {config.key_env} on the server (or stt.api_key)"
            )
        client = AsyncDeepgramClient(
            api_key=api_key,
            environment=_environment(config.base_url),
            httpx_client=_rest_client(),
        )
        stream = client.listen.v1.connect(
            model=config.model or "nova-3",
            language=config.language,
            encoding="linear16",
            sample_rate=str(self._sample_rate),
            channels="1",
            interim_results=_flag(config.interim_results),
            endpointing=str(config.endpointing_ms) if config.endpointing_ms else "false",
            # Deepgram computes utterance ends from interim results, so it needs them.
            utterance_end_ms=str(config.utterance_end_ms) if config.interim_results else None,
            smart_format=_flag(config.smart_format),
            vad_events="true",
            request_options={"additional_query_parameters": dict(config.options)},
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                self._socket = await self._stack.enter_async_context(stream)
        except TimeoutError:
            raise ProviderError(
                PROVIDER,
                f"no answer to the stream handshake within timeout_ms ({config.timeout_ms} ms)",
            ) from None
        except ApiError as error:
            raise _refusal(error.status_code) from None
        except InvalidStatus as error:
            raise _refusal(error.response.status_code) from None
        except (OSError, WebSocketException) as error:
            raise ProviderError(PROVIDER, f"could not open the stream: {error}") from None
        self._last_sent = asyncio.get_running_loop().time()

    async def probe(self) -> None:
        """Nothing to add: the failover layer probes with `start()`, whose handshake checks
        the service, the key and the parameters, and any audio sent here would be billed."""

    async def send_audio(self, pcm: bytes) -> None:
        waiting = self._waiting
        if waiting or len(pcm) < self._send_min_bytes:
            if not waiting:
                loop = asyncio.get_running_loop()
                self._waiting_since = loop.time()
                self._flush = loop.call_later(SEND_MIN_S, self._flush_due)
            waiting += pcm
            if len(waiting) < self._send_min_bytes:
                return
            pcm = self._take_waiting()
        await self._send(pcm)

    def _take_waiting(self) -> bytes:
        pcm = bytes(self._waiting)
        self._waiting.clear()
        self._waiting_since = None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        return pcm

    def _flush_due(self) -> None:
        self._flush = None
        self._wake_by(asyncio.get_running_loop().time())

    async def _send(self, pcm: bytes) -> None:
        socket = self._socket
        # An empty binary frame is Deepgram's old end-of-stream signal: never send one.
        if socket is None or not pcm:
            return
        with contextlib.suppress(ConnectionClosed):
            await socket.send_media(pcm)
            now = self._last_sent = asyncio.get_running_loop().time()
            self._sent_s += len(pcm) / (self._sample_rate * 2)
            if self._unanswered.sent(now, len(pcm)):
                self._wake_by(self._unanswered.stall_at)

    async def finalize(self, continues: bool = False) -> None:
        socket = self._socket
        if socket is None:
            return
        if self._waiting:  # the words to flush, ahead of the Finalize
            await self._send(self._take_waiting())
        # The state first: the answer may be read before `send_finalize` returns.
        utterance = self._utterance
        flushed = self._sent_s - self._finalized_s <= COVERED_SLACK_S
        utterance.finalizing(
            asyncio.get_running_loop().time(), self._timeout_s, flushed, self._sent_s
        )
        self._wake_by(utterance.deadline)
        with contextlib.suppress(ConnectionClosed):
            await socket.send_finalize()

    def _wake_by(self, when: float | None) -> None:
        """End the receive wait of `events()` by `when` at the latest."""
        wait = self._wait
        if wait is not None and when is not None and not wait.expired():
            wait.reschedule(min(when, wait.when() or when))

    async def events(self) -> AsyncGenerator[STTEvent, None]:
        socket = self._socket
        if socket is None:
            raise ProviderError(PROVIDER, "events() before a successful start()")
        loop = asyncio.get_running_loop()
        while True:
            wake_at = min(
                when
                for when in (
                    self._last_sent + self._keepalive_s,
                    self._utterance.deadline,
                    self._unanswered.stall_at,
                    None if self._waiting_since is None else self._waiting_since + SEND_MIN_S,
                )
                if when is not None
            )
            event: STTEvent | None
            try:
                async with asyncio.timeout_at(wake_at) as self._wait:
                    # The SDK's socket, read directly: its `recv` parses each message
                    # into a pydantic model (`_Message` says why not).
                    frame = await socket._websocket.recv()
            except TimeoutError:
                event = await self._on_time(socket, loop.time())
            except ConnectionClosed as error:
                if self._closing:
                    return
                raise _closed(error) from None
            else:
                self._unanswered.answered()
                self._utterance.alive(loop.time())
                event = self._on_frame(frame)
            finally:
                self._wait = None
            if event is not None:
                yield event

    async def _on_time(self, socket: AsyncV1SocketClient, now: float) -> Final | None:
        """A receive wait ended: the stream stalled, a Finalize went unanswered, audio waited
        long enough, or a KeepAlive is due."""
        since = self._waiting_since
        if since is not None and now >= since + SEND_MIN_S:
            await self._send(self._take_waiting())
        unanswered = self._unanswered
        if unanswered.stall_at is not None and now >= unanswered.stall_at:
            raise ProviderError(
                PROVIDER,
                f"sent nothing for {unanswered.stall_s:g} s while audio was flowing "
                f"({unanswered.seconds:.1f} s of audio unanswered): the stream is stalled",
            )
        deadline = self._utterance.deadline
        if deadline is not None and now >= deadline:
            if self._utterance.owed:
                raise ProviderError(
                    PROVIDER,
                    f"no answer to Finalize within timeout_ms ({self._config.timeout_ms} ms) "
                    "while words were pending",
                )
            if unanswered.stall_at is not None:
                self._utterance.hold()
                return None
            return self._utterance.close()
        if now >= self._last_sent + self._keepalive_s:
            with contextlib.suppress(ConnectionClosed):
                await socket.send_keep_alive()
            self._last_sent = now
        return None

    def _on_frame(self, frame: str | bytes) -> STTEvent | None:
        """Our event for one frame; `Metadata`, `SpeechStarted` and types newer than this
        adapter are ignored."""
        if isinstance(frame, bytes):
            raise ProviderError(PROVIDER, "sent binary data on a transcription stream")
        try:
            message = _decode(frame)
        except msgspec.DecodeError as error:
            raise ProviderError(PROVIDER, f"sent a message that is not JSON ({error})") from None
        if message is None:
            return None
        if message.type == "Results":
            now = asyncio.get_running_loop().time()
            fields = _results_fields(message)
            if fields[1]:  # is_final
                self._finalized_s = max(self._finalized_s, _end_s(message))
            return self._utterance.result(now, *fields)
        if message.type == "UtteranceEnd":
            return self._utterance.utterance_end(self._quiet_until_s(message))
        if message.type == "Error":
            raise ProviderError(
                PROVIDER, f"reported an error ({message.variant}): {message.description}"
            )
        return None

    def _quiet_until_s(self, message: _Message) -> float:
        """Where the gap an `UtteranceEnd` reports ends: its last word plus `utterance_end_ms`
        (all the audio sent, when the field is missing or mistyped)."""
        last_word_end = message.last_word_end
        if not isinstance(last_word_end, (int, float)):
            return self._sent_s
        return float(last_word_end) + self._config.utterance_end_ms / 1000

    async def aclose(self) -> None:
        """Send CloseStream and close the socket; idempotent, and safe after a failed start."""
        waiting = self._take_waiting()
        socket, self._socket = self._socket, None
        self._closing = True
        if socket is None:
            return
        # Past the bound, websockets still closes the TCP connection on its own.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_S):
                with contextlib.suppress(ConnectionClosed):
                    if waiting:  # CloseStream asks for the results of all the audio
                        await socket.send_media(waiting)
                    await socket.send_close_stream()
                await self._stack.aclose()
