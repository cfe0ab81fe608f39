"""The pipeline file's building blocks: every key of a `pipelines/*.yaml` file but the
provider blocks' own, as msgspec Structs.

Config structs forbid unknown keys (a typo must not be silently ignored), unlike wire
messages, which must stay open to new fields. Each field's `Meta(description=...)` ends up in
the JSON Schema, so in editors' hover text and docs/pipelines.md.

This module is the bottom of the config layer: it imports nothing of ours but the wire
module, so the audio stack, the providers and the loader can all build on it. Each provider
defines its own block (`adapters/<provider>.py`) on the stage bases here (`STTBlock`,
`LLMBlock`, `TTSBlock`), and `adapters/catalog.py` lists them; `gateway/pipeline.py` puts the
file together.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Self
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from gateway.protocol import InputCodec, OutputCodec

if TYPE_CHECKING:
    from adapters.base import LLM, TTS, STTStream
    from adapters.catalog import LLMProvider, STTProvider, TTSProvider


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


FALLBACK = Meta(
    description="Blocks of the same stage, tried in order when this one fails (README Failover)."
)

Ms = Annotated[int, Meta(ge=0, le=600_000)]
SampleRate = Annotated[int, Meta(ge=8000, le=48000, description="Samples per second.")]


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Base of every config struct: keyword-only, closed to unknown keys, immutable."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A docstring is the block's description in the JSON Schema: give msgspec clean text,
        # so the shipped schema does not change with how a msgspec release formats docstrings
        # (0.23 cleans them, 0.22 kept the source's indentation).
        super().__init_subclass__(**kwargs)
        if cls.__doc__:
            cls.__doc__ = inspect.cleandoc(cls.__doc__)


MIN_SECRET_BYTES = 32
"""HS256 wants a key at least as long as its hash."""


class Auth(Config, frozen=True):
    """Who may open a session: `token` requires an HS256 JWT (claims: pipeline, exp, sub)."""

    mode: Annotated[
        AuthMode,
        Meta(
            description="`none`: anyone may connect (mind `allowed_origins`); `token`: a "
            "session needs a token minted with `secret` (`voxgate token`, or your backend)."
        ),
    ] = AuthMode.NONE
    secret: Annotated[
        str | None,
        Meta(
            description=(
                "HS256 secret for `mode: token`, at least 32 bytes; unset: the server's "
                "`VOXGATE_TOKEN_SECRET` (the route is unavailable until it is set)."
            )
        ),
    ] = None
    allowed_origins: Annotated[
        list[str], Meta(description="Browser origins allowed to connect; empty: any origin.")
    ] = []

    key_env: ClassVar[str] = "VOXGATE_TOKEN_SECRET"

    def resolved_secret(self, env: Mapping[str, str]) -> str | None:
        """The secret tokens are checked with: `secret`, else a long enough `key_env`."""
        secret = self.secret or env.get(self.key_env) or ""
        return secret if len(secret.encode()) >= MIN_SECRET_BYTES else None

    def missing_key(self, env: Mapping[str, str]) -> str | None:
        if self.mode is AuthMode.TOKEN and self.resolved_secret(env) is None:
            return self.key_env
        return None


class Input(Config, frozen=True):
    """What clients may send, and the rate VAD and STT work at (input is resampled to it)."""

    codecs: Annotated[
        list[InputCodec],
        Meta(min_length=1, description="Audio formats clients may send (default: `[pcm16]`)."),
    ] = msgspec.field(default_factory=lambda: [InputCodec.PCM16])
    sample_rate: SampleRate = 16000


class Output(Config, frozen=True):
    """What clients receive in `tts_audio_chunk` frames (mulaw is always 8000 Hz)."""

    codec: Annotated[
        OutputCodec,
        Meta(
            description="`pcm16` (16-bit little-endian), `mulaw` (8 kHz) or `opus` (raw 20 ms "
            "packets for WebCodecs)."
        ),
    ] = OutputCodec.PCM16
    sample_rate: SampleRate = 24000
    lead_ms: Annotated[
        int,
        Meta(
            ge=100,
            le=600_000,
            description="Reply audio sent ahead of the client's playback "
            "position: enough to ride out jitter, little to throw away on a barge-in.",
        ),
    ] = 1000


VAD_RATES: dict[VADProvider, frozenset[int]] = {
    VADProvider.SILERO: frozenset({8000, 16000}),
    VADProvider.WEBRTC: frozenset({8000, 16000, 32000, 48000}),
}
"""The input rates each VAD model runs at (`input.sample_rate` must be one)."""


class VAD(Config, frozen=True):
    """Voice activity detection on the server: when the user starts and stops speaking."""

    provider: Annotated[
        VADProvider,
        Meta(
            description="`silero` (neural, robust to noise), `webrtc` (light), `none` "
            "(turns end on the client's `audio_end` only)."
        ),
    ] = VADProvider.SILERO
    threshold: Annotated[
        float, Meta(ge=0.0, le=1.0, description="Speech probability above which audio is speech.")
    ] = 0.5
    min_speech_ms: Annotated[
        Ms, Meta(description="Shortest sound that counts as the user speaking.")
    ] = 250
    min_silence_ms: Annotated[
        Ms,
        Meta(
            description=(
                "Silence that ends the user's turn with `turns.detector: silence` (or when "
                "the end-of-turn model cannot run)."
            )
        ),
    ] = 600
    speech_pad_ms: Annotated[
        Ms, Meta(description="Audio kept before and after detected speech.")
    ] = 200


class TurnDetector(enum.StrEnum):
    """What decides that a pause is the end of the user's turn."""

    SMART_TURN = "smart_turn"
    SILENCE = "silence"


