"""CPU cost of tracing (issue 19), two ways.

    .venv/bin/python bench/tracing.py [--turns 10000] [--turns-per-session 10]
    .venv/bin/python bench/tracing.py --load 100 [--seconds 30] [--repeat 2]

Per call (the default): the `gateway.tracing` calls a session makes, with tracing off and on,
exporting over real OTLP/HTTP to a fake collector in another process. Measured, per turn: the
process's CPU time (every thread: the session's calls that build spans, and the batch
processor's thread that encodes and sends them) from the first session to the flush at
shutdown, and the part of it spent on the calling thread (in the gateway, the event loop's).
Each turn is one `record_turn` with a full timeline (turn, stt, chat and tts spans; with a
tool call, a second chat and an `execute_tool` span, as a round of tool calls makes); each
session one `start_session` and one `end`. Turns are paced (a pause every 100 turns, which
costs no CPU) so that the batch processor's default queue of 2048 spans never overflows; the
spans the collector counted are printed to show none were dropped.

Under load (`--load N`): bench/load.py's N users (an open microphone each, real-time audio,
silero VAD on every frame, 20% of turns barged in) against `voxgate serve` with
bench/load.yaml, once with no `OTEL_*` variable and once with `OTEL_EXPORTER_OTLP_ENDPOINT`
at the fake collector (`python -m tests.fakes.otlp`, its own process, so its decoding is not
counted), each on a fresh server; `--repeat` alternates them. Per run: the server process's
CPU seconds (every thread, from /proc) over the turns it answered. On 2 shared vCPUs that A/B
difference is mostly noise, so the server also runs with a probe (this file, `--probed`, then
`voxgate serve`) that adds up the CPU tracing itself takes: the event loop's time inside
`gateway.tracing`'s calls (`time.thread_time` around each) and the batch processor's thread's
CPU clock (`time.pthread_getcpuclockid`), both read after the last export.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import tracing  # noqa: E402
from gateway.protocol import TurnMetrics  # noqa: E402
from gateway.timings import EndOfTurn, TurnTimeline  # noqa: E402

PIPELINE = tracing.PipelineInfo(
    name="bench",
    stt=tracing.Stage(provider="deepgram", model="nova-3"),
    llm=tracing.Stage(provider="openai", model="gpt-4o-mini", temperature=0.7, max_tokens=300),
    tts=tracing.Stage(provider="cartesia", model="sonic-2", voice="694f9389"),
)


METRICS = TurnMetrics(
    end_of_turn_score=0.93,
    end_of_turn_wait_ms=410.0,
    stt_final_ms=120.0,
    llm_ttft_ms=250.0,
    tts_ttfb_ms=80.0,
    voice_to_voice_ms=690.0,
    gateway_overhead_ms=1.2,
)


@dataclass
class Turn:
    timeline: TurnTimeline
    llm_calls: list[tracing.LLMCall]
    tools: list[tracing.ToolCall]


def turns(count: int, tools: int) -> list[Turn]:
    """Turns that ended a few seconds ago, built before measuring: the engine has them anyway
    (a reply records its LLM requests and tool calls whether tracing is on or not)."""
    t0 = time.monotonic() - 10.0
    decided = EndOfTurn("complete", 0.93, 410.0)
    timeline = TurnTimeline(
        speech_end=t0,
        stt_final=t0 + 0.12,
        llm_start=t0 + 0.12,
        llm_first_token=t0 + 0.37,
        tts_text_sent=t0 + 0.45,
        tts_first_audio=t0 + 0.53,
        decided=decided,
    )
    calls = [
        tracing.ToolCall(
            name="lookup_order",
            call_id=f"call_{i}",
            started=t0 + 0.3,
            ended=t0 + 0.4,
            runs_on="server",
        )
        for i in range(tools)
    ]
    requests = [tracing.LLMCall(started=t0 + 0.12, first_token=t0 + 0.37, ended=t0 + 0.6)]
    if tools:
        requests = [
            tracing.LLMCall(started=t0 + 0.12, first_token=t0 + 0.25, ended=t0 + 0.3, tool_calls=1),
            tracing.LLMCall(started=t0 + 0.4, first_token=t0 + 0.55, ended=t0 + 0.8),
        ]
    return [Turn(timeline, requests, calls)] * count


def run(count: int, per_session: int, tools: int, endpoint: str | None) -> tuple[float, float]:
    """CPU seconds for `count` turns, flush included: every thread's, and this thread's."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        del os.environ[name]
    if endpoint is not None:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    tracing.configure_tracing()
    work = turns(count, tools)
    started, on_thread = time.process_time(), time.thread_time()
    session = tracing.OFF
    for i, turn in enumerate(work):
        if i % per_session == 0:
            session.end(1000, "session over")
            session = tracing.start_session(PIPELINE, f"session-{i}", "voxgate")
        session.record_turn(
            i % per_session + 1,
            "completed",
            turn.timeline,
            METRICS,
            said="where is my order",
            answered="It ships tomorrow morning.",
            llm_calls=turn.llm_calls,
            tts_end=turn.timeline.tts_first_audio,
            tools=turn.tools,
        )
        if i % 100 == 99:
            time.sleep(0.05)
    session.end(1000, "session over")
    on_thread = time.thread_time() - on_thread
    tracing.shutdown_tracing(timeout_s=60)
    return time.process_time() - started, on_thread


