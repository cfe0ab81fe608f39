"""The Cartesia adapter on the real SDK against a fake Cartesia speaking its WebSocket protocol."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect

from adapters.cartesia import CartesiaSocket, CartesiaTTS
from gateway import protocol
from gateway.client import AudioChunk, VoiceClient
from gateway.errors import PermanentProviderError, ProviderError
from gateway.providers.failover import FailoverTTS
from gateway.providers.health import ProviderHealth, State, breaker_key
from tests.conftest import make_pipeline, running_gateway, wait_sessions_closed
from tests.fakes.cartesia import (
    API_KEY,
    CONCURRENCY_LIMITED,
    GENERATION_FAILED,
    MALFORMED_FRAME,
    FakeCartesia,
)
from tests.fakes.faults import Fault

HELLO = ["Hello there.", "How are you today?"]


class Phrases:
    """Phrases as the session hands them over: an iterator, not a generator.

    `gate`: phrases after the first wait for it (the LLM is still writing). `more`: after the
    last phrase the LLM never finishes, so the reply only ends by being cut.
    """

    def __init__(self, *phrases: str, gate: asyncio.Event | None = None, more: bool = False):
        self._phrases = list(phrases)
        self._gate = gate
        self._more = more
        self._given = 0

    def __aiter__(self) -> Phrases:
        return self

    async def __anext__(self) -> str:
        if self._given and self._gate is not None:
            await self._gate.wait()
        if self._given == len(self._phrases):
            if self._more:
                await asyncio.Event().wait()
            raise StopAsyncIteration
        self._given += 1
        return self._phrases[self._given - 1]


def config(fake: FakeCartesia, **keys: Any) -> CartesiaTTS:
    return msgspec.convert({"base_url": fake.base_url, "api_key": API_KEY, **keys}, CartesiaTTS)


@asynccontextmanager
async def started(tts_config: CartesiaTTS) -> AsyncIterator[CartesiaSocket]:
    tts = CartesiaSocket(tts_config)
    await tts.start()
    try:
        yield tts
    finally:
        await tts.aclose()


async def speak(tts: CartesiaSocket | FailoverTTS, phrases: Phrases, rate: int = 16000) -> bytes:
    heard: list[bytes] = []
    await listen(tts, phrases, heard, rate)
    return b"".join(heard)


async def listen(
    tts: CartesiaSocket | FailoverTTS, phrases: Phrases, heard: list[bytes], rate: int = 16000
) -> None:
    """Audio into `heard` as it comes, so a test sees what came before a failure."""
    async with aclosing(tts.synthesize(phrases, rate)) as audio:
        async for pcm in audio:
            heard.append(pcm)


async def eventually(condition: Callable[[], object]) -> None:
    """The fake reads what the adapter sent on its own time."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.005)


def expected_audio(phrases: list[str], rate: int) -> int:
    return sum(FakeCartesia.audio_bytes(phrase, rate) for phrase in phrases)


async def test_requests_carry_auth_version_model_voice_format_language_and_options() -> None:
    options = {"generation_config": {"speed": 1.2}, "add_timestamps": True}
    async with FakeCartesia() as fake:
        keys = {"model": "sonic-3", "voice": "voice-7", "language": "fr", "options": options}
        async with started(config(fake, **keys)) as tts:
            audio = await speak(tts, Phrases(*HELLO), 24000)

    handshake = fake.handshakes[0]
    assert handshake.path == "/tts/websocket"
    assert handshake.headers["authorization"] == f"Bearer {API_KEY}"
    assert handshake.headers["cartesia-version"]
    for request in fake.requests:
        assert request["model_id"] == "sonic-3"
        assert request["voice"] == {"mode": "id", "id": "voice-7"}
        assert request["language"] == "fr"
        format_ = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000}
        assert request["output_format"] == format_
        assert request["max_buffer_delay_ms"] == 0  # whole phrases: no server-side buffering
        assert request["generation_config"] == {"speed": 1.2}
        assert request["add_timestamps"] is True
    assert len(audio) == expected_audio(HELLO, 24000)  # timestamps frames are not audio


