"""Hostile frames inside a session: nesting bombs, bursts, and audio that lies about itself."""

from __future__ import annotations

import asyncio

import numpy as np
import structlog

from gateway import protocol
from gateway.client import VoiceClient
from tests.audio_fixtures import speech_at
from tests.conftest import make_pipeline, running_gateway
from tests.test_session import closed_with

DEEP = '{"type":"audio_end","x":' + "[" * 1000 + "]" * 1000 + "}"


async def test_deeply_nested_json_is_a_bad_message_and_the_session_goes_on() -> None:
    """Before: msgspec's RecursionError ended the session with 1011 and a traceback."""
    with structlog.testing.capture_logs() as logs:
        async with running_gateway() as gw, VoiceClient.connect(gw.url()) as client:
            await client.start()
            await client.ws.send(DEEP)
            error = await client.expect(protocol.Error)
            await client.send(protocol.Text(text="still there?"))
            end = await client.expect(protocol.TurnEnd)
    assert error.code == "bad_message" and not error.fatal and "nested" in error.message
    assert end.reason == "completed"
    assert not [entry for entry in logs if entry["event"] == "session_failed"]


async def test_deeply_nested_json_as_the_first_frame_is_closed_1008() -> None:
    async with running_gateway() as gw, VoiceClient.connect(gw.url()) as client:
        await client.ws.send(DEEP)
        error = await client.expect(protocol.Error)
        code, _ = await closed_with(client)
    assert error.fatal and error.code == "bad_message" and code == 1008


async def test_bursts_within_the_average_rate_never_close_the_session() -> None:
    """Before: refused frames were counted for the whole session, so bursts spaced out to a
    lower average rate still added up to a 1008."""
    limited = make_pipeline(limits={"control_frames_per_s": 20})
    ping = protocol.encode(protocol.Playback(turn_id=99, played_ms=0))
    async with running_gateway(limited) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        for _ in range(4):  # each burst: 20 fit, 10 are refused; the bucket refills between
            for _ in range(30):
                await client.ws.send(ping)
            await asyncio.sleep(1.2)
        await client.send(protocol.Text(text="are you there?"))
        events, end = await client.collect_until(protocol.TurnEnd)
    limited_errors = [e for e in events if isinstance(e, protocol.Error)]
    assert all(e.code == "rate_limited" and not e.fatal for e in limited_errors)
    assert end.reason == "completed", "the session is still open"


async def test_stereo_pcm16_is_down_mixed_not_read_as_mono() -> None:
    """Before: `channels: 2` was accepted and ignored, so interleaved stereo played as mono at
    half speed: the speech the VAD heard lasted twice as long as what was said."""
    voice = speech_at(16000, "what is the capital of france")
    voice_ms = len(voice) / 16
    stereo = np.column_stack((voice, voice)).astype("<i2").tobytes()
    silence = np.zeros(16000 * 2 * 2, dtype="<i2").tobytes()  # two seconds, two channels
    start = protocol.SessionStart(
        input=protocol.InputFormat(codec=protocol.InputCodec.PCM16, sample_rate=16000, channels=2)
    )
    async with running_gateway() as gw, VoiceClient.connect(gw.url()) as client:
        await client.send(start)
        started = await client.expect(protocol.SessionStarted)
        await client.send_audio(stereo + silence)
        began = await client.expect(protocol.SpeechStarted)
        ended = await client.expect(protocol.SpeechStopped)
    assert started.input.channels == 2
    heard_ms = ended.t_ms - began.t_ms
    assert 0.7 < heard_ms / voice_ms < 1.4, (heard_ms, voice_ms)
