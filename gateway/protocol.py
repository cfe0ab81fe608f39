"""Wire protocol v1.1 (PROTOCOL.md): every message as a msgspec Struct, and the audio header.

Client and server messages are each a tagged union on `type`, decoded by one typed Decoder
built once, so no other module parses JSON by hand. Messages do not forbid unknown fields: a
newer client may add optional fields without breaking an older server. Binary frames carry
audio; the 12-byte header of `tts_audio_chunk` is packed and unpacked only here.

Version 1.1's rule that every field PROTOCOL.md lists without `?` is always on the wire is
kept by the types: such a field has no default (so it is always given and always encoded),
or its message sets `omit_defaults=False`; only the `?` fields default to None and are left
out when unset (tests/test_protocol.py checks every message against the tables).
"""

from __future__ import annotations

import enum
import struct
from typing import Annotated, Any

import msgspec
from msgspec import Meta

SUBPROTOCOL = "voxgate.v1"


class InputCodec(enum.StrEnum):
    """Audio formats a client may send (PROTOCOL.md `session_start.input.codec`)."""

    WEBM_OPUS = "webm/opus"
    OGG_OPUS = "ogg/opus"
    MP4_AAC = "mp4/aac"
    PCM16 = "pcm16"
    MULAW = "mulaw"


class OutputCodec(enum.StrEnum):
    """Audio formats the gateway may send in `tts_audio_chunk` frames."""

    PCM16 = "pcm16"
    MULAW = "mulaw"
    OPUS = "opus"


MULAW_RATE = 8000
"""mu-law audio is 8 kHz, both ways."""
OPUS_RATES = frozenset({48000, 24000, 16000, 12000, 8000})
"""The rates Opus is encoded at (libopus takes no others)."""


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    SERVER_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class ErrorCode(enum.StrEnum):
    BAD_MESSAGE = "bad_message"
    BAD_AUDIO = "bad_audio"
    PROVIDER_ERROR = "provider_error"
    UNAUTHORIZED = "unauthorized"
    SLOW_CONSUMER = "slow_consumer"
    RATE_LIMITED = "rate_limited"
    SESSION_ENDING = "session_ending"
    NO_SPEECH = "no_speech"
    INTERNAL = "internal"


class TurnEndReason(enum.StrEnum):
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    ERROR = "error"


