"""The OpenAI Realtime API (GA event names) on the session core.

An app written against OpenAI's Realtime API (`AsyncOpenAI(websocket_base_url="wss://HOST/v1")
.realtime.connect(model=NAME)`) talks to pipeline NAME at `/v1/realtime?model=NAME`. Client
events become protocol v1.1 frames:
- `session.update`: before the session opens, its formats, turn detection, voice and
  instructions shape the session's pipeline; after, only the instructions may change
  (`Session.instruct`);
- `input_audio_buffer.append`: an audio frame (`audio/pcm` 24 kHz or `audio/pcmu` as they
  are; `audio/pcma` decoded here); `input_audio_buffer.commit`: `audio_end`;
- `conversation.item.create` (user text), then `response.create`: a `text` turn;
- `response.cancel`: `interrupt`; `conversation.item.truncate`: what was heard of a reply
  (`Session.truncate`), the history cut there;
- `tools` (functions) in `session.update`: client tools of the session's pipeline;
  `conversation.item.create` of a `function_call_output`: that call's `tool_result`.
The session's messages become server events:
- `speech_started` / `speech_stopped`: `input_audio_buffer.speech_started` / `speech_stopped`;
- `transcript_final`: `input_audio_buffer.committed`, `conversation.item.added`, the item's
  `input_audio_transcription.delta` / `completed`, `conversation.item.done`; then the response
  opens (`response.created`, `response.output_item.added`, `conversation.item.added`,
  `response.content_part.added`);
- `llm_token` and audio: `response.output_audio_transcript.delta`, `response.output_audio.delta`;
- `tool_call` of a client tool: a `function_call` item, and the response ends (`response.done`)
  so the client runs it; what the model says next opens the turn's next response;
- `turn_end` (after `interrupted`, if cut): the `.done` events and `response.done` with status
  `completed`, `cancelled` (`turn_detected`: the user spoke over it) or `failed`;
- `error`: `error` in OpenAI's shape (a reply's provider failure: in its `response.done`).

Formats and turn detection decide the session's decoder, encoder, VAD and turn engine, which
open with the session: so the session opens at the client's first event that is not a
`session.update` (or after `limits.start_timeout_s` of none), with everything those updates
asked for on a per-session copy of the pipeline. `session.created` goes out at once, as
OpenAI's does; it shows the instructions only once the client has set them (the pipeline's own
system prompt is the operator's, not the client's to read).

Bad input gets OpenAI's `error` event and the session goes on, as OpenAI's does: not JSON, an
unknown event, a field of the wrong type, audio that is not base64, a commit of an empty
buffer, a second `response.create` while one is in progress. An event over the pipeline's
`limits.max_message_bytes` gets an `error` and a 1009 close.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from gateway import protocol
from gateway.config import Tool, TurnDetector, VADProvider
from gateway.dialects.base import SessionHooks, send_text
from gateway.dialects.g711 import alaw_decode, alaw_encode
from gateway.errors import ClientGone, ProtocolViolation, SlowConsumer
from gateway.handshake import check_frame_size
from gateway.limits import TokenBucket
from gateway.pipeline import Pipeline
from gateway.protocol import CloseCode, ErrorCode, InputCodec, OutputCodec, TurnEndReason
from gateway.transport import Transport

PCM_RATE = 24000
Format = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
Eagerness = Literal["low", "medium", "high", "auto"]
EAGERNESS_MAX_WAIT_MS = {"low": 8000, "medium": 4000, "high": 2000, "auto": 4000}
"""OpenAI's semantic VAD waits at most 8, 4 and 2 s; our `turns.max_wait_ms` is that wait."""
BETA_FORMATS: dict[str, Format] = {
    "pcm16": "audio/pcm",
    "g711_ulaw": "audio/pcmu",
    "g711_alaw": "audio/pcma",
}
MIN_COMMIT_MS = 100
"""OpenAI refuses to commit less audio than this."""
KEPT_ITEMS = 32
"""Assistant items a `conversation.item.truncate` may still name."""

Ms = Annotated[int, Meta(ge=0, le=600_000)]


# ---- client events ------------------------------------------------------------------------


class AudioFormat(msgspec.Struct, kw_only=True):
    type: Format
    rate: Literal[24000] | None = None


class TurnDetection(msgspec.Struct, kw_only=True):
    type: Literal["server_vad", "semantic_vad"]
    threshold: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    prefix_padding_ms: Ms | None = None
    silence_duration_ms: Ms | None = None
    eagerness: Eagerness | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None


class VoiceId(msgspec.Struct):
    id: str


class InputAudio(msgspec.Struct, kw_only=True):
    format: AudioFormat | None = None
    turn_detection: TurnDetection | UnsetType | None = UNSET
    transcription: Any = None
    noise_reduction: Any = None


class OutputAudio(msgspec.Struct, kw_only=True):
    format: AudioFormat | None = None
    voice: str | VoiceId | None = None
    speed: float | None = None


class AudioConfig(msgspec.Struct, kw_only=True):
    input: InputAudio | None = None
    output: OutputAudio | None = None


class SessionConfig(msgspec.Struct, kw_only=True):
    type: Literal["realtime"] | None = None
    instructions: Annotated[str, Meta(max_length=100_000)] | None = None
    audio: AudioConfig | None = None
    output_modalities: list[Literal["audio", "text"]] | None = None
    # The beta interface's names for the same settings.
    voice: str | None = None
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    output_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    turn_detection: TurnDetection | UnsetType | None = UNSET
    modalities: list[Literal["audio", "text"]] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None


