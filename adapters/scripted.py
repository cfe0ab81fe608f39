"""Deterministic providers with configured latencies, for tests, load runs and keyless demos.

They behave like real streaming providers where the gateway can tell the difference: the STT
only "hears" words while the audio has energy and answers `latency_ms` after the turn ends,
the LLM streams word by word after a time to first token, and the TTS returns audio as long
as the text takes to say. Because their latencies are known exactly, the gateway's own share
of voice-to-voice time is the measured time minus those latencies.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from adapters.base import ChatMessage, Final, Local, Partial, STTEvent, ToolCall, ToolSpec
from gateway.config import Config, LLMBlock, Ms, STTBlock, TTSBlock
from gateway.errors import ProviderError

# RMS (int16 units) above which a chunk counts as speech: about -40 dBFS.
_SPEECH_RMS = 330.0


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

    def open(self, sample_rate: int) -> ScriptedSTTStream:
        return ScriptedSTTStream(self, sample_rate)


class ScriptedToolCall(Config, frozen=True):
    name: Annotated[str, Meta(description="The tool to call.")]
    arguments: Annotated[dict[str, Any], Meta(description="Its arguments.")] = msgspec.field(
        default_factory=dict
    )


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
    tool_calls: Annotated[
        list[ScriptedToolCall],
        Meta(
            description=(
                "Tools to call (all at once, in one round) instead of answering the user, "
                "those of them the pipeline offers; then `after_tools` is the reply."
            )
        ),
    ] = msgspec.field(default_factory=list)
    tool_rounds: Annotated[
        int, Meta(ge=1, description="Rounds of `tool_calls` before answering, while offered.")
    ] = 1
    after_tools: Annotated[
        str,
        Meta(description="The reply once tool results are back; `{results}`: their outputs."),
    ] = "{results}"

    def open(self) -> ScriptedLLMClient:
        return ScriptedLLMClient(self)


class ScriptedTTS(TTSBlock, tag="scripted", frozen=True):
    """Returns a tone as long as the text takes to say, first audio after `ttfb_ms`."""

    ttfb_ms: Annotated[Ms, Meta(description="Time to the first audio.")] = 80
    words_per_minute: Annotated[
        float, Meta(gt=0, description="Speaking rate: how long the tone for a text lasts.")
    ] = 180.0
    chunk_ms: Annotated[int, Meta(ge=5, le=1000, description="Audio per chunk.")] = 40
    voice: Annotated[str | None, Meta(description="Ignored: scripted TTS plays a tone.")] = None

    def open(self) -> ScriptedTTSClient:
        return ScriptedTTSClient(self)


class ScriptedSTTStream(Local):
    """Reveals `transcript` word by word while speech energy arrives; final on `finalize`."""

    def __init__(self, config: ScriptedSTT, sample_rate: int) -> None:
        self._config = config
        self._words = config.transcript.split()
        self._sample_rate = sample_rate
        self._voiced_samples = 0
        self._revealed = 0
        self._events: asyncio.Queue[STTEvent | float | None] = asyncio.Queue()

    async def send_audio(self, pcm: bytes) -> None:
        samples = np.frombuffer(pcm, dtype="<i2")
        if not samples.size:
            return
        rms = math.sqrt(float(np.mean(samples.astype(np.float32) ** 2)))
        if rms < _SPEECH_RMS:
            return
        self._voiced_samples += samples.size
        if not self._config.partials:
            return
        heard_s = self._voiced_samples / self._sample_rate
        words = min(len(self._words), max(1, int(heard_s * self._config.words_per_second)))
        if words > self._revealed:
            self._revealed = words
            self._events.put_nowait(Partial(" ".join(self._words[:words])))

    async def finalize(self, continues: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._events.put_nowait(loop.time() + self._config.latency_ms / 1000)

    async def events(self) -> AsyncGenerator[STTEvent, None]:
        loop = asyncio.get_running_loop()
        while (event := await self._events.get()) is not None:
            if isinstance(event, float):
                await asyncio.sleep(max(0.0, event - loop.time()))
                heard = self._voiced_samples > 0
                self._voiced_samples = self._revealed = 0
                yield Final(self._config.transcript if heard else "")
            else:
                yield event

    async def aclose(self) -> None:
        self._events.put_nowait(None)


class ScriptedLLMClient(Local):
    """Streams `reply` (with `{user}` replaced by the last user message) word by word, or
    calls its scripted tools and then streams `after_tools`."""

    _ids = itertools.count(1)

    def __init__(self, config: ScriptedLLM) -> None:
        self._config = config

    async def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncGenerator[str | ToolCall, None]:
        user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        await asyncio.sleep(self._config.ttft_ms / 1000)
        offered = {t.name for t in tools}
        calls = [c for c in self._config.tool_calls if c.name in offered]
        if calls and _tool_rounds(messages) < self._config.tool_rounds:
            for call in calls:
                yield ToolCall(f"call_{next(self._ids)}", call.name, json.dumps(call.arguments))
            return
        reply = self._config.reply
        if messages and messages[-1].role == "tool":
            results = " ".join(m.content for m in _last_results(messages))
            reply = self._config.after_tools.replace("{results}", results)
        for i, word in enumerate(reply.replace("{user}", user).split(" ")):
            if i == self._config.fail_after_tokens:
                raise ProviderError("scripted", f"stream dropped after {i} tokens (as configured)")
            if i:
                await asyncio.sleep(self._config.token_ms / 1000)
            yield word if i == 0 else " " + word


def _tool_rounds(messages: Sequence[ChatMessage]) -> int:
    """Rounds of tool calls since the user last spoke."""
    rounds = 0
    for message in reversed(messages):
        if message.role == "user":
            break
        rounds += bool(message.tool_calls)
    return rounds


def _last_results(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    results: list[ChatMessage] = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        results.insert(0, message)
    return results


class ScriptedTTSClient(Local):
    """A 250 Hz tone per phrase, as long as the phrase takes at `words_per_minute`.

    One chunk of tone is built per sample rate and reused, so producing audio costs no
    allocation per chunk; a whole number of periods per chunk keeps the joins seamless.
    """

    def __init__(self, config: ScriptedTTS) -> None:
        self._config = config
        self._chunks: dict[int, bytes] = {}

    def _chunk(self, sample_rate: int) -> bytes:
        if sample_rate not in self._chunks:
            n = sample_rate * self._config.chunk_ms // 1000
            t = np.arange(n) / sample_rate
            tone = 8000 * np.sin(2 * np.pi * 250 * t)
            self._chunks[sample_rate] = tone.astype("<i2").tobytes()
        return self._chunks[sample_rate]

    async def synthesize(
        self, phrases: AsyncIterator[str], sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        chunk = self._chunk(sample_rate)
        async for phrase in phrases:
            seconds = max(0.2, len(phrase.split()) * 60 / self._config.words_per_minute)
            await asyncio.sleep(self._config.ttfb_ms / 1000)
            full, rest = divmod(int(seconds * 1000), self._config.chunk_ms)
            for _ in range(full):
                yield chunk
                await asyncio.sleep(0)
            if rest:
                yield chunk[: sample_rate * rest // 1000 * 2]
