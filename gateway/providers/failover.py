"""Each stage as a chain of providers: the pipeline's block first, then its `fallback` list.

The rules (issue 5, README "Failover"):
- A failure *before* the stage produced anything for this turn (connect error, nothing within
  `timeout_ms`, 429, 5xx, a dropped stream, a refused key) moves the turn to the next provider
  of the chain: one retry per turn, so a user waits for at most two providers.
- A failure *after* output started cannot be hidden (the user saw tokens or heard audio): the
  error goes up and the turn ends with `provider_error`; the breaker keeps the next turn off
  the failed provider.
- Providers whose breaker is down go to the back of the chain (tried only as a last resort),
  refused ones are skipped (see `gateway.providers.health`).
- STT is one stream per session: when it drops, the session continues on the next provider,
  which first gets the audio of the utterance in progress, so the user does not repeat it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any, Generic, TypeVar

import structlog

from adapters.base import (
    LLM,
    TTS,
    ChatMessage,
    Final,
    Provider,
    STTEvent,
    STTStream,
    ToolCall,
    ToolSpec,
)
from adapters.catalog import LLMProvider, STTProvider, TTSProvider
from gateway import telemetry
from gateway.config import ProviderBlock
from gateway.errors import PermanentProviderError, ProviderError
from gateway.pipeline import chain
from gateway.providers.health import ProviderHealth, State, breaker_key
from gateway.telemetry import AudioLedger

log = structlog.get_logger()

P = TypeVar("P", bound=Provider)
B = TypeVar("B", bound=ProviderBlock)
T = TypeVar("T")

ATTEMPTS_PER_TURN = 2
"""The provider a turn starts on, plus one retry on the next."""

STT_REPLAY_S = 30
"""Audio of the utterance in progress kept for a replacement STT stream."""

REOPEN_EVERY_S = 60.0
"""A stream that failed with no other provider left is reopened at most this often."""


class _Link(Generic[B, P]):
    """One provider of a chain: its config, its breaker's key, and its session instance."""

    def __init__(self, stage: str, config: B) -> None:
        self.config = config
        self.name = config.provider_name()
        self.key = breaker_key(stage, self.name, config.base_url, config.model, config.api_key)
        self.timeout_s = config.timeout_ms / 1000
        self.instance: P | None = None


class Chain(Generic[B, P]):
    """The providers of one stage for one session, in the order a turn should try them:
    `blocks` (the stage's block and its fallbacks), each opened by `factory`."""

    def __init__(
        self,
        stage: str,
        blocks: list[B],
        health: ProviderHealth,
        factory: Callable[[B], P],
        pipeline: str,
    ) -> None:
        self.stage = stage
        self._pipeline = pipeline
        self._health = health
        self._factory = factory
        self._links: list[_Link[B, P]] = [_Link(stage, c) for c in blocks]

    def refusals(self) -> list[ProviderError]:
        """Why refused providers are out of the chain, for a stage left with none."""
        errors = [self._health.last_error(link.key) for link in self._links]
        return [e for e in errors if isinstance(e, PermanentProviderError)]

    def order(self, exclude: _Link[B, P] | None = None) -> list[_Link[B, P]]:
        """Healthy providers in the pipeline's order, then down ones; never refused ones."""
        ranked = {State.HEALTHY: 0, State.DOWN: 1}
        usable = [
            link
            for link in self._links
            if link is not exclude and self._health.state(link.key) in ranked
        ]
        return sorted(usable, key=lambda link: ranked[self._health.state(link.key)])

    async def instance(self, link: _Link[B, P]) -> P:
        if link.instance is None:
            instance = self._factory(link.config)
            try:
                await instance.start()
            except BaseException:
                await instance.aclose()
                raise
            link.instance = instance
        return link.instance

    def succeeded(self, link: _Link[B, P]) -> None:
        self._health.succeeded(link.key)

    async def failed(self, link: _Link[B, P], error: ProviderError) -> None:
        """Report the failure and drop the instance: a broken connection is not reused."""
        telemetry.PROVIDER_FAILURES.labels(
            self._pipeline, self.stage, link.name, type(error).__name__
        ).inc()
        self._health.failed(link.key, error, lambda: self._probe(link.config))
        instance, link.instance = link.instance, None
        if instance is not None:
            await instance.aclose()

    def fell_back(self, link: _Link[B, P], error: ProviderError) -> None:
        telemetry.PROVIDER_FALLBACKS.labels(self._pipeline, self.stage, link.name).inc()
        log.warning("provider_fallback", stage=self.stage, provider=link.name, error=str(error))

    async def _probe(self, config: B) -> None:
        instance = self._factory(config)
        try:
            await instance.start()
            await instance.probe()
        finally:
            await instance.aclose()

    async def start(self) -> _Link[B, P]:
        """Open the first provider that works (at session start: no handshake in turn one)."""
        errors: list[ProviderError] = []
        for link in self.order():
            try:
                await self.instance(link)
            except ProviderError as error:
                await self.failed(link, error)
                self.fell_back(link, error)
                errors.append(error)
                continue
            return link
        raise _exhausted(self.stage, errors or self.refusals())

    async def stream(
        self, open_stream: Callable[[P], AsyncGenerator[T, None]]
    ) -> AsyncGenerator[T, None]:
        """Items of one turn from the first provider that produces its first item in time."""
        errors: list[ProviderError] = []
        for link in self.order()[:ATTEMPTS_PER_TURN]:
            started = False
            try:
                instance = await self.instance(link)
                async with (
                    aclosing(open_stream(instance)) as items,
                    aclosing(_first_in_time(items, link)) as timed,
                ):
                    async for item in timed:
                        started = True
                        yield item
            except ProviderError as error:
                await self.failed(link, error)
                if started:
                    raise
                self.fell_back(link, error)
                errors.append(error)
                continue
            self.succeeded(link)
            return
        raise _exhausted(self.stage, errors or self.refusals())

    async def aclose(self) -> None:
        for link in self._links:
            instance, link.instance = link.instance, None
            if instance is not None:
                await instance.aclose()


