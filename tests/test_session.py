"""The gateway end to end over a real loopback socket, with scripted providers."""

from __future__ import annotations

import asyncio
import itertools
import threading
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import soxr
from prometheus_client import REGISTRY
from websockets.exceptions import ConnectionClosed

from adapters.base import ChatMessage
from gateway import protocol
from gateway.audio.endpointing import SmartTurnModel
from gateway.client import AudioChunk, Event, VoiceClient
from gateway.inference import POOL
from tests.conftest import Gateway, make_pipeline, running_gateway, wait_sessions_closed

LONG_REPLY = (
    "Paris is the capital of France. It has been the heart of French life for centuries, "
    "with museums, cafes, bridges and parks that visitors remember for the rest of their lives."
)


def audio_of(events: list[Event], turn_id: int) -> list[AudioChunk]:
    return [e for e in events if isinstance(e, AudioChunk) and e.header.turn_id == turn_id]


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events if not isinstance(e, AudioChunk)]


async def test_spoken_turn_streams_transcripts_reply_and_audio(
    gateway: Gateway, speech: bytes
) -> None:
    async with VoiceClient.connect(gateway.url()) as client:
        started = await client.start()
        assert started.output == protocol.OutputFormat(codec="pcm16", sample_rate=24000)
        await client.send_audio(speech)
        events, end = await client.collect_until(protocol.TurnEnd)

    names = kinds(events)
    assert (
        names.index("SpeechStarted") < names.index("SpeechStopped") < names.index("TranscriptFinal")
    )
    assert "TranscriptPartial" in names
    final = next(e for e in events if isinstance(e, protocol.TranscriptFinal))
    assert final.text == "what is the capital of france"
    tokens = "".join(e.text for e in events if isinstance(e, protocol.LLMToken))
    assert tokens == "Paris is the capital of France."
    chunks = audio_of(events, end.turn_id)
    assert [c.header.seq for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].header.last and not any(c.header.last for c in chunks[:-1])
    # 6 words at 180 words per minute: two seconds of 24 kHz pcm16.
    assert sum(len(c.payload) for c in chunks) == 2 * 24000 * 2
    assert end.reason == "completed"
    m = end.metrics
    assert m.stt_final_ms is not None and m.stt_final_ms >= 50
    assert m.voice_to_voice_ms is not None and m.gateway_overhead_ms is not None
    assert m.voice_to_voice_ms >= m.stt_final_ms + 40 + 30
    assert 0 <= m.gateway_overhead_ms < m.voice_to_voice_ms
    await wait_sessions_closed(gateway)


async def test_first_audio_leaves_before_the_llm_has_finished() -> None:
    slow_llm = make_pipeline(llm={"reply": LONG_REPLY, "token_ms": 40})
    async with running_gateway(slow_llm) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="tell me about paris"))
        before_audio, _ = await client.collect_until(AudioChunk)
    tokens = [e for e in before_audio if isinstance(e, protocol.LLMToken)]
    assert len(tokens) < len(LONG_REPLY.split()), "TTS must start on the first phrase"
    assert "".join(t.text for t in tokens).startswith("Paris is the capital of France.")


async def test_audio_end_closes_the_turn_without_server_vad(speech: bytes) -> None:
    no_vad = make_pipeline(vad={"provider": "none"})
    async with running_gateway(no_vad) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send_audio(speech)
        await client.send(protocol.AudioEnd())
        events, end = await client.collect_until(protocol.TurnEnd)
    assert "SpeechStarted" not in kinds(events)
    assert end.reason == "completed" and end.metrics.stt_final_ms is not None


async def test_audio_end_with_nothing_said_is_a_no_speech_error_and_the_session_goes_on(
    gateway: Gateway, speech: bytes
) -> None:
    async with VoiceClient.connect(gateway.url()) as client:
        await client.start()
        await client.send_audio(bytes(16000))  # a push-to-talk press: half a second of silence
        await client.send(protocol.AudioEnd())
        events, error = await client.collect_until(protocol.Error)
        # The next press has words, and the user lets go only after the server has ended
        # their turn on its own: that audio_end came after its words, and is no error.
        await client.send_audio(speech + bytes(32000))
        answered, end = await client.collect_until(protocol.TurnEnd)
        await client.send(protocol.AudioEnd())
        await client.send(protocol.Text(text="thanks"))
        after, _ = await client.collect_until(protocol.TurnEnd)
    assert kinds(events) == ["Error"], "no speech: nothing before the error"
    assert error.code == protocol.ErrorCode.NO_SPEECH and error.fatal is False
    assert "no words were heard" in error.message
    assert end.reason == "completed" and end.turn_id == 1
    assert "Error" not in kinds([*answered, *after])
    await wait_sessions_closed(gateway)