BACKCHANNELS = [
    "mm hmm",
    "mhm",
    "mm",
    "mmm",
    "hmm",
    "hm",
    "uh huh",
    "uh uh",  # what recognizers often make of "uh-huh"
    "yeah",
    "yep",
    "yes",
    "okay",
    "ok",
    "right",
    "sure",
    "i see",
    "got it",
    "alright",
    "all right",
    "cool",
    "nice",
    "wow",
    "oh",
    "ah",
]


class Turns(Config, frozen=True):
    """When the user's turn ends and what their speech does to the assistant's reply."""

    detector: Annotated[
        TurnDetector,
        Meta(
            description=(
                "`smart_turn`: an end-of-turn model (smart-turn v3.2, on this machine) and the "
                "transcript decide whether a pause ends the turn, so complete requests end "
                "sooner and a pause mid-sentence does not; `silence`: `vad.min_silence_ms` "
                "of silence ends it."
            )
        ),
    ] = TurnDetector.SMART_TURN
    threshold: Annotated[
        float,
        Meta(ge=0.0, le=1.0, description="Model score from which a pause ends the turn."),
    ] = 0.5
    min_wait_ms: Annotated[
        Ms,
        Meta(
            description=(
                "Silence after which the turn is judged (the STT's final and the model's "
                "score are asked for); a complete turn ends as soon as both are in."
            )
        ),
    ] = 200
    max_wait_ms: Annotated[
        Ms,
        Meta(description="Silence that ends a turn the model and the words judged unfinished."),
    ] = 2500
    model: Annotated[
        str | None,
        Meta(description="Path to a smart-turn ONNX file; unset: the one in `pipecat-ai`."),
    ] = None
    barge_in: Annotated[
        bool, Meta(description="User speech over the assistant's audio interrupts it.")
    ] = True
    min_barge_in_ms: Annotated[
        Ms,
        Meta(
            description=(
                "Speech over the reply this long pauses it (`reply_paused`); shorter sounds "
                "do nothing."
            )
        ),
    ] = 300
    backchannels: Annotated[
        list[str],
        Meta(
            description=(
                "Acknowledgements that neither interrupt a reply nor become a turn; a paused "
                "reply resumes (`reply_resumed`). Empty: every word interrupts."
            )
        ),
    ] = msgspec.field(default_factory=lambda: list(BACKCHANNELS))
    backchannel_max_ms: Annotated[
        Ms,
        Meta(
            description=(
                "Speech over the reply longer than this interrupts it, whatever its words "
                "(a backchannel is short)."
            )
        ),
    ] = 1300
    end_of_turn: Annotated[
        EndOfTurn,
        Meta(
            description=(
                "What may end the user's turn: the VAD's silence (judged by `detector`), the "
                "STT's own endpointing, or either (with `smart_turn` an STT endpoint only "
                "brings the words; the detector decides)."
            )
        ),
    ] = EndOfTurn.VAD_OR_STT
    preemptive_ms: (
        Annotated[
            int,
            Meta(
                ge=0,
                le=600_000,
                description=(
                    "After this much silence, ask for the transcript and start the reply "
                    "without sending it; it goes out at once when the turn ends, and is thrown "
                    "away if the user speaks on. Saves the LLM's and TTS's first latency per "
                    "turn, at the cost of discarded work on mid-sentence pauses. Unset: off."
                ),
            ),
        ]
        | None
    ) = None


