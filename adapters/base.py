"""The small interfaces every provider implements, and the events they produce.

Stages talk to providers only through these Protocols, so a provider is swapped by a line in
a pipeline file. Every method is safe to cancel at any `await`: cancellation is how barge-in
stops an LLM or TTS stream within one event-loop tick, so adapters must release sockets and
streams in `finally` blocks or async context managers rather than rely on being run to the end.
Streams are async generators so the caller can `aclose()` them the moment it stops reading.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Literal, Protocol

import msgspec


class Partial(msgspec.Struct, frozen=True):
    """Interim text for the user's current utterance; may still change."""

    text: str


class Final(msgspec.Struct, frozen=True):
    """Text that will not change. `speech_final` marks the STT's own end of the user's turn;
    `revises` that the text covers the previous final's speech too and replaces it (an STT
    that transcribes whole utterances re-hears a turn the user continued after a pause)."""

    text: str
    speech_final: bool = True
    revises: bool = False


STTEvent = Partial | Final


class ToolSpec(msgspec.Struct, frozen=True):
    """A tool the LLM may call: what it is told about it (OpenAI's function-tool shape)."""

    name: str
    description: str
    parameters: dict[str, Any]
    """A JSON Schema object for the arguments."""


class ToolCall(msgspec.Struct, frozen=True):
    """The LLM asked for a tool: `arguments` is the JSON text as the model wrote it (it may
    not parse: the tool layer reports that back to the model rather than guess)."""

    id: str
    name: str
    arguments: str


class ChatMessage(msgspec.Struct, frozen=True):
    """One message of the conversation, in the shape every chat API shares: an assistant
    message may carry `tool_calls`, and each of their results follows as a `tool` message
    answering its `tool_call_id`."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


class Provider(Protocol):
    """Lifecycle every adapter shares. One instance serves one session.

    `start` runs at session start, so a connection-oriented provider (Deepgram, Cartesia)
    pays its handshake before the first turn; `aclose` releases whatever `start` opened.
    `probe` is a cheap call that succeeds only when the provider would serve traffic again;
    the failover layer runs it in the background on a provider that failed.

    Errors: raise `ProviderError` for what a retry or a fallback may fix (connect errors,
    timeouts, 429, 5xx, dropped streams, malformed replies) and `PermanentProviderError` for
    what it will not (401/403 and other rejected requests). Never let an SDK's own exception
    types escape: the session only knows ours.
    """

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def probe(self) -> None: ...


class Local:
    """The lifecycle of a provider with nothing to connect to (scripted, embedded models)."""

    async def start(self) -> None:
        """Nothing to open: models are loaded once per process, not per session."""

    async def aclose(self) -> None:
        """Nothing to release."""

    async def probe(self) -> None:
        """Always available."""


class STTStream(Provider, Protocol):
    """One streaming recognition session, opened at session start and fed all input audio."""

    async def send_audio(self, pcm: bytes) -> None:
        """Push mono 16-bit PCM at the pipeline's `input.sample_rate`.

        Must not raise when the connection has failed: failures surface from `events()`,
        which the failover layer watches, and audio sent meanwhile is replayed from its buffer.
        """

    async def finalize(self, continues: bool = False) -> None:
        """Emit a `Final` for what was heard since the last one, soon, without blocking.

        `continues`: the user's turn already has the previous final's words (they paused and
        spoke on); an STT that transcribes utterances whole may re-hear both together and
        answer with a `revises` final. Streaming STTs keep their own context and ignore it."""

    def events(self) -> AsyncGenerator[STTEvent, None]:
        """Partials and finals in order, until `aclose`; raises `ProviderError` on failure."""


class LLM(Provider, Protocol):
    def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncGenerator[str | ToolCall, None]:
        """Text deltas of the reply and, when `tools` are offered, the calls the model makes
        (each whole, once its arguments are complete); closing the iterator cancels the
        request. A provider that cannot call tools ignores `tools` and only writes text."""


class TTS(Provider, Protocol):
    def synthesize(
        self, phrases: AsyncIterator[str], sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        """Mono 16-bit PCM at `sample_rate` for the phrases, in order, as soon as it exists.

        Phrases arrive while the LLM is still writing; a provider with a continuing context
        (Cartesia) keeps prosody across them, others synthesize each phrase on its own.
        `phrases` is not a generator: awaiting it may be cancelled without losing a phrase.
        """