class Message(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    """Base of every JSON message; the subclass's tag is its `type`."""


# ---- client -> server -------------------------------------------------------------------


class Auth(msgspec.Struct, kw_only=True):
    token: str


class InputFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    codec: InputCodec
    sample_rate: Annotated[int, Meta(ge=8000, le=48000)] | None = None
    channels: Annotated[int, Meta(ge=1, le=2)] | None = None
    """Unset: 1 (mono)."""


class OutputRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    codec: OutputCodec | None = None
    sample_rate: Annotated[int, Meta(ge=8000, le=48000)] | None = None


class SessionStart(Message, tag="session_start"):
    input: InputFormat
    auth: Auth | None = None
    output: OutputRequest | None = None
    locale: str | None = None
    voice: str | None = None
    metadata: dict[str, Any] = {}
    resume: str | None = None
    """v1.1: a `resume_token` from an earlier `session_started`, to continue that conversation;
    one that is stale, unknown or not this pipeline's starts a fresh one (never an error)."""


class AudioEnd(Message, tag="audio_end"):
    pass


class Interrupt(Message, tag="interrupt"):
    played_ms: Annotated[int, Meta(ge=0)] | None = None


class Text(Message, tag="text"):
    text: Annotated[str, Meta(min_length=1, max_length=10_000)]


class Playback(Message, tag="playback", omit_defaults=False):
    """`finished` may be left out by a client (it means false) but is always sent by ours."""

    turn_id: int
    played_ms: Annotated[int, Meta(ge=0)]
    finished: bool = False


class ToolOutput(Message, tag="tool_result"):
    """The result of a `runs_on: client` tool (v1.1): any JSON value, or an error."""

    call_id: Annotated[str, Meta(min_length=1, max_length=128)]
    output: Any
    """Null when `error` says why there is none."""
    error: Annotated[str, Meta(max_length=2000)] | None = None


ClientMessage = SessionStart | AudioEnd | Interrupt | Text | Playback | ToolOutput


# ---- server -> client -------------------------------------------------------------------


class OutputFormat(msgspec.Struct, kw_only=True):
    codec: str
    sample_rate: int
    channels: int = 1


class SessionStarted(Message, tag="session_started"):
    session_id: str
    pipeline: str
    input: OutputFormat
    output: OutputFormat
    resume_token: str | None = None
    """v1.1: send it as `session_start.resume` to continue this conversation later."""
    resumed: bool | None = None
    """v1.1: whether this session continues the conversation `session_start.resume` named."""


class SpeechStarted(Message, tag="speech_started"):
    t_ms: int


class SpeechStopped(Message, tag="speech_stopped"):
    t_ms: int


class TranscriptPartial(Message, tag="transcript_partial"):
    turn_id: int
    text: str


class TranscriptFinal(Message, tag="transcript_final"):
    turn_id: int
    text: str


class LLMToken(Message, tag="llm_token"):
    turn_id: int
    text: str


class Interrupted(Message, tag="interrupted"):
    turn_id: int


class ReplyPaused(Message, tag="reply_paused"):
    """The user may be interrupting: pause this turn's playback now, keep its queued audio."""

    turn_id: int


class ReplyResumed(Message, tag="reply_resumed"):
    """It was not an interruption (a backchannel, a cough): resume where playback paused."""

    turn_id: int


class ToolRunsOn(enum.StrEnum):
    SERVER = "server"
    CLIENT = "client"


class ToolCall(Message, tag="tool_call", omit_defaults=False):
    """The assistant calls a tool (v1.1); a client runs `runs_on: client` ones and answers
    with `tool_result`, and only shows the others."""

    turn_id: int
    call_id: str
    name: str
    arguments: dict[str, Any]
    runs_on: ToolRunsOn


class ToolResult(Message, tag="tool_result", omit_defaults=False):
    """A `runs_on: server` tool finished (v1.1); `ok` false: it failed or timed out."""

    turn_id: int
    call_id: str
    ok: bool


class TurnMetrics(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Stage timings in ms on the server clock; a stage that did not run is absent."""

    stt_final_ms: float | None = None
    llm_ttft_ms: float | None = None
    tts_ttfb_ms: float | None = None
    voice_to_voice_ms: float | None = None
    gateway_overhead_ms: float | None = None
    end_of_turn_score: float | None = None
    """The end-of-turn model's P(complete) for the user's turn (`turns.detector: smart_turn`)."""
    end_of_turn_wait_ms: float | None = None
    """Silence, after the user stopped, before the turn was judged over."""
    resumed: int | None = None
    """Times the reply was paused for a backchannel or noise and played on."""


class TurnEnd(Message, tag="turn_end"):
    turn_id: int
    reason: TurnEndReason
    metrics: TurnMetrics = msgspec.field(default_factory=TurnMetrics)


class Error(Message, tag="error"):
    code: ErrorCode
    message: str
    fatal: bool
    turn_id: int | None = None


ServerMessage = (
    SessionStarted
    | SpeechStarted
    | SpeechStopped
    | TranscriptPartial
    | TranscriptFinal
    | LLMToken
    | Interrupted
    | ReplyPaused
    | ReplyResumed
    | ToolCall
    | ToolResult
    | TurnEnd
    | Error
)

_client_decoder = msgspec.json.Decoder(ClientMessage)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_encoder = msgspec.json.Encoder()


def decode_client(data: str | bytes) -> ClientMessage:
    """Parse one client text frame; raises msgspec.DecodeError with a `$.path` on bad input.

    JSON nested deeper than the interpreter's recursion limit (a 2 KB frame can do it) makes
    msgspec raise RecursionError: it is bad input like any other, not a server error."""
    try:
        message: ClientMessage = _client_decoder.decode(data)
    except RecursionError:
        raise msgspec.DecodeError("JSON nested too deeply; messages are flat objects") from None
    return message


def decode_server(data: str | bytes) -> ServerMessage:
    """Parse one server text frame (clients, tests and the load generator use this)."""
    message: ServerMessage = _server_decoder.decode(data)
    return message


def encode(message: Message) -> str:
    return _encoder.encode(message).decode()


# ---- binary audio header ----------------------------------------------------------------

AUDIO_KIND_TTS = 1
FLAG_LAST = 0x01
_HEADER = struct.Struct(">BBHII")
HEADER_SIZE = _HEADER.size


class AudioHeader(msgspec.Struct, frozen=True):
    turn_id: int
    seq: int
    last: bool = False
    kind: int = AUDIO_KIND_TTS


def pack_audio(turn_id: int, seq: int, payload: bytes, last: bool = False) -> bytes:
    return _HEADER.pack(AUDIO_KIND_TTS, FLAG_LAST if last else 0, 0, turn_id, seq) + payload


def unpack_audio(frame: bytes) -> tuple[AudioHeader, bytes]:
    """Split a `tts_audio_chunk` frame; raises ValueError when it is shorter than the header."""
    if len(frame) < HEADER_SIZE:
        raise ValueError(f"audio frame of {len(frame)} bytes is shorter than its header")
    kind, flags, _, turn_id, seq = _HEADER.unpack_from(frame)
    return AudioHeader(turn_id, seq, bool(flags & FLAG_LAST), kind), frame[HEADER_SIZE:]


def json_schema() -> dict[str, Any]:
    """JSON Schema of both directions' messages, from which the JS SDK's types are generated."""
    (client, server), components = msgspec.json.schema_components(
        (ClientMessage, ServerMessage), ref_template="#/$defs/{name}"
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Voxgate wire protocol v1",
        "$defs": {**components, "ClientMessage": client, "ServerMessage": server},
    }