class ToolEndpoint(Config, frozen=True):
    """Keys every server-side tool takes: where it is, what is sent with each request, and
    how long a call may take."""

    url: Annotated[str, Meta(description="The web API's URL, or the MCP server's endpoint.")]
    headers: Annotated[
        dict[str, str],
        Meta(description="Sent with every request; give secrets as `${VAR}` (never logged)."),
    ] = {}
    timeout_ms: Annotated[
        int, Meta(ge=1, le=600_000, description="Bound on each call; past it `ok: false`.")
    ] = 5000
    max_bytes: Annotated[
        int,
        Meta(
            ge=256,
            le=1_048_576,
            description="Longest answer the model is given (UTF-8 bytes); a longer one fails.",
        ),
    ] = 16_384


class HTTPTool(ToolEndpoint, frozen=True):
    """A web API: the arguments are POSTed to `url` as JSON, its answer goes to the LLM."""


class MCPTool(ToolEndpoint, frozen=True):
    """Every tool of an MCP server, over streamable HTTP at `url` (e.g. `.../mcp`)."""

    refresh_s: Annotated[
        float,
        Meta(
            gt=0, description="How long the server's tool list is reused before it is listed again."
        ),
    ] = 300
    only: Annotated[
        list[str] | None,
        Meta(description="Offer only these of the server's tools; unset: all of them."),
    ] = None


class Tool(Config, frozen=True):
    """One tool the LLM may call (`http`), every tool of an MCP server (`mcp`), or, with
    neither, a tool the client runs (the SDK's tool handler)."""

    name: (
        Annotated[
            str,
            Meta(
                pattern="^[A-Za-z0-9_-]{1,64}$",
                description="What the LLM calls it (not for `mcp`: the server names its tools).",
            ),
        ]
        | None
    ) = None
    description: Annotated[
        str, Meta(description="What it does and when to use it: the LLM reads this.")
    ] = ""
    parameters: Annotated[
        dict[str, Any], Meta(description="A JSON Schema object for its arguments.")
    ] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    http: Annotated[HTTPTool | None, Meta(description="Run it by POSTing to a web API.")] = None
    mcp: Annotated[MCPTool | None, Meta(description="Offer every tool of an MCP server.")] = None
    timeout_ms: Annotated[
        int,
        Meta(
            ge=1,
            le=600_000,
            description="A client tool's time to answer with `tool_result`; past it `ok: false`.",
        ),
    ] = 10_000


class ToolFiller(Config, frozen=True):
    """What the assistant says while a slow tool runs, so the caller is not left in silence."""

    after_ms: Annotated[
        int, Meta(ge=0, description="Said when the tools have run this long without an answer.")
    ] = 1200
    text: Annotated[str, Meta(min_length=1, description="The words.")] = "One moment."


class ToolUse(Config, frozen=True):
    """How replies use `tools`."""

    max_rounds: Annotated[
        int,
        Meta(
            ge=1,
            le=10,
            description=(
                "Rounds of tool calls in one reply; then the LLM must answer with what it has."
            ),
        ),
    ] = 3
    filler: Annotated[
        ToolFiller | None, Meta(description="Said while slow tools run; null: stay silent.")
    ] = ToolFiller()


