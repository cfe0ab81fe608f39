"""Traces (issue 19) as a collector receives them: tracing configured by `OTEL_*` variables
only, as an operator would, exported over real OTLP/HTTP to a receiver on 127.0.0.1 that
decodes the protobuf, and asserted span by span."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import msgspec
import pytest
import structlog
from opentelemetry import trace

from gateway import app, protocol, tracing
from gateway.client import Event, VoiceClient
from gateway.pipeline import Pipeline
from gateway.protocol import TurnMetrics
from gateway.timings import EndOfTurn, TurnTimeline
from tests.conftest import make_pipeline, running_gateway, wait_sessions_closed
from tests.fakes.otlp import OTLPReceiver, ReceivedSpan
from tests.test_layering import loaded, modules_after

INTERNAL, CLIENT = 1, 3
UNSET, ERROR = 0, 2

SAID = "my card number is 4111 1111"
ANSWERED = "Thanks, I have noted the card ending in 1111."
ARGUMENTS = '{"card": "4111 1111"}'
RESULT = '{"status": "saved"}'

PIPELINE = tracing.PipelineInfo(
    name="support",
    stt=tracing.Stage(provider="deepgram", model="nova-3"),
    llm=tracing.Stage(provider="openai", model="gpt-4o-mini", temperature=0.7, max_tokens=300),
    tts=tracing.Stage(provider="cartesia", model="sonic-2", voice="694f9389"),
)


class ProviderDown(Exception):
    """Like gateway.errors.ProviderError."""


def spoken(t0: float) -> TurnTimeline:
    """A spoken turn whose user stopped talking at `t0` (loop time)."""
    return TurnTimeline(
        speech_end=t0,
        stt_final=t0 + 0.3,
        llm_start=t0 + 0.3,
        llm_first_token=t0 + 0.55,
        llm_first_phrase=t0 + 0.6,
        tts_text_sent=t0 + 0.6,
        tts_first_audio=t0 + 0.68,
        first_audio_sent=t0 + 0.69,
        decided=EndOfTurn("silence", None, 600.0),
    )


METRICS = TurnMetrics(end_of_turn_wait_ms=600.0, stt_final_ms=300.0, voice_to_voice_ms=690.0)


def request(t0: float) -> tracing.LLMCall:
    """The LLM request of `spoken(t0)`'s turn, its stream over at `t0 + 0.9`."""
    return tracing.LLMCall(started=t0 + 0.3, first_token=t0 + 0.55, ended=t0 + 0.9)


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OTEL_* variable but what a test sets, and no exporter left running after it."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    yield
    tracing.shutdown_tracing()


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as served:
        yield served


def one(receiver: OTLPReceiver, name: str) -> ReceivedSpan:
    spans = receiver.named(name)
    assert len(spans) == 1, [s.name for s in receiver.spans]
    return spans[0]


def texts(spans: list[ReceivedSpan]) -> str:
    """Every attribute value and status message, to look for what must not be there."""
    return " ".join(
        f"{value} {span.status_message}" for span in spans for value in span.attributes.values()
    )


