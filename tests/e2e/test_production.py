"""Limits, metrics and graceful drain: what keeps one bad client or a deploy from hurting calls."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from gateway import protocol
from gateway.app import PipelineTable
from gateway.client import AudioChunk, VoiceClient
from tests.conftest import make_pipeline, running_gateway, wait_sessions_closed
from tests.e2e.test_serve import pipeline_file, voxgate_serve, wait_ready
from tests.test_session import LONG_REPLY, closed_with


async def test_control_frame_flood_gets_rate_limited_then_closed_1008() -> None:
    strict = make_pipeline(limits={"control_frames_per_s": 20})
    flood = protocol.encode(protocol.Playback(turn_id=99, played_ms=0))
    async with running_gateway(strict) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        with contextlib.suppress(ConnectionClosed):  # the server may close mid-flood
            for _ in range(200):
                await client.ws.send(flood)
        error = await client.expect(protocol.Error)
        code, reason = await closed_with(client)
        await wait_sessions_closed(gw)
    assert error.code == "rate_limited" and "20" in error.message  # fatal if it came with the close
    assert code == 1008 and "frames per second" in reason


async def test_normal_bursts_are_not_rate_limited() -> None:
    async with running_gateway(make_pipeline()) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        for _ in range(50):  # half a second's allowance at once
            await client.send(protocol.Playback(turn_id=99, played_ms=0))
        await client.send(protocol.Text(text="still fine?"))
        events, end = await client.collect_until(protocol.TurnEnd)
    assert not [e for e in events if isinstance(e, protocol.Error)]
    assert end.reason == "completed"


async def test_session_end_is_announced_before_max_session_s() -> None:
    short = make_pipeline(limits={"max_session_s": 2, "session_warning_s": 1})
    async with running_gateway(short) as gw, VoiceClient.connect(gw.url()) as client:
        await client.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        warning = await client.expect(protocol.Error)
        warned_after = loop.time() - started
        code, _ = await closed_with(client)
    assert warning.code == "session_ending" and not warning.fatal
    assert 0.5 <= warned_after < 2.0
    assert code == 1000


async def test_process_wide_cap_closes_1013_across_routes() -> None:
    a = make_pipeline(name="a", route="/ws/a")
    b = make_pipeline(name="b", route="/ws/b")
    async with running_gateway(a, b) as gw:
        gw.table.capacity.max_sessions = 1
        async with VoiceClient.connect(gw.url("/ws/a")) as first:
            await first.start()
            async with VoiceClient.connect(gw.url("/ws/b")) as second:
                code, reason = await closed_with(second)
    assert code == 1013 and "retry" in reason


def _samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


async def test_a_loaded_pipelines_session_and_turn_series_read_zero_before_its_first_session() -> (
    None
):
    """A series that appears with its first event hides that event from `rate()`."""
    pipeline = make_pipeline(name="declared", route="/ws/declared")
    await PipelineTable.of([pipeline]).preload(pipeline)
    samples = _samples(generate_latest().decode())
    declared = (("pipeline", "declared"),)
    assert samples[("voxgate_sessions_total", declared)] == 0
    assert samples[("voxgate_sessions_active", declared)] == 0
    for reason in protocol.TurnEndReason:
        assert samples[("voxgate_turns_total", (*declared, ("reason", reason.value)))] == 0
    for stage in ("stt_final", "llm_ttft", "tts_ttfb", "voice_to_voice", "gateway_overhead"):
        assert samples[("voxgate_stage_seconds_count", (*declared, ("stage", stage)))] == 0


async def test_metrics_count_sessions_turns_and_stage_latencies() -> None:
    async with running_gateway(make_pipeline(name="metered", route="/ws/metered")) as gw:
        async with VoiceClient.connect(gw.url("/ws/metered")) as client:
            await client.start()
            for text in ("one", "two"):
                await client.send(protocol.Text(text=text))
                await client.expect(protocol.TurnEnd)
        await wait_sessions_closed(gw)
        async with httpx.AsyncClient() as http:
            body = (await http.get(f"http://127.0.0.1:{gw.port}/metrics")).text
    samples = _samples(body)
    pipeline = (("pipeline", "metered"),)
    assert samples[("voxgate_sessions_total", pipeline)] == 1
    assert samples[("voxgate_sessions_active", pipeline)] == 0
    assert samples[("voxgate_turns_total", (("pipeline", "metered"), ("reason", "completed")))] == 2
    for stage in ("llm_ttft", "tts_ttfb", "gateway_overhead"):
        labels = (("pipeline", "metered"), ("stage", stage))
        assert samples[("voxgate_stage_seconds_count", labels)] == 2, stage


async def test_sigterm_lets_turns_finish_closes_idle_sessions_1001_and_exits(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    # A reply that takes about two seconds to stream (paced to playback).
    slow = pipeline_file(LONG_REPLY).replace("words_per_minute: 6000", "words_per_minute: 600")
    (folder / "a.yaml").write_text(slow)
    with voxgate_serve(folder, "--drain-timeout", "10") as server:
        await wait_ready(server)
        url = f"ws://127.0.0.1:{server.port}/ws/a"
        async with VoiceClient.connect(url) as busy, VoiceClient.connect(url) as idle:
            await busy.start()
            await idle.start()
            await busy.send(protocol.Text(text="tell me about paris"))
            await busy.expect(AudioChunk)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            idle_code, _ = await closed_with(idle)
            idle_closed = time.monotonic() - signalled
            async with httpx.AsyncClient() as http:
                ready = await http.get(server.url("/readyz"))
            async with VoiceClient.connect(url) as late:
                late_code, _ = await closed_with(late)
            end = await busy.expect(protocol.TurnEnd)
            busy_code, busy_reason = await closed_with(busy)
        exit_code = await asyncio.to_thread(server.process.wait, 15)
        exited = time.monotonic() - signalled
    assert idle_code == 1001 and idle_closed < 1.0
    assert ready.status_code == 503
    assert late_code == 1013
    assert end.reason == "completed", "the turn in progress finished"
    assert busy_code == 1001 and "reconnect" in busy_reason
    assert exit_code is not None and exited < 10