async def test_three_turns_on_one_socket_keep_history(gateway: Gateway, speech: bytes) -> None:
    async with VoiceClient.connect(gateway.url()) as client:
        await client.start()
        ends = []
        for turn in ("hello", None, "thanks"):
            if turn is None:
                await client.send_audio(speech)
            else:
                await client.send(protocol.Text(text=turn))
            ends.append(await client.expect(protocol.TurnEnd))
        (session,) = gateway.table.sessions
        history = session.history
    assert [e.turn_id for e in ends] == [1, 2, 3]
    assert all(e.reason == "completed" for e in ends)
    assert [m.role for m in history] == ["user", "assistant"] * 3
    assert [m.content for m in history if m.role == "user"] == [
        "hello",
        "what is the capital of france",
        "thanks",
    ]
    await wait_sessions_closed(gateway)


async def test_client_interrupt_stops_audio_and_keeps_only_what_was_heard() -> None:
    long = make_pipeline(llm={"reply": LONG_REPLY})
    async with running_gateway(long) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="tell me about paris"))
        await client.expect(AudioChunk)
        await client.send(protocol.Interrupt(played_ms=1000))
        interrupted = await client.expect(protocol.Interrupted)
        after, end = await client.collect_until(protocol.TurnEnd)
        (session,) = gw.table.sessions
        history = session.history
        await client.send(protocol.Text(text="and london?"))
        later, next_audio = await client.collect_until(AudioChunk)
    assert interrupted.turn_id == end.turn_id == 1
    assert end.reason == "interrupted"
    assert audio_of(after + later, 1) == [], "no audio of an interrupted turn after `interrupted`"
    # One second of a two-second, six-word first phrase: the user heard three words.
    assert history[-1].content == "Paris is the"
    assert next_audio.header.turn_id == 2


async def test_server_barge_in_interrupts_playing_reply_and_truncates_history(
    speech: bytes,
) -> None:
    long = make_pipeline(llm={"reply": LONG_REPLY})
    async with running_gateway(long) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="tell me about paris"))
        await client.expect(AudioChunk)
        await asyncio.sleep(0.8)
        await client.send_audio(speech)
        events, interrupted = await client.collect_until(protocol.Interrupted)
        after, _ = await client.collect_until(protocol.TurnEnd)
        (session,) = gw.table.sessions
        heard = next(m.content for m in reversed(session.history) if m.role == "assistant")
        rest, next_audio = await client.collect_until(AudioChunk)
    assert interrupted.turn_id == 1
    assert "SpeechStarted" in kinds(events), "barge-in needs the VAD to have heard speech"
    assert audio_of(after + rest, 1) == []
    assert heard and LONG_REPLY.startswith(heard) and len(heard) < len(LONG_REPLY) // 2
    assert next_audio.header.turn_id == 2


async def test_short_noise_under_min_barge_in_does_not_interrupt(speech: bytes) -> None:
    strict = make_pipeline(
        llm={"reply": LONG_REPLY}, tts={"words_per_minute": 900}, turns={"min_barge_in_ms": 5000}
    )
    async with running_gateway(strict) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="tell me about paris"))
        await client.expect(AudioChunk)
        await client.send_audio(speech[: 16000 * 2 // 2])
        events, end = await client.collect_until(protocol.TurnEnd)
    assert end.turn_id == 1 and end.reason == "completed"
    assert "Interrupted" not in kinds(events)


async def test_text_turn_supersedes_reply_in_flight(gateway: Gateway) -> None:
    async with VoiceClient.connect(gateway.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="first"))
        await client.expect(protocol.LLMToken)
        await client.send(protocol.Text(text="second"))
        interrupted = await client.expect(protocol.Interrupted)
        rest, _ = await client.collect_until(protocol.TurnEnd)
        final, end = await client.collect_until(protocol.TurnEnd)
    assert interrupted.turn_id == 1
    assert end.turn_id == 2 and end.reason == "completed"
    assert audio_of(rest + final, 1) == []


@asynccontextmanager
async def reply_begun(lead_ms: int) -> AsyncIterator[tuple[VoiceClient, float]]:
    """A client whose long reply has begun: its first audio frame came at the loop time given."""
    paced = make_pipeline(llm={"reply": LONG_REPLY}, output={"lead_ms": lead_ms})
    async with running_gateway(paced) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="tell me about paris"))
        await client.expect(AudioChunk)
        yield client, asyncio.get_running_loop().time()


