"""A deploy's drain closes a session (1001) only once its reply has played out.

Before (issue 13): the 1001 came ~30 ms after the reply's last chunk, with up to `lead_ms` of
it still unplayed on the client, which then reconnected and dropped it.
"""

from __future__ import annotations

import asyncio

from gateway import protocol
from gateway.client import AudioChunk, VoiceClient
from tests.conftest import make_pipeline, running_gateway
from tests.test_session import closed_with

REPLY = "Paris is the capital of France, and it sits on the river Seine in the north."


async def test_a_drain_waits_for_the_reply_to_play_out() -> None:
    paced = make_pipeline(
        llm={"reply": REPLY, "token_ms": 5},
        tts={"words_per_minute": 400},  # about two seconds of audio, 1 s of it sent ahead
        output={"lead_ms": 1000},
    )
    loop = asyncio.get_running_loop()
    async with running_gateway(paced) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        await client.send(protocol.Text(text="where is paris?"))
        audio_ms = 0.0
        first_audio: float | None = None
        while True:
            event = await client.recv()
            if isinstance(event, AudioChunk):
                first_audio = first_audio or loop.time()
                audio_ms += len(event.payload) / 2 / 24  # pcm16 at 24 kHz
                if event.header.last:
                    break
        draining = asyncio.create_task(gw.server.drain())
        code, _ = await closed_with(client)
        closed = loop.time()
        await draining
    assert first_audio is not None and audio_ms > 1500
    assert code == 1001
    played_before_close_ms = (closed - first_audio) * 1000
    assert played_before_close_ms / audio_ms > 0.9, (played_before_close_ms, audio_ms)
