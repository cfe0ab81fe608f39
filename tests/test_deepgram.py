"""The Deepgram adapter: the official SDK against the fake Deepgram server, over real sockets.

The fake recognizes in audio time, so most tests send their audio at once and read what came
back in order; only KeepAlive and the end-to-end turn take wall time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import msgspec
import numpy as np
import pytest

from adapters import deepgram
from adapters.base import Final, Partial, STTEvent
from adapters.deepgram import DeepgramStream, DeepgramSTT
from gateway import protocol
from gateway.client import VoiceClient
from gateway.errors import PermanentProviderError, ProviderError
from gateway.pipeline import Pipeline
from gateway.providers.failover import FailoverSTT
from gateway.providers.health import ProviderHealth
from tests.conftest import make_pipeline, running_gateway, wait_sessions_closed
from tests.fakes.deepgram import FakeDeepgram, Stream
from tests.fakes.faults import Fault

RATE = 16000
SAID = "what is the capital of france"
SCRIPTED = {"provider": "scripted", "transcript": SAID, "latency_ms": 20}


def tone(seconds: float) -> bytes:
    """Voiced audio for the fake (-12 dBFS): at its 5 words per second, 1 s reveals SAID."""
    t = np.arange(int(RATE * seconds)) / RATE
    return bytes((np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes())


def silence(seconds: float) -> bytes:
    return bytes(int(RATE * seconds) * 2)


def config(fake: FakeDeepgram, **keys: Any) -> DeepgramSTT:
    block = {"provider": "deepgram", "api_key": fake.api_key, "base_url": fake.base_url, **keys}
    return msgspec.convert(block, DeepgramSTT)


@asynccontextmanager
async def opened(
    fake: FakeDeepgram, keepalive_s: float = 4.0, stall_s: float | None = None, **keys: Any
) -> AsyncIterator[DeepgramStream]:
    stt = DeepgramStream(config(fake, **keys), RATE, keepalive_s=keepalive_s, stall_s=stall_s)
    await stt.start()
    try:
        yield stt
    finally:
        await stt.aclose()


async def feed(stt: DeepgramStream | FailoverSTT, pcm: bytes) -> None:
    """In 20 ms chunks, as the session sends them."""
    for start in range(0, len(pcm), 640):
        await stt.send_audio(pcm[start : start + 640])


async def stream_audio(stt: DeepgramStream, pcm: bytes) -> None:
    """Twenty times faster than real time, in 0.5 s blocks: the fake answers in audio time, and
    the wall time (a twentieth of the audio's) outlasts the stall bounds the tests set."""
    block = RATE  # bytes: 0.5 s
    for start in range(0, len(pcm), block):
        await stt.send_audio(pcm[start : start + block])
        await asyncio.sleep(0.025)


@asynccontextmanager
async def listening(stt: DeepgramStream) -> AsyncIterator[list[STTEvent]]:
    """Events collected in the background; on exit `aclose` ends them, and a failure of the
    stream meanwhile is raised."""
    seen: list[STTEvent] = []

    async def listen() -> None:
        async with aclosing(stt.events()) as events:
            async for event in events:
                seen.append(event)

    listener = asyncio.create_task(listen())
    try:
        yield seen
    finally:
        await stt.aclose()
        await listener


async def eventually(condition: Callable[[], object]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


async def read_until(
    events: AsyncGenerator[STTEvent, None], done: Callable[[STTEvent], bool]
) -> list[STTEvent]:
    """Events up to and including the first that is `done` (the timeout only guards a hang)."""
    seen: list[STTEvent] = []
    async with asyncio.timeout(10):
        async for event in events:
            seen.append(event)
            if done(event):
                return seen
    raise AssertionError(f"events ended before the expected one: {seen}")


def is_final(event: STTEvent) -> bool:
    return isinstance(event, Final)


def ends_turn(event: STTEvent) -> bool:
    return isinstance(event, Final) and event.speech_final


def partials(events: list[STTEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Partial)]


def finals(events: list[STTEvent]) -> list[Final]:
    return [e for e in events if isinstance(e, Final)]


def growing_prefixes(texts: list[str]) -> bool:
    return all(SAID.startswith(t) for t in texts) and all(
        len(a) < len(b) for a, b in itertools.pairwise(texts)
    )


async def ended(stream: Stream) -> Stream:
    async with asyncio.timeout(5):
        await stream.ended.wait()
    return stream


# ---- the request ------------------------------------------------------------------------


async def test_the_request_carries_the_key_model_audio_format_turn_settings_and_options() -> None:
    options = {"punctuate": True, "keyterm": ["Voxgate", "Paris"], "numerals": False}
    async with FakeDeepgram() as fake, opened(fake, options=options):
        stream = fake.streams[0]
        assert stream.headers["Authorization"] == f"Token {fake.api_key}"
        assert {name: stream.param(name) for name in stream.params} == {
            "model": "nova-3",
            "language": "en-US",
            "encoding": "linear16",
            "sample_rate": "16000",
            "channels": "1",
            "interim_results": "true",
            "endpointing": "300",
            "utterance_end_ms": "1000",
            "smart_format": "true",
            "vad_events": "true",
            "punctuate": "true",
            "keyterm": "Paris",
            "numerals": "false",
        }
        assert stream.params["keyterm"] == ["Voxgate", "Paris"]


async def test_endpointing_0_is_false_and_without_interim_results_no_utterance_end_ms() -> None:
    async with FakeDeepgram() as fake:
        keys: dict[str, Any] = {
            "endpointing_ms": 0,
            "interim_results": False,
            "model": "nova-2",
            "language": "fr",
        }
        async with opened(fake, **keys):
            stream = fake.streams[0]
    assert stream.param("endpointing") == "false"
    assert stream.param("interim_results") == "false"
    assert stream.param("utterance_end_ms") is None
    assert (stream.param("model"), stream.param("language")) == ("nova-2", "fr")


# ---- transcripts ------------------------------------------------------------------------


async def test_partials_grow_with_the_voice_and_endpointing_ends_the_turn() -> None:
    async with FakeDeepgram() as fake, opened(fake) as stt, aclosing(stt.events()) as events:
        await feed(stt, tone(1.2) + silence(0.4))
        seen = await read_until(events, is_final)

    assert partials(seen) == [" ".join(SAID.split()[:n]) for n in range(1, 7)]
    assert finals(seen) == [Final(SAID, speech_final=True)]


async def test_segments_finalized_mid_speech_lead_the_partials_and_the_last_ends_the_turn() -> None:
    async with (
        FakeDeepgram(segment_s=0.5) as fake,
        opened(fake) as stt,
        aclosing(stt.events()) as events,
    ):
        await feed(stt, tone(1.2) + silence(0.4))
        seen = await read_until(events, ends_turn)

    segments = finals(seen)
    assert [f.speech_final for f in segments] == [False] * (len(segments) - 1) + [True]
    assert len(segments) > 1 and " ".join(f.text for f in segments) == SAID
    texts = partials(seen)
    assert growing_prefixes(texts) and texts[-1] == SAID
    after_first_segment = seen[seen.index(segments[0]) + 1]
    assert isinstance(after_first_segment, Partial)
    assert after_first_segment.text.startswith(segments[0].text + " ")


async def test_utterance_end_ends_a_turn_that_endpointing_did_not() -> None:
    async with (
        FakeDeepgram() as fake,
        opened(fake, endpointing_ms=0) as stt,
        aclosing(stt.events()) as events,
    ):
        await feed(stt, tone(1.2) + silence(1.2))
        seen = await read_until(events, ends_turn)

    assert finals(seen) == [Final(SAID, speech_final=False), Final("", speech_final=True)]
    assert "UtteranceEnd" in [m["type"] for m in fake.streams[0].sent]


async def test_utterance_end_after_a_speech_final_adds_nothing() -> None:
    async with FakeDeepgram() as fake, opened(fake) as stt, aclosing(stt.events()) as events:
        await feed(stt, tone(1.2) + silence(1.2) + tone(0.1))
        seen = await read_until(events, lambda e: e == Partial("what"))
        seen += await read_until(events, lambda e: e == Partial("what"))

    assert "UtteranceEnd" in [m["type"] for m in fake.streams[0].sent]
    assert finals(seen) == [Final(SAID, speech_final=True)]
    assert seen[-2:] == [Final(SAID, speech_final=True), Partial("what")]


# ---- audio out --------------------------------------------------------------------------


async def test_live_frames_go_out_in_messages_of_at_least_50_ms_and_all_of_them_arrive() -> None:
    """One message per 20 ms frame cost a WebSocket frame and a syscall each."""
    async with FakeDeepgram() as fake, opened(fake) as stt:
        await feed(stt, tone(1.0))
        await stt.finalize()
        stream = fake.streams[0]
        await eventually(lambda: stream.controls == ["Finalize"])
    assert stream.audio_bytes == len(tone(1.0))
    assert stream.audio_messages <= 1.0 / deepgram.SEND_MIN_S + 1, stream.audio_messages


async def test_a_frame_left_waiting_goes_out_on_its_own_when_no_more_audio_comes() -> None:
    """The end of the speech gate's tail: Deepgram's endpointing needs it, and no Finalize or
    further audio may come to push it out."""
    async with FakeDeepgram() as fake, opened(fake) as stt, aclosing(stt.events()) as events:
        pcm = tone(0.5) + silence(0.3)  # endpointing 300 ms: the last 20 ms complete it
        await feed(stt, pcm)
        (endpoint,) = finals(await read_until(events, ends_turn))
        received, controls = fake.streams[0].audio_bytes, list(fake.streams[0].controls)
    assert endpoint.text and SAID.startswith(endpoint.text)
    assert received == len(pcm) and controls == [], "no Finalize, no CloseStream: on its own"


# ---- finalize ---------------------------------------------------------------------------


async def test_finalize_gets_one_final_that_merges_the_segments_still_on_their_way() -> None:
    async with (
        FakeDeepgram(segment_s=0.5) as fake,
        opened(fake, endpointing_ms=0) as stt,
        aclosing(stt.events()) as events,
    ):
        await feed(stt, tone(1.1))
        await stt.finalize()
        seen = await read_until(events, is_final)
        controls = list(fake.streams[0].controls)
        sent = fake.streams[0].sent

    flushed = [m["from_finalize"] for m in sent if m["type"] == "Results" and m["is_final"]]
    assert len(flushed) > 1 and flushed == [False] * (len(flushed) - 1) + [True]
    assert finals(seen) == [Final(SAID, speech_final=True)] and seen[-1] == finals(seen)[0]
    assert controls == ["Finalize"]


async def test_finalize_with_nothing_pending_still_closes_the_turn() -> None:
    """Deepgram does not answer a Finalize that has nothing to flush."""
    async with FakeDeepgram() as fake, opened(fake) as stt, aclosing(stt.events()) as events:
        await feed(stt, silence(0.5))
        await stt.finalize()
        seen = await read_until(events, is_final)

    assert seen == [Final("", speech_final=True)]
    assert "Results" not in [m["type"] for m in fake.streams[0].sent]


async def test_a_finalize_after_deepgrams_own_endpoint_covered_everything_closes_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deepgram's endpointing finalized every second sent before our Finalize: nothing is left
    to flush, so no answer will come and the turn closes without waiting out the grace."""
    monkeypatch.setattr(deepgram, "FINALIZE_GRACE_S", 60.0)  # a wait would fail the timeout
    async with FakeDeepgram() as fake, opened(fake) as stt, aclosing(stt.events()) as events:
        await feed(stt, tone(0.5) + silence(0.3))  # endpointing_ms 300: its own speech_final
        (endpoint,) = finals(await read_until(events, ends_turn))
        assert endpoint.text and SAID.startswith(endpoint.text)
        await stt.finalize()
        assert await read_until(events, is_final) == [Final("", speech_final=True)]
        async with asyncio.timeout(5):  # sent all the same, in case Deepgram had anything
            while fake.streams[0].controls != ["Finalize"]:
                await asyncio.sleep(0.01)


def reading(message: object, text: object) -> tuple[object, ...]:
    """What the adapter takes from a message: its type, transcript, flags (`is True`), numbers
    (ints and floats only) and error fields."""
    flags = ("is_final", "speech_final", "from_finalize")
    numbers = ("start", "duration", "last_word_end")
    return (
        getattr(message, "type", None),
        text if isinstance(text, str) else None,
        *(getattr(message, name, None) is True for name in flags),
        *(
            v if isinstance(v := getattr(message, name, None), int | float) else None
            for name in numbers
        ),
        getattr(message, "variant", None),
        getattr(message, "description", None),
    )


def sdk_reading(message: dict[str, Any]) -> tuple[object, ...]:
    """The reading of the SDK's own parse (what its `recv` returns)."""
    from deepgram.core.unchecked_base_model import construct_type
    from deepgram.listen.v1.socket_client import V1SocketClientResponse

    received: Any = V1SocketClientResponse
    model = construct_type(type_=received, object_=message)
    try:
        text = model.channel.alternatives[0].transcript
    except (AttributeError, IndexError, TypeError):
        text = None
    return reading(model, text)


def our_reading(message: dict[str, Any]) -> tuple[object, ...]:
    decoded = deepgram._decode(msgspec.json.encode(message).decode())
    try:
        text: object = deepgram._results_fields(decoded)[0] if decoded else None
    except ProviderError:
        text = None
    return reading(decoded, text)


async def test_the_adapter_reads_every_message_as_the_sdks_models_read_it() -> None:
    """The adapter decodes Deepgram's frames itself rather than through the SDK's `recv`
    (adapters/deepgram.py, `_Message`): every message of a stream with partials, segment and
    endpointed finals, a Finalize's flush, an UtteranceEnd and the closing Metadata, plus an
    error and shapes the SDK does not validate, reads the same either way."""
    async with FakeDeepgram(segment_s=0.5) as fake:
        async with opened(fake, endpointing_ms=0) as stt, aclosing(stt.events()) as events:
            await feed(stt, tone(1.1))
            await stt.finalize()
            await read_until(events, is_final)
            await feed(stt, tone(0.4) + silence(1.2))
            await read_until(events, ends_turn)
        sent = (await ended(fake.streams[0])).sent
    kinds = {m["type"] for m in sent}
    assert kinds >= {"Results", "UtteranceEnd", "SpeechStarted", "Metadata"}, kinds
    assert any(m.get("from_finalize") for m in sent)
    odd: list[dict[str, Any]] = [
        {"type": "Error", "variant": "SchemaError", "description": "unknown message type"},
        {"type": "Results", "channel": {"alternatives": []}, "is_final": "yes", "duration": 1},
        {"type": "Results", "channel": {"alternatives": [{"transcript": 1}]}, "start": "0"},
        {"type": "UtteranceEnd", "channel": [0, 1]},
    ]
    for message in sent + odd:
        assert our_reading(message) == sdk_reading(message), message
    assert deepgram._decode("[1, 2]") is None  # JSON, not a message: ignored, as the SDK does
    # A Results whose channel is no object, which the SDK cannot model and so ignored: the
    # stream now fails with what was missing instead of waiting for a transcript.
    shapeless = deepgram._decode('{"type": "Results", "channel": "?", "is_final": true}')
    assert shapeless is not None and shapeless.type == "Results"
    with pytest.raises(ProviderError, match=r"without channel\.alternatives\[0\]\.transcript"):
        deepgram._results_fields(shapeless)


async def test_a_finalize_left_unanswered_while_words_are_pending_fails_the_stream() -> None:
    async with (
        FakeDeepgram(answer_finalize=False) as fake,
        opened(fake, endpointing_ms=0, timeout_ms=300) as stt,
        aclosing(stt.events()) as events,
    ):
        await feed(stt, tone(0.5))
        await read_until(events, lambda e: isinstance(e, Partial))
        await stt.finalize()
        with pytest.raises(ProviderError, match="no answer to Finalize within timeout_ms"):
            await read_until(events, is_final)


# ---- keeping and closing the stream -------------------------------------------------------


async def test_keepalive_keeps_a_silent_stream_open_past_deepgrams_idle_timeout() -> None:
    async with FakeDeepgram(idle_timeout_s=0.4) as fake:
        stt = DeepgramStream(config(fake), RATE, keepalive_s=0.1)
        await stt.start()

        async def listen() -> list[STTEvent]:
            async with aclosing(stt.events()) as events:
                return [event async for event in events]

        listener = asyncio.create_task(listen())
        stream = fake.streams[0]
        async with asyncio.timeout(5):
            while stream.controls.count("KeepAlive") < 10:  # a second: past 0.4 s idle
                await asyncio.sleep(0.05)
        assert stream.close_code is None and not listener.done()
        await stt.aclose()
        assert await listener == []  # aclose ends the events quietly

    assert set(stream.controls) == {"KeepAlive", "CloseStream"}


async def test_a_stream_left_idle_is_closed_by_deepgram_and_fails_with_its_reason() -> None:
    async with (
        FakeDeepgram(idle_timeout_s=0.3) as fake,
        opened(fake, keepalive_s=30) as stt,
        aclosing(stt.events()) as events,
    ):
        with pytest.raises(ProviderError, match=r"closed the stream \(1011 NET-0001\)"):
            await read_until(events, is_final)
        assert fake.streams[0].close_code == 1011


async def test_aclose_sends_closestream_and_may_be_called_again() -> None:
    async with FakeDeepgram() as fake:
        stt = DeepgramStream(config(fake), RATE)
        await stt.start()
        await feed(stt, tone(0.2))
        await stt.aclose()
        await stt.aclose()
        stream = await ended(fake.streams[0])

    assert stream.controls == ["CloseStream"]
    assert stream.audio_bytes == len(tone(0.2))


async def test_an_empty_audio_chunk_does_not_end_the_stream() -> None:
    """An empty binary frame is Deepgram's deprecated end-of-stream signal."""
    async with FakeDeepgram() as fake, opened(fake) as stt, aclosing(stt.events()) as events:
        await stt.send_audio(b"")
        await feed(stt, tone(0.1))
        assert await read_until(events, lambda e: True) == [Partial("what")]
        assert fake.streams[0].controls == []


# ---- stalls ------------------------------------------------------------------------------


@pytest.mark.parametrize("interim_results", [True, False])
async def test_a_long_silence_keeps_a_healthy_stream_alive(interim_results: bool) -> None:
    """Deepgram answers silence too (empty interims, empty finals), so it is never a stall."""
    quiet = silence(20)
    async with FakeDeepgram() as fake:
        stt = DeepgramStream(config(fake, interim_results=interim_results), RATE, stall_s=0.5)
        await stt.start()
        async with listening(stt) as seen:
            await stream_audio(stt, quiet)
            stream = fake.streams[0]
            await eventually(lambda: stream.audio_bytes == len(quiet))

    assert seen == []
    results = [m for m in stream.sent if m["type"] == "Results"]
    assert {r["channel"]["alternatives"][0]["transcript"] for r in results} == {""}
    assert any(r["is_final"] for r in results)
    assert any(not r["is_final"] for r in results) is interim_results


async def test_a_deepgram_that_goes_mute_mid_session_fails_the_stream() -> None:
    async with FakeDeepgram() as fake:
        async with opened(fake, stall_s=0.5) as stt, aclosing(stt.events()) as events:
            await feed(stt, tone(1.2) + silence(0.4))
            assert finals(await read_until(events, is_final)) == [Final(SAID)]
            fake.muted = True
            streaming = asyncio.create_task(stream_audio(stt, silence(5)))
            with pytest.raises(ProviderError, match=r"sent nothing for 0\.5 s while audio was"):
                await read_until(events, is_final)
            await streaming  # sending to a failed stream does not raise
        stream = await ended(fake.streams[0])

    assert stream.close_code is None  # Deepgram never closed the socket: only silence told
    assert stream.audio_bytes == len(tone(1.2) + silence(5.4))


async def test_an_unanswered_finalize_waits_for_a_quiet_stream_instead_of_closing_empty() -> None:
    """Deepgram owed an answer for the audio of the turn: its silence at the Finalize is not an
    empty flush, so the turn closes only once Deepgram shows it is alive."""
    async with FakeDeepgram() as fake, opened(fake, stall_s=30) as stt, listening(stt) as seen:
        fake.muted = True
        await feed(stt, silence(2.5))
        await stt.finalize()
        await asyncio.sleep(1.0)  # twice the grace a Finalize gets on a live stream
        assert seen == []
        fake.muted = False
        await feed(stt, silence(1.0))
        await eventually(lambda: seen)

    assert seen == [Final("", speech_final=True)]


# ---- faults -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.REFUSE, r"failed \(503\)"),
        (Fault.SERVER_ERROR, r"failed \(500\)"),
        (Fault.RATE_LIMIT, r"rate limited \(429\)"),
        (Fault.HANG, r"no answer to the stream handshake within timeout_ms \(300 ms\)"),
    ],
)
async def test_handshake_failures_are_retryable_provider_errors(fault: Fault, message: str) -> None:
    async with FakeDeepgram(fault=fault) as fake:
        stt = DeepgramStream(config(fake, timeout_ms=300), RATE)
        with pytest.raises(ProviderError, match=message) as raised:
            await stt.start()
        await stt.aclose()
    assert not isinstance(raised.value, PermanentProviderError)