class _ClientEvent(msgspec.Struct, tag_field="type", kw_only=True):
    event_id: str | None = None


class SessionUpdate(_ClientEvent, tag="session.update", kw_only=True):
    session: SessionConfig


class AudioAppend(_ClientEvent, tag="input_audio_buffer.append", kw_only=True):
    audio: str


class AudioCommit(_ClientEvent, tag="input_audio_buffer.commit", kw_only=True):
    pass


class AudioClear(_ClientEvent, tag="input_audio_buffer.clear", kw_only=True):
    pass


class ContentIn(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class ItemIn(msgspec.Struct, kw_only=True):
    type: str = "message"
    id: str | None = None
    role: str | None = None
    content: list[ContentIn] = []
    call_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    output: str | None = None
    """A `function_call_output`'s result: text, usually JSON."""


class FunctionTool(msgspec.Struct, kw_only=True, frozen=True):
    """A function the client declares in `session.update` and runs itself."""

    type: Literal["function"]
    name: Annotated[str, Meta(pattern="^[A-Za-z0-9_-]{1,64}$")]
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


class ItemCreate(_ClientEvent, tag="conversation.item.create", kw_only=True):
    item: ItemIn
    previous_item_id: str | None = None


class ItemTruncate(_ClientEvent, tag="conversation.item.truncate", kw_only=True):
    item_id: str
    content_index: int = 0
    audio_end_ms: Annotated[int, Meta(ge=0)]


class ResponseCreate(_ClientEvent, tag="response.create", kw_only=True):
    response: dict[str, Any] | None = None


class ResponseCancel(_ClientEvent, tag="response.cancel", kw_only=True):
    response_id: str | None = None


ClientEvent = (
    SessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | ItemCreate
    | ItemTruncate
    | ResponseCreate
    | ResponseCancel
)


class _Envelope(msgspec.Struct):
    """What can be read of an event that did not decode, for its `error`."""

    event_id: Any = None


# ---- server events ------------------------------------------------------------------------


class FormatInfo(msgspec.Struct, omit_defaults=True):
    type: str
    rate: int | None = None


class TurnDetectionInfo(msgspec.Struct, kw_only=True):
    type: str
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    eagerness: str | None = None
    create_response: bool = True
    interrupt_response: bool = True


class InputInfo(msgspec.Struct, kw_only=True):
    format: FormatInfo
    turn_detection: TurnDetectionInfo | None
    transcription: None = None


class OutputInfo(msgspec.Struct, kw_only=True):
    format: FormatInfo
    voice: str
    speed: float = 1.0


class AudioInfo(msgspec.Struct):
    input: InputInfo
    output: OutputInfo


class SessionInfo(msgspec.Struct, kw_only=True):
    type: str = "realtime"
    object: str = "realtime.session"
    id: str
    model: str
    output_modalities: list[str] = msgspec.field(default_factory=lambda: ["audio"])
    instructions: str
    audio: AudioInfo
    tools: list[Any] = []
    tool_choice: str = "auto"
    max_output_tokens: str = "inf"


class Content(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    text: str | None = None
    transcript: str | None = None


class _Item(msgspec.Struct, kw_only=True):
    id: str
    object: str = "realtime.item"


class Item(_Item, kw_only=True):
    type: str = "message"
    status: str
    role: str
    content: list[Content]


class FunctionCallItem(_Item, kw_only=True):
    type: str = "function_call"
    status: str
    call_id: str
    name: str
    arguments: str


class FunctionOutputItem(_Item, kw_only=True):
    type: str = "function_call_output"
    call_id: str
    output: str


AnyItem = Item | FunctionCallItem | FunctionOutputItem


class ErrorInfo(msgspec.Struct, kw_only=True):
    type: str
    code: str | None = None
    message: str
    param: str | None = None
    event_id: str | None = None


class StatusDetails(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    reason: str | None = None
    error: ErrorInfo | None = None


class ResponseInfo(msgspec.Struct, kw_only=True):
    id: str
    object: str = "realtime.response"
    status: str
    status_details: StatusDetails | None = None
    output: list[AnyItem] = []
    conversation_id: str
    output_modalities: list[str] = msgspec.field(default_factory=lambda: ["audio"])
    usage: None = None


class Usage(msgspec.Struct, kw_only=True):
    type: str = "duration"
    seconds: float


class Part(msgspec.Struct, kw_only=True):
    type: str = "audio"
    transcript: str


class _ServerEvent(msgspec.Struct, tag_field="type", kw_only=True):
    event_id: str = ""


class SessionCreated(_ServerEvent, tag="session.created", kw_only=True):
    session: SessionInfo


class SessionUpdated(_ServerEvent, tag="session.updated", kw_only=True):
    session: SessionInfo


class SpeechStarted(_ServerEvent, tag="input_audio_buffer.speech_started", kw_only=True):
    audio_start_ms: int
    item_id: str


class SpeechStopped(_ServerEvent, tag="input_audio_buffer.speech_stopped", kw_only=True):
    audio_end_ms: int
    item_id: str


class Committed(_ServerEvent, tag="input_audio_buffer.committed", kw_only=True):
    item_id: str
    previous_item_id: str | None


class Cleared(_ServerEvent, tag="input_audio_buffer.cleared", kw_only=True):
    pass


class ItemAdded(_ServerEvent, tag="conversation.item.added", kw_only=True):
    item: AnyItem
    previous_item_id: str | None


class ItemDone(_ServerEvent, tag="conversation.item.done", kw_only=True):
    item: AnyItem
    previous_item_id: str | None


class ItemTruncated(_ServerEvent, tag="conversation.item.truncated", kw_only=True):
    item_id: str
    content_index: int
    audio_end_ms: int


class TranscriptionDelta(
    _ServerEvent, tag="conversation.item.input_audio_transcription.delta", kw_only=True
):
    item_id: str
    content_index: int = 0
    delta: str


class TranscriptionCompleted(
    _ServerEvent, tag="conversation.item.input_audio_transcription.completed", kw_only=True
):
    item_id: str
    content_index: int = 0
    transcript: str
    usage: Usage


class ResponseCreated(_ServerEvent, tag="response.created", kw_only=True):
    response: ResponseInfo


class ResponseDone(_ServerEvent, tag="response.done", kw_only=True):
    response: ResponseInfo


class OutputItemAdded(_ServerEvent, tag="response.output_item.added", kw_only=True):
    response_id: str
    output_index: int = 0
    item: AnyItem


class OutputItemDone(_ServerEvent, tag="response.output_item.done", kw_only=True):
    response_id: str
    output_index: int = 0
    item: AnyItem


class ArgumentsDelta(_ServerEvent, tag="response.function_call_arguments.delta", kw_only=True):
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str


class ArgumentsDone(_ServerEvent, tag="response.function_call_arguments.done", kw_only=True):
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str


class _PartEvent(_ServerEvent, kw_only=True):
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0


class PartAdded(_PartEvent, tag="response.content_part.added", kw_only=True):
    part: Part


class PartDone(_PartEvent, tag="response.content_part.done", kw_only=True):
    part: Part


class AudioDelta(_PartEvent, tag="response.output_audio.delta", kw_only=True):
    delta: str


class AudioDone(_PartEvent, tag="response.output_audio.done", kw_only=True):
    pass


class TranscriptDelta(_PartEvent, tag="response.output_audio_transcript.delta", kw_only=True):
    delta: str


class TranscriptDone(_PartEvent, tag="response.output_audio_transcript.done", kw_only=True):
    transcript: str


class ErrorEvent(_ServerEvent, tag="error", kw_only=True):
    error: ErrorInfo


_decoder = msgspec.json.Decoder(ClientEvent)
_envelope = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()


# ---- settings: what `session.update` asked for ----------------------------------------------


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """A session's Realtime settings; UNSET/None: the pipeline's own."""

    input_format: Format = "audio/pcm"
    output_format: Format = "audio/pcm"
    turn_detection: TurnDetection | UnsetType | None = UNSET
    voice: str | None = None
    instructions: str | None = None
    tools: tuple[FunctionTool, ...] = ()
    """Functions the client runs (`function_call` items; it answers `function_call_output`)."""


class Refused(Exception):
    """A `session.update` this gateway cannot do; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def updated(settings: Settings, config: SessionConfig) -> Settings:
    """`settings` with `config` applied; raises Refused for what is not served here."""
    audio = config.audio or AudioConfig()
    input_, output = audio.input or InputAudio(), audio.output or OutputAudio()
    tools = settings.tools if config.tools is None else _functions(config.tools)
    if config.tool_choice not in (None, "auto"):
        raise Refused("only tool_choice auto is served here: the model decides", "tool_choice")
    modalities = config.output_modalities or config.modalities
    if modalities is not None and "audio" not in modalities:
        raise Refused("only audio responses are served here (with their transcript)", "modalities")
    detection = input_.turn_detection
    if detection is UNSET:
        detection = config.turn_detection
    if detection is UNSET:
        detection = settings.turn_detection
    elif detection is not None and detection.create_response is False:
        raise Refused(
            "create_response: false is not served: every finished turn is answered",
            "session.audio.input.turn_detection.create_response",
        )
    voice = output.voice if output.voice is not None else config.voice
    return msgspec.structs.replace(
        settings,
        input_format=_format(input_.format, config.input_audio_format, settings.input_format),
        output_format=_format(output.format, config.output_audio_format, settings.output_format),
        turn_detection=detection,
        voice=(voice.id if isinstance(voice, VoiceId) else voice) or settings.voice,
        instructions=config.instructions
        if config.instructions is not None
        else settings.instructions,
        tools=tools,
    )


def _functions(tools: list[Any]) -> tuple[FunctionTool, ...]:
    try:
        functions = msgspec.convert(tools, list[FunctionTool])
    except msgspec.ValidationError as e:
        raise Refused(
            f"tools must be functions ({{type: function, name, description, parameters}}): {e}",
            "tools",
        ) from None
    names = [f.name for f in functions]
    if len(set(names)) < len(names):
        raise Refused("two tools have the same name", "tools")
    return tuple(functions)


def _format(given: AudioFormat | None, beta: str | None, current: Format) -> Format:
    if given is not None:
        return given.type
    return BETA_FORMATS[beta] if beta is not None else current


def session_pipeline(base: Pipeline, settings: Settings) -> Pipeline:
    """The pipeline as this Realtime session asked for it."""
    replace = msgspec.structs.replace
    codec, rate = {
        "audio/pcm": (OutputCodec.PCM16, PCM_RATE),
        "audio/pcmu": (OutputCodec.MULAW, 8000),
        "audio/pcma": (OutputCodec.PCM16, 8000),  # A-law is encoded here, from 8 kHz pcm16
    }[settings.output_format]
    vad, turns = base.vad, base.turns
    detection = settings.turn_detection
    if detection is None:
        vad = replace(vad, provider=VADProvider.NONE)  # turns end on commit only
    elif not isinstance(detection, UnsetType):
        semantic = detection.type == "semantic_vad"
        vad = replace(
            vad,
            provider=vad.provider if vad.provider is not VADProvider.NONE else VADProvider.SILERO,
            threshold=_given(detection.threshold, vad.threshold),
            speech_pad_ms=_given(detection.prefix_padding_ms, vad.speech_pad_ms),
            min_silence_ms=_given(detection.silence_duration_ms, vad.min_silence_ms),
        )
        turns = replace(
            turns,
            detector=TurnDetector.SMART_TURN if semantic else TurnDetector.SILENCE,
            barge_in=_given(detection.interrupt_response, turns.barge_in),
            max_wait_ms=EAGERNESS_MAX_WAIT_MS[detection.eagerness]
            if semantic and detection.eagerness is not None
            else turns.max_wait_ms,
        )
    llm = base.llm
    if settings.instructions is not None:
        llm = replace(llm, system_prompt=settings.instructions)
    tts = base.tts if settings.voice is None else base.tts.with_voice(settings.voice)
    # The pipeline's own client tools are left out: a Realtime client runs only the functions
    # it declared, and would leave any other call unanswered until its timeout.
    tools = [t for t in base.tools if t.http is not None or t.mcp is not None]
    tools += [
        Tool(name=f.name, description=f.description, parameters=f.parameters)
        for f in settings.tools
    ]
    return replace(
        base,
        tools=tools,
        input=replace(base.input, codecs=[InputCodec.PCM16, InputCodec.MULAW]),
        output=replace(base.output, codec=codec, sample_rate=rate),
        vad=vad,
        turns=turns,
        llm=llm,
        tts=tts,
    )


T = TypeVar("T")


def _given(value: T | None, default: T) -> T:
    return default if value is None else value


def session_info(pipeline: Pipeline, settings: Settings, session_id: str) -> SessionInfo:
    """The session as `session.created` / `session.updated` report it."""
    voice = pipeline.tts.voice_name()
    return SessionInfo(
        id=f"sess_{session_id}",
        model=pipeline.name,
        instructions=settings.instructions or "",
        tools=[msgspec.to_builtins(f) for f in settings.tools],
        audio=AudioInfo(
            input=InputInfo(
                format=_format_info(settings.input_format),
                turn_detection=_detection_info(pipeline, settings),
            ),
            output=OutputInfo(
                format=_format_info(settings.output_format), voice=voice or "default"
            ),
        ),
    )


def _format_info(fmt: Format) -> FormatInfo:
    return FormatInfo(fmt, PCM_RATE if fmt == "audio/pcm" else None)


def _detection_info(pipeline: Pipeline, settings: Settings) -> TurnDetectionInfo | None:
    vad, turns = pipeline.vad, pipeline.turns
    if vad.provider is VADProvider.NONE:
        return None
    if turns.detector is TurnDetector.SMART_TURN:
        asked = settings.turn_detection
        eagerness = asked.eagerness if isinstance(asked, TurnDetection) else None
        return TurnDetectionInfo(
            type="semantic_vad", eagerness=eagerness or "auto", interrupt_response=turns.barge_in
        )
    return TurnDetectionInfo(
        type="server_vad",
        threshold=vad.threshold,
        prefix_padding_ms=vad.speech_pad_ms,
        silence_duration_ms=vad.min_silence_ms,
        interrupt_response=turns.barge_in,
    )


def bearer_token(headers: Mapping[str, str], subprotocols: list[str]) -> str | None:
    """The SDK's `api_key`: `Authorization: Bearer KEY`, or a browser's
    `openai-insecure-api-key.KEY` subprotocol."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for offered in subprotocols:
        if offered.startswith("openai-insecure-api-key."):
            return offered.removeprefix("openai-insecure-api-key.")
    return None


# ---- the transport --------------------------------------------------------------------------


@dataclass
class _Response:
    id: str
    item_id: str
    turn_id: int | None
    transcript: list[str] = field(default_factory=list)
    audio_ms: float = 0.0
    open: bool = True
    previous_item_id: str | None = None
    cancelled: str | None = None
    """Why it was cut: `turn_detected` (the user spoke over it) or `client_cancelled`."""
    error: str | None = None
    calls: list[FunctionCallItem] = field(default_factory=list)
    speaking: bool = False
    """Its audio message item was announced: with the first word or audio, not before, so a
    response that only calls a function holds only its `function_call` item, as OpenAI's."""
    unclaimed: bool = False
    """Opened after a function call before the client's `response.create` for it came."""


class RealtimeTransport:
    """The session's `Transport` over an OpenAI Realtime socket."""

    def __init__(self, socket: Transport, pipeline: Pipeline, session_id: str) -> None:
        self._socket = socket
        self._base = pipeline
        self._settings = Settings()
        self.pipeline = session_pipeline(pipeline, self._settings)
        self._session_id = session_id
        self._id = session_id[:12]
        self._limit = pipeline.limits.max_message_bytes
        self._send_timeout_s = pipeline.limits.slow_client_timeout_s
        self._bucket = TokenBucket(pipeline.limits.control_frames_per_s, 0.0)
        self._refused = 0
        self._hooks: SessionHooks | None = None
        self._first: ClientEvent | None = None
        self._frames: deque[str | bytes] = deque()
        self._counter = 0
        self._buffered_bytes = 0
        """Client audio since the last commit (OpenAI refuses an empty commit)."""
        self._heard_bytes = 0
        """Client audio since the last user item: the `usage` of its transcription."""
        self._user_item: str | None = None
        """The id the user's next audio item will have (announced at `speech_started`)."""
        self._committed: str | None = None
        """A user item the client committed whose transcript has not come yet."""
        self._typed: list[str] = []
        self._last_item: str | None = None
        self._responses: dict[int, _Response] = {}
        self._unbound: _Response | None = None
        """A typed turn's response, opened at `response.create`, before its turn id is known."""
        self._highest_turn = 0
        self._items: OrderedDict[str, _Response] = OrderedDict()
        self._continuing: dict[int, bool] = {}
        """Turns whose response ended at a function call: the client runs it and answers, and
        what the model says next opens the turn's next response. True once the client's
        `response.create` for it came."""

    def attach(self, hooks: SessionHooks) -> None:
        self._hooks = hooks

    # ---- before the session ----------------------------------------------------------------

    async def negotiate(self) -> bool:
        """`session.created`, then every `session.update` until another event arrives (kept
        for the session) or `start_timeout_s` passes. False: the client left or was closed."""
        try:
            await self._emit(SessionCreated(session=self._info()))
            async with asyncio.timeout(self._base.limits.start_timeout_s):
                while True:
                    frame = await self._socket.receive()
                    if frame is None:
                        return False
                    event = await self._parse(frame)
                    if isinstance(event, SessionUpdate):
                        await self._update(event)
                    elif event is not None:
                        self._first = event
                        break
        except TimeoutError:
            pass
        except ProtocolViolation as violation:  # an oversized event, a flood
            with contextlib.suppress(ClientGone, SlowConsumer):
                await self._error(violation.reason, violation.error_code)
                await self._socket.close(violation.close_code, violation.reason[:120])
            return False
        except (ClientGone, SlowConsumer):
            return False
        self._frames.append(self._session_start())
        return True

    def _session_start(self) -> str:
        codec, rate = {
            "audio/pcm": (InputCodec.PCM16, PCM_RATE),
            "audio/pcmu": (InputCodec.MULAW, None),
            "audio/pcma": (InputCodec.PCM16, 8000),  # decoded here from A-law
        }[self._settings.input_format]
        start = protocol.SessionStart(input=protocol.InputFormat(codec=codec, sample_rate=rate))
        return protocol.encode(start)

    # ---- client -> session -----------------------------------------------------------------

    async def receive(self) -> str | bytes | None:
        while not self._frames:
            event, self._first = self._first, None
            if event is None:
                frame = await self._socket.receive()
                if frame is None:
                    return None
                event = await self._parse(frame)
            if event is not None:
                await self._handle(event)
        return self._frames.popleft()

    async def _parse(self, frame: str | bytes) -> ClientEvent | None:
        """The event in `frame`, or None after telling the client what is wrong with it."""
        if isinstance(frame, bytes):
            if await self._allowed():
                await self._error(
                    "binary frames are not Realtime events: send JSON text", "invalid_event"
                )
            return None
        check_frame_size(frame, self._limit)  # the session closes 1009, with an `error`
        try:
            event: ClientEvent = _decoder.decode(frame)
        except (msgspec.DecodeError, RecursionError) as e:
            if await self._allowed():
                malformed = "malformed" in str(e) or isinstance(e, RecursionError)
                await self._error(
                    f"invalid event: {e}",
                    "invalid_json" if malformed else "invalid_event",
                    param=_path(str(e)),
                    event_id=None if malformed else _event_id(frame),
                )
            return None
        if isinstance(event, AudioAppend) or await self._allowed():
            return event
        return None

    async def _allowed(self) -> bool:
        """The session's rule for control frames (`limits.control_frames_per_s`), applied to
        the events answered here, which never reach the session: one `error` per flood, a
        1008 close if it goes on for another second's worth. Audio appends are not counted."""
        limit = self._base.limits.control_frames_per_s
        if self._bucket.take(asyncio.get_running_loop().time()):
            self._refused = 0
            return True
        self._refused += 1
        if self._refused == 1:
            await self._error(
                f"more than {limit} events per second; events are being dropped, slow down",
                "rate_limited",
            )
        elif self._refused > limit:
            raise ProtocolViolation(
                CloseCode.POLICY, f"kept sending over {limit} events per second", "rate_limited"
            )
        return False

    async def _handle(self, event: ClientEvent) -> None:
        match event:
            case SessionUpdate():
                await self._update(event)
            case AudioAppend(audio=audio):
                await self._append(audio, event.event_id)
            case AudioCommit():
                await self._commit(event.event_id)
            case AudioClear():
                self._buffered_bytes = 0
                await self._emit(Cleared())
            case ItemCreate(item=item):
                await self._create(item, event.event_id)
            case ItemTruncate():
                await self._truncate(event)
            case ResponseCreate():
                await self._respond(event.event_id)
            case ResponseCancel():
                await self._cancel(event.event_id)

    async def _update(self, event: SessionUpdate) -> None:
        try:
            settings = updated(self._settings, event.session)
            taken = {t.name for t in self._base.tools if t.name} & {f.name for f in settings.tools}
            if taken:
                raise Refused(f"`{min(taken)}` is a tool this gateway runs itself", "tools")
        except Refused as refused:
            await self._error(str(refused), "unsupported_setting", refused.param, event.event_id)
            return
        if self._hooks is not None:  # the session is open: only the instructions may change
            instructions = settings.instructions
            if msgspec.structs.replace(settings, instructions=self._settings.instructions) != (
                self._settings
            ):
                await self._error(
                    "audio formats, turn detection, voice and tools are fixed once the "
                    "conversation has started: send them in the first session.update",
                    "session_update_too_late",
                    "session",
                    event.event_id,
                )
                settings = msgspec.structs.replace(self._settings, instructions=instructions)
            if instructions is not None and instructions != self._settings.instructions:
                self._hooks.instruct(instructions)
        self._settings = settings
        self.pipeline = session_pipeline(self._base, settings)
        await self._emit(SessionUpdated(session=self._info()))

    async def _append(self, audio: str, event_id: str | None) -> None:
        try:
            data = binascii.a2b_base64(audio, strict_mode=True)
        except binascii.Error as e:
            await self._error(f"audio is not base64 ({e})", "invalid_audio", "audio", event_id)
            return
        if not data:
            return
        self._buffered_bytes += len(data)
        self._heard_bytes += len(data)
        self._frames.append(
            alaw_decode(data) if self._settings.input_format == "audio/pcma" else data
        )

    async def _commit(self, event_id: str | None) -> None:
        buffered_ms = self._buffered_bytes // self._input_bytes_per_ms()
        if buffered_ms < MIN_COMMIT_MS:
            await self._error(
                f"buffer too small: expected at least {MIN_COMMIT_MS}ms of audio, but the "
                f"buffer only has {buffered_ms}ms",
                "input_audio_buffer_commit_empty",
                event_id=event_id,
            )
            return
        self._buffered_bytes = 0
        item = self._committed = self._next_user_item()
        await self._emit(Committed(item_id=item, previous_item_id=self._last_item))
        self._frames.append(protocol.encode(protocol.AudioEnd()))

    async def _create(self, item: ItemIn, event_id: str | None) -> None:
        texts = [c.text for c in item.content if c.type == "input_text" and c.text]
        if item.type == "function_call_output":
            await self._output(item, event_id)
            return
        if item.type != "message" or item.role != "user" or not texts:
            await self._error(
                "only user messages with input_text content can be added here",
                "unsupported_item",
                "item",
                event_id,
            )
            return
        text = " ".join(texts)
        item_id = item.id or self._new_id("item")
        created = Item(
            id=item_id,
            status="completed",
            role="user",
            content=[Content(type="input_text", text=text)],
        )
        await self._emit(ItemAdded(item=created, previous_item_id=self._last_item))
        await self._emit(ItemDone(item=created, previous_item_id=self._last_item))
        self._last_item = item_id
        self._typed.append(text)

    async def _output(self, item: ItemIn, event_id: str | None) -> None:
        """A function's result: to the session as the call's `tool_result` (parsed when it is
        JSON, so the model reads the value rather than a quoted string)."""
        if item.call_id is None or item.output is None:
            await self._error(
                "a function_call_output needs its call_id and its output",
                "missing_required_parameter",
                "item.call_id" if item.call_id is None else "item.output",
                event_id,
            )
            return
        added = FunctionOutputItem(
            id=item.id or self._new_id("item"), call_id=item.call_id, output=item.output
        )
        await self._emit(ItemAdded(item=added, previous_item_id=self._last_item))
        await self._emit(ItemDone(item=added, previous_item_id=self._last_item))
        self._last_item = added.id
        try:
            output: Any = msgspec.json.decode(item.output)
        except msgspec.DecodeError:
            output = item.output
        self._frames.append(
            protocol.encode(protocol.ToolOutput(call_id=item.call_id, output=output))
        )

    async def _respond(self, event_id: str | None) -> None:
        if self._continuing and not self._typed:
            # The reply goes on once the function results are in: its response opens then.
            self._continuing = dict.fromkeys(self._continuing, True)
            return
        active = self._active()
        if active is not None and active.unclaimed:
            active.unclaimed = False  # the model went on before the client asked it to
            return
        if active is not None:
            await self._error(
                f"conversation already has an active response in progress: {active.id}; wait "
                "until it is finished before creating a new one",
                "conversation_already_has_active_response",
                event_id=event_id,
            )
            return
        if self._typed:
            text = "\n".join(self._typed)[:10_000]
            self._typed = []
            self._unbound = await self._open_response(None)
            self._frames.append(protocol.encode(protocol.Text(text=text)))
        elif self._committed is None:
            await self._error(
                "nothing to respond to: add a user item or commit audio first (this gateway "
                "answers the user; it does not speak first)",
                "nothing_to_respond_to",
                event_id=event_id,
            )
        # else: the committed audio's response opens when its transcript is in

    async def _cancel(self, event_id: str | None) -> None:
        active = self._active()
        if active is None:
            await self._error(
                "cancellation failed: no active response found",
                "response_cancel_not_active",
                event_id=event_id,
            )
            return
        active.cancelled = "client_cancelled"
        self._frames.append(protocol.encode(protocol.Interrupt()))

    async def _truncate(self, event: ItemTruncate) -> None:
        response = self._items.get(event.item_id)
        if response is None:
            await self._error(
                f"no assistant audio item {event.item_id!r} to truncate",
                "item_truncate_invalid_item_id",
                "item_id",
                event.event_id,
            )
            return
        if event.audio_end_ms > response.audio_ms + 1:
            await self._error(
                f"audio_end_ms {event.audio_end_ms} is longer than the item's "
                f"{response.audio_ms:.0f} ms of audio",
                "invalid_value",
                "audio_end_ms",
                event.event_id,
            )
            return
        if response.open:
            response.cancelled = response.cancelled or "client_cancelled"
        if response.turn_id is not None and self._hooks is not None:
            await self._hooks.truncate(response.turn_id, event.audio_end_ms)
        await self._emit(
            ItemTruncated(
                item_id=event.item_id,
                content_index=event.content_index,
                audio_end_ms=event.audio_end_ms,
            )
        )

    # ---- session -> client -----------------------------------------------------------------

    async def send_text(self, data: str) -> None:
        match protocol.decode_server(data):
            case protocol.SpeechStarted(t_ms=t_ms):
                item = self._user_item = self._user_item or self._new_id("item")
                await self._emit(SpeechStarted(audio_start_ms=t_ms, item_id=item))
            case protocol.SpeechStopped(t_ms=t_ms):
                self._buffered_bytes = 0  # the server's VAD took this audio
                await self._emit(SpeechStopped(audio_end_ms=t_ms, item_id=self._next_user_item()))
            case protocol.TranscriptFinal(turn_id=turn_id, text=text):
                await self._heard(turn_id, text)
            case protocol.ToolCall(runs_on=protocol.ToolRunsOn.CLIENT) as call:
                response = await self._current(call.turn_id)
                if response is not None and response.open:
                    await self._call(response, call)
            case protocol.LLMToken(turn_id=turn_id, text=text):
                response = await self._current(turn_id)
                if response is not None and response.open:
                    await self._speak(response)
                    response.transcript.append(text)
                    await self._emit(TranscriptDelta(delta=text, **self._part(response)))
            case protocol.Interrupted(turn_id=turn_id):
                response = self._response(turn_id)
                if response is not None and response.open:
                    response.cancelled = response.cancelled or "turn_detected"
            case protocol.TurnEnd(turn_id=turn_id, reason=reason):
                # Cut while the client ran a function: nothing more is said, so no response.
                if reason is TurnEndReason.COMPLETED:
                    response = await self._current(turn_id)
                else:
                    response = self._response(turn_id)
                self._continuing.pop(turn_id, None)
                if response is not None and response.open:
                    await self._close_response(response, reason)
            case protocol.Error(code=code, message=message, turn_id=turn_id):
                if code is ErrorCode.NO_SPEECH:
                    self._committed = None  # no transcript comes: nothing opens its response
                response = self._response(turn_id) if turn_id is not None else None
                if response is not None and response.open:
                    response.error = message  # reported in its `response.done`
                else:
                    await self._error(message, _CODES.get(code, str(code)), kind=_kind(code))
            case _:
                pass  # session_started, partials, pauses: nothing in the Realtime API

    async def send_bytes(self, data: bytes) -> None:
        header, payload = protocol.unpack_audio(data)
        response = await self._current(header.turn_id) if payload else None
        if not payload or response is None or not response.open:
            return
        fmt = self._settings.output_format
        if fmt == "audio/pcma":
            payload = alaw_encode(payload)
            response.audio_ms += len(payload) / 8
        else:
            response.audio_ms += len(payload) / (8 if fmt == "audio/pcmu" else 2 * PCM_RATE / 1000)
        delta = base64.b64encode(payload).decode()
        await self._speak(response)
        await self._emit(AudioDelta(delta=delta, **self._part(response)))

    async def close(self, code: int, reason: str) -> None:
        await self._socket.close(code, reason)

    async def _heard(self, turn_id: int, text: str) -> None:
        """A finished user turn: its audio item, its transcript, and the response to it."""
        item_id = self._next_user_item()
        self._user_item = None
        if self._committed != item_id:
            await self._emit(Committed(item_id=item_id, previous_item_id=self._last_item))
        self._committed = None
        previous, self._last_item = self._last_item, item_id
        heard = Item(
            id=item_id, status="completed", role="user", content=[Content(type="input_audio")]
        )
        await self._emit(ItemAdded(item=heard, previous_item_id=previous))
        await self._emit(TranscriptionDelta(item_id=item_id, delta=text))
        seconds = self._heard_bytes / self._input_bytes_per_ms() / 1000
        self._heard_bytes = 0
        await self._emit(
            TranscriptionCompleted(item_id=item_id, transcript=text, usage=Usage(seconds=seconds))
        )
        heard.content = [Content(type="input_audio", transcript=text)]
        await self._emit(ItemDone(item=heard, previous_item_id=previous))
        self._highest_turn = max(self._highest_turn, turn_id)
        self._responses[turn_id] = await self._open_response(turn_id)

    async def _current(self, turn_id: int) -> _Response | None:
        """The turn's open response; after a function call, the next one, opened now that
        the model goes on (the filler while the client runs it, or what it says with the
        results)."""
        response = self._response(turn_id)
        if response is None and turn_id in self._continuing:
            asked = self._continuing.pop(turn_id)
            response = self._responses[turn_id] = await self._open_response(turn_id)
            response.unclaimed = not asked
        return response

    async def _call(self, response: _Response, call: protocol.ToolCall) -> None:
        """A function the client runs: its `function_call` item, then the response ends, as
        OpenAI's does, so the client runs it and answers with `function_call_output`. Calls
        of one round each end a response of their own."""
        arguments = msgspec.json.encode(call.arguments).decode()
        item = FunctionCallItem(
            id=self._new_id("item"),
            status="in_progress",
            call_id=call.call_id,
            name=call.name,
            arguments="",
        )
        response.calls.append(item)
        index = len(response.calls) - 1 + response.speaking  # after the audio message, if any
        where: dict[str, Any] = {
            "response_id": response.id,
            "item_id": item.id,
            "output_index": index,
        }
        await self._emit(OutputItemAdded(response_id=response.id, output_index=index, item=item))
        await self._emit(ItemAdded(item=item, previous_item_id=self._last_item))
        previous, self._last_item = self._last_item, item.id
        await self._emit(ArgumentsDelta(call_id=call.call_id, delta=arguments, **where))
        await self._emit(
            ArgumentsDone(call_id=call.call_id, name=call.name, arguments=arguments, **where)
        )
        item.status, item.arguments = "completed", arguments
        await self._emit(OutputItemDone(response_id=response.id, output_index=index, item=item))
        await self._emit(ItemDone(item=item, previous_item_id=previous))
        await self._close_response(response, TurnEndReason.COMPLETED)
        if response.turn_id is not None:
            self._continuing[response.turn_id] = False

    async def _open_response(self, turn_id: int | None) -> _Response:
        n = self._new_id("")
        response = _Response(id=f"resp{n}", item_id=f"item{n}", turn_id=turn_id)
        await self._emit(ResponseCreated(response=self._response_info(response, "in_progress")))
        return response

    async def _speak(self, response: _Response) -> None:
        """Announce the response's audio message item, before its first word or audio."""
        if response.speaking:
            return
        response.speaking = True
        response.previous_item_id = self._last_item
        self._items[response.item_id] = response
        while len(self._items) > KEPT_ITEMS:
            self._items.popitem(last=False)
        item = self._item(response, "in_progress")
        await self._emit(OutputItemAdded(response_id=response.id, item=item))
        await self._emit(ItemAdded(item=item, previous_item_id=response.previous_item_id))
        self._last_item = response.item_id
        await self._emit(PartAdded(part=Part(transcript=""), **self._part(response)))

    async def _close_response(self, response: _Response, reason: TurnEndReason) -> None:
        response.open = False
        if response.turn_id is not None:
            self._responses.pop(response.turn_id, None)
        transcript = "".join(response.transcript)
        status = {
            TurnEndReason.COMPLETED: "completed",
            TurnEndReason.INTERRUPTED: "cancelled",
            TurnEndReason.ERROR: "failed",
        }[reason]
        details = None
        if status == "cancelled":
            details = StatusDetails(type="cancelled", reason=response.cancelled or "turn_detected")
        elif status == "failed":
            error = ErrorInfo(type="server_error", message=response.error or "provider failed")
            details = StatusDetails(type="failed", error=error)
        info = self._response_info(response, status, details)
        info.output = [*response.calls]
        if response.speaking:
            item = self._item(response, "completed" if status == "completed" else "incomplete")
            part = self._part(response)
            await self._emit(AudioDone(**part))
            await self._emit(TranscriptDone(transcript=transcript, **part))
            await self._emit(PartDone(part=Part(transcript=transcript), **part))
            await self._emit(OutputItemDone(response_id=response.id, item=item))
            await self._emit(ItemDone(item=item, previous_item_id=response.previous_item_id))
            info.output.insert(0, item)
        await self._emit(ResponseDone(response=info))

    def _response(self, turn_id: int) -> _Response | None:
        """The response for `turn_id`; the first turn id never seen before is the typed
        turn's response opened at `response.create` (the session numbers turns in order)."""
        response = self._responses.get(turn_id)
        if response is None and self._unbound is not None and turn_id > self._highest_turn:
            response, self._unbound = self._unbound, None
            response.turn_id = turn_id
            self._responses[turn_id] = response
        self._highest_turn = max(self._highest_turn, turn_id)
        return response

    def _active(self) -> _Response | None:
        if self._unbound is not None:
            return self._unbound
        return next((r for r in self._responses.values() if r.open), None)

    def _item(self, response: _Response, status: str) -> Item:
        return Item(
            id=response.item_id,
            status=status,
            role="assistant",
            content=[Content(type="output_audio", transcript="".join(response.transcript))],
        )

    def _response_info(
        self, response: _Response, status: str, details: StatusDetails | None = None
    ) -> ResponseInfo:
        return ResponseInfo(
            id=response.id,
            status=status,
            status_details=details,
            conversation_id=f"conv_{self._id}",
        )

    @staticmethod
    def _part(response: _Response) -> dict[str, Any]:
        return {"response_id": response.id, "item_id": response.item_id}

    def _next_user_item(self) -> str:
        if self._user_item is None:
            self._user_item = self._new_id("item")
        return self._user_item

    def _new_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._id}{self._counter:04d}"

    def _input_bytes_per_ms(self) -> int:
        return 2 * PCM_RATE // 1000 if self._settings.input_format == "audio/pcm" else 8

    def _info(self) -> SessionInfo:
        return session_info(self.pipeline, self._settings, self._session_id)

    async def _error(
        self,
        message: str,
        code: str,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        error = ErrorInfo(type=kind, code=code, message=message, param=param, event_id=event_id)
        await self._emit(ErrorEvent(error=error))

    async def _emit(self, event: _ServerEvent) -> None:
        event.event_id = self._new_id("event")
        await send_text(self._socket, _encoder.encode(event).decode(), self._send_timeout_s)


def fatal_error(message: str) -> str:
    """An `error` event for a socket about to close, outside any session."""
    error = ErrorInfo(type="invalid_request_error", code="event_too_large", message=message)
    return _encoder.encode(ErrorEvent(event_id="event_fatal", error=error)).decode()


_CODES = {ErrorCode.UNAUTHORIZED: "invalid_api_key", ErrorCode.SESSION_ENDING: "session_expiring"}


def _kind(code: ErrorCode) -> str:
    if code in (ErrorCode.PROVIDER_ERROR, ErrorCode.INTERNAL):
        return "server_error"
    return "invalid_request_error"


def _path(message: str) -> str | None:
    """msgspec's `$.session.audio` -> OpenAI's `session.audio`."""
    _, found, path = message.rpartition("`$.")
    return path.rstrip("`") if found else None


def _event_id(frame: str) -> str | None:
    try:
        found = _envelope.decode(frame).event_id
    except (msgspec.DecodeError, RecursionError):
        return None
    return found if isinstance(found, str) else None