async def test_audio_is_paced_to_lead_ms_ahead_of_playback() -> None:
    loop = asyncio.get_running_loop()
    async with reply_begun(lead_ms=300) as (client, first):
        await client.send(protocol.Playback(turn_id=1, played_ms=0))
        await asyncio.sleep(1.0)
        await client.send(protocol.Interrupt())
        events, _ = await client.collect_until(protocol.Interrupted)
        elapsed_ms = (loop.time() - first) * 1000
    received_ms = sum(len(c.payload) for c in audio_of(events, 1)) / 48
    # Never more than lead_ms (plus one chunk) ahead of real-time playback.
    assert received_ms <= elapsed_ms + 300 + 40
    assert received_ms >= 0.5 * elapsed_ms, "pacing must not starve playback"


async def test_a_reply_at_its_lead_goes_out_in_steps_not_frame_by_frame() -> None:
    """Once `lead_ms` is out, the reply waits until a quarter of it has played and then sends
    that much at once (gateway.reply.REFILL): a few wakes per second, not one per 40 ms frame."""
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    async with reply_begun(lead_ms=400) as (client, first):
        while loop.time() - first < 1.5:
            if isinstance(await client.recv(), AudioChunk):
                arrivals.append(loop.time())
    # Frames that arrive together (within 20 ms) left the server in one step.
    steady = [t for t in arrivals if t - first > 0.1]  # after the first lead went out at once
    steps = 1 + sum(1 for a, b in itertools.pairwise(steady) if b - a > 0.02)
    assert len(steady) / steps >= 2, (len(steady), steps)
    audio_s = (len(arrivals) + 1) * 0.04
    assert audio_s <= (arrivals[-1] - first) + 0.4 + 0.04  # never more than lead_ms ahead


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("{not json", "malformed"),
        ('{"type": "dance"}', "type"),
        ('{"type": "text", "text": 42}', "$.text"),
        ('{"type": "interrupt", "played_ms": -5}', "$.played_ms"),
        (
            '{"type": "session_start", "input": {"codec": "pcm16", "sample_rate": 16000}}',
            "already started",
        ),
    ],
)
async def test_bad_message_gets_an_error_and_the_session_goes_on(
    gateway: Gateway, frame: str, fragment: str
) -> None:
    async with VoiceClient.connect(gateway.url()) as client:
        await client.start()
        await client.ws.send(frame)
        error = await client.expect(protocol.Error)
        assert error.code == "bad_message" and not error.fatal
        assert fragment.lower() in error.message.lower()
        await client.send(protocol.Text(text="still there?"))
        end = await client.expect(protocol.TurnEnd)
        assert end.reason == "completed"
    await wait_sessions_closed(gateway)


async def read_forever(client: VoiceClient) -> None:
    while True:
        await client.recv()


async def closed_with(client: VoiceClient) -> tuple[int | None, str]:
    """Read until the server closes; the close code and reason it sent."""
    with pytest.raises(ConnectionClosed) as closed:
        await read_forever(client)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (b"\x00\x01", "audio before session_start"),
        ('{"type": "text", "text": "hi"}', "must be session_start"),
        ("{oops", "not a valid session_start"),
        ('{"type": "session_start", "input": {"codec": "flac"}}', "input.codec"),
        ('{"type": "session_start", "input": {"codec": "mulaw"}}', "not accepted here"),
        ('{"type": "session_start", "input": {"codec": "pcm16"}}', "sample_rate"),
    ],
)
async def test_bad_first_frame_closes_1008(
    gateway: Gateway, first: str | bytes, reason: str
) -> None:
    async with VoiceClient.connect(gateway.url()) as client:
        await client.ws.send(first)
        code, text = await closed_with(client)
    assert code == 1008 and reason in text
    await wait_sessions_closed(gateway)


async def test_no_session_start_in_time_closes_1008() -> None:
    impatient = make_pipeline(limits={"start_timeout_s": 0.2})
    async with running_gateway(impatient) as gw, VoiceClient.connect(gw.url()) as client:
        code, text = await closed_with(client)
        await wait_sessions_closed(gw)
    assert code == 1008 and "start_timeout_s" in text