@pytest.mark.parametrize(
    ("fault", "api_key"), [(Fault.UNAUTHORIZED, None), (Fault.NONE, "not-the-key")]
)
async def test_a_refused_key_is_a_permanent_error_that_names_the_setting(
    fault: Fault, api_key: str | None
) -> None:
    async with FakeDeepgram(fault=fault) as fake:
        keys = {"api_key": api_key} if api_key else {}
        stt = DeepgramStream(config(fake, **keys), RATE)
        with pytest.raises(
            PermanentProviderError, match=r"refused the API key \(401\).*stt.api_key"
        ):
            await stt.start()
        await stt.aclose()


async def test_nothing_listening_at_base_url_is_a_retryable_connect_error() -> None:
    async with FakeDeepgram() as fake:
        gone = config(fake)
    stt = DeepgramStream(gone, RATE)
    with pytest.raises(ProviderError, match="could not open the stream") as raised:
        await stt.start()
    assert not isinstance(raised.value, PermanentProviderError)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.DROP, "the stream dropped without a close frame"),
        (Fault.MALFORMED, "sent a message that is not JSON"),
    ],
)
async def test_mid_stream_failures_surface_from_events_and_audio_keeps_flowing(
    fault: Fault, message: str
) -> None:
    async with (
        FakeDeepgram(fault=fault) as fake,
        opened(fake) as stt,
        aclosing(stt.events()) as events,
    ):
        await feed(stt, tone(0.3))
        with pytest.raises(ProviderError, match=message):
            await read_until(events, is_final)
        await feed(stt, tone(0.1))  # send_audio must not raise on a failed stream