async def test_our_requests_are_what_the_sdks_send_would_put_on_the_wire() -> None:
    """We encode requests ourselves (adapters/cartesia.py): the transform the SDK's `send`
    runs must change nothing in any request we send, or skipping it would lose a rename."""
    from cartesia._utils import async_maybe_transform
    from cartesia.types.websocket_client_event_param import WebsocketClientEventParam

    options = {"generation_config": {"speed": 1.2}, "add_timestamps": True}
    async with FakeCartesia() as fake, started(config(fake, options=options)) as tts:
        await speak(tts, Phrases(*HELLO), 24000)
        async with aclosing(tts.synthesize(Phrases("Cut me.", more=True), 16000)) as audio:
            await anext(audio)
        await eventually(lambda: fake.cancels)
    sent = [*fake.requests, {"context_id": fake.cancels[0], "cancel": True}]
    assert len(sent) == 5  # two phrases and an end, a cut reply's phrase, its cancel
    for request in sent:
        typed = await async_maybe_transform(request, WebsocketClientEventParam)
        assert json.loads(json.dumps(typed)) == request


async def test_one_socket_serves_every_turn_with_one_context_per_turn() -> None:
    async with FakeCartesia() as fake, started(config(fake)) as tts:
        await speak(tts, Phrases(*HELLO))
        await speak(tts, Phrases("Goodbye."))

    assert fake.connections == 1
    first, second = fake.contexts()
    assert fake.transcripts(first) == ["Hello there. ", "How are you today? ", ""]
    assert fake.transcripts(second) == ["Goodbye. ", ""]
    assert [r["continue"] for r in fake.requests] == [True, True, False, True, False]
    assert fake.cancels == []


@pytest.mark.parametrize("rate", [16000, 24000])
async def test_audio_lasts_as_long_as_the_text_at_the_requested_rate(rate: int) -> None:
    async with FakeCartesia() as fake, started(config(fake)) as tts:
        audio = await speak(tts, Phrases(*HELLO), rate)

    assert len(audio) == expected_audio(HELLO, rate)


async def test_audio_flows_while_the_llm_is_still_writing() -> None:
    """The second phrase exists only once audio of the first came back: no deadlock."""
    gate = asyncio.Event()
    async with (
        FakeCartesia() as fake,
        started(config(fake)) as tts,
        aclosing(tts.synthesize(Phrases(*HELLO, gate=gate), 16000)) as audio,
    ):
        chunks = [await anext(audio)]
        assert fake.transcripts(fake.contexts()[0]) == ["Hello there. "]
        gate.set()
        chunks += [pcm async for pcm in audio]

    assert len(b"".join(chunks)) == expected_audio(HELLO, 16000)


async def test_cutting_a_reply_cancels_its_context_and_its_late_chunks_stay_out_of_the_next() -> (
    None
):
    async with FakeCartesia(chunks_after_cancel=3) as fake, started(config(fake)) as tts:
        long = "This answer goes on and on for quite a while before it stops."
        async with aclosing(tts.synthesize(Phrases(long, more=True), 16000)) as audio:
            await anext(audio)
        cut = fake.contexts()[0]
        await eventually(lambda: fake.cancels)
        next_reply = await speak(tts, Phrases("Yes?"))

    assert fake.cancels == [cut]
    assert fake.transcripts(cut) == [long + " "]  # never ended: cancelled
    assert fake.late_chunks[cut] == 3  # on the wire after the cancel: read by the next reply
    assert len(next_reply) == FakeCartesia.audio_bytes("Yes?", 16000)


async def test_a_socket_cartesia_closed_while_idle_is_replaced_for_the_next_turn() -> None:
    async with FakeCartesia() as fake, started(config(fake)) as tts:
        await speak(tts, Phrases("Hello."))
        await fake.close_sockets()
        audio = await speak(tts, Phrases(*HELLO))

    assert fake.connections == 2
    assert len(audio) == expected_audio(HELLO, 16000)


@pytest.mark.parametrize(
    ("fault", "error", "says"),
    [
        (Fault.UNAUTHORIZED, PermanentProviderError, "check tts.api_key / CARTESIA_API_KEY"),
        (Fault.REFUSE, ProviderError, "failed (503: Service unavailable: Try again later.)"),
        (Fault.RATE_LIMIT, ProviderError, "rate limited (429"),
        (Fault.SERVER_ERROR, ProviderError, "failed (500"),
    ],
)
async def test_a_refused_handshake_raises_the_matching_error(
    fault: Fault, error: type[ProviderError], says: str
) -> None:
    async with FakeCartesia(fault=fault) as fake:
        with pytest.raises(error, match=r"^cartesia: ") as raised:
            await CartesiaSocket(config(fake)).start()

    assert type(raised.value) is error
    assert says in str(raised.value)


