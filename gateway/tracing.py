"""OpenTelemetry traces of sessions and their turns (issue 19), sent over OTLP/HTTP only when
the operator's standard `OTEL_*` variables ask for it.

One trace per session: `voxgate.session`, a `voxgate.turn` per answered turn (completed,
interrupted or failed), and under each turn its stages: `voxgate.stt`, a `chat {model}` per
request to the LLM (one, and one more per round of tool calls) and an `execute_tool {name}` per
tool call (the GenAI semantic conventions), and `voxgate.tts`.

Why it is built this way:
- Off unless asked: the SDK's own default (OTLP to localhost:4318) would have every gateway
  retry a collector nobody runs. Asked means `OTEL_TRACES_EXPORTER=otlp` or an OTLP endpoint
  variable; `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none` win over both.
- Only OTLP over HTTP with protobuf, the exporter the project installs. `grpc` leaves tracing
  off with a warning, because an endpoint meant for gRPC (port 4317) would refuse every HTTP
  export; `http/json` gets http/protobuf with a warning, because a collector's OTLP/HTTP port
  takes both.
- The module keeps its own `TracerProvider` instead of installing the OTel global one, which
  can be set once per process: tests configure and shut down as often as they like, and a
  library that installs its own provider cannot change where our spans go.
- A turn is recorded in one call once it is over, from the timestamps the turn takes anyway
  (`TurnTimeline`, each LLM request's `LLMCall` and each tool call's `ToolCall`, on the event
  loop's clock), rather than as live spans: the hot path makes no span and no context switch,
  no span lives across the reply's two tasks, and barge-in (cancelling those tasks) needs no
  special case. Only the session's span is live, from start to close.
- Spans go to a `BatchSpanProcessor`, whose thread encodes and sends them: the event loop only
  appends a finished span to a queue.
- Off (or sampled out), `start_session` returns `OFF`, whose methods return at once (0.8 us
  per turn, bench/tracing.py): no span and no attribute dict. What a reply notes for a trace
  (a few loop-clock reads per LLM request and tool call) it notes either way.
- Nothing here imports the rest of the gateway: what it reads of a turn is described by the
  Protocols below, so the session engine can move around it.
- What users said or heard, and tool arguments and results, appear only for pipelines with
  `log_transcripts: true`, as in the logs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal, Protocol

import msgspec
import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue

log = structlog.get_logger()

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None

_FINISH_REASONS: Final = {"completed": "stop", "error": "error"}
"""A turn's end reason as a GenAI `finish_reason`; others (`interrupted`) go as they are."""
_TOOL_TYPES: Final = {"client": "function", "server": "extension"}
"""Where a tool runs (`tool_call.runs_on`) as a GenAI `gen_ai.tool.type`."""


# ---- what the session engine hands over --------------------------------------------------


class Stage(msgspec.Struct, frozen=True, kw_only=True):
    """A stage's provider as the pipeline names it (its first provider: a fallback that served
    a turn is named in that turn's error, if any)."""

    provider: str
    model: str | None = None
    voice: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


class PipelineInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a trace says about a pipeline; built once per pipeline, not per session."""

    name: str
    stt: Stage
    llm: Stage
    tts: Stage
    log_transcripts: bool = False


class StageError(msgspec.Struct, frozen=True):
    """The provider error that ended a turn, and the stage whose provider raised it: the
    error alone cannot say (`openai` may be the LLM or the TTS)."""

    stage: Literal["stt", "llm", "tts"]
    error: BaseException


class LLMCall(msgspec.Struct, kw_only=True):
    """One request to the LLM: a reply makes one, and one more per round of tool calls.
    Filled in as the request goes (loop-clock times, like the timeline's)."""

    started: float
    first_token: float | None = None
    ended: float | None = None
    """None while the stream runs (a reply cut or failed mid-stream ends with the turn)."""
    tool_calls: int = 0
    """Tools the model called in this request instead of answering."""


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """One tool the LLM called during a turn, with loop-clock times like the timeline's."""

    name: str
    call_id: str | None
    started: float
    ended: float
    runs_on: str | None = None
    """`client` or `server`, as the `tool_call` message says."""
    error: str | None = None
    """Why it failed, as the toolbox counts it (`timeout`, `status`, `client_error`,
    `cancelled` for a call cut by barge-in, ...): the span's `error.type`. None: it answered."""
    detail: str | None = None
    """The failure in words, as the `tool_result` log line has it: the status description."""
    arguments: str | None = None
    """As the model sent them (JSON text); exported only with `log_transcripts`."""
    result: str | None = None
    """What went back to the model; exported only with `log_transcripts`."""


class Decision(Protocol):
    """How the user's turn was judged over (the timeline's `decided`)."""

    @property
    def reason(self) -> str: ...


class Timeline(Protocol):
    """The turn's timestamps (`TurnTimeline`), in seconds on the event loop's clock."""

    @property
    def speech_end(self) -> float | None: ...
    @property
    def stt_final(self) -> float | None: ...
    @property
    def llm_start(self) -> float | None: ...
    @property
    def llm_first_token(self) -> float | None: ...
    @property
    def tts_text_sent(self) -> float | None: ...
    @property
    def tts_first_audio(self) -> float | None: ...
    @property
    def decided(self) -> Decision | None: ...


# ---- set-up ---------------------------------------------------------------------------------


def configure_tracing() -> TracerProvider | None:
    """Start exporting if the environment asks for it; None (and nothing started) if not.

    Call once at start-up, before sessions; a second call replaces the first. The exporter
    reads its own variables (endpoint, headers, timeout, compression, certificates), and the
    SDK reads `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*` and `OTEL_RESOURCE_ATTRIBUTES`.
    """
    global _provider, _tracer
    shutdown_tracing()
    if not _asked_for(os.environ):
        return None
    # Imported only when on: the SDK and the exporter (requests, protobuf) take ~0.1 s.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "voxgate"}))
    # Our shutdown_tracing is the bounded flush; the SDK's atexit one could wait 30 s or more.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider, _tracer = provider, provider.get_tracer("voxgate")
    log.info("tracing_enabled", service=resource.attributes.get(SERVICE_NAME))
    return provider


def shutdown_tracing(timeout_s: float = 5.0) -> None:
    """Send what is queued and stop, waiting at most `timeout_s`: at app exit, after the
    sessions closed. It blocks; from the event loop, run it with `asyncio.to_thread`."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is None:
        return
    # The SDK bounds neither its flush nor each export by our timeout: wait for it on a
    # daemon thread, which the process does not wait for if the collector hangs.
    stopping = threading.Thread(target=provider.shutdown, name="tracing-shutdown", daemon=True)
    stopping.start()
    stopping.join(timeout_s)
    if stopping.is_alive():
        log.warning("tracing_flush_timed_out", timeout_s=timeout_s)


def _asked_for(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")} - {""}
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if "none" in exporters or not (exporters or endpoint):
        return False
    if exporters - {"otlp"}:
        log.warning(
            "tracing_exporter_unsupported",
            exporters=sorted(exporters - {"otlp"}),
            detail="only otlp (over http/protobuf) is supported",
        )
        if "otlp" not in exporters:
            return False
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "http/json":
        log.warning(
            "tracing_protocol_unsupported",
            protocol=protocol,
            detail="sending http/protobuf instead: a collector's OTLP/HTTP port takes both",
        )
    elif protocol != "http/protobuf":
        log.warning(
            "tracing_protocol_unsupported",
            protocol=protocol,
            detail="tracing stays off: only http/protobuf is supported; set "
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and point the endpoint at the "
            "collector's OTLP/HTTP port (4318)",
        )
        return False
    return True


# ---- spans ----------------------------------------------------------------------------------


def start_session(pipeline: PipelineInfo, session_id: str, dialect: str) -> SessionTrace:
    """The session's trace, its span started now; `OFF` when tracing is off or this session
    is not sampled."""
    tracer = _tracer
    if tracer is None:
        return OFF
    attributes: dict[str, AttributeValue] = {
        "voxgate.pipeline": pipeline.name,
        "voxgate.dialect": dialect,
        "session.id": session_id,
    }
    # An empty context: a session is a trace's root whatever context the caller runs in.
    span = tracer.start_span("voxgate.session", Context(), attributes=attributes)
    if not span.is_recording():
        return OFF
    return _Recording(tracer, span, pipeline, session_id)


class SessionTrace:
    """One session's trace. This class is the tracing-off one (`OFF`): every method returns
    at once, so the engine calls them unconditionally."""

    def record_turn(
        self,
        turn_id: int,
        reason: str,
        timeline: Timeline,
        metrics: msgspec.Struct,
        *,
        said: str,
        answered: str,
        llm_calls: Sequence[LLMCall] = (),
        tts_end: float | None = None,
        error: StageError | None = None,
        tools: Sequence[ToolCall] = (),
    ) -> None:
        """Record a finished turn: its span from the end of the user's speech (or the LLM
        call, for a typed turn) to now, and its stages' spans from `timeline`.

        `reason` is the turn's `turn_end` reason; `metrics` its `turn_end.metrics`, each field
        an attribute named as in the `turn_ended` log line. `said` is the user's text and
        `answered` the reply text given to the TTS (its length is the TTS's characters).
        `llm_calls` are the turn's requests to the LLM, a `chat` span each (none given: one
        from the timeline's `llm_start`), `tools` the tools they called, an `execute_tool` span
        each; `tts_end` is when the TTS audio ended. A stage that did not end ends with the
        turn (a cut or failed turn).
        """

    def end(self, close_code: int, close_reason: str, error: BaseException | None = None) -> None:
        """End the session's span: the socket's close code and reason, and the error that
        ended the session, if one did."""


class _Recording(SessionTrace):
    def __init__(
        self, tracer: trace.Tracer, span: trace.Span, pipeline: PipelineInfo, session_id: str
    ) -> None:
        self._tracer = tracer
        self._span = span
        self._context = trace.set_span_in_context(span)
        self._transcripts = pipeline.log_transcripts
        # Loop time (time.monotonic, which asyncio's loop.time() is) to span time, anchored
        # per session so a wall-clock step moves only the sessions that start after it.
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        stt, llm, tts = pipeline.stt, pipeline.llm, pipeline.tts
        # What every turn's stage spans share, built once.
        self._stt = _present({"voxgate.provider": stt.provider, "voxgate.model": stt.model})
        self._chat_name = f"chat {llm.model}" if llm.model else "chat"
        self._llm = _present(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": llm.provider,
                "gen_ai.request.model": llm.model,
                "gen_ai.request.max_tokens": llm.max_tokens,
                "gen_ai.request.temperature": llm.temperature,
                "gen_ai.request.stream": True,
                "gen_ai.conversation.id": session_id,
            }
        )
        self._tts = _present(
            {
                "voxgate.provider": tts.provider,
                "voxgate.model": tts.model,
                "voxgate.tts.voice": tts.voice,
            }
        )

    def record_turn(
        self,
        turn_id: int,
        reason: str,
        timeline: Timeline,
        metrics: msgspec.Struct,
        *,
        said: str,
        answered: str,
        llm_calls: Sequence[LLMCall] = (),
        tts_end: float | None = None,
        error: StageError | None = None,
        tools: Sequence[ToolCall] = (),
    ) -> None:
        now = time.time_ns()
        t = timeline
        start = self._at(t.speech_end if t.speech_end is not None else t.llm_start, now)
        attributes: dict[str, AttributeValue] = {
            "voxgate.turn.id": turn_id,
            "voxgate.turn.end_reason": reason,
        }
        if t.decided is not None:
            attributes["voxgate.turn.end_of_turn"] = t.decided.reason
        for name in metrics.__struct_fields__:
            if (value := getattr(metrics, name)) is not None:
                attributes[f"voxgate.turn.{name}"] = value
        turn = self._tracer.start_span(
            "voxgate.turn", self._context, attributes=attributes, start_time=start
        )
        stage, failed = (error.stage, error.error) if error is not None else (None, None)
        if failed is not None:
            _fail(turn, failed)
        parent = trace.set_span_in_context(turn)

        if t.stt_final is not None or stage == "stt":
            stt = self._stt
            self._child(
                "voxgate.stt",
                parent,
                stt,
                self._at(t.speech_end, start),
                self._at(t.stt_final, now),
                failed if stage == "stt" else None,
            )
        # Each request as (start, end, time to its first chunk, tools it called).
        requests = [
            (
                self._at(c.started, start),
                self._at(c.ended, now),
                _since(c.started, c.first_token),
                c.tool_calls,
            )
            for c in llm_calls
        ]
        if not requests and (t.llm_start is not None or stage == "llm"):
            first_chunk = _since(t.llm_start, t.llm_first_token)
            requests.append((self._at(t.llm_start, start), now, first_chunk, 0))
        last = len(requests) - 1
        for i, (started, ended, first_chunk, tool_calls) in enumerate(requests):
            llm = dict(self._llm)
            if first_chunk is not None:
                llm["gen_ai.response.time_to_first_chunk"] = first_chunk
            if tool_calls:
                llm["gen_ai.response.finish_reasons"] = ("tool_calls",)
            elif i == last and reason == "completed":
                llm["gen_ai.response.finish_reasons"] = ("stop",)
            if self._transcripts and i == 0:
                llm["gen_ai.input.messages"] = _messages("user", said)
            if self._transcripts and i == last:
                finish = _FINISH_REASONS.get(reason, reason)
                llm["gen_ai.output.messages"] = _messages("assistant", answered, finish)
            self._child(
                self._chat_name,
                parent,
                llm,
                started,
                ended,
                failed if stage == "llm" and i == last else None,
            )
        if t.tts_text_sent is not None or stage == "tts":
            tts = {**self._tts, "voxgate.tts.characters": len(answered)}
            if t.tts_text_sent is not None and t.tts_first_audio is not None:
                tts["voxgate.tts.time_to_first_audio"] = t.tts_first_audio - t.tts_text_sent
            self._child(
                "voxgate.tts",
                parent,
                tts,
                self._at(t.tts_text_sent, start),
                self._at(tts_end, now),
                failed if stage == "tts" else None,
            )
        for tool_call in tools:
            tool: dict[str, AttributeValue] = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool_call.name,
            }
            if tool_call.call_id is not None:
                tool["gen_ai.tool.call.id"] = tool_call.call_id
            if tool_call.runs_on is not None:
                # The conventions' words: a `function` runs on the client, an `extension`
                # (a web API, an MCP server) is called by the agent.
                tool["gen_ai.tool.type"] = _TOOL_TYPES.get(tool_call.runs_on, tool_call.runs_on)
                tool["voxgate.tool.runs_on"] = tool_call.runs_on
            if self._transcripts and tool_call.arguments is not None:
                tool["gen_ai.tool.call.arguments"] = tool_call.arguments
            if self._transcripts and tool_call.result is not None:
                tool["gen_ai.tool.call.result"] = tool_call.result
            span = self._tracer.start_span(
                f"execute_tool {tool_call.name}",
                parent,
                SpanKind.INTERNAL,
                tool,
                start_time=self._at(tool_call.started, start),
            )
            if tool_call.error is not None:
                _failed(span, tool_call.error, tool_call.detail)
            span.end(self._at(tool_call.ended, now))
        turn.end(now)

    def end(self, close_code: int, close_reason: str, error: BaseException | None = None) -> None:
        span = self._span
        span.set_attributes(
            {"voxgate.close_code": close_code, "voxgate.close_reason": close_reason}
        )
        if error is not None:
            _fail(span, error)
        span.end()

    def _at(self, t: float | None, default: int) -> int:
        """A loop-clock time as span time (ns since the epoch); `default` when not taken."""
        return default if t is None else int(t * 1e9) + self._offset_ns

    def _child(
        self,
        name: str,
        parent: Context,
        attributes: dict[str, AttributeValue],
        start: int,
        end: int,
        error: BaseException | None,
    ) -> None:
        span = self._tracer.start_span(name, parent, SpanKind.CLIENT, attributes, start_time=start)
        if error is not None:
            _fail(span, error)
        span.end(end)


OFF: Final = SessionTrace()


def _fail(span: trace.Span, error: BaseException) -> None:
    """Status ERROR with `error.type` (the exception's qualified name), per the semantic
    conventions' Recording Errors."""
    kind = type(error)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    _failed(span, name, str(error))


def _failed(span: trace.Span, error_type: str, description: str | None) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description))


def _since(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def _present(attributes: Mapping[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    return {k: v for k, v in attributes.items() if v is not None}


class _Text(msgspec.Struct, tag="text", tag_field="type"):
    content: str


class _Message(msgspec.Struct, omit_defaults=True):
    role: str
    parts: tuple[_Text, ...]
    finish_reason: str | None = None


def _messages(role: str, text: str, finish_reason: str | None = None) -> str:
    """One message as GenAI `gen_ai.input.messages` / `gen_ai.output.messages` JSON."""
    return msgspec.json.encode([_Message(role, (_Text(text),), finish_reason)]).decode()
