"""What a phone call costs the gateway: N simultaneous Twilio calls next to N protocol v1 sessions.

Starts `voxgate serve` as its own process with bench/twilio.yaml (the load benchmark's scripted
providers, 505 ms configured before the first reply audio; mu-law 8 kHz in and out; turns
ended by the server's VAD after 600 ms of silence, as on a phone line), then runs, from this
process, N callers of one dialect at a time for SECONDS each:
- `twilio`: Twilio Media Streams as Twilio sends them: `connected`, `start`, a JSON `media`
  message of base64 mu-law every 20 ms for the whole call (speech, then silence), marks
  returned as the reply's audio "plays" at 8000 bytes a second, `clear` honoured;
- `voxgate`: protocol v1.1 with the same audio as binary 20 ms mu-law frames, no `audio_end`.
Each caller speaks, hears the reply out, pauses 1 s and speaks again; 20% of replies are
talked over 0.5 s in (the server's VAD cuts them). Per turn, two measures:
- **server**: `gateway_overhead_ms` from the server's `turn_ended` log lines (voice-to-voice
  minus the STT, LLM and TTS spans: the gateway's own time on the path, first reply frame
  sent included: for Twilio, its translation into `media` messages);
- **client**: end of speech (the frame with the last sample above -40 dBFS sent) -> first reply
  audio received: the 505 ms configured, the 600 ms silence window as silero counts it (it
  hears speech end somewhat before that sample), the gateway, loopback and the client's own
  lag. The providers and the VAD are the same for both dialects, so the difference between
  the two rows is what the dialect costs end to end.
Server CPU from /proc. Usage:

    .venv/bin/python bench/twilio.py --calls 100 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from bench.gateway_process import free_port, proc_cpu_seconds, proc_rss_mib  # noqa: E402
from gateway import protocol  # noqa: E402
from gateway.audio.codecs import mulaw_encode  # noqa: E402
from gateway.client import VoiceClient  # noqa: E402
from tests.audio_fixtures import speech_at  # noqa: E402

PIPELINE = ROOT / "bench" / "twilio.yaml"
RESULTS = ROOT / "bench" / "results"
FRAME = 160  # 20 ms of mu-law
Send = Callable[[bytes], Awaitable[None]]
SendMessage = Callable[[dict[str, object]], Coroutine[Any, Any, None]]


@dataclass
class Phase:
    dialect: str
    calls: int
    turns: int = 0
    barge_ins: int = 0
    errors: int = 0
    client_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    server_cpu_pct: float = 0.0
    client_cpu_pct: float = 0.0
    server_rss_mib: float = 0.0
    mic_late_ms: float = 0.0

    def row(self) -> dict[str, float | int | str]:
        def pct(values: list[float], q: int) -> float:
            return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

        return {
            "dialect": self.dialect,
            "calls": self.calls,
            "turns": self.turns,
            "barge_ins": self.barge_ins,
            "errors": self.errors,
            **{f"server_p{q}": pct(self.server_ms, q) for q in (50, 95, 99)},
            **{f"client_p{q}": pct(self.client_ms, q) for q in (50, 95, 99)},
            "server_cpu_pct": self.server_cpu_pct,
            "client_cpu_pct": self.client_cpu_pct,
            "server_rss_mib": self.server_rss_mib,
            "mic_late_ms": self.mic_late_ms,
        }


class Caller:
    """One phone line: a microphone that never stops (speech on cue) and an ear."""

    def __init__(self, speech: bytes, voiced_bytes: int, phase: Phase, barge_share: float) -> None:
        self.speech = speech
        self.voiced_bytes = voiced_bytes
        self.phase = phase
        self.barge_share = barge_share
        self.pending = bytearray()
        self.speech_ended: float | None = None
        self.first_audio = asyncio.Event()
        self.reply_bytes = 0
        self.cut = asyncio.Event()

    def say(self) -> None:
        self.pending += self.speech
        self.speech_ended = None
        self.first_audio.clear()
        self.cut.clear()
        self.reply_bytes = 0

    def next_frame(self, now: float) -> bytes:
        frame = bytes(self.pending[:FRAME]).ljust(FRAME, b"\xff")
        sent_before = len(self.speech) - len(self.pending)
        del self.pending[:FRAME]
        if sent_before < self.voiced_bytes <= sent_before + FRAME:
            self.speech_ended = now  # the frame holding the last voiced sample goes out
        return frame

    def heard(self, now: float, size: int) -> None:
        if self.speech_ended is not None and not self.first_audio.is_set():
            self.phase.client_ms.append((now - self.speech_ended) * 1000)
            self.phase.turns += 1
            self.first_audio.set()
        self.reply_bytes += size

    async def converse(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.random())
        while loop.time() < until:
            self.say()
            async with asyncio.timeout(30):
                await self.first_audio.wait()
            if random.random() < self.barge_share:
                await asyncio.sleep(0.5)
                self.phase.barge_ins += 1
                self.say()  # talk over the reply: the server's VAD cuts it
                async with asyncio.timeout(30):
                    await self.cut.wait()
                async with asyncio.timeout(30):
                    await self.first_audio.wait()
            await asyncio.sleep(2.0 + 1.0)  # the 2 s reply plays out, then a pause


async def microphone(caller: Caller, send: Send, until: float) -> None:
    """A frame every 20 ms on the wall clock, like a phone network."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while loop.time() < until + 5:
        await send(caller.next_frame(loop.time()))
        next_at += 0.02
        delay = next_at - loop.time()
        caller.phase.mic_late_ms = max(caller.phase.mic_late_ms, -delay * 1000)
        await asyncio.sleep(max(0.0, delay))