class Limits(Config, frozen=True):
    """What one client may cost this route: frame sizes, time, sessions, buffered output."""

    max_message_bytes: Annotated[
        int, Meta(ge=1024, description="Largest frame a client may send; beyond: close 1009.")
    ] = 262_144
    max_session_s: Annotated[
        int, Meta(ge=1, description="Longest session; then it closes 1000 (warned before).")
    ] = 1800
    start_timeout_s: Annotated[
        float,
        Meta(
            gt=0,
            description=(
                "Time a socket has to send a valid `session_start` after connecting (close "
                "1008); until then it holds no session slot, only an unauthenticated one."
            ),
        ),
    ] = 5
    max_sessions: (
        Annotated[
            int,
            Meta(
                ge=1,
                description=(
                    "Sessions on this route per process; beyond: close 1013. Unset: only the "
                    "process's `--max-sessions` applies, or, when a stage runs an embedded "
                    "model (whisper, llama, piper), 1.5 per CPU (at least 1), as measured by "
                    "bench/embedded.py --users."
                ),
            ),
        ]
        | None
    ) = None
    outbound_queue: Annotated[
        int, Meta(ge=4, description="Messages buffered for one client before it counts as slow.")
    ] = 256
    slow_client_timeout_s: Annotated[
        float,
        Meta(
            gt=0,
            description="How long that buffer may stay full before the socket is closed with 1013.",
        ),
    ] = 5.0
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
    """Keys every provider block takes (docs/pipelines.md)."""

    model: Annotated[str | None, Meta(description="The provider's model.")] = None
    api_key: Annotated[
        str | None, Meta(description="Use `${PROVIDER_API_KEY}`, never the key itself.")
    ] = None
    base_url: Annotated[
        str | None, Meta(description="The provider's API root, or a self-hosted or test endpoint.")
    ] = None
    timeout_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="Bound on connecting and on a turn's first result; past it "
            "the turn moves to the next provider of `fallback`.",
        ),
    ] = 10_000
    options: Annotated[dict[str, Any], Meta(description="Passed to the provider as is.")] = {}

    key_env: ClassVar[str | None] = None
    """The environment variable that holds the provider's key when `api_key` is empty."""
    runs_here: ClassVar[bool] = False
    """The provider computes on this machine (an embedded model): each of its sessions costs
    the process CPU seconds per turn, not milliseconds, so routes using it take fewer
    sessions by default (`gateway.capacity`)."""
    own_hosts: ClassVar[tuple[str, ...]] = ()
    """When set, `key_env` is used (and a key needed) only for these hosts (a leading dot: any
    subdomain), so the provider's key never goes to another server `base_url` points at."""

    def key_variable(self) -> str | None:
        """The variable this block's key comes from when `api_key` is empty; None when the
        provider needs no key here (embedded models, a keyless compatible server)."""
        if self.key_env is None or self.base_url is None or not self.own_hosts:
            return self.key_env
        host = urlsplit(self.base_url).hostname or ""
        own = any(host == h or (h.startswith(".") and host.endswith(h)) for h in self.own_hosts)
        return self.key_env if own else None

    def resolved_key(self, env: Mapping[str, str]) -> str | None:
        """The key to send: `api_key`, else the provider's variable; None when there is none."""
        variable = self.key_variable()
        return self.api_key or (env.get(variable) if variable else None) or None

    def missing_key(self, env: Mapping[str, str]) -> str | None:
        """The variable to set on the server when this provider needs a key it does not have."""
        variable = self.key_variable()
        return variable if variable and not self.resolved_key(env) else None

    def provider_name(self) -> str:
        """The block's `provider:` value (its tag)."""
        return str(self.__struct_config__.tag)

    def preload(self) -> None:
        """Load what the provider keeps per process (an embedded model) before serving, so
        the first session does not wait for it; runs on a worker thread at start-up."""