async def test_frame_over_max_message_bytes_closes_1009() -> None:
    small = make_pipeline(limits={"max_message_bytes": 4096})
    async with running_gateway(small) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.ws.send(b"\x00" * 5000)
        code, text = await closed_with(client)
        await wait_sessions_closed(gw)
    assert code == 1009 and "max_message_bytes" in text


async def test_pcm16_at_another_rate_is_resampled_for_vad_and_stt(speech: bytes) -> None:
    pcm = np.frombuffer(speech, dtype="<i2")
    at_44k = soxr.resample(pcm, 16000, 44100).astype("<i2").tobytes()
    async with running_gateway(make_pipeline()) as gw, VoiceClient.connect(gw.url()) as client:
        started = await client.start(protocol.InputCodec.PCM16, sample_rate=44100)
        await client.send_audio(at_44k, chunk_bytes=1763)  # odd sizes: samples split across frames
        events, end = await client.collect_until(protocol.TurnEnd)
    assert started.input.sample_rate == 44100
    assert "SpeechStopped" in kinds(events) and end.reason == "completed"


async def test_unknown_route_and_foreign_origin_are_refused_before_upgrade() -> None:
    from websockets.exceptions import InvalidStatus

    guarded = make_pipeline(auth={"allowed_origins": ["https://app.example.com"]})
    async with running_gateway(guarded) as gw:
        for url, origin in ((gw.url("/ws/nope"), None), (gw.url(), "https://evil.example.com")):
            with pytest.raises(InvalidStatus) as refused:
                async with VoiceClient.connect(url, origin=origin):
                    pass
            assert refused.value.response.status_code == 403
        async with VoiceClient.connect(gw.url(), origin="https://app.example.com") as client:
            await client.start()


async def test_route_at_max_sessions_closes_1013() -> None:
    one = make_pipeline(limits={"max_sessions": 1})
    async with running_gateway(one) as gw, VoiceClient.connect(gw.url()) as first:
        await first.start()
        async with VoiceClient.connect(gw.url()) as second:
            code, _ = await closed_with(second)
    assert code == 1013


async def test_client_that_never_reads_is_closed_1013_with_bounded_memory() -> None:
    # Ten minutes of 48 kHz audio (about 58 MB) sent as fast as TTS makes it: only the
    # outbound queue and the socket buffers may ever hold any of it.
    flood = make_pipeline(
        llm={"reply": " ".join(f"word{n}" for n in range(1800)), "token_ms": 0},
        output={"sample_rate": 48000, "lead_ms": 600_000},
        limits={"outbound_queue": 64, "slow_client_timeout_s": 0.5},
    )

    def closes() -> float:
        value = REGISTRY.get_sample_value(
            "voxgate_slow_consumer_closes_total", {"pipeline": "test"}
        )
        return value or 0.0

    before = closes()
    tracemalloc.start()
    try:
        async with running_gateway(flood) as gw:
            async with VoiceClient.connect(gw.url(), max_queue=1, max_size=None) as client:
                await client.start()
                await client.send(protocol.Text(text="talk for ten minutes"))
                async with asyncio.timeout(30):
                    while closes() == before:
                        await asyncio.sleep(0.05)
                peak = tracemalloc.get_traced_memory()[1]
                code, reason = await closed_with(client)
            await wait_sessions_closed(gw)
    finally:
        tracemalloc.stop()
    assert code == 1013 and "slow consumer" in reason
    assert peak < 20 * 1024 * 1024, f"a stalled client held {peak / 2**20:.1f} MiB"


def pauses(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "voxgate_reply_pauses_total", {"pipeline": "test", "outcome": outcome}
    )
    return value or 0.0


async def test_a_backchannel_over_the_reply_pauses_it_then_it_plays_on(speech: bytes) -> None:
    chatty = make_pipeline(llm={"reply": LONG_REPLY}, stt={"transcript": "mm hmm"})
    voiced = np.frombuffer(speech, dtype="<i2")
    onset = int(np.flatnonzero(np.abs(voiced) > 328)[0])
    short = voiced[onset : onset + 16000 * 6 // 10].tobytes()  # 600 ms: "mm hmm"-long
    resumed = pauses("resumed")
    async with running_gateway(chatty) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="tell me about paris"))
        await client.expect(AudioChunk)
        await client.send_audio(short + bytes(16000), pace_s=0.02)
        events, end = await client.collect_until(protocol.TurnEnd)
        (session,) = gw.table.sessions
        said = [m.content for m in session.history if m.role == "user"]
    names = kinds(events)
    assert names.index("ReplyPaused") < names.index("ReplyResumed")
    assert "Interrupted" not in names and "TranscriptFinal" not in names, "not a turn"
    assert end.turn_id == 1 and end.reason == "completed" and end.metrics.resumed == 1
    assert said == ["tell me about paris"]
    assert pauses("resumed") == resumed + 1


