"""Voice-to-voice latency of the gateway itself, measured from a separate client process.

Starts `voxgate serve` on a free loopback port with bench/voice_to_voice.yaml (scripted
providers with fixed latencies), runs SESSIONS concurrent conversations of TURNS spoken turns
each, and reports, per turn, the client-side time from `audio_end` to the first reply audio
byte minus the providers' configured latencies (the gateway's share), plus the server's own
`gateway_overhead_ms` from `turn_end.metrics`. Usage:

    .venv/bin/python bench/voice_to_voice.py [--sessions 1 10 50] [--turns 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_process import free_port, start_server  # noqa: E402
from gateway import protocol  # noqa: E402
from gateway.client import AudioChunk, VoiceClient  # noqa: E402

PIPELINE = ROOT / "bench" / "voice_to_voice.yaml"
# stt latency + ttft + (6 words - 1) x token_ms + ttfb, from the pipeline file.
CONFIGURED_MS = 150 + 200 + 5 * 15 + 80
# One second of a voiced tone at 16 kHz: the scripted STT "hears" words in any audio with energy.
SPEECH = (8000 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)).astype("<i2").tobytes()


async def converse(url: str, turns: int, shares: list[float], overheads: list[float]) -> None:
    loop = asyncio.get_running_loop()
    async with VoiceClient.connect(url) as client:
        await client.start()
        for _ in range(turns):
            await client.send_audio(SPEECH, chunk_bytes=3200)
            await client.send(protocol.AudioEnd())
            sent = loop.time()
            await client.expect(AudioChunk)
            shares.append((loop.time() - sent) * 1000 - CONFIGURED_MS)
            end = await client.expect(protocol.TurnEnd)
            if end.metrics.gateway_overhead_ms is not None:
                overheads.append(end.metrics.gateway_overhead_ms)


def percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {q[49]:6.2f}  p95 {q[94]:6.2f}  p99 {q[98]:6.2f}  max {max(values):6.2f}"


async def run(sessions: int, turns: int, url: str) -> None:
    shares: list[float] = []
    overheads: list[float] = []
    async with asyncio.TaskGroup() as tg:
        for _ in range(sessions):
            tg.create_task(converse(url, turns, shares, overheads))
    print(f"sessions {sessions:4d}  turns {len(shares):5d}")
    print(f"  client-measured gateway share (ms): {percentiles(shares)}")
    print(f"  server gateway_overhead_ms    (ms): {percentiles(overheads)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--turns", type=int, default=100)
    args = parser.parse_args()
    port = free_port()
    server, _ = start_server(port, PIPELINE)
    try:
        print(f"configured provider latency per turn: {CONFIGURED_MS} ms; cpus: {os.cpu_count()}")
        for n in args.sessions:
            asyncio.run(run(n, args.turns, f"ws://127.0.0.1:{port}/ws/bench"))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