async def test_aclose_is_idempotent_and_safe_after_a_failed_start() -> None:
    async with FakeCartesia(fault=Fault.REFUSE) as fake:
        tts = CartesiaSocket(config(fake))
        with pytest.raises(ProviderError):
            await tts.start()
        await tts.aclose()
        await tts.aclose()
    async with FakeCartesia() as fake, started(config(fake)) as tts:
        await tts.aclose()  # and `started` closes it again


@pytest.mark.parametrize("scheme", ["http", "ws"])
async def test_base_url_may_name_the_http_or_the_websocket_root(scheme: str) -> None:
    async with FakeCartesia() as fake:
        root = fake.base_url.replace("http", scheme, 1)
        async with started(config(fake, base_url=root + "/")) as tts:
            audio = await speak(tts, Phrases("Hi."))

    assert fake.handshakes[0].path == "/tts/websocket"
    assert len(audio) == FakeCartesia.audio_bytes("Hi.", 16000)


def test_a_base_url_that_is_not_http_or_ws_is_refused_for_good() -> None:
    not_http = msgspec.convert({"base_url": "ftp://example.com"}, CartesiaTTS)
    with pytest.raises(PermanentProviderError, match="is not an http"):
        CartesiaSocket(not_http)


async def test_a_wrong_key_is_refused_for_good() -> None:
    async with FakeCartesia() as fake:
        with pytest.raises(PermanentProviderError, match="401: Unauthorized: Invalid API key"):
            await CartesiaSocket(config(fake, api_key="wrong")).start()


async def test_without_tts_api_key_the_key_comes_from_cartesia_api_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CARTESIA_API_KEY", API_KEY)
    async with FakeCartesia() as fake, started(config(fake, api_key=None)):
        pass

    assert fake.handshakes[0].headers["authorization"] == f"Bearer {API_KEY}"


async def test_no_key_anywhere_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CARTESIA_API_KEY", raising=False)
    async with FakeCartesia() as fake:
        with pytest.raises(PermanentProviderError, match="set CARTESIA_API_KEY on the server"):
            CartesiaSocket(config(fake, api_key=""))
    assert fake.handshakes == []


async def test_nothing_listening_is_a_retryable_connect_error() -> None:
    async with FakeCartesia() as fake:
        gone = config(fake)
    with pytest.raises(ProviderError, match="cannot connect") as raised:
        await CartesiaSocket(gone).start()
    assert not isinstance(raised.value, PermanentProviderError)


def rate_limited(fake: FakeCartesia) -> None:
    fake.reject_with = CONCURRENCY_LIMITED


def generation_failed(fake: FakeCartesia) -> None:
    fake.reject_with = GENERATION_FAILED


def malformed(fake: FakeCartesia) -> None:
    fake.fault = Fault.MALFORMED


def hang(fake: FakeCartesia) -> None:
    fake.fault = Fault.HANG


@pytest.mark.parametrize(
    ("keys", "fail", "error", "says"),
    [
        (
            {},
            rate_limited,
            ProviderError,
            "rate limited (429: You have exceeded your plan's concurrency limit.)",
        ),
        ({}, generation_failed, ProviderError, "failed (500: Generation failed.)"),
        ({}, malformed, ProviderError, MALFORMED_FRAME),
        (
            {"model": "whisper-1"},
            None,
            PermanentProviderError,
            "rejected the request (400: Model 'whisper-1' is not a text-to-speech model.)",
        ),
        (
            {"options": {"voice": {"mode": "nope"}}},
            None,
            PermanentProviderError,
            "rejected the request (400: Invalid enum value 'nope' - at `$.voice.mode`)",
        ),
    ],
    ids=[
        "error-frame-429",
        "error-frame-500",
        "malformed",
        "error-frame-400-model",
        "error-frame-400-voice",
    ],
)
async def test_a_failed_reply_raises_with_cartesias_message(
    keys: dict[str, Any],
    fail: Callable[[FakeCartesia], None] | None,
    error: type[ProviderError],
    says: str,
) -> None:
    async with FakeCartesia() as fake, started(config(fake, **keys)) as tts:
        if fail is not None:
            fail(fake)
        with pytest.raises(error) as raised:
            await speak(tts, Phrases(*HELLO))

    assert type(raised.value) is error
    assert says in str(raised.value)