async def twilio_call(url: str, caller: Caller, until: float, n: int) -> None:
    sid = f"MZ{n:032d}"
    async with connect(url, compression=None, max_queue=4096) as ws:
        sequence = chunk = 0

        async def send(message: dict[str, object]) -> None:
            nonlocal sequence
            sequence += 1
            await ws.send(
                json.dumps({**message, "sequenceNumber": str(sequence), "streamSid": sid})
            )

        async def media(frame: bytes) -> None:
            nonlocal chunk
            chunk += 1
            body = {"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20)}
            await send({"event": "media", "media": {**body, "payload": b64(frame)}})

        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        start = {"streamSid": sid, "callSid": f"CA{n:032d}", "tracks": ["inbound"]}
        await send(
            {"event": "start", "start": {**start, "customParameters": {}, "mediaFormat": fmt}}
        )
        async with asyncio.TaskGroup() as tasks:
            mic = tasks.create_task(microphone(caller, media, until))
            ear = tasks.create_task(twilio_ear(ws, caller, send))
            await caller.converse(until)
            mic.cancel()
            ear.cancel()


async def twilio_ear(
    ws: ClientConnection,
    caller: Caller,
    send: Callable[[dict[str, object]], Coroutine[Any, Any, None]],
) -> None:
    """Twilio's playback: a mark comes back when the audio before it has played (8000 bytes a
    second from when it arrived), or at once when a `clear` drops that audio."""
    loop = asyncio.get_running_loop()
    plays_until = loop.time()
    pending: dict[str, asyncio.TimerHandle] = {}
    returning: set[asyncio.Task[None]] = set()

    def give_back(name: str) -> None:
        pending.pop(name, None)
        task = loop.create_task(send({"event": "mark", "mark": {"name": name}}))
        returning.add(task)
        task.add_done_callback(returning.discard)

    async for raw in ws:
        message = json.loads(raw)
        now = loop.time()
        if message["event"] == "media":
            size = len(base64.b64decode(message["media"]["payload"]))
            plays_until = max(plays_until, now) + size / 8000
            caller.heard(now, size)
        elif message["event"] == "mark":
            name = message["mark"]["name"]
            pending[name] = loop.call_at(plays_until, give_back, name)
        elif message["event"] == "clear":
            caller.cut.set()
            plays_until = now
            for name, handle in list(pending.items()):
                handle.cancel()
                give_back(name)


async def voxgate_call(url: str, caller: Caller, until: float) -> None:
    async with VoiceClient.connect(url, open_timeout=30) as client:
        await client.start(protocol.InputCodec.MULAW, sample_rate=None)
        async with asyncio.TaskGroup() as tasks:
            mic = tasks.create_task(microphone(caller, client.ws.send, until))
            ear = tasks.create_task(voxgate_ear(client, caller))
            await caller.converse(until)
            mic.cancel()
            ear.cancel()


async def voxgate_ear(client: VoiceClient, caller: Caller) -> None:
    loop = asyncio.get_running_loop()
    async for frame in client.ws:
        if isinstance(frame, bytes):
            caller.heard(loop.time(), len(frame) - protocol.HEADER_SIZE)
        elif isinstance(protocol.decode_server(frame), protocol.Interrupted):
            caller.cut.set()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def run_phase(
    port: int, dialect: str, calls: int, seconds: float, pid: int, speech: bytes, voiced: int
) -> Phase:
    phase = Phase(dialect, calls)
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    cpu0, wall0, mine0 = proc_cpu_seconds(pid), time.monotonic(), time.process_time()

    async def one(n: int) -> None:
        caller = Caller(speech, voiced, phase, 0.2)
        try:
            if dialect == "twilio":
                await twilio_call(f"ws://127.0.0.1:{port}/ws/phone/twilio", caller, until, n)
            else:
                await voxgate_call(f"ws://127.0.0.1:{port}/ws/phone", caller, until)
        except* Exception as group:
            if not isinstance(group.exceptions[0], asyncio.CancelledError):
                phase.errors += 1
                print(f"  {dialect} call error: {group.exceptions[0]!r}", file=sys.stderr)

    async with asyncio.TaskGroup() as tasks:
        for n in range(calls):
            tasks.create_task(asyncio.wait_for(one(n), seconds + 40))
            await asyncio.sleep(0.005)
        await asyncio.sleep(max(0.0, until - loop.time() - 1))
        phase.server_rss_mib = proc_rss_mib(pid)
    wall = time.monotonic() - wall0
    phase.server_cpu_pct = (proc_cpu_seconds(pid) - cpu0) / wall * 100
    phase.client_cpu_pct = (time.process_time() - mine0) / wall * 100
    return phase


def server_overheads(log: Path, dialect: str, since: int) -> tuple[list[float], int]:
    """`gateway_overhead_ms` of the spoken turns logged after byte `since`, for `dialect`."""
    found: list[float] = []
    with log.open("rb") as lines:
        lines.seek(since)
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            spoken = entry.get("voice_to_voice_ms") is not None
            if entry.get("event") == "turn_ended" and entry.get("dialect") == dialect and spoken:
                found.append(float(entry["gateway_overhead_ms"]))
    return found, log.stat().st_size


def start_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    """`voxgate serve` with its JSON log lines kept (the per-turn server measure)."""
    cmd = [sys.executable, "-m", "gateway", "serve", "--pipelines", str(PIPELINE), "--port"]
    cmd += [str(port), "--max-sessions", "10000", "--max-connections-per-address", "0"]
    cmd += ["--max-unauthenticated-per-address", "10000", "--max-unauthenticated", "10000"]
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    server = subprocess.Popen(cmd, env=env, stderr=log.open("wb"))
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as ready:
                if ready.status == 200:
                    return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the gateway did not start") from None
            time.sleep(0.01)


def main() -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--dialects", nargs="+", default=["voxgate", "twilio"])
    parser.add_argument("--out", default=str(RESULTS / "twilio.json"))
    args = parser.parse_args()
    random.seed(7)
    voice = speech_at(8000, "what is the capital of france")
    voiced = int(np.flatnonzero(np.abs(voice) > 328)[-1]) + 1  # -40 dBFS; one byte a sample
    speech = mulaw_encode(voice)
    port = free_port()
    logs = tempfile.TemporaryDirectory()
    log = Path(logs.name) / "server.log"
    server = start_server(port, log)
    phases: list[Phase] = []
    offset = 0
    try:
        print(f"{args.calls} calls per dialect, {args.seconds:g} s each; server pid {server.pid}")
        print(
            " dialect  turns barge errors | server overhead p50  p95  p99 |"
            " speech end -> audio p50  p95  p99 | srvCPU% cliCPU% RSS MiB mic late"
        )
        for dialect in args.dialects:
            phase = asyncio.run(
                run_phase(port, dialect, args.calls, args.seconds, server.pid, speech, voiced)
            )
            time.sleep(1.0)  # the last turn_ended lines reach the log
            phase.server_ms, offset = server_overheads(log, dialect, offset)
            phases.append(phase)
            r = phase.row()
            print(
                f"{dialect:>8} {phase.turns:6d} {phase.barge_ins:5d} {phase.errors:6d} |"
                f" {r['server_p50']:19.2f} {r['server_p95']:4.2f} {r['server_p99']:4.2f} |"
                f" {r['client_p50']:22.0f} {r['client_p95']:4.0f} {r['client_p99']:4.0f} |"
                f" {phase.server_cpu_pct:7.0f} {phase.client_cpu_pct:7.0f}"
                f" {phase.server_rss_mib:7.1f} {phase.mic_late_ms:6.0f} ms",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(30)
        logs.cleanup()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps([p.row() for p in phases], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
