"""The pipeline file's schema: every key a `pipelines/*.yaml` file may hold, as msgspec Structs.

One module so that the JSON Schema (`voxgate schema`), the loader's validation and the
session's settings all come from the same types. Config structs forbid unknown keys (a typo
must not be silently ignored), unlike wire messages, which must stay open to new fields.
Provider blocks are tagged unions on `provider`, so each provider gets exactly its own keys
and the adapter receives a typed config. Each field's docstring-like `Meta(description=...)`
ends up in the JSON Schema and so in editors' hover text.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import msgspec
from msgspec import Meta


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


class AuthMode(enum.StrEnum):
    NONE = "none"
    TOKEN = "token"


class VADProvider(enum.StrEnum):
    SILERO = "silero"
    WEBRTC = "webrtc"
    NONE = "none"


class EndOfTurn(enum.StrEnum):
    """What may close the user's turn: the VAD's silence window, the STT's endpointing, or both."""

    VAD = "vad"
    STT = "stt"
    VAD_OR_STT = "vad_or_stt"


Ms = Annotated[int, Meta(ge=0, le=600_000)]
SampleRate = Annotated[int, Meta(ge=8000, le=48000, description="Samples per second.")]


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Base of every config struct: keyword-only, closed to unknown keys, immutable."""


class Auth(Config, frozen=True):
    """Who may open a session: `token` requires an HS256 JWT (claims: pipeline, exp, sub)."""

    mode: AuthMode = AuthMode.NONE
    secret: Annotated[
        str | None,
        Meta(description="HS256 secret for `mode: token`; use `${VOXGATE_TOKEN_SECRET}`."),
    ] = None
    allowed_origins: Annotated[
        list[str], Meta(description="Browser origins allowed to connect; empty: any origin.")
    ] = []


class Input(Config, frozen=True):
    """What clients may send, and the rate VAD and STT work at (input is resampled to it)."""

    codecs: Annotated[
        list[InputCodec], Meta(min_length=1, description="Audio formats clients may send.")
    ] = msgspec.field(default_factory=lambda: [InputCodec.PCM16])
    sample_rate: SampleRate = 16000


class Output(Config, frozen=True):
    """What clients receive in `tts_audio_chunk` frames (mulaw is always 8000 Hz)."""

    codec: OutputCodec = OutputCodec.PCM16
    sample_rate: SampleRate = 24000
    lead_ms: Annotated[int, Meta(ge=100, le=600_000)] = 1000


class VAD(Config, frozen=True):
    provider: VADProvider = VADProvider.SILERO
    threshold: Annotated[
        float, Meta(ge=0.0, le=1.0, description="Speech probability above which audio is speech.")
    ] = 0.5
    min_speech_ms: Annotated[
        Ms, Meta(description="Shortest sound that counts as the user speaking.")
    ] = 250
    min_silence_ms: Annotated[Ms, Meta(description="Silence that ends the user's turn.")] = 600
    speech_pad_ms: Annotated[
        Ms, Meta(description="Audio kept before and after detected speech.")
    ] = 200


class Turns(Config, frozen=True):
    barge_in: Annotated[
        bool, Meta(description="User speech over the assistant's audio interrupts it.")
    ] = True
    min_barge_in_ms: Annotated[
        Ms, Meta(description="Shorter sounds (a cough, 'mm') do not interrupt.")
    ] = 300
    end_of_turn: EndOfTurn = EndOfTurn.VAD_OR_STT
    false_interrupt_ms: Ms = 1500


class Limits(Config, frozen=True):
    max_message_bytes: Annotated[int, Meta(ge=1024)] = 262_144
    max_session_s: Annotated[int, Meta(ge=1)] = 1800
    start_timeout_s: Annotated[float, Meta(gt=0)] = 10
    max_sessions: Annotated[int, Meta(ge=1)] = 200
    outbound_queue: Annotated[int, Meta(ge=4)] = 256
    """Messages buffered for one client before it counts as slow."""
    slow_client_timeout_s: Annotated[float, Meta(gt=0)] = 5.0
    """How long the outbound queue may stay full before the socket is closed with 1013."""
    session_warning_s: Annotated[
        float,
        Meta(ge=0, description="Warn (`error` `session_ending`) this long before max_session_s."),
    ] = 60
    control_frames_per_s: Annotated[
        int,
        Meta(
            ge=1,
            description=(
                "JSON frames a client may send per second (audio is not counted); beyond: "
                "`error` `rate_limited`, then close 1008 if it goes on."
            ),
        ),
    ] = 100


class ProviderBlock(Config, tag_field="provider", frozen=True):
    """Keys every provider block takes (PIPELINES.md)."""

    model: str | None = None
    api_key: Annotated[
        str | None, Meta(description="Use `${{PROVIDER_API_KEY}}`, never the key itself.")
    ] = None
    base_url: Annotated[
        str | None, Meta(description="The provider's API root, or a self-hosted or test endpoint.")
    ] = None
    timeout_ms: Annotated[int, Meta(ge=1)] = 10_000
    options: Annotated[dict[str, Any], Meta(description="Passed to the provider as is.")] = {}


class ScriptedSTT(ProviderBlock, tag="scripted", frozen=True):
    """Emits `partials` while the user speaks and `transcript` `latency_ms` after speech ends."""

    transcript: str = "hello"
    latency_ms: Ms = 150
    partials: bool = True
    words_per_second: Annotated[float, Meta(gt=0)] = 3.0
    language: str = "en-US"
    fallback: list[STTProvider] = []


class ScriptedLLM(ProviderBlock, tag="scripted", frozen=True):
    """Streams `reply` one word at a time: first after `ttft_ms`, then one every `token_ms`."""

    reply: str = "Hello! How can I help?"
    ttft_ms: Ms = 200
    token_ms: Ms = 15
    system_prompt: str = ""
    history_turns: Annotated[int, Meta(ge=0)] = 20
    fail_after_tokens: (
        Annotated[
            int,
            Meta(
                ge=0,
                description=(
                    "Fail like a dropped provider stream after this many tokens "
                    "(to rehearse error handling); unset: never fail."
                ),
            ),
        ]
        | None
    ) = None
    fallback: list[LLMProvider] = []


class ScriptedTTS(ProviderBlock, tag="scripted", frozen=True):
    """Returns a tone as long as the text takes to say, first audio after `ttfb_ms`."""

    ttfb_ms: Ms = 80
    words_per_minute: Annotated[float, Meta(gt=0)] = 180.0
    chunk_ms: Annotated[int, Meta(ge=5, le=1000)] = 40
    voice: str | None = None
    fallback: list[TTSProvider] = []


STTProvider = ScriptedSTT
LLMProvider = ScriptedLLM
TTSProvider = ScriptedTTS


class Pipeline(Config, kw_only=True, frozen=True):
    """One product: its route, audio formats, turn-taking and the three provider stages."""

    version: Annotated[int, Meta(description="Format version; only 1 exists.")] = 1
    name: Annotated[str, Meta(description="Defaults to the file's name without `.yaml`.")] = ""
    route: Annotated[str, Meta(description="WebSocket path; defaults to `/ws/<name>`.")] = ""
    extends: Annotated[
        str | None,
        Meta(description="A file (relative to this one) to start from; lists are replaced."),
    ] = None
    auth: Auth = Auth()
    input: Input = Input()
    output: Output = Output()
    vad: VAD = VAD()
    turns: Turns = Turns()
    stt: STTProvider
    llm: LLMProvider
    tts: TTSProvider
    limits: Limits = Limits()
    log_transcripts: Annotated[
        bool,
        Meta(description="Put what the user said and the assistant answered in the turn log."),
    ] = False
