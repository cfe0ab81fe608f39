"""How many live conversations one gateway process carries, and what it adds to each turn.

Starts `voxgate serve` (uvicorn, production settings, JSON logs) as its own process with
bench/load.yaml (scripted providers at fixed latencies, silero VAD on every frame), then, from
this separate process, runs N simulated users at once for each N of a sweep. Each user keeps
its microphone open like a browser does: audio frames at real-time pace all the time (speech
while talking, silence otherwise), ends each utterance with `audio_end`, reads the reply, pauses
and talks again; a share of turns barge in over the reply. Per turn it records the time from
`audio_end` to the first reply audio byte minus the providers' configured latencies: the
gateway's own share. Per step it reads the server's CPU and RSS from /proc. Usage:

    .venv/bin/python bench/load.py --sweep 1 10 50 100 200 400 --seconds 30

The sweep stops once p99 of the gateway's share passes 50 ms or errors appear.

`--turn-end server` is the demo page's way instead: no `audio_end`, the microphone just goes
quiet and the server's turn engine decides (VAD silence, the end-of-turn model, the words).
The time is then from the last voiced sample sent, so it includes the engine's own wait
(`turns.min_wait_ms` and the model); the sweep stops once p99 is 50 ms above the first step's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_process import (  # noqa: E402
    free_port,
    proc_cpu_seconds,
    proc_rss_mib,
    start_server,
)
from gateway import protocol  # noqa: E402
from gateway.client import AudioChunk, VoiceClient  # noqa: E402
from tests.audio_fixtures import speech_at  # noqa: E402

PIPELINE = ROOT / "bench" / "load.yaml"
RESULTS = ROOT / "bench" / "results"
RATE = 16000
# stt latency + ttft + (6 words - 1) x token_ms + ttfb, from load.yaml.
CONFIGURED_MS = 150 + 200 + 5 * 15 + 80


@dataclass
class Step:
    users: int
    turns: int = 0
    barge_ins: int = 0
    early: int = 0
    """Replies that began while the user was still speaking (the engine ended the turn at a
    pause): not a latency, so not in `shares_ms`."""
    errors: int = 0
    shares_ms: list[float] = field(default_factory=list)
    server_cpu_pct: float = 0.0
    server_rss_mib: float = 0.0
    client_cpu_pct: float = 0.0

    def summary(self) -> dict[str, float]:
        q = statistics.quantiles(self.shares_ms, n=100, method="inclusive")
        return {"p50": q[49], "p95": q[94], "p99": q[98], "max": max(self.shares_ms)}


class User:
    """One open microphone: frames at real-time pace, speech on cue, silence otherwise."""

    def __init__(
        self, url: str, speech: bytes, frame_ms: int, barge_share: float, audio_end: bool = True
    ) -> None:
        self.url = url
        self.speech = speech
        self.audio_end = audio_end
        self.frame = RATE * 2 * frame_ms // 1000
        self.frame_ms = frame_ms
        self.barge_share = barge_share
        self.silence = bytes(self.frame)
        self.talk = asyncio.Event()
        self.ended_at: float | None = None
        self.speaking = False

    async def run(self, step: Step, until: float) -> None:
        try:
            async with VoiceClient.connect(self.url, open_timeout=30) as client:
                await client.start()
                async with asyncio.TaskGroup() as tg:
                    mic = tg.create_task(self.microphone(client, until))
                    await self.listen(client, step, until)
                    mic.cancel()
        except Exception as e:
            step.errors += 1
            inner = e.exceptions[0] if isinstance(e, ExceptionGroup) else e
            print(f"  user error: {type(inner).__name__}: {inner!r}", file=sys.stderr)

    async def microphone(self, client: VoiceClient, until: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        pos = len(self.speech)
        while loop.time() < until + 5:
            if self.talk.is_set() and pos >= len(self.speech):
                pos = 0
                self.talk.clear()
                self.speaking = True
            if pos < len(self.speech):
                await client.ws.send(self.speech[pos : pos + self.frame])
                pos += self.frame
                if pos >= len(self.speech):
                    if self.audio_end:
                        await client.send(protocol.AudioEnd())
                    self.ended_at = loop.time()
                    self.speaking = False
            else:
                await client.ws.send(self.silence)
            next_at += self.frame_ms / 1000
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def listen(self, client: VoiceClient, step: Step, until: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.random())  # users do not all start talking at once
        self.talk.set()
        while loop.time() < until:
            async with asyncio.timeout(30):
                first = await client.expect(AudioChunk)
            if self.speaking or self.ended_at is None:
                # The engine ended the turn at a pause inside the utterance (the scripted STT
                # hands the whole sentence to any early Finalize): the rest of the speech barges
                # in, and the reply to it is the next one measured.
                step.early += 1
                async with asyncio.timeout(30):
                    await client.expect(protocol.TurnEnd)
                continue
            step.shares_ms.append((loop.time() - self.ended_at) * 1000 - CONFIGURED_MS)
            step.turns += 1
            if random.random() < self.barge_share:
                await asyncio.sleep(0.5)
                step.barge_ins += 1
                self.talk.set()  # talk over the reply: the server's VAD cuts it
                async with asyncio.timeout(30):
                    await client.expect(protocol.Interrupted)
                continue  # the next reply answers the barge-in
            reply_ms = len(first.payload) / 48
            while not isinstance(event := await client.recv(), protocol.TurnEnd):
                if isinstance(event, AudioChunk):
                    reply_ms += len(event.payload) / 48
            await asyncio.sleep(reply_ms / 1000 + 1.0)  # let it play out, then a pause
            self.talk.set()


async def run_step(
    url: str, users: int, seconds: float, server_pid: int, args: argparse.Namespace
) -> Step:
    step = Step(users)
    pcm = speech_at(RATE, "what is the capital of france")
    audio_end = args.turn_end == "audio_end"
    if not audio_end:  # up to the last voiced sample: the silence after it is the mic's
        pcm = pcm[: np.flatnonzero(np.abs(pcm) > 300)[-1] + 1]
    speech = pcm.astype("<i2").tobytes()
    loop = asyncio.get_running_loop()
    cpu0, wall0, mine0 = proc_cpu_seconds(server_pid), time.monotonic(), time.process_time()
    until = loop.time() + seconds
    async with asyncio.TaskGroup() as tg:
        for _ in range(users):
            user = User(url, speech, args.frame_ms, args.barge_in, audio_end)
            tg.create_task(user.run(step, until))
            await asyncio.sleep(0.005)  # do not open every socket in the same millisecond
        await asyncio.sleep(max(0.0, until - loop.time() - 1))
        step.server_rss_mib = proc_rss_mib(server_pid)
    wall = time.monotonic() - wall0
    step.server_cpu_pct = (proc_cpu_seconds(server_pid) - cpu0) / wall * 100
    step.client_cpu_pct = (time.process_time() - mine0) / wall * 100
    return step


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def soak(
    url: str, users: int, minutes: float, server_pid: int, args: argparse.Namespace
) -> None:
    """Users talking for `minutes`; RSS and open descriptors sampled every 30 s must flatten.

    The slope is fitted over the second half, after caches and pools have warmed up: a leak
    shows as a steady climb there."""
    step = Step(users)
    speech = speech_at(RATE, "what is the capital of france").astype("<i2").tobytes()
    loop = asyncio.get_running_loop()
    until = loop.time() + minutes * 60
    samples: list[tuple[float, float, int]] = []

    async def sample() -> None:
        start = loop.time()
        while loop.time() < until:
            at = (loop.time() - start) / 60
            rss, fds = proc_rss_mib(server_pid), proc_fds(server_pid)
            samples.append((at, rss, fds))
            print(
                f"  {at:5.1f} min  RSS {rss:7.1f} MiB  fds {fds:5d}  turns {step.turns}", flush=True
            )
            await asyncio.sleep(30)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(sample())
        for _ in range(users):
            tg.create_task(User(url, speech, args.frame_ms, args.barge_in).run(step, until))
            await asyncio.sleep(0.005)
    late = samples[len(samples) // 2 :]
    if len(late) >= 2:
        minutes_ = [s[0] for s in late]
        rss_slope = np.polyfit(minutes_, [s[1] for s in late], 1)[0] * 1024
        fd_slope = np.polyfit(minutes_, [s[2] for s in late], 1)[0]
        print(f"second-half slope: RSS {rss_slope:+.1f} KiB/min, fds {fd_slope:+.2f}/min")
    print(f"turns {step.turns}, barge-ins {step.barge_ins}, errors {step.errors}")


def plot(steps: list[Step], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [s.users for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("p50", "p95", "p99"):
        ax.plot(users, [s.summary()[key] for s in steps], marker="o", label=key)
    ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="50 ms")
    ax.set_xscale("log")
    ax.set_xlabel("concurrent conversations (one server process, 2 vCPUs shared with the client)")
    ax.set_ylabel("gateway share of voice-to-voice (ms)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", type=int, nargs="+", default=[1, 10, 50, 100, 200, 400])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--frame-ms", type=int, default=100, choices=[20, 100])
    parser.add_argument("--barge-in", type=float, default=0.2, help="share of turns cut")
    parser.add_argument("--out", default=str(RESULTS / "load"))
    parser.add_argument("--soak", type=float, metavar="MINUTES", help="soak instead of sweep")
    parser.add_argument("--users", type=int, default=50, help="users during --soak")
    parser.add_argument(
        "--vad", choices=["silero", "none"], help="serve load.yaml with this VAD instead"
    )
    parser.add_argument(
        "--detector", choices=["smart_turn", "silence"], help="and this turns.detector"
    )
    parser.add_argument(
        "--turn-end",
        choices=["audio_end", "server"],
        default="audio_end",
        help="who ends a turn: the client's audio_end, or the server's turn engine",
    )
    args = parser.parse_args()
    global PIPELINE
    if args.vad or args.detector:  # load.yaml changed: what the VAD or detector adds
        pipeline = yaml.safe_load(PIPELINE.read_text())
        if args.vad:
            pipeline["vad"] = {**pipeline["vad"], "provider": args.vad}
        if args.detector:
            pipeline["turns"] = {**pipeline["turns"], "detector": args.detector}
        PIPELINE = Path(tempfile.mkdtemp()) / PIPELINE.name
        PIPELINE.write_text(yaml.safe_dump(pipeline))
    if args.soak:
        port = free_port()
        server, _ = start_server(port, PIPELINE)
        try:
            asyncio.run(
                soak(f"ws://127.0.0.1:{port}/ws/load", args.users, args.soak, server.pid, args)
            )
        finally:
            server.terminate()
            server.wait(30)
        return
    random.seed(7)
    cold, cold_s = start_server(free_port(), ROOT / "pipelines")
    cold.terminate()
    cold.wait(30)
    port = free_port()
    server, _ = start_server(port, PIPELINE)
    steps: list[Step] = []
    try:
        idle_rss = proc_rss_mib(server.pid)
        print(f"cold start to /readyz with pipelines/: {cold_s * 1000:.0f} ms")
        print(
            f"server pid {server.pid}, idle RSS {idle_rss:.1f} MiB, configured {CONFIGURED_MS} ms"
        )
        print(
            " users  turns  barge early errors   p50    p95    p99    max"
            "  srvCPU%  RSS MiB  KiB/user cliCPU%"
        )
        for users in args.sweep:
            step = asyncio.run(
                run_step(f"ws://127.0.0.1:{port}/ws/load", users, args.seconds, server.pid, args)
            )
            steps.append(step)
            s = step.summary() if step.shares_ms else {"p50": 0, "p95": 0, "p99": 0, "max": 0}
            # Per-session memory: growth over the first step, which loaded the shared models.
            base = steps[0]
            grown = users - base.users
            per_user = (step.server_rss_mib - base.server_rss_mib) * 1024 / grown if grown else 0
            print(
                f"{users:6d} {step.turns:6d} {step.barge_ins:5d} {step.early:5d} {step.errors:6d} "
                f"{s['p50']:6.1f} {s['p95']:6.1f} {s['p99']:6.1f} {s['max']:6.1f} "
                f"{step.server_cpu_pct:8.0f} {step.server_rss_mib:8.1f} {per_user:9.0f} "
                f"{step.client_cpu_pct:7.0f}",
                flush=True,
            )
            limit = 50 if args.turn_end == "audio_end" else steps[0].summary()["p99"] + 50
            if step.errors or s["p99"] > limit:
                break
    finally:
        server.terminate()
        server.wait(30)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(s), "shares_ms": None, **s.summary()} for s in steps if s.shares_ms]
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    plot([s for s in steps if s.shares_ms], out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
