"""Preemptive generation (`turns.preemptive_ms`): the reply is prepared during the user's
pause and sent only once the silence window confirms the turn ended, never before."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY

from gateway import protocol
from gateway.client import AudioChunk, Event, VoiceClient
from tests.conftest import make_pipeline, running_gateway

SILENCE_20MS = bytes(640)
REPLY = "Paris is the capital of France."


def preemptive_pipeline() -> object:
    return make_pipeline(
        vad={"min_silence_ms": 600},
        # The silence window decides here: the mechanics of holding, not the judging.
        turns={"preemptive_ms": 150, "detector": "silence"},
        stt={"latency_ms": 20},
        llm={"ttft_ms": 20, "token_ms": 2},
        tts={"ttfb_ms": 10},
    )


def voiced(speech: bytes) -> bytes:
    """The fixture's speech without its trailing silence."""
    samples = np.frombuffer(speech, dtype="<i2")
    last = int(np.flatnonzero(np.abs(samples) > 300)[-1])
    return samples[: last + 1].tobytes()


async def say(client: VoiceClient, speech: bytes, silence_ms: int) -> None:
    """Speech as fast as the socket takes it, then silence at real-time pace (the VAD's
    silence window and the preemptive pause are measured in audio time, the STT and LLM
    in wall time: pacing the silence makes the pause come before the turn's end)."""
    await client.send_audio(speech)
    await client.send_audio(SILENCE_20MS * (silence_ms // 20), pace_s=0.02)


def count(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "voxgate_preemptive_replies_total", {"pipeline": "test", "outcome": outcome}
    )
    return value or 0.0


def names(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events if not isinstance(e, AudioChunk)]


async def test_a_reply_prepared_in_the_pause_goes_out_only_after_the_turn_ends(
    speech: bytes,
) -> None:
    used = count("used")
    async with (
        running_gateway(preemptive_pipeline()) as gw,  # type: ignore[arg-type]
        VoiceClient.connect(gw.url()) as client,
    ):
        await client.start()
        await say(client, voiced(speech), silence_ms=900)
        events, end = await client.collect_until(protocol.TurnEnd)

    order = names(events)
    assert order.index("SpeechStopped") < order.index("TranscriptFinal") < order.index("LLMToken")
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, AudioChunk))
    assert first_audio > events.index(
        next(e for e in events if isinstance(e, protocol.TranscriptFinal))
    )
    assert "".join(e.text for e in events if isinstance(e, protocol.LLMToken)) == REPLY
    assert end.reason == "completed"
    assert count("used") - used == 1, "the reply was the one prepared during the pause"
    overhead = end.metrics.gateway_overhead_ms
    assert overhead is not None and overhead >= 0, "waiting for the turn is not overhead"


async def test_speaking_on_after_a_pause_discards_the_prepared_reply(speech: bytes) -> None:
    discarded = count("discarded")
    async with (
        running_gateway(preemptive_pipeline()) as gw,  # type: ignore[arg-type]
        VoiceClient.connect(gw.url()) as client,
    ):
        await client.start()
        await say(client, voiced(speech), silence_ms=400)  # a pause, not the end
        await say(client, voiced(speech), silence_ms=900)
        events, end = await client.collect_until(protocol.TurnEnd)
        await client.send(protocol.Text(text="and germany?"))
        after, _ = await client.collect_until(protocol.TurnEnd)

    assert count("discarded") - discarded == 1
    assert names(events).count("TranscriptFinal") == 1, "one turn, heard whole"
    final = next(e for e in events if isinstance(e, protocol.TranscriptFinal))
    assert final.text.count("capital of france") == 2, "both parts of what the user said"
    tokens = [e for e in events + after if isinstance(e, protocol.LLMToken)]
    assert {t.turn_id for t in tokens} == {end.turn_id, end.turn_id + 1}
    assert "".join(t.text for t in tokens if t.turn_id == end.turn_id) == REPLY
    audio_turns = {e.header.turn_id for e in events + after if isinstance(e, AudioChunk)}
    assert audio_turns == {end.turn_id, end.turn_id + 1}, "no audio of the discarded reply"