async def test_a_session_with_turns_reaches_the_collector(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    assert tracing.configure_tracing() is not None
    loop = asyncio.get_running_loop()
    # Two turns that ended over the last few seconds, the way the engine records them.
    wall, t0 = time.time_ns() - 5_000_000_000, loop.time() - 5.0
    session = tracing.start_session(PIPELINE, "s-1", "twilio")
    for turn_id in (1, 2):
        session.record_turn(
            turn_id,
            "completed",
            spoken(t0 + 2 * (turn_id - 1)),
            METRICS,
            said=SAID,
            answered=ANSWERED,
            llm_calls=[request(t0 + 2 * (turn_id - 1))],
            tts_end=t0 + 2 * (turn_id - 1) + 1.1,
        )
    session.end(1000, "session over")
    tracing.shutdown_tracing()

    assert {e.content_type for e in receiver.exports} == {"application/x-protobuf"}
    assert {e.path for e in receiver.exports} == {"/v1/traces"}
    spans = receiver.spans
    assert sorted(s.name for s in spans) == sorted(
        ["voxgate.session"] + ["voxgate.turn", "voxgate.stt", "chat gpt-4o-mini", "voxgate.tts"] * 2
    )
    assert len({s.trace_id for s in spans}) == 1
    session_span = one(receiver, "voxgate.session")
    assert session_span.parent_span_id == ""
    assert session_span.resource["service.name"] == "voxgate"
    assert session_span.scope == "voxgate"
    assert session_span.attributes == {
        "voxgate.pipeline": "support",
        "voxgate.dialect": "twilio",
        "session.id": "s-1",
        "voxgate.close_code": 1000,
        "voxgate.close_reason": "session over",
    }
    turns = sorted(receiver.named("voxgate.turn"), key=lambda s: s.start_ns)
    assert [t.attributes["voxgate.turn.id"] for t in turns] == [1, 2]
    assert turns[0].attributes == {
        "voxgate.turn.id": 1,
        "voxgate.turn.end_reason": "completed",
        "voxgate.turn.end_of_turn": "silence",
        "voxgate.turn.end_of_turn_wait_ms": 600.0,
        "voxgate.turn.stt_final_ms": 300.0,
        "voxgate.turn.voice_to_voice_ms": 690.0,
    }
    # Span times are the loop-clock timestamps, on the wall clock.
    assert abs(turns[0].start_ns - wall) < 20_000_000
    assert turns[1].start_ns - turns[0].start_ns == pytest.approx(2e9, abs=1_000)
    assert all(t.parent_span_id == session_span.span_id for t in turns)
    assert all(t.kind == INTERNAL and t.status_code == UNSET for t in turns)

    first = turns[0]
    children = [s for s in spans if s.parent_span_id == first.span_id]
    assert sorted(s.name for s in children) == ["chat gpt-4o-mini", "voxgate.stt", "voxgate.tts"]
    stage = {s.name: s for s in children}
    stt, chat, tts = stage["voxgate.stt"], stage["chat gpt-4o-mini"], stage["voxgate.tts"]
    assert stt.start_ns == first.start_ns
    assert stt.end_ns - stt.start_ns == pytest.approx(0.3e9, abs=1_000)
    assert stt.attributes == {
        "voxgate.provider": "deepgram",
        "voxgate.model": "nova-3",
    }
    assert chat.kind == CLIENT
    assert chat.start_ns - first.start_ns == pytest.approx(0.3e9, abs=1_000)
    assert chat.end_ns - first.start_ns == pytest.approx(0.9e9, abs=1_000)
    assert chat.attributes.pop("gen_ai.response.time_to_first_chunk") == pytest.approx(0.25)
    assert chat.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.max_tokens": 300,
        "gen_ai.request.temperature": 0.7,
        "gen_ai.request.stream": True,
        "gen_ai.conversation.id": "s-1",
        "gen_ai.response.finish_reasons": ["stop"],
    }
    assert tts.kind == CLIENT
    assert tts.end_ns - tts.start_ns == pytest.approx(0.5e9, abs=1_000)
    assert tts.attributes.pop("voxgate.tts.time_to_first_audio") == pytest.approx(0.08)
    assert tts.attributes == {
        "voxgate.provider": "cartesia",
        "voxgate.model": "sonic-2",
        "voxgate.tts.voice": "694f9389",
        "voxgate.tts.characters": len(ANSWERED),
    }
    assert first.end_ns >= tts.end_ns
    # log_transcripts is off: nothing the user said or heard left the process.
    assert SAID not in texts(spans) and ANSWERED not in texts(spans)


async def test_transcripts_and_tool_arguments_only_with_log_transcripts(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.endpoint}/v1/traces")
    tracing.configure_tracing()
    t0 = asyncio.get_running_loop().time()
    lookup = tracing.ToolCall(
        name="save_card",
        call_id="call_1",
        started=t0 + 0.4,
        ended=t0 + 0.5,
        arguments=ARGUMENTS,
        result=RESULT,
    )
    for pipeline, session_id in ((PIPELINE, "quiet"), (_logging(PIPELINE), "logged")):
        session = tracing.start_session(pipeline, session_id, "voxgate")
        session.record_turn(
            1,
            "interrupted",
            spoken(t0),
            METRICS,
            said=SAID,
            answered=ANSWERED,
            tools=[lookup],
        )
        session.end(1000, "session over")
    tracing.shutdown_tracing()

    by_session = {s.attributes["session.id"]: s.trace_id for s in receiver.named("voxgate.session")}
    quiet = [s for s in receiver.spans if s.trace_id == by_session["quiet"]]
    logged = [s for s in receiver.spans if s.trace_id == by_session["logged"]]
    for spans in (quiet, logged):
        tool = next(s for s in spans if s.name == "execute_tool save_card")
        turn = next(s for s in spans if s.name == "voxgate.turn")
        assert tool.parent_span_id == turn.span_id and tool.kind == INTERNAL
        assert tool.end_ns - tool.start_ns == pytest.approx(0.1e9, abs=1_000)
        assert {
            k: v for k, v in tool.attributes.items() if not k.endswith(("arguments", "result"))
        } == {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "save_card",
            "gen_ai.tool.call.id": "call_1",
        }
    for text in (SAID, ANSWERED, "4111"):
        assert text not in texts(quiet)
    chat = next(s for s in logged if s.name == "chat gpt-4o-mini")
    assert json.loads(chat.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": SAID}]}
    ]
    assert json.loads(chat.attributes["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": ANSWERED}],
            "finish_reason": "interrupted",
        }
    ]
    tool = next(s for s in logged if s.name == "execute_tool save_card")
    assert tool.attributes["gen_ai.tool.call.arguments"] == ARGUMENTS
    assert tool.attributes["gen_ai.tool.call.result"] == RESULT


