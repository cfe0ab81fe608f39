"""What the cloud adapters cost the gateway: the shipped Deepgram -> OpenAI -> Cartesia pipeline
against the fake providers of tests/fakes/, with the real SDKs in a separate server process.

The fakes answer at once, so what a turn takes here is the gateway plus the three SDKs plus
loopback: the part of voice-to-voice that is ours to shrink. Reports, per session count, the
server's `gateway_overhead_ms` and stage times, the client's audio_end -> first audio time, the
server's CPU per turn, and its memory per open session (three provider connections each).

With `--connect-delay-ms`, every new connection to a fake provider waits that long before it is
served (a stand-in for TCP and TLS over a real round trip), and the report compares each
session's first turn with its later ones: a first turn that pays for a connection shows here.

Each user sends an utterance at once (in `--chunk-ms` frames), then `audio_end`
(push-to-talk): the pause at its end
asks the end-of-turn model for a score that `audio_end`, already there, makes moot, so the
model does not run (the report counts its runs per turn). `--live` streams the utterance in
20 ms chunks in real time instead, as a microphone does: the model's ~30 ms run before
`audio_end` arrives. `--detector silence` serves the pipeline with `turns.detector: silence`
instead of its smart-turn model; `--vad none` (or `webrtc`) without silero's inference, which
is paid per second heard, not per turn: ~3.5 ms for a turn's 1.2 s here when sessions' audio
seldom arrives together, ~1 ms when the frames of 50 busy sessions share batches.

The fake LLM answers every turn with `--reply` ("Hi! Nice to meet you." by default: about 1 s
of the fake TTS's audio, 200 ms per word, so the reply never gets `lead_ms` ahead).

Each user hears the reply out before speaking again (a turn over a reply still playing is a
barge-in, another path), then pauses for `--pause-ms` (500 ms by default; 0.5-1.5x that, so
that sessions do not speak in step: with the same reply for all, they would stay in step).
`--barge-in` is the closed loop instead: each user speaks again the moment `turn_end` comes,
over the reply's tail, so the process is as busy as these sessions can make it.

Sessions that start together have their users speak first within that pause of each other, a
burst denser than any later moment: near the process's limit (50 sessions here) the first turns
then queue for the CPU. `--stagger-ms` spreads each session's first words over that much more,
as users who connect at the same moment do not all start talking in the same 0.3 s.

    .venv/bin/python bench/cloud.py [--sessions 1 10 50] [--turns 20] [--connect-delay-ms 100]
                                    [--detector silence] [--vad none] [--pause-ms 500]
                                    [--stagger-ms 1200] [--barge-in] [--live]
                                    [--chunk-ms 100] [--reply "What the LLM answers."]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_process import (  # noqa: E402
    counter,
    free_port,
    proc_cpu_seconds,
    proc_rss_mib,
    start_server,
)
from gateway import protocol  # noqa: E402
from gateway.client import AudioChunk, VoiceClient  # noqa: E402
from tests.audio_fixtures import speech_at  # noqa: E402
from tests.fakes.cartesia import API_KEY as CARTESIA_KEY  # noqa: E402
from tests.fakes.cartesia import FakeCartesia  # noqa: E402
from tests.fakes.deepgram import FakeDeepgram  # noqa: E402
from tests.fakes.openai import FakeOpenAI  # noqa: E402

PIPELINE = ROOT / "pipelines" / "deepgram-openai-cartesia.yaml"
ROUTE = "/ws/deepgram-openai-cartesia"
# Speech (espeak-ng): the VAD must call it speech for the STT to get it (`stt.send: speech`),
# and the fake Deepgram "hears" words in audio with energy.
SPEECH = speech_at(16000, "hello there").tobytes()


class Turns:
    def __init__(self) -> None:
        self.first_audio_ms: list[float] = []
        self.first_turn_ms: list[float] = []
        self.later_turn_ms: list[float] = []
        """`first_audio_ms` split: each session's first turn, and the others."""
        self.first_server_ms: list[float] = []
        self.later_server_ms: list[float] = []
        """The server's `voice_to_voice_ms` split the same way: the gateway's own first turn,
        without the client process's (whose fakes and client take their first turns too)."""
        self.metrics: list[protocol.TurnMetrics] = []