def collector() -> tuple[subprocess.Popen[str], str]:
    """The fake collector in a process of its own, and its endpoint."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.otlp"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def received(process: subprocess.Popen[str]) -> int:
    """Stop the collector; the spans it received."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    count = int(process.stdout.readline())
    process.wait()
    return count


def per_call(args: argparse.Namespace) -> None:
    count, per_session = args.turns, args.turns_per_session
    sessions = -(-count // per_session)
    print(f"{count} turns in {sessions} sessions of {per_session}; CPU per turn, flush included")
    print("                              all threads   calling thread")
    off, off_thread = run(count, per_session, 1, None)
    print(
        f"  off                         {off / count * 1e6:8.2f} µs"
        f"    {off_thread / count * 1e6:8.2f} µs"
    )
    for tools in (0, 1):
        process, endpoint = collector()
        on, on_thread = run(count, per_session, tools, endpoint)
        got = received(process)
        spans = count * (4 + 2 * tools) + sessions
        print(
            f"  on, {4 + 2 * tools} spans a turn          {on / count * 1e6:8.2f} µs"
            f"    {on_thread / count * 1e6:8.2f} µs   ({got} of {spans} spans received)"
        )


# ---- under load ----------------------------------------------------------------------------


def probed(argv: list[str]) -> int:
    """`voxgate serve` with tracing's own CPU added up: written to the file named by
    $TRACING_PROBE every 0.5 s as {"loop_s": ..., "exporter_s": ...}."""
    from gateway import cli

    loop_s = 0.0

    def timed(call: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(call)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal loop_s
            started = time.thread_time()
            try:
                return call(*args, **kwargs)
            finally:
                loop_s += time.thread_time() - started

        return wrapper

    tracing.start_session = timed(tracing.start_session)
    recording: Any = tracing._Recording
    recording.record_turn = timed(recording.record_turn)
    recording.end = timed(recording.end)

    def report(path: Path) -> None:
        readings: dict[int, float] = {}  # a thread gone (a shutdown) keeps its last reading
        while True:
            for thread in threading.enumerate():
                if thread.name.startswith("OtelBatch") and thread.ident is not None:
                    clock = time.pthread_getcpuclockid(thread.ident)
                    readings[thread.ident] = time.clock_gettime(clock)
            exporter_s = sum(readings.values())
            path.write_text(json.dumps({"loop_s": loop_s, "exporter_s": exporter_s}))
            time.sleep(0.5)

    out = Path(os.environ["TRACING_PROBE"])
    threading.Thread(target=report, args=(out,), daemon=True).start()
    return cli.main(argv)


@dataclass
class LoadRun:
    traced: bool
    turns: int
    cpu_s: float
    tracing_s: float
    """Of `cpu_s`, what tracing itself took (the probe)."""
    spans: int | None
    share_ms: dict[str, float]
    """The gateway's share of voice-to-voice (bench/load.py's), p50 and p99."""

    @property
    def ms_per_turn(self) -> float:
        return self.cpu_s / self.turns * 1000


def start_probed(port: int, pipeline: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The server as bench/gateway_process.start_server starts it, through `probed`."""
    args = ["serve", "--pipelines", str(pipeline), "--port", str(port)]
    args += ["--max-sessions", "10000", "--max-connections-per-address", "0"]
    args += ["--max-unauthenticated-per-address", "10000", "--max-unauthenticated", "10000"]
    env = {**os.environ, **env, "NO_PROXY": "127.0.0.1,localhost"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probed", *args]
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as ready:
                if ready.status == 200:
                    return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("the gateway did not start") from None
            time.sleep(0.01)


def load_run(users: int, seconds: float, traced: bool) -> LoadRun:
    from bench.gateway_process import free_port, proc_cpu_seconds
    from bench.load import PIPELINE as LOAD_PIPELINE
    from bench.load import run_step

    probe = Path(tempfile.mkstemp(prefix="tracing-probe-", suffix=".json")[1])
    env = {"TRACING_PROBE": str(probe)}
    process = None
    if traced:
        process, endpoint = collector()
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    port = free_port()
    server = start_probed(port, LOAD_PIPELINE, env)

    def tracing_s() -> float:
        time.sleep(0.6)  # a fresh reading
        reading = json.loads(probe.read_text() or "{}")
        return float(reading.get("loop_s", 0.0) + reading.get("exporter_s", 0.0))

    try:
        options = argparse.Namespace(frame_ms=100, barge_in=0.2)
        url = f"ws://127.0.0.1:{port}/ws/load"
        cpu0, traced0 = proc_cpu_seconds(server.pid), tracing_s()
        step = asyncio.run(run_step(url, users, seconds, server.pid, options))
        time.sleep(6)  # the batch processor's next export (every 5 s) sends the last turns
        cpu, spent = proc_cpu_seconds(server.pid) - cpu0, tracing_s() - traced0
    finally:
        server.terminate()  # a graceful exit: the app's lifespan sends what is queued
        server.wait(30)
        probe.unlink()
    if step.errors:  # on a saturated machine a user may time out: say so, keep the run
        print(f"  ({step.errors} of {users} users failed)", flush=True)
    spans = received(process) if process is not None else None
    return LoadRun(traced, step.turns, cpu, spent, spans, step.summary())


def under_load(args: argparse.Namespace) -> None:
    users, seconds = args.load, args.seconds
    print(f"{users} users for {seconds:g} s per run; server CPU per turn answered")
    print("  tracing  turns  share p50/p99  server CPU  per turn   of which tracing")
    runs: list[LoadRun] = []
    for _ in range(args.repeat):
        for traced in (False, True):
            run_ = load_run(users, seconds, traced)
            runs.append(run_)
            share = run_.tracing_s / run_.cpu_s * 100
            spans = f"   {run_.spans} spans received" if run_.spans is not None else ""
            print(
                f"  {'on ' if traced else 'off'}    {run_.turns:6d}"
                f"  {run_.share_ms['p50']:5.1f}/{run_.share_ms['p99']:5.1f} ms"
                f"  {run_.cpu_s:8.1f} s"
                f"  {run_.ms_per_turn:6.2f} ms"
                f"   {run_.tracing_s / run_.turns * 1000:5.3f} ms ({share:.2f}%){spans}",
                flush=True,
            )
    off = statistics.mean(r.ms_per_turn for r in runs if not r.traced)
    on = statistics.mean(r.ms_per_turn for r in runs if r.traced)
    spent = sum(r.tracing_s for r in runs if r.traced) / sum(r.turns for r in runs if r.traced)
    print(
        f"mean per turn: off {off:.2f} ms, on {on:.2f} ms ({(on / off - 1) * 100:+.1f}%); "
        f"tracing itself {spent * 1000:.3f} ms ({spent * 1000 / on * 100:.2f}% of on)"
    )


def main() -> None:
    if sys.argv[1:2] == ["--probed"]:
        sys.exit(probed(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=10_000)
    parser.add_argument("--turns-per-session", type=int, default=10)
    parser.add_argument("--load", type=int, metavar="USERS", help="measure under load instead")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        del os.environ[name]
    if args.load:
        under_load(args)
    else:
        per_call(args)


if __name__ == "__main__":
    main()