def _logging(pipeline: tracing.PipelineInfo) -> tracing.PipelineInfo:
    return msgspec.structs.replace(pipeline, log_transcripts=True)


async def test_a_provider_error_marks_its_stage(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    tracing.configure_tracing()
    t0 = asyncio.get_running_loop().time()
    timeline = spoken(t0)
    timeline.tts_first_audio = None  # the TTS failed before its first audio
    failed_tool = tracing.ToolCall(
        name="lookup",
        call_id=None,
        started=t0 + 0.4,
        ended=t0 + 0.45,
        error="timeout",
        detail="`lookup` did not answer within 0.05 s",
    )
    session = tracing.start_session(PIPELINE, "s-err", "voxgate")
    session.record_turn(
        1,
        "error",
        timeline,
        METRICS,
        said=SAID,
        answered=ANSWERED,
        error=tracing.StageError("tts", ProviderDown("cartesia: failed (500)")),
        tools=[failed_tool],
    )
    session.end(1011, "unexpected server error", RuntimeError("boom"))
    tracing.shutdown_tracing()

    tts = one(receiver, "voxgate.tts")
    assert tts.status_code == ERROR
    assert tts.status_message == "cartesia: failed (500)"
    assert tts.attributes["error.type"] == "tests.test_tracing.ProviderDown"
    assert "voxgate.tts.time_to_first_audio" not in tts.attributes
    turn = one(receiver, "voxgate.turn")
    assert turn.status_code == ERROR
    assert turn.attributes["error.type"] == "tests.test_tracing.ProviderDown"
    assert turn.attributes["voxgate.turn.end_reason"] == "error"
    for name in ("voxgate.stt", "chat gpt-4o-mini"):
        assert one(receiver, name).status_code == UNSET
        assert "error.type" not in one(receiver, name).attributes
    tool = one(receiver, "execute_tool lookup")
    assert tool.status_code == ERROR and tool.attributes["error.type"] == "timeout"
    assert tool.status_message == "`lookup` did not answer within 0.05 s"
    assert "gen_ai.tool.call.id" not in tool.attributes
    session_span = one(receiver, "voxgate.session")
    assert session_span.status_code == ERROR
    assert session_span.attributes["error.type"] == "RuntimeError"
    assert session_span.attributes["voxgate.close_code"] == 1011


async def test_a_failed_llm_call_that_never_started_still_has_its_span(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typed turn (no speech, so no STT span) whose LLM failed at once."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    tracing.configure_tracing()
    session = tracing.start_session(PIPELINE, "s-typed", "voxgate")
    session.record_turn(
        1,
        "error",
        TurnTimeline(),
        TurnMetrics(),
        said="hello",
        answered="",
        error=tracing.StageError("llm", ProviderDown("openai: refused the API key")),
    )
    session.end(1000, "session over")
    tracing.shutdown_tracing()

    assert sorted(s.name for s in receiver.spans) == [
        "chat gpt-4o-mini",
        "voxgate.session",
        "voxgate.turn",
    ]
    chat, turn = one(receiver, "chat gpt-4o-mini"), one(receiver, "voxgate.turn")
    assert chat.status_code == ERROR and chat.parent_span_id == turn.span_id
    assert "gen_ai.response.time_to_first_chunk" not in chat.attributes


async def test_service_name_and_resource_come_from_the_environment(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "voxgate-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging")
    tracing.configure_tracing()
    tracing.start_session(PIPELINE, "s-env", "voxgate").end(1000, "session over")
    tracing.shutdown_tracing()

    resource = one(receiver, "voxgate.session").resource
    assert resource["service.name"] == "voxgate-eu"
    assert resource["deployment.environment.name"] == "staging"


async def test_http_json_is_sent_as_http_protobuf(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with structlog.testing.capture_logs() as logs:
        assert tracing.configure_tracing() is not None
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "tracing_protocol_unsupported"
    ]
    tracing.start_session(PIPELINE, "s-json", "voxgate").end(1000, "session over")
    tracing.shutdown_tracing()
    assert [e.content_type for e in receiver.exports] == ["application/x-protobuf"]


@pytest.mark.parametrize(
    ("variables", "warning"),
    [
        ({}, None),
        ({"OTEL_SERVICE_NAME": "voxgate"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "{receiver}"}, None),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "{receiver}"}, None),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_EXPORTER_OTLP_ENDPOINT": "{receiver}"},
            "tracing_exporter_unsupported",
        ),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "{receiver}"},
            "tracing_protocol_unsupported",
        ),
    ],
)
async def test_off_unless_the_environment_asks(
    receiver: OTLPReceiver,
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    warning: str | None,
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(receiver=receiver.endpoint))
    with structlog.testing.capture_logs() as logs:
        assert tracing.configure_tracing() is None
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == (
        [warning] if warning else []
    )
    session = tracing.start_session(PIPELINE, "s-off", "voxgate")
    assert session is tracing.OFF
    t0 = asyncio.get_running_loop().time()
    session.record_turn(1, "completed", spoken(t0), METRICS, said=SAID, answered=ANSWERED)
    session.end(1000, "session over")
    tracing.shutdown_tracing()
    assert receiver.exports == []
    # The OTel API's global provider was never set: other tests and libraries keep theirs.
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"