async def test_a_drop_after_audio_started_raises_after_the_audio() -> None:
    async with FakeCartesia() as fake, started(config(fake)) as tts:
        fake.fault = Fault.DROP
        heard: list[bytes] = []
        with pytest.raises(ProviderError, match="the socket closed"):
            await listen(tts, Phrases(*HELLO), heard)

    assert heard


# ---- stalls ---------------------------------------------------------------------------------

CHUNK_BYTES = 40 * 16 * 2
"""One chunk of the fake's audio at 16 kHz (40 ms)."""


async def test_a_cartesia_gone_silent_before_done_fails_the_reply_and_cancels_it() -> None:
    async with (
        FakeCartesia(mute_after_chunks=2) as fake,
        started(config(fake, timeout_ms=300)) as tts,
    ):
        heard: list[bytes] = []
        with pytest.raises(ProviderError) as raised:
            async with asyncio.timeout(5):  # without the bound, the reply would hang
                await listen(tts, Phrases(*HELLO), heard)
        await eventually(lambda: fake.cancels)

    assert type(raised.value) is ProviderError  # retryable: the breaker takes Cartesia out
    assert str(raised.value) == (
        "cartesia: sent nothing for timeout_ms (300 ms) while it owed audio for text it was "
        "sent: the stream is stalled"
    )
    assert len(b"".join(heard)) == 2 * CHUNK_BYTES
    assert fake.cancels == fake.contexts()


async def test_a_phrase_sent_to_a_silent_cartesia_fails_the_reply_while_the_llm_writes() -> None:
    """The LLM never finishes, so only the phrase sent after Cartesia went silent is owed."""
    gate = asyncio.Event()
    async with (
        FakeCartesia(mute_after_chunks=1) as fake,
        started(config(fake, timeout_ms=300)) as tts,
        aclosing(tts.synthesize(Phrases(*HELLO, gate=gate, more=True), 16000)) as audio,
    ):
        await anext(audio)
        gate.set()
        with pytest.raises(ProviderError, match="the stream is stalled"):
            async with asyncio.timeout(5):  # without the bound, the reply would hang
                await anext(audio)

    assert fake.transcripts(fake.contexts()[0]) == [f"{phrase} " for phrase in HELLO]


async def test_silence_while_the_llm_writes_the_next_phrase_is_not_a_stall() -> None:
    gate = asyncio.Event()
    first = FakeCartesia.audio_bytes(HELLO[0], 16000)
    async with (
        FakeCartesia() as fake,
        started(config(fake, timeout_ms=300)) as tts,
        aclosing(tts.synthesize(Phrases(*HELLO, gate=gate), 16000)) as audio,
    ):
        chunks: list[bytes] = []
        while sum(map(len, chunks)) < first:
            chunks.append(await anext(audio))
        await asyncio.sleep(1.0)  # the LLM takes over three times timeout_ms for its next phrase
        gate.set()
        chunks += [pcm async for pcm in audio]

    assert len(b"".join(chunks)) == expected_audio(HELLO, 16000)
    assert fake.cancels == []


async def test_an_unsupported_sample_rate_is_refused_before_anything_is_sent() -> None:
    async with FakeCartesia() as fake, started(config(fake)) as tts:
        with pytest.raises(PermanentProviderError, match=r"set output\.sample_rate"):
            await speak(tts, Phrases(*HELLO), 11025)

    assert fake.requests == []


# ---- failover -------------------------------------------------------------------------------


def chain(primary: FakeCartesia, backup: FakeCartesia, **keys: Any) -> CartesiaTTS:
    return msgspec.structs.replace(config(primary, **keys), fallback=[config(backup)])


def key(primary: CartesiaTTS) -> str:
    return breaker_key("tts", "cartesia", primary.base_url, primary.model, primary.api_key)