# ---- failover -----------------------------------------------------------------------------


async def test_a_dropped_stream_moves_the_utterance_to_the_fallback() -> None:
    async with FakeDeepgram(fault=Fault.DROP) as fake:
        chain = FailoverSTT(
            config(fake, fallback=[SCRIPTED]), RATE, ProviderHealth(), pipeline="test"
        )
        await chain.start()
        try:
            async with aclosing(chain.events()) as events:
                await feed(chain, tone(1.0))
                await chain.finalize()
                seen = await read_until(events, is_final)
        finally:
            await chain.aclose()

    assert seen[0] == Partial("what")  # from Deepgram, which then dropped
    assert finals(seen) == [Final(SAID)]  # from the fallback, which heard the voiced replay
    assert fake.attempts == 1


async def test_audio_sent_while_the_session_switches_provider_reaches_the_fallback() -> None:
    """The client keeps talking while the failed stream is closed and the fallback opened:
    that audio must neither hit the dead stream nor be lost for the new one."""
    async with FakeDeepgram(fault=Fault.DROP) as fake, FakeDeepgram() as backup:
        # A fallback with a handshake of its own: the switch takes a few event-loop turns.
        fallback = {"provider": "deepgram", "api_key": backup.api_key, "base_url": backup.base_url}
        chain = FailoverSTT(
            config(fake, fallback=[fallback]), RATE, ProviderHealth(), pipeline="test"
        )
        await chain.start()

        async def talk() -> None:
            pcm = tone(2.0)
            for start in range(0, len(pcm), 640):
                await chain.send_audio(pcm[start : start + 640])
                await asyncio.sleep(0.002)
            await chain.finalize()

        try:
            async with aclosing(chain.events()) as events, asyncio.TaskGroup() as tasks:
                tasks.create_task(talk())
                seen = await read_until(events, is_final)
        finally:
            await chain.aclose()

    assert seen[0] == Partial("what")  # from the first Deepgram, which then dropped
    assert "".join(f.text for f in finals(seen)) == SAID  # the fallback heard it all
    (stream,) = backup.streams
    assert stream.audio_bytes == len(tone(2.0)), "the replay and the live audio, all of it"