def _exhausted(stage: str, errors: list[ProviderError]) -> ProviderError:
    """One error for a stage that has no provider left; permanent if every cause was."""
    if len(errors) == 1:
        return errors[0]
    tried = "; ".join(str(e) for e in errors)
    if all(isinstance(e, PermanentProviderError) for e in errors):
        return PermanentProviderError(stage, tried)
    return ProviderError(errors[-1].provider, f"all {len(errors)} providers failed: {tried}")


async def _first_in_time(items: AsyncIterator[T], link: _Link[Any, Any]) -> AsyncGenerator[T, None]:
    """`items`, failing like the provider if the first one is later than `timeout_ms`."""
    try:
        async with asyncio.timeout(link.timeout_s):
            first = await anext(items)
    except StopAsyncIteration:
        return
    except TimeoutError:
        raise ProviderError(
            link.name, f"nothing within timeout_ms ({link.timeout_s * 1000:.0f} ms)"
        ) from None
    yield first
    async for item in items:
        yield item


class _Stage(Generic[B, P]):
    """A stage as one provider to the session: the lifecycle goes to every link of its chain."""

    _chain: Chain[B, P]

    async def start(self) -> None:
        await self._chain.start()

    async def aclose(self) -> None:
        await self._chain.aclose()

    async def probe(self) -> None:
        """Probing happens per provider, in `Chain`."""


class FailoverLLM(_Stage[LLMProvider, LLM]):
    def __init__(self, config: LLMProvider, health: ProviderHealth, *, pipeline: str) -> None:
        self._chain = Chain("llm", chain(config), health, lambda c: c.open(), pipeline)

    def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncGenerator[str | ToolCall, None]:
        return self._chain.stream(lambda llm: llm.stream(messages, tools))


