"""What a cloud STT is sent, and so billed for, in a realistic conversation: `stt.send: speech`
(the default for Deepgram and OpenAI) against `all` (every frame, as before).

A scripted conversation over a real socket, at real-time pace, to the shipped
deepgram-openai-cartesia pipeline served in its own process against the fake providers of
tests/fakes/ (the fake Deepgram counts the audio it receives, as Deepgram's bill does): room
tone, a question, the reply played out while the microphone hears room tone, and again. It
reports the share of the session's audio Deepgram received, and the end of speech (the last
voiced sample sent) -> first reply audio per turn, for both settings.

    .venv/bin/python bench/billing.py [--turns 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_process import free_port, start_server  # noqa: E402
from gateway import protocol  # noqa: E402
from gateway.client import AudioChunk, VoiceClient  # noqa: E402
from tests.audio_fixtures import speech_at  # noqa: E402
from tests.fakes.cartesia import API_KEY as CARTESIA_KEY  # noqa: E402
from tests.fakes.cartesia import FakeCartesia  # noqa: E402
from tests.fakes.deepgram import FakeDeepgram  # noqa: E402
from tests.fakes.openai import FakeOpenAI  # noqa: E402

RATE = 16000
QUESTION = "what is the capital of france"
PIPELINE = ROOT / "pipelines" / "deepgram-openai-cartesia.yaml"
ROUTE = "/ws/deepgram-openai-cartesia"
CHUNK = 320  # 20 ms


def room_tone(seconds: float, seed: int) -> np.ndarray:
    """About -60 dBFS of noise: what an open microphone hears in a quiet room."""
    noise = np.random.default_rng(seed).normal(0, 33, int(RATE * seconds))
    return noise.round().astype(np.int16)


async def stream(client: VoiceClient, audio: np.ndarray) -> None:
    """`audio` in 20 ms chunks at real-time pace."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i, start in enumerate(range(0, audio.size, CHUNK)):
        await client.ws.send(audio[start : start + CHUNK].tobytes())
        await asyncio.sleep(max(0.0, started + (i + 1) * 0.02 - loop.time()))


async def conversation(url: str, turns: int) -> tuple[float, list[float]]:
    """Seconds of audio sent by the client, and end of speech -> first audio per turn (ms)."""
    voice = speech_at(RATE, QUESTION)
    sent_s, first_audio_ms = 0.0, []
    async with VoiceClient.connect(url) as client:
        await client.start()
        await stream(client, room_tone(1.0, 0))
        sent_s += 1.0
        for turn in range(turns):
            reader = asyncio.ensure_future(client.expect(AudioChunk))
            await stream(client, voice)
            ended = time.monotonic()
            tail = room_tone(4.0, turn + 1)  # the reply plays; the mic hears the room
            tail_sending = asyncio.ensure_future(stream(client, tail))
            await reader
            first_audio_ms.append((time.monotonic() - ended) * 1000)
            await tail_sending
            await client.collect_until(protocol.TurnEnd)
            sent_s += (voice.size + tail.size) / RATE
    return sent_s, first_audio_ms


async def run(send: str, turns: int) -> dict[str, float]:
    async with AsyncExitStack() as stack:
        deepgram = await stack.enter_async_context(FakeDeepgram(transcript=QUESTION))
        openai = await stack.enter_async_context(
            FakeOpenAI(reply="Paris is the capital of France.", transcript=QUESTION)
        )
        cartesia = await stack.enter_async_context(FakeCartesia())
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        text = PIPELINE.read_text().replace(
            "provider: deepgram", f"provider: deepgram\n  send: {send}", 1
        )
        (folder / "deepgram-openai-cartesia.yaml").write_text(text)
        port = free_port()
        env = {
            "DEEPGRAM_API_KEY": deepgram.api_key,
            "DEEPGRAM_BASE_URL": deepgram.base_url,
            "OPENAI_API_KEY": openai.api_key,
            "OPENAI_BASE_URL": openai.base_url,
            "CARTESIA_API_KEY": CARTESIA_KEY,
            "CARTESIA_BASE_URL": cartesia.base_url,
        }
        server, _ = await asyncio.to_thread(start_server, port, folder, env)
        try:
            sent_s, first = await conversation(f"ws://127.0.0.1:{port}{ROUTE}", turns)
        finally:
            server.terminate()
            await asyncio.to_thread(server.wait, 20)
        received_s = sum(s.audio_bytes for s in deepgram.streams) / 2 / RATE
    return {
        "session_s": sent_s,
        "deepgram_s": received_s,
        "share": received_s / sent_s,
        "first_audio_p50_ms": statistics.median(first),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    for send in ("all", "speech"):
        result = await run(send, args.turns)
        print(
            f"stt.send: {send:6}  session {result['session_s']:.1f} s  "
            f"sent to Deepgram {result['deepgram_s']:.1f} s ({result['share']:.0%})  "
            f"end of speech -> first audio p50 {result['first_audio_p50_ms']:.0f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