@dataclass(frozen=True)
class Pacing:
    """How the users take their turns."""

    pause_s: float
    stagger_s: float
    live: bool
    """Stream each utterance in real time (20 ms chunks) rather than all at once."""
    chunk_ms: float
    """Frame size of an utterance sent at once (push-to-talk, a recording)."""
    barge_in: bool
    """Speak again as soon as `turn_end` comes, over the reply's tail still playing (a barge-in
    every later turn): the closed loop, the most turns a session takes, and the process
    busiest (its CPU per turn the lowest: batches are fuller, caches warmer)."""

    def wait_s(self, turn: int, heard_until: float, now: float) -> float:
        if self.barge_in:
            return 0.0
        # The user hears the reply out, then pauses (unevenly, as users do: sessions that
        # started together do not all speak at the same instant). Speaking while the reply
        # still plays would make every later turn a barge-in, which the first turn cannot be:
        # a different path (the end-of-turn model does not run for it).
        first = random.uniform(0, self.stagger_s) if turn == 0 else 0.0
        return max(0.0, heard_until - now) + self.pause_s * random.uniform(0.5, 1.5) + first


async def converse(
    url: str, turns: int, out: Turns, opened: asyncio.Barrier, pacing: Pacing
) -> None:
    loop = asyncio.get_running_loop()
    async with VoiceClient.connect(url) as client:
        started = await client.start()
        pcm_per_s = started.output.sample_rate * 2
        await opened.wait()  # every session open: the memory sample sees them all
        await opened.wait()
        heard_until = loop.time()
        for turn in range(turns):
            await asyncio.sleep(pacing.wait_s(turn, heard_until, loop.time()))
            if pacing.live:
                await client.send_audio(SPEECH, chunk_bytes=640, pace_s=0.02)
            else:
                await client.send_audio(SPEECH, chunk_bytes=int(pacing.chunk_ms * 32))
            await client.send(protocol.AudioEnd())
            sent = loop.time()
            first = await client.expect(AudioChunk)
            out.first_audio_ms.append((loop.time() - sent) * 1000)
            (out.later_turn_ms if turn else out.first_turn_ms).append(out.first_audio_ms[-1])
            events, end = await client.collect_until(protocol.TurnEnd)
            audio = len(first.payload) + sum(
                len(e.payload) for e in events if isinstance(e, AudioChunk)
            )
            heard_until = sent + out.first_audio_ms[-1] / 1000 + audio / pcm_per_s
            out.metrics.append(end.metrics)
            if end.metrics.voice_to_voice_ms is not None:
                server = out.later_server_ms if turn else out.first_server_ms
                server.append(end.metrics.voice_to_voice_ms)