class FailoverTTS(_Stage[TTSProvider, TTS]):
    def __init__(self, config: TTSProvider, health: ProviderHealth, *, pipeline: str) -> None:
        self._chain = Chain("tts", chain(config), health, lambda c: c.open(), pipeline)

    def synthesize(
        self, phrases: AsyncIterator[str], sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        replay = PhraseReplay(phrases)
        return self._chain.stream(lambda tts: tts.synthesize(replay.feed(), sample_rate))


class PhraseReplay:
    """Phrases taken by a provider that then failed, given again to the next one."""

    def __init__(self, source: AsyncIterator[str]) -> None:
        self._source = source
        self._taken: list[str] = []

    def feed(self) -> AsyncIterator[str]:
        return _Feed(self)

    async def next(self, index: int) -> str:
        if index == len(self._taken):
            self._taken.append(await anext(self._source))
        return self._taken[index]


class _Feed:
    """An iterator rather than a generator, so a cancelled `anext` loses no phrase."""

    def __init__(self, replay: PhraseReplay) -> None:
        self._replay = replay
        self._index = 0

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> str:
        phrase = await self._replay.next(self._index)
        self._index += 1
        return phrase


class FailoverSTT(_Stage[STTProvider, STTStream]):
    """One STT stream per session that survives its provider: audio of the utterance in
    progress is kept (numbered, bounded) so a replacement stream hears all of it, in order,
    even while the client keeps talking during the switch."""

    def __init__(
        self,
        config: STTProvider,
        sample_rate: int,
        health: ProviderHealth,
        *,
        pipeline: str,
        audio: AudioLedger | None = None,
    ) -> None:
        self._chain = Chain("stt", chain(config), health, lambda c: c.open(sample_rate), pipeline)
        self._audio = audio
        self._continues = False
        self._reopen_after = 0.0
        """Loop time before which the failed provider is not reopened again (a broken one
        would otherwise be retried every stall bound, forever)."""
        self._link: _Link[STTProvider, STTStream] | None = None
        self._utterance: collections.deque[tuple[int, bytes]] = collections.deque()
        self._utterance_bytes = 0
        self._appended = 0
        self._max_bytes = STT_REPLAY_S * sample_rate * 2
        self._finalizing = False
        self._switching = False

    async def start(self) -> None:
        self._link = await self._chain.start()

    def _current(self) -> STTStream:
        assert self._link is not None and self._link.instance is not None, "start() first"
        return self._link.instance

    async def send_audio(self, pcm: bytes) -> None:
        self._appended += 1
        self._utterance.append((self._appended, pcm))
        self._utterance_bytes += len(pcm)
        while self._utterance_bytes > self._max_bytes:
            self._utterance_bytes -= len(self._utterance.popleft()[1])
        if not self._switching:  # else the replacement gets it from the buffer
            await self._send(self._current(), pcm)

    async def _send(self, stream: STTStream, pcm: bytes) -> None:
        if self._audio is not None and self._link is not None:
            self._audio.sent(self._link.name, len(pcm))
        await stream.send_audio(pcm)

    async def finalize(self, continues: bool = False) -> None:
        self._finalizing, self._continues = True, continues
        if not self._switching:
            await self._current().finalize(continues)

    async def events(self) -> AsyncGenerator[STTEvent, None]:
        while True:
            assert self._link is not None
            try:
                async with aclosing(self._current().events()) as events:
                    async for event in events:
                        if isinstance(event, Final):
                            self._utterance.clear()
                            self._utterance_bytes = 0
                            self._finalizing = False
                        yield event
                return
            except ProviderError as error:
                self._switching = True
                failed = self._link
                await self._chain.failed(failed, error)
                self._chain.fell_back(failed, error)
                self._link = await self._switch(failed, error)
                self._switching = False

    async def _switch(
        self, failed: _Link[STTProvider, STTStream], error: ProviderError
    ) -> _Link[STTProvider, STTStream]:
        """Continue on the next provider, which first hears the utterance in progress; with
        none left, on a new stream of the same one (a stall or a dropped socket is often that
        one stream's trouble): the conversation is given up only if that fails too."""
        errors = [error]
        now = asyncio.get_running_loop().time()
        retry = not isinstance(error, PermanentProviderError) and now >= self._reopen_after
        for link in [*self._chain.order(exclude=failed), *([failed] if retry else [])]:
            if link is failed:
                self._reopen_after = now + REOPEN_EVERY_S
            try:
                stream = await self._chain.instance(link)
                self._link = link  # what it is sent from now on counts against it
                await self._replay(stream)
                if self._finalizing:
                    await stream.finalize(self._continues)
            except ProviderError as next_error:
                await self._chain.failed(link, next_error)
                errors.append(next_error)
                continue
            return link
        raise _exhausted("stt", errors + self._chain.refusals())

    async def _replay(self, stream: STTStream) -> None:
        """Everything buffered, including audio that arrives while replaying, in order."""
        last = 0
        while pending := [(n, pcm) for n, pcm in self._utterance if n > last]:
            for n, pcm in pending:
                await self._send(stream, pcm)
                last = n