async def test_words_over_the_reply_pause_it_then_interrupt_it_and_are_answered(
    speech: bytes,
) -> None:
    chatty = make_pipeline(
        llm={"reply": LONG_REPLY}, stt={"transcript": "wait what about lyon", "partials": False}
    )
    interrupted = pauses("interrupted")
    async with running_gateway(chatty) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="tell me about paris"))
        await client.expect(AudioChunk)
        await client.send_audio(speech, pace_s=0.02)
        events, final = await client.collect_until(protocol.TranscriptFinal)
    names = kinds(events)
    assert names.index("ReplyPaused") < names.index("Interrupted")
    assert final.text == "wait what about lyon" and final.turn_id == 2
    assert pauses("interrupted") == interrupted + 1


async def test_session_is_closed_normally_at_max_session_s() -> None:
    short = make_pipeline(limits={"max_session_s": 1})
    async with running_gateway(short) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        code, reason = await closed_with(client)
        await wait_sessions_closed(gw)
    assert code == 1000 and "max_session_s" in reason


async def test_mulaw_in_and_out_for_telephony(speech: bytes) -> None:
    from gateway.audio.codecs import mulaw_encode

    phone = make_pipeline(
        input={"codecs": ["mulaw"], "sample_rate": 8000},
        output={"codec": "mulaw", "sample_rate": 8000},
    )
    pcm16k = np.frombuffer(speech, dtype="<i2")
    mulaw = mulaw_encode(soxr.resample(pcm16k, 16000, 8000).astype("<i2"))
    async with running_gateway(phone) as gw, VoiceClient.connect(gw.url()) as client:
        started = await client.start(protocol.InputCodec.MULAW, sample_rate=None)
        await client.send_audio(mulaw, chunk_bytes=160)
        events, end = await client.collect_until(protocol.TurnEnd)
    assert started.output == protocol.OutputFormat(codec="mulaw", sample_rate=8000)
    assert "SpeechStopped" in kinds(events) and end.reason == "completed"
    # Two seconds of reply at one byte per 8 kHz sample.
    assert sum(len(c.payload) for c in audio_of(events, end.turn_id)) == 2 * 8000


async def test_barge_in_off_lets_the_reply_finish(speech: bytes) -> None:
    polite = make_pipeline(
        llm={"reply": LONG_REPLY}, tts={"words_per_minute": 900}, turns={"barge_in": False}
    )
    async with running_gateway(polite) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="tell me about paris"))
        await client.expect(AudioChunk)
        await client.send_audio(speech)
        events, end = await client.collect_until(protocol.TurnEnd)
        _, queued = await client.collect_until(protocol.TurnEnd)
        (session,) = gw.table.sessions
        history = session.history
    assert "SpeechStarted" in kinds(events) and "Interrupted" not in kinds(events)
    assert end.turn_id == 1 and end.reason == "completed"
    assert queued.turn_id == 2 and queued.reason == "completed", "the user's turn is answered next"
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[1].content == LONG_REPLY


async def test_provider_failure_ends_the_turn_with_an_error_and_the_session_goes_on() -> None:
    flaky = make_pipeline(llm={"fail_after_tokens": 3})
    async with running_gateway(flaky) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="hello"))
        events, end = await client.collect_until(protocol.TurnEnd)
        errors = [e for e in events if isinstance(e, protocol.Error)]
        await client.send(protocol.Text(text="again"))
        again = await client.expect(protocol.TurnEnd)
        (session,) = gw.table.sessions
        history = session.history
    assert end.reason == "error"
    assert [(e.code, e.turn_id, e.fatal) for e in errors] == [("provider_error", 1, False)]
    assert "dropped after 3 tokens" in errors[0].message
    assert again.turn_id == 2 and again.reason == "error"
    # "Paris is the" never made a complete phrase, so no audio: the user heard nothing.
    assert history == [ChatMessage("user", "hello"), ChatMessage("user", "again")]