async def test_a_mute_deepgram_moves_the_session_and_the_unanswered_utterance_to_the_fallback() -> (
    None
):
    """Deepgram went mute as the user started speaking: the turn is neither closed empty nor
    lost; after the stall bound (5 s: the shortest) the fallback hears the utterance again."""
    fallback = {**SCRIPTED, "transcript": "heard by the fallback"}
    async with FakeDeepgram() as fake:
        block = config(fake, timeout_ms=1000, fallback=[fallback])
        chain = FailoverSTT(block, RATE, ProviderHealth(), pipeline="test")
        await chain.start()
        try:
            async with aclosing(chain.events()) as events:
                await feed(chain, tone(1.2) + silence(0.4))
                first = await read_until(events, is_final)
                fake.muted = True
                await feed(chain, tone(1.0) + silence(1.5))
                await chain.finalize()
                second = await read_until(events, is_final)
        finally:
            await chain.aclose()

    assert finals(first) == [Final(SAID)]  # from Deepgram, before it went mute
    # Nothing closed the turn before the fallback, which heard the voiced replay.
    assert partials(second)[0] == "heard"
    assert finals(second) == [Final("heard by the fallback")]
    assert fake.attempts == 1


async def test_a_refused_key_sends_sessions_to_the_fallback_without_asking_deepgram_again() -> None:
    health = ProviderHealth()
    async with FakeDeepgram(fault=Fault.UNAUTHORIZED) as fake:
        for _ in range(2):
            chain = FailoverSTT(config(fake, fallback=[SCRIPTED]), RATE, health, pipeline="test")
            await chain.start()
            try:
                async with aclosing(chain.events()) as events:
                    await feed(chain, tone(0.5))
                    await chain.finalize()
                    assert (await read_until(events, is_final))[-1] == Final(SAID)
            finally:
                await chain.aclose()

    assert fake.attempts == 1