def line(name: str, values: list[float]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"  {name:32s} p50 {q[49]:7.2f}  p95 {q[94]:7.2f}  p99 {q[98]:7.2f}"


def model_runs(port: int) -> float:
    return counter(port, "voxgate_end_of_turn_model", outcome="run")


async def run(sessions: int, turns: int, port: int, pid: int, pacing: Pacing) -> None:
    url = f"ws://127.0.0.1:{port}{ROUTE}"
    out = Turns()
    opened = asyncio.Barrier(sessions + 1)
    rss0 = proc_rss_mib(pid)
    async with asyncio.TaskGroup() as tg:
        for _ in range(sessions):
            tg.create_task(converse(url, turns, out, opened, pacing))
        await opened.wait()
        rss_open = proc_rss_mib(pid)
        runs0 = await asyncio.to_thread(model_runs, port)
        cpu0, wall0 = proc_cpu_seconds(pid), time.monotonic()
        await opened.wait()
    cpu = proc_cpu_seconds(pid) - cpu0
    runs = await asyncio.to_thread(model_runs, port) - runs0
    wall = time.monotonic() - wall0
    n = len(out.metrics)
    print(f"sessions {sessions:3d}  turns {n:5d}  ({wall:.1f} s)")
    print(line("client audio_end -> audio (ms)", out.first_audio_ms))
    for name, first_ms, later_ms in (
        ("first turn", out.first_turn_ms, out.later_turn_ms),
        ("server's voice-to-voice: first turn", out.first_server_ms, out.later_server_ms),
    ):
        if first_ms and later_ms:
            first, later = statistics.median(first_ms), statistics.median(later_ms)
            print(
                f"  {name} p50 {first:7.2f} ms, later turns p50 {later:7.2f} ms "
                f"({first / later:.2f}x)"
            )
    for stage in ("stt_final_ms", "llm_ttft_ms", "tts_ttfb_ms", "gateway_overhead_ms"):
        values = [v for m in out.metrics if (v := getattr(m, stage)) is not None]
        print(line(f"server {stage}", values))
    print(f"  server CPU per turn {cpu / n * 1000:.1f} ms ({cpu / wall * 100:.0f}% of one core)")
    print(f"  end-of-turn model runs per turn {runs / n:.2f}")
    print(f"  server RSS per open session {(rss_open - rss0) * 1024 / sessions:.0f} KiB")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--connect-delay-ms", type=float, default=0.0)
    parser.add_argument("--detector", choices=["smart_turn", "silence"], default=None)
    parser.add_argument("--vad", choices=["silero", "webrtc", "none"], default=None)
    parser.add_argument("--pause-ms", type=float, default=500.0)
    parser.add_argument("--stagger-ms", type=float, default=0.0)
    parser.add_argument("--barge-in", action="store_true")
    parser.add_argument("--live", action="store_true")
    parser.add_argument("--chunk-ms", type=float, default=100.0)
    parser.add_argument("--reply", default="Hi! Nice to meet you.")
    args = parser.parse_args()
    random.seed(1)
    folder = Path(tempfile.mkdtemp())
    served = PIPELINE
    if args.detector is not None or args.vad is not None:
        pipeline = yaml.safe_load(PIPELINE.read_text())
        if args.detector is not None:
            pipeline.setdefault("turns", {})["detector"] = args.detector
        if args.vad is not None:
            pipeline["vad"]["provider"] = args.vad
        served = folder / PIPELINE.name
        served.write_text(yaml.safe_dump(pipeline))
    delay_s = args.connect_delay_ms / 1000
    pacing = Pacing(
        args.pause_ms / 1000, args.stagger_ms / 1000, args.live, args.chunk_ms, args.barge_in
    )
    async with AsyncExitStack() as stack:
        deepgram = await stack.enter_async_context(
            FakeDeepgram(transcript="hello there", connect_delay_s=delay_s)
        )
        openai = await stack.enter_async_context(
            FakeOpenAI(reply=args.reply, connect_delay_s=delay_s)
        )
        cartesia = await stack.enter_async_context(FakeCartesia(connect_delay_s=delay_s))
        env = {
            "DEEPGRAM_API_KEY": deepgram.api_key,
            "DEEPGRAM_BASE_URL": deepgram.base_url,
            "OPENAI_API_KEY": openai.api_key,
            "OPENAI_BASE_URL": openai.base_url,
            "CARTESIA_API_KEY": CARTESIA_KEY,
            "CARTESIA_BASE_URL": cartesia.base_url,
        }
        port = free_port()
        server, started_s = await asyncio.to_thread(start_server, port, served, env)
        try:
            print(f"cold start {started_s * 1000:.0f} ms; cpus: {os.cpu_count()}")
            for n in args.sessions:
                await run(n, args.turns, port, server.pid, pacing)
        finally:
            server.terminate()
            await asyncio.to_thread(server.wait, 10)


if __name__ == "__main__":
    asyncio.run(main())
