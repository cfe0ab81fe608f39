"""Every wire audio format through a real socket: browser containers in, Opus out, garbage in."""

from __future__ import annotations

import av
import numpy as np
import pytest

from gateway import protocol
from gateway.client import VoiceClient
from gateway.protocol import InputCodec
from tests.audio_fixtures import encode, recorder_chunks, speech_at
from tests.conftest import make_pipeline, running_gateway, wait_sessions_closed
from tests.test_session import audio_of, kinds

CONTAINERS = {InputCodec.WEBM_OPUS: "webm", InputCodec.OGG_OPUS: "ogg", InputCodec.MP4_AAC: "mp4"}
BROWSER = make_pipeline(input={"codecs": [c.value for c in CONTAINERS]})


@pytest.mark.parametrize("codec", list(CONTAINERS))
async def test_spoken_turn_from_a_browser_recording(codec: InputCodec) -> None:
    voice = speech_at(16000, "what is the capital of france")
    recording = np.concatenate((voice, np.zeros(16000, dtype=np.int16)))
    data = encode(recording, 16000, CONTAINERS[codec])
    async with running_gateway(BROWSER) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start(codec, sample_rate=None)
        for chunk in recorder_chunks(data, CONTAINERS[codec], recording.size / 16000):
            await client.ws.send(chunk)
        events, end = await client.collect_until(protocol.TurnEnd)
    names = kinds(events)
    assert (
        names.index("SpeechStarted") < names.index("SpeechStopped") < names.index("TranscriptFinal")
    )
    assert end.reason == "completed"


@pytest.mark.parametrize("codec", list(CONTAINERS))
async def test_garbage_audio_gets_bad_audio_once_and_text_turns_still_work(
    codec: InputCodec,
) -> None:
    garbage = np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    async with running_gateway(BROWSER) as gw:
        async with VoiceClient.connect(gw.url()) as client:
            await client.start(codec, sample_rate=None)
            for start in range(0, len(garbage), 500):
                await client.ws.send(garbage[start : start + 500])
            error = await client.expect(protocol.Error)
            await client.send(protocol.Text(text="hello?"))
            events, end = await client.collect_until(protocol.TurnEnd)
        await wait_sessions_closed(gw)
    assert error.code == "bad_audio" and not error.fatal
    assert "expected" in error.message and "found" in error.message
    assert "Error" not in kinds(events), "bad_audio is reported once"
    assert end.reason == "completed"


async def test_opus_output_is_one_decodable_20_ms_packet_per_frame() -> None:
    opus = make_pipeline(output={"codec": "opus", "sample_rate": 48000})
    async with running_gateway(opus) as gw, VoiceClient.connect(gw.url()) as client:
        started = await client.start()
        await client.send(protocol.Text(text="hello"))
        events, end = await client.collect_until(protocol.TurnEnd)
    assert started.output == protocol.OutputFormat(codec="opus", sample_rate=48000)
    chunks = audio_of(events, end.turn_id)
    packets = [c.payload for c in chunks if c.payload]
    assert chunks[-1].header.last and chunks[-1].payload == b""
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate, decoder.layout = 48000, "mono"
    samples = 0
    for packet in packets:
        frames = decoder.decode(av.Packet(packet))
        assert sum(f.samples for f in frames) == 960, "each frame carries one 20 ms packet"
        samples += sum(f.samples for f in frames)
    # Two seconds of reply, padded to whole packets at the end of the turn.
    assert 2.0 <= samples / 48000 <= 2.1