@pytest.mark.parametrize(
    "fail",
    [hang, rate_limited, malformed],
    ids=["no-audio-within-timeout_ms", "error-frame", "malformed"],
)
async def test_a_failure_before_the_first_audio_moves_the_same_phrases_to_the_fallback(
    fail: Callable[[FakeCartesia], None],
) -> None:
    health = ProviderHealth()
    async with FakeCartesia() as primary, FakeCartesia() as backup:
        tts_config = chain(primary, backup, timeout_ms=300)
        tts = FailoverTTS(tts_config, health, pipeline="test")
        await tts.start()
        try:
            fail(primary)
            audio = await speak(tts, Phrases(*HELLO))
        finally:
            await tts.aclose()

    assert backup.transcripts(backup.contexts()[0]) == ["Hello there. ", "How are you today? ", ""]
    assert len(audio) == expected_audio(HELLO, 16000)
    assert health.state(key(tts_config)) is State.DOWN


def drop(fake: FakeCartesia) -> None:
    fake.fault = Fault.DROP


def mute_after_first_chunk(fake: FakeCartesia) -> None:
    fake.mute_after_chunks = 1


@pytest.mark.parametrize(
    ("fail", "says"),
    [(drop, "the socket closed"), (mute_after_first_chunk, "the stream is stalled")],
    ids=["drop", "stall"],
)
async def test_a_failure_after_audio_started_fails_the_turn_instead_of_falling_back(
    fail: Callable[[FakeCartesia], None], says: str
) -> None:
    health = ProviderHealth()
    async with FakeCartesia() as primary, FakeCartesia() as backup:
        tts_config = chain(primary, backup, timeout_ms=300)
        tts = FailoverTTS(tts_config, health, pipeline="test")
        await tts.start()
        try:
            fail(primary)
            heard: list[bytes] = []
            with pytest.raises(ProviderError, match=says):
                async with asyncio.timeout(5):  # without the bound, the reply would hang
                    await listen(tts, Phrases(*HELLO), heard)
        finally:
            await tts.aclose()

    assert heard  # the user heard Cartesia: the fallback could not take the turn over
    assert backup.requests == []
    assert health.state(key(tts_config)) is State.DOWN


async def test_a_refused_key_benches_cartesia_and_the_fallback_speaks() -> None:
    health = ProviderHealth()
    async with FakeCartesia(fault=Fault.UNAUTHORIZED) as primary, FakeCartesia() as backup:
        tts_config = chain(primary, backup)
        tts = FailoverTTS(tts_config, health, pipeline="test")
        await tts.start()
        try:
            audio = await speak(tts, Phrases(*HELLO))
        finally:
            await tts.aclose()

    assert health.state(key(tts_config)) is State.REFUSED
    assert (primary.connections, backup.connections) == (0, 1)
    assert len(audio) == expected_audio(HELLO, 16000)


# ---- end to end -----------------------------------------------------------------------------


async def test_the_gateway_speaks_through_cartesia_and_an_interrupt_cancels_the_context() -> None:
    reply = " ".join(["This is a long answer that keeps going for a good while."] * 4)
    # The fake makes audio at twice real time (a 40 ms chunk every 20 ms): it is still making
    # this 9.6 s reply when the client interrupts after the first audio frame.
    async with FakeCartesia(chunk_delay_s=0.02) as fake:
        pipeline = make_pipeline(llm={"reply": reply}, tts=config(fake))
        async with running_gateway(pipeline) as gw:
            async with VoiceClient.connect(gw.url()) as client:
                await client.start()
                await client.send(protocol.Text(text="tell me everything"))
                first = await client.expect(AudioChunk)
                await client.send(protocol.Interrupt())
                interrupted = await client.expect(protocol.Interrupted)
                await eventually(lambda: fake.cancels)
            await wait_sessions_closed(gw)

    assert first.payload
    assert interrupted.turn_id == first.header.turn_id
    assert fake.cancels == fake.contexts()


async def test_the_fake_also_takes_browser_style_query_auth() -> None:
    """What a browser does (it cannot set headers): the fake must accept it like Cartesia."""
    request = {
        "model_id": "sonic-2",
        "transcript": "Hi.",
        "voice": {"mode": "id", "id": "voice-1"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 8000},
        "context_id": "browser",
    }
    async with FakeCartesia() as fake:
        root = fake.base_url.replace("http", "ws", 1)
        url = f"{root}/tts/websocket?api_key={API_KEY}&cartesia_version=2026-03-01"
        async with connect(url) as socket:
            await socket.send(json.dumps(request))
            frames = [json.loads(await socket.recv())]
            while frames[-1]["type"] != "done":
                frames.append(json.loads(await socket.recv()))

    assert {f["type"] for f in frames} == {"chunk", "done"}
    assert all(f["context_id"] == "browser" for f in frames)