# ---- end to end ---------------------------------------------------------------------------


def deepgram_pipeline(fake: FakeDeepgram, **keys: Any) -> Pipeline:
    return msgspec.structs.replace(make_pipeline(), stt=config(fake, **keys))


@pytest.mark.parametrize("fault", [Fault.NONE, Fault.DROP])
async def test_a_spoken_turn_through_the_gateway_is_transcribed_and_answered(
    speech: bytes, fault: Fault
) -> None:
    async with (
        FakeDeepgram(fault=fault) as fake,
        running_gateway(deepgram_pipeline(fake, fallback=[SCRIPTED])) as gw,
    ):
        async with VoiceClient.connect(gw.url()) as client:
            await client.start()
            await client.send_audio(speech, pace_s=0.02)  # real time: the VAD runs on it
            events, end = await client.collect_until(protocol.TurnEnd)
        await wait_sessions_closed(gw)
        stream = await ended(fake.streams[0])

    assert any(isinstance(e, protocol.TranscriptPartial) for e in events)
    final = next(e for e in events if isinstance(e, protocol.TranscriptFinal))
    assert final.text == SAID
    tokens = "".join(e.text for e in events if isinstance(e, protocol.LLMToken))
    assert (tokens, end.reason) == ("Paris is the capital of France.", "completed")
    assert not any(isinstance(e, protocol.Error) for e in events)
    if fault is Fault.NONE:
        assert stream.controls[-1] == "CloseStream"  # the session's end closed the stream