async def test_a_session_not_sampled_costs_nothing_more(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert tracing.configure_tracing() is not None
    assert tracing.start_session(PIPELINE, "s-unsampled", "voxgate") is tracing.OFF
    tracing.shutdown_tracing()
    assert receiver.exports == []


def test_shutdown_gives_up_on_a_collector_that_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    """At app exit a collector that takes the connection and never answers costs at most
    the timeout (the export itself gives up later, on the daemon thread)."""
    with socket.create_server(("127.0.0.1", 0)) as hanging:
        port = hanging.getsockname()[1]
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
        tracing.configure_tracing()
        tracing.start_session(PIPELINE, "s-hang", "voxgate").end(1000, "session over")
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            tracing.shutdown_tracing(timeout_s=0.5)
        assert time.monotonic() - started < 1.5
    assert [e["event"] for e in logs] == ["tracing_flush_timed_out"]


# ---- the gateway's sessions, traced --------------------------------------------------------

TRANSCRIPT = "what is the capital of france"


def tool_pipeline(log_transcripts: bool = False) -> Pipeline:
    """Each user turn first calls a client tool (`show_answer`), then answers with its result."""
    return make_pipeline(
        llm={
            "tool_calls": [{"name": "show_answer", "arguments": {"text": "Paris"}}],
            "after_tools": "Shown: {results}",
        },
        tools=[
            {"name": "show_answer", "description": "Show text on the page.", "timeout_ms": 5000}
        ],
        tool_use={"filler": None},
        log_transcripts=log_transcripts,
    )


def batch_threads() -> set[threading.Thread]:
    """The OTel batch processors' threads (an earlier test's may still be giving up on its
    collector: compare with the set from before)."""
    return {t for t in threading.enumerate() if t.name.startswith("OtelBatch")}


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted(
        (s for s in spans if s.parent_span_id == parent.span_id), key=lambda s: s.start_ns
    )


@pytest.mark.parametrize("log_transcripts", [False, True])
async def test_a_sessions_turns_reach_the_collector_as_a_span_tree(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch, speech: bytes, log_transcripts: bool
) -> None:
    """A spoken turn that calls a client tool, then a typed turn cut during its tool call:
    one trace, session -> turn -> stt / chat / execute_tool / tts, as the app exports it."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    pipeline = tool_pipeline(log_transcripts)
    before = batch_threads()
    async with running_gateway(pipeline) as gw:
        assert batch_threads() - before, "the app's lifespan configured tracing"
        async with VoiceClient.connect(gw.url()) as client:
            started = await client.start()
            await client.send_audio(speech)
            call = await client.expect(protocol.ToolCall)
            await client.send(protocol.ToolOutput(call_id=call.call_id, output={"shown": True}))
            first: list[Event]
            first, completed = await client.collect_until(protocol.TurnEnd)
            await client.send(protocol.Text(text="and the capital of spain"))
            cut = await client.expect(protocol.ToolCall)
            await client.send(protocol.Interrupt())
            _, interrupted = await client.collect_until(protocol.TurnEnd)
        await wait_sessions_closed(gw)
    # The app's exit sent what was queued: nothing is left running.
    assert batch_threads() - before == set()
    assert completed.reason == "completed" and interrupted.reason == "interrupted"
    assert not [e for e in first if isinstance(e, protocol.Error)]

    spans = receiver.spans
    assert len({s.trace_id for s in spans}) == 1, "one session, one trace"
    session = one(receiver, "voxgate.session")
    assert session.parent_span_id == "" and session.kind == INTERNAL
    assert session.attributes == {
        "voxgate.pipeline": "test",
        "voxgate.dialect": "voxgate",
        "session.id": started.session_id,
        "voxgate.close_code": 1000,
        "voxgate.close_reason": "session over",
    }
    spoken, typed = children(spans, session)
    assert [spoken.name, typed.name] == ["voxgate.turn", "voxgate.turn"]

    # The spoken turn: its transcript, two requests to the LLM with the tool call between
    # them, and the answer spoken.
    assert spoken.attributes["voxgate.turn.id"] == completed.turn_id
    assert spoken.attributes["voxgate.turn.end_reason"] == "completed"
    assert spoken.attributes["voxgate.turn.end_of_turn"] in ("silence", "stt", "complete")
    assert spoken.attributes["voxgate.turn.voice_to_voice_ms"] == (
        completed.metrics.voice_to_voice_ms
    )
    assert spoken.status_code == UNSET
    stages = children(spans, spoken)
    assert [s.name for s in stages] == [
        "voxgate.stt",
        "chat",
        "execute_tool show_answer",
        "chat",
        "voxgate.tts",
    ]
    stt, asked, tool, answered, tts = stages
    assert stt.start_ns == spoken.start_ns
    assert stt.attributes == {"voxgate.provider": "scripted"}
    assert asked.kind == answered.kind == tts.kind == CLIENT
    for chat in (asked, answered):
        assert chat.attributes.pop("gen_ai.response.time_to_first_chunk") >= 0.04
        assert {k: v for k, v in chat.attributes.items() if "messages" not in k} == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "scripted",
            "gen_ai.request.max_tokens": 300,
            "gen_ai.request.temperature": pipeline.llm.temperature,
            "gen_ai.request.stream": True,
            "gen_ai.conversation.id": started.session_id,
            "gen_ai.response.finish_reasons": ["tool_calls" if chat is asked else "stop"],
        }
    assert asked.end_ns <= tool.start_ns <= tool.end_ns <= answered.start_ns
    assert tool.kind == INTERNAL and tool.status_code == UNSET
    assert {
        k: v for k, v in tool.attributes.items() if not k.endswith(("arguments", "result"))
    } == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "show_answer",
        "gen_ai.tool.call.id": call.call_id,
        "gen_ai.tool.type": "function",
        "voxgate.tool.runs_on": "client",
    }
    assert tts.start_ns >= answered.start_ns and tts.end_ns <= spoken.end_ns
    assert tts.attributes["voxgate.tts.characters"] == len('Shown: {"shown":true}')
    assert tts.attributes["voxgate.tts.time_to_first_audio"] >= 0.03

    # The typed turn, cut while the client had its tool call: no STT, nothing spoken, and
    # the call cancelled.
    assert typed.attributes["voxgate.turn.id"] == interrupted.turn_id == cut.turn_id
    assert typed.attributes["voxgate.turn.end_reason"] == "interrupted"
    assert [s.name for s in children(spans, typed)] == ["chat", "execute_tool show_answer"]
    chat, cancelled = children(spans, typed)
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert cancelled.status_code == ERROR
    assert cancelled.attributes["error.type"] == "cancelled"
    assert cancelled.attributes["gen_ai.tool.call.id"] == cut.call_id
    assert typed.end_ns >= cancelled.end_ns

    # What was said, answered and passed to the tool: only with log_transcripts.
    said = (TRANSCRIPT, "Paris", "shown", "spain")
    if not log_transcripts:
        assert [text for text in said if text in texts(spans)] == []
        return
    assert json.loads(asked.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": TRANSCRIPT}]}
    ]
    assert json.loads(answered.attributes["gen_ai.output.messages"])[0]["parts"] == [
        {"type": "text", "content": 'Shown: {"shown":true}'}
    ]
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {"text": "Paris"}
    assert tool.attributes["gen_ai.tool.call.result"] == '{"shown":true}'
    assert json.loads(chat.attributes["gen_ai.input.messages"])[0]["parts"][0]["content"] == (
        "and the capital of spain"
    )


@pytest.mark.parametrize(
    "variables",
    [{}, {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "{receiver}"}],
    ids=["no-variables", "sdk-disabled"],
)
async def test_off_the_gateway_starts_no_exporter_and_sends_nothing(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(receiver=receiver.endpoint))
    before = batch_threads()
    async with running_gateway(tool_pipeline()) as gw:
        async with VoiceClient.connect(gw.url()) as client:
            await client.start()
            await client.send(protocol.Text(text="hello"))
            call = await client.expect(protocol.ToolCall)
            await client.send(protocol.ToolOutput(call_id=call.call_id, output="ok"))
            _, end = await client.collect_until(protocol.TurnEnd)
            assert batch_threads() - before == set(), "no batch processor thread"
            (session,) = gw.table.sessions
            assert session._trace is tracing.OFF
        await wait_sessions_closed(gw)
    assert end.reason == "completed"
    assert receiver.exports == []


def test_off_the_sdk_is_not_even_imported() -> None:
    """Tracing imports nothing of the gateway, and off it loads no OTel SDK or exporter."""
    modules = modules_after("from gateway import tracing\ntracing.configure_tracing()")
    ours = {m for m in modules if loaded({m}, "gateway") or loaded({m}, "adapters")}
    assert ours == {"gateway", "gateway.tracing"}
    assert not loaded(modules, "opentelemetry.sdk")
    assert not loaded(modules, "opentelemetry.exporter")


async def test_a_collector_that_is_down_costs_the_session_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exports fail all session long (nothing listens on the port), yet the turns go as
    without tracing, and the app's exit waits for the collector no longer than its bound."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        down = taken.getsockname()[1]  # closed again below: connections are refused
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{down}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")  # export (and fail) during the turns
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # each export retries for 2 s
    monkeypatch.setattr(app, "TRACES_FLUSH_S", 0.3)
    async with running_gateway(tool_pipeline()) as gw:
        async with VoiceClient.connect(gw.url()) as client:
            await client.start()
            ends = []
            for text in ("hello", "and again"):
                await client.send(protocol.Text(text=text))
                call = await client.expect(protocol.ToolCall)
                await client.send(protocol.ToolOutput(call_id=call.call_id, output="ok"))
                events, end = await client.collect_until(protocol.TurnEnd)
                assert not [e for e in events if isinstance(e, protocol.Error)]
                ends.append(end)
        await wait_sessions_closed(gw)
        leaving = time.monotonic()
    assert time.monotonic() - leaving < 0.3 + 1.0, "the exit waited past its bound"
    assert [e.reason for e in ends] == ["completed", "completed"]
    # The turns' own timings do not show the failing exports either.
    assert all((e.metrics.gateway_overhead_ms or 0) < 50 for e in ends)


async def test_a_turn_whose_llm_fails_marks_its_chat_span(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    flaky = make_pipeline(llm={"fail_after_tokens": 3})
    async with running_gateway(flaky) as gw:
        async with VoiceClient.connect(gw.url()) as client:
            await client.start()
            await client.send(protocol.Text(text="hello"))
            _, end = await client.collect_until(protocol.TurnEnd)
        async with asyncio.timeout(5):  # (the provider's probe, a server task, goes on)
            while gw.table.sessions:
                await asyncio.sleep(0.01)
    assert end.reason == "error"
    turn = one(receiver, "voxgate.turn")
    assert turn.attributes["voxgate.turn.end_reason"] == "error"
    assert turn.status_code == ERROR
    assert turn.attributes["error.type"] == "gateway.errors.ProviderError"
    chat = one(receiver, "chat")
    assert chat.status_code == ERROR and chat.parent_span_id == turn.span_id
    assert chat.status_message == "scripted: stream dropped after 3 tokens (as configured)"
    assert "gen_ai.response.finish_reasons" not in chat.attributes
    assert receiver.named("voxgate.tts") == [], "no phrase was complete: nothing was spoken"
    assert one(receiver, "voxgate.session").status_code == UNSET, "the session went on"
