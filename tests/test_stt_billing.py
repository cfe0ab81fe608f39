"""Pay only for speech (`stt.send: speech`): a gated STT gets the user's speech with a pre-roll
and a tail, nothing in silence; the words are all there; the stream stays healthy; and a
stalled stream with no fallback is reopened rather than the conversation given up."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import numpy as np
import pytest
from prometheus_client import REGISTRY

from adapters.base import Final
from gateway import protocol
from gateway.client import VoiceClient
from gateway.providers.failover import FailoverSTT
from gateway.providers.health import ProviderHealth
from tests.audio_fixtures import speech_at
from tests.conftest import make_pipeline, running_gateway
from tests.fakes.deepgram import FakeDeepgram
from tests.test_deepgram import RATE, config, feed, is_final, read_until, silence, tone

QUESTION = "what is the capital of france"


def room_tone(seconds: float) -> np.ndarray:
    """Faint noise (about -60 dBFS): what an open microphone hears between words."""
    noise = np.random.default_rng(3).normal(0, 33, int(RATE * seconds))
    return noise.round().astype(np.int16)


def sent_seconds(provider: str) -> float:
    labels = {"pipeline": "test", "provider": provider}
    return REGISTRY.get_sample_value("voxgate_stt_audio_sent_seconds_total", labels) or 0.0


async def test_a_fifteen_second_session_sends_deepgram_its_speech_only() -> None:
    """1 s of room tone, a 2.2 s question, 12 s of room tone: before, all 15.2 s were
    streamed (and billed); now the question, its pre-roll and its tail."""
    voice = speech_at(RATE, QUESTION)
    audio = np.concatenate((room_tone(1.0), voice, room_tone(12.0)))
    before = sent_seconds("deepgram")
    async with FakeDeepgram(transcript=QUESTION) as fake:
        pipeline = make_pipeline(stt=config(fake), turns={"detector": "silence"})
        async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url()) as client:
            await client.start()
            await client.send_audio(audio.tobytes())  # faster than real time: audio time counts
            final = await client.expect(protocol.TranscriptFinal)
            await client.send(protocol.Text(text="bye"))
            await client.expect(protocol.TurnEnd)
        (stream,) = fake.streams
    total_s = audio.size / RATE
    streamed_s = stream.audio_bytes / 2 / RATE
    assert final.text == QUESTION
    assert streamed_s <= 0.35 * total_s, (streamed_s, total_s)
    assert streamed_s >= voice.size / RATE * 0.8, "the speech itself is all sent"
    assert sent_seconds("deepgram") - before == pytest.approx(streamed_s)


async def test_the_first_word_survives_the_gate_with_a_real_recognizer() -> None:
    """Whisper (real) behind the gate, forced on: the pre-roll keeps the first syllable."""
    voice = speech_at(RATE, "paris is the capital of france")
    audio = np.concatenate((room_tone(2.0), voice, room_tone(2.0)))
    gated = make_pipeline(
        stt={"provider": "whisper", "send": "speech", "partial_interval_ms": 0},
        turns={"detector": "silence"},
    )
    async with running_gateway(gated) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send_audio(audio.tobytes(), pace_s=0.005)
        final = await client.expect(protocol.TranscriptFinal)
    assert final.text.lower().split()[0].strip(",.") == "paris", final.text
    assert sent_seconds("whisper") < audio.size / RATE * 0.6


async def test_local_recognizers_hear_everything_by_default() -> None:
    assert not make_pipeline(stt={"provider": "whisper"}).stt.speech_only()
    assert make_pipeline(stt={"provider": "deepgram"}).stt.speech_only()
    assert not make_pipeline(stt={"provider": "deepgram", "send": "all"}).stt.speech_only()


async def test_a_stalled_stream_with_no_fallback_is_reopened_with_the_utterance() -> None:
    """Before: a Deepgram stream that went quiet was declared down and, with no fallback, the
    session ended (1013). Now a new stream of the same provider hears the utterance again."""
    async with FakeDeepgram() as fake:
        chain = FailoverSTT(config(fake, timeout_ms=1000), RATE, ProviderHealth(), pipeline="t")
        await chain.start()
        try:
            async with aclosing(chain.events()) as events:
                fake.streams[0].muted = True  # it owes an answer for 2 s of audio, then stalls
                await feed(chain, tone(2.5) + silence(0.4))
                await chain.finalize()
                async with asyncio.timeout(20):  # the stall bound (5 s), then a new stream
                    seen = await read_until(events, is_final)
        finally:
            await chain.aclose()
    assert [e for e in seen if isinstance(e, Final)][-1].text, "the new stream heard it"
    assert fake.streams[1].audio_bytes >= len(tone(2.5)), "the utterance was replayed"