class LLMBlock(ProviderBlock, frozen=True):
    """Keys every LLM block takes: what the model is told and how much of the call it sees."""

    system_prompt: Annotated[
        str, Meta(description="What the model is told first, before the conversation.")
    ] = ""
    history_turns: Annotated[
        int, Meta(ge=0, description="Past exchanges sent with each request (0: none).")
    ] = 20
    temperature: Annotated[
        float, Meta(ge=0.0, le=2.0, description="Sampling temperature: 0 is the most predictable.")
    ] = 0.7
    max_tokens: Annotated[int, Meta(ge=1, description="Longest reply, in tokens.")] = 300
    max_sentences: (
        Annotated[
            int,
            Meta(
                ge=1,
                description=(
                    "The spoken-length limit: a reply ends after this many sentences and the "
                    "model is stopped (the system prompt asks; this makes sure). Unset: no "
                    "limit but `max_tokens`. Whatever it is, a reply that starts repeating "
                    "itself is cut."
                ),
            ),
        ]
        | None
    ) = None
    fallback: Annotated[list[LLMProvider], FALLBACK] = []

    def open(self) -> LLM:
        """This provider's adapter, for one session."""
        raise NotImplementedError


class SendAudio(enum.StrEnum):
    """What of the user's audio an STT is sent."""

    SPEECH = "speech"
    ALL = "all"


class STTBlock(ProviderBlock, frozen=True):
    """Keys every STT block takes."""

    send: Annotated[
        SendAudio | None,
        Meta(
            description=(
                "`speech`: only what the VAD calls speech, with a pre-roll before it and a "
                "tail after it, reaches the STT (what a cloud STT bills by); `all`: every "
                "frame. Unset: `speech` for providers billed by audio time (deepgram, "
                "openai), `all` for the others. The VAD and the turn engine hear every frame "
                "either way."
            )
        ),
    ] = None

    fallback: Annotated[list[STTProvider], FALLBACK] = []

    billed_by_audio: ClassVar[bool] = False

    def speech_only(self) -> bool:
        return self.send is SendAudio.SPEECH if self.send is not None else self.billed_by_audio

    def open(self, sample_rate: int) -> STTStream:
        """This provider's adapter, for one session hearing mono PCM at `sample_rate`."""
        raise NotImplementedError


class TTSBlock(ProviderBlock, frozen=True):
    """Keys every TTS block takes."""

    fallback: Annotated[list[TTSProvider], FALLBACK] = []

    def open(self) -> TTS:
        """This provider's adapter, for one session."""
        raise NotImplementedError

    def voice_name(self) -> str | None:
        """The voice it speaks in, for clients that show one (OpenAI Realtime's `voice`);
        None where the provider has no named voices."""
        return None

    def with_voice(self, voice: str) -> Self:
        """This block speaking in `voice`, a name from the OpenAI Realtime API's voices: the
        same block where the provider has none of them."""
        return self


def name_stage_providers(stt: object, llm: object, tts: object) -> None:
    """Give the stage blocks' `fallback` lists their types: each stage's providers, which
    are defined above this module (adapters/) and listed by adapters/catalog.py, the one
    place a provider is registered. msgspec reads annotations when a type is first used,
    so the catalog names them here when it is imported, before any pipeline is decoded."""
    globals().update(STTProvider=stt, LLMProvider=llm, TTSProvider=tts)


# ---- dialects (../shared/PIPELINES.md `dialects`) ------------------------------------------


class Dialect(enum.StrEnum):
    """A wire protocol a pipeline is served in; every one runs on the same session core."""

    VOXGATE = "voxgate"
    TWILIO = "twilio"
    OPENAI_REALTIME = "openai-realtime"


class DTMF(enum.StrEnum):
    """What a phone caller's key presses do."""

    IGNORE = "ignore"
    TEXT = "text"


class TwilioOptions(Config, frozen=True):
    """How the `twilio` dialect treats a phone call (README "Phone calls")."""

    dtmf: Annotated[
        DTMF,
        Meta(
            description=(
                "`ignore`: key presses do nothing; `text`: the digits pressed become the "
                "caller's typed turn (sent on `#`, or after `dtmf_pause_ms` without a key)."
            )
        ),
    ] = DTMF.IGNORE
    dtmf_pause_ms: Annotated[
        int,
        Meta(
            ge=100,
            le=60_000,
            description="With `dtmf: text`, the pause after the last key that sends the digits.",
        ),
    ] = 1500