async def test_server_selects_the_subprotocol_and_refuses_compression(gateway: Gateway) -> None:
    async with VoiceClient.connect(gateway.url(), compression="deflate") as client:
        await client.start()
        assert client.ws.subprotocol == protocol.SUBPROTOCOL
        assert client.ws.response is not None
        assert "Sec-WebSocket-Extensions" not in client.ws.response.headers


async def test_barge_in_ignores_a_100_ms_burst_of_speech(speech: bytes) -> None:
    long = make_pipeline(llm={"reply": LONG_REPLY}, tts={"words_per_minute": 900})
    pcm = np.frombuffer(speech, dtype="<i2")
    onset = int(np.flatnonzero(np.abs(pcm) > 328)[0])
    burst = pcm[onset : onset + 1600]  # 100 ms of the loudest start of a word
    silence = np.zeros(16000, dtype="<i2")
    async with running_gateway(long) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="tell me about paris"))
        await client.expect(AudioChunk)
        await client.send_audio(np.concatenate((burst, silence)).tobytes())
        events, end = await client.collect_until(protocol.TurnEnd)
    assert "Interrupted" not in kinds(events)
    assert end.turn_id == 1 and end.reason == "completed"


async def test_audio_end_while_the_vad_still_hears_the_tail_does_not_cut_the_answer(
    speech: bytes,
) -> None:
    # A push-to-talk or client-VAD client ends the turn before the server's silence window:
    # the server VAD is still "in speech" when the reply starts, which is not a barge-in.
    async with running_gateway(make_pipeline()) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        voiced = speech[: len(speech) - 9600 * 2]  # the speech without its trailing silence
        await client.send_audio(voiced, pace_s=0.02)
        await client.send(protocol.AudioEnd())
        await client.send_audio(bytes(32000), pace_s=0.02)  # the mic stays open: silence
        events, end = await client.collect_until(protocol.TurnEnd)
    assert "Interrupted" not in kinds(events)
    assert end.reason == "completed"


async def test_speech_sent_faster_than_real_time_never_runs_the_turn_model_for_moot_pauses(
    speech: bytes,
) -> None:
    """A file of two sentences, sent at once with `audio_end`: each pause asks for a score,
    but what decides it (the second sentence, then `audio_end`) has already arrived behind
    it, so neither is worth the model's ~30 ms of CPU."""
    before = end_of_turn_model("run"), end_of_turn_model("skipped")
    two_sentences = speech + speech  # each followed by 0.6 s of silence
    async with running_gateway(make_pipeline()) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        for start in range(0, len(two_sentences), 3200):  # written without yielding the loop
            await client.ws.send(two_sentences[start : start + 3200])
        await client.send(protocol.AudioEnd())
        _, end = await client.collect_until(protocol.TurnEnd)
        async with asyncio.timeout(10):
            while end_of_turn_model("skipped") < before[1] + 2:
                await asyncio.sleep(0.01)
    assert end.reason == "completed"
    assert (end_of_turn_model("run"), end_of_turn_model("skipped")) == (before[0], before[1] + 2)


def end_of_turn_model(outcome: str) -> float:
    labels = {"pipeline": "test", "outcome": outcome}
    return REGISTRY.get_sample_value("voxgate_end_of_turn_model_total", labels) or 0.0


async def test_a_push_to_talk_turn_skips_the_end_of_turn_model_still_queued_for_a_worker(
    speech: bytes,
) -> None:
    """Under load the model's call waits for a worker; the client's `audio_end` decides the
    turn meanwhile, so the call is dropped instead of costing ~33 ms of CPU for nothing."""

    await SmartTurnModel().start()  # loaded before the workers are taken
    before = end_of_turn_model("run"), end_of_turn_model("skipped")
    busy = threading.Event()
    blockers = [POOL.submit(busy.wait, 30) for _ in range(POOL.workers)]
    try:
        async with running_gateway(make_pipeline()) as gw, VoiceClient.connect(gw.url()) as client:
            await client.start()
            await client.send_audio(speech, pace_s=0.02)  # 0.6 s of silence after the words
            await client.send(protocol.AudioEnd())
            _, end = await client.collect_until(protocol.TurnEnd)
            assert end.reason == "completed"
            busy.set()
            async with asyncio.timeout(10):
                while end_of_turn_model("skipped") == before[1]:
                    await asyncio.sleep(0.01)
    finally:
        busy.set()
        await asyncio.gather(*(asyncio.wrap_future(b) for b in blockers))
    assert (end_of_turn_model("run"), end_of_turn_model("skipped")) == (
        before[0],
        before[1] + 1,
    )
