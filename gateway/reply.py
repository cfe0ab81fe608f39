"""One assistant turn in flight: LLM -> phrase splitter -> TTS -> paced audio, overlapped.

The LLM and TTS run as two tasks joined by a small bounded queue of phrases, so the first
phrase is being spoken while the LLM is still writing the second. Audio goes to the client's
outbound queue the moment TTS yields it, then is paced to stay at most `lead_ms` ahead of the
client's ear, so a barge-in has little audio to throw away. Cancelling the task that runs
`Reply.run` stops both stages at their next `await`: that is the whole barge-in mechanism.
Between the LLM and the rest stands a `ReplyGuard` (gateway/guard.py): a reply that starts
repeating itself, or goes past the pipeline's `llm.max_sentences`, is cut there and the LLM
stopped, whatever the provider; what the user sees and hears, and the history, is the cut reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal

import structlog

from adapters.base import LLM, TTS, ChatMessage, ToolCall, ToolSpec
from gateway import protocol, tracing
from gateway.audio.codecs import Encoder
from gateway.config import ToolUse
from gateway.errors import ProviderError
from gateway.guard import ReplyGuard
from gateway.outbound import AudioOut, Outbound
from gateway.phrases import PhraseSplitter
from gateway.playback import PlaybackClock
from gateway.timings import TurnTimeline
from gateway.tools.toolbox import Toolbox

log = structlog.get_logger()

# Speaking-rate guess for a phrase whose audio is still being made (about 16 chars/s).
_MS_PER_CHAR = 60.0

REFILL = 0.25
"""A reply that has caught up with `lead_ms` waits until this share of it has played, then sends
that much at once: four wakes per `lead_ms` of audio instead of one per frame (each a timer and
two task switches), while the client never holds more than `lead_ms` (bench/README.md: with
Cartesia's lazy wait, a 37-word reply's CPU 29 -> 20 ms at 50 sessions)."""


@dataclass
class SpokenPhrase:
    text: str
    start_ms: float
    end_ms: float | None = None


@dataclass(frozen=True)
class Voice:
    """How this session's replies are produced and delivered; fixed for the session."""

    llm: LLM
    tts: TTS
    encoder: Encoder
    outbound: Outbound
    sample_rate: int
    lead_ms: float
    max_sentences: int | None = None
    """The pipeline's `llm.max_sentences`: a reply ends after that many (None: no limit)."""
    toolbox: Toolbox | None = None
    tool_use: ToolUse = field(default_factory=ToolUse)
    trace: tracing.SessionTrace = tracing.OFF
    """The session's trace, where each turn is recorded when it ends."""


class Reply:
    """One reply; a `held` one (preemptive generation) runs but keeps its output until
    `release`, so nothing reaches the client for a turn the user may not have finished."""

    def __init__(self, turn_id: int, voice: Voice, user_text: str, held: bool = False) -> None:
        self.turn_id = turn_id
        self.user_text = user_text
        self.timeline = TurnTimeline()
        self.clock = PlaybackClock()
        self._voice = voice
        self._spoken: list[SpokenPhrase] = []
        self._seq = 0
        self._released = asyncio.Event()
        self._held_tokens: list[protocol.LLMToken] = []
        self.tool_messages: list[ChatMessage] = []
        """The rounds of tool calls made so far, with their results, for the history."""
        self.llm_calls: list[tracing.LLMCall] = []
        """Each request to the LLM (one per round), for the turn's trace."""
        self.tools_called: list[tracing.ToolCall] = []
        """Each tool call as it ended, with its times and outcome, for the turn's trace."""
        self.tts_end: float | None = None
        """When the TTS's audio ended (None: it was cut or failed)."""
        self.failed_stage: Literal["llm", "tts"] | None = None
        """The stage whose provider error ended the reply: the error alone cannot say."""
        if not held:
            self._released.set()

    async def release(self) -> None:
        """The user's turn is confirmed: what was made so far goes out, the rest follows live."""
        self.timeline.released = asyncio.get_running_loop().time()
        while self._held_tokens:
            await self._voice.outbound.put(self._held_tokens.pop(0))
        self._released.set()

    async def released(self) -> None:
        await self._released.wait()

    async def run(self, messages: Sequence[ChatMessage]) -> None:
        phrases: asyncio.Queue[str | None] = asyncio.Queue(maxsize=16)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._stage("llm", self._think(messages, phrases)))
            tg.create_task(self._stage("tts", self._speak(phrases)))

    async def _stage(self, stage: Literal["llm", "tts"], work: Awaitable[None]) -> None:
        try:
            await work
        except ProviderError:
            self.failed_stage = self.failed_stage or stage
            raise

    def spoken_text(self) -> str:
        return " ".join(p.text for p in self._spoken)

    def heard_text(self, played_ms: float) -> str:
        """The part of the reply the user heard, for a history that matches their memory."""
        heard: list[str] = []
        for phrase in self._spoken:
            if phrase.start_ms >= played_ms:
                break
            end = phrase.end_ms
            if end is None:
                end = max(self.clock.sent_ms, phrase.start_ms + len(phrase.text) * _MS_PER_CHAR)
            if played_ms >= end:
                heard.append(phrase.text)
                continue
            words = phrase.text.split()
            share = (played_ms - phrase.start_ms) / max(end - phrase.start_ms, 1.0)
            heard.extend(words[: int(len(words) * share)])
            break
        return " ".join(heard)

    async def _think(
        self, messages: Sequence[ChatMessage], phrases: asyncio.Queue[str | None]
    ) -> None:
        """The LLM's reply to the conversation; a round of tool calls it makes is run and
        its results given back to it, up to `tool_use.max_rounds`, after which it is asked
        again without tools so that it answers with what it has."""
        splitter = PhraseSplitter()
        guard = ReplyGuard(self._voice.max_sentences)
        self.timeline.llm_start = asyncio.get_running_loop().time()
        toolbox, rounds = self._voice.toolbox, self._voice.tool_use.max_rounds
        tools = await toolbox.specs() if toolbox else []
        conversation = list(messages)
        for round_ in range(rounds + 1):
            calls = await self._round(
                conversation, tools if round_ < rounds else [], guard, splitter, phrases
            )
            if not calls or guard.cut is not None or toolbox is None:
                break
            await self._pass_on(guard.flush(), False, splitter, phrases)
            rest = splitter.flush()
            if rest:
                await self._hand_over(rest, phrases)
            await self._released.wait()  # a held reply calls nothing until it is confirmed
            results = await self._run_tools(
                toolbox, calls, said=bool(rest) or bool(guard.text), phrases=phrases
            )
            made = [ChatMessage("assistant", "", tool_calls=tuple(calls)), *results]
            conversation += made
            self.tool_messages += made
            if guard.text and not guard.text[-1].isspace():  # the next round's words follow
                await self._pass_on(guard.push(" "), True, splitter, phrases)
        await self._pass_on(guard.flush(), False, splitter, phrases)
        rest = splitter.flush()
        if rest:
            await self._hand_over(rest, phrases)
        await phrases.put(None)

    async def _round(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        guard: ReplyGuard,
        splitter: PhraseSplitter,
        phrases: asyncio.Queue[str | None],
    ) -> list[ToolCall]:
        """One LLM request: its text goes on to the client and the TTS; its calls back."""
        loop = asyncio.get_running_loop()
        timeline = self.timeline
        calls: list[ToolCall] = []
        request = tracing.LLMCall(started=loop.time())
        self.llm_calls.append(request)
        async with aclosing(self._voice.llm.stream(messages, tools)) as deltas:
            async for delta in deltas:
                if request.first_token is None:
                    request.first_token = loop.time()
                    if timeline.llm_first_token is None:
                        timeline.llm_first_token = request.first_token
                if isinstance(delta, ToolCall):
                    calls.append(delta)
                    continue
                await self._pass_on(guard.push(delta), guard.word_ended, splitter, phrases)
                if guard.cut is not None:
                    log.info("reply_cut", turn_id=self.turn_id, reason=str(guard.cut))
                    break  # closing the stream stops the LLM
        request.ended, request.tool_calls = loop.time(), len(calls)
        return calls

    async def _run_tools(
        self,
        toolbox: Toolbox,
        calls: Sequence[ToolCall],
        *,
        said: bool,
        phrases: asyncio.Queue[str | None],
    ) -> list[ChatMessage]:
        """Run a round of calls; if they take long and the reply has said nothing yet, say
        the filler meanwhile, so the caller is not left in silence."""
        filler = self._voice.tool_use.filler
        async with asyncio.TaskGroup() as group:  # barge-in cancels the calls in flight
            running = group.create_task(toolbox.run(self.turn_id, calls, self.tools_called))
            if filler is not None and not said:
                done, _ = await asyncio.wait([running], timeout=filler.after_ms / 1000)
                if not done:
                    await self._say(filler.text, phrases)
        return running.result()

    async def _say(self, text: str, phrases: asyncio.Queue[str | None]) -> None:
        """Words of ours, not the model's: spoken, and shown before what it writes next."""
        token = protocol.LLMToken(turn_id=self.turn_id, text=f"{text} ")
        await self._voice.outbound.put(token)
        await self._hand_over(text, phrases)

    async def _pass_on(
        self,
        text: str,
        word_ended: bool,
        splitter: PhraseSplitter,
        phrases: asyncio.Queue[str | None],
    ) -> None:
        """Text the guard let through: to the client as a token, to the TTS as phrases."""
        if not text:
            return
        token = protocol.LLMToken(turn_id=self.turn_id, text=text)
        if self._released.is_set():
            await self._voice.outbound.put(token)
        else:
            self._held_tokens.append(token)
        for phrase in splitter.push(text, word_ended):
            await self._hand_over(phrase, phrases)

    async def _hand_over(self, phrase: str, phrases: asyncio.Queue[str | None]) -> None:
        if self.timeline.llm_first_phrase is None:
            self.timeline.llm_first_phrase = asyncio.get_running_loop().time()
        await phrases.put(phrase)

    def note_phrase(self, phrase: str | None) -> None:
        """The TTS takes `phrase` (None: the end): it starts where the audio sent so far ends."""
        sent_ms = self.clock.sent_ms
        if self._spoken and self._spoken[-1].end_ms is None:
            self._spoken[-1].end_ms = sent_ms
        if phrase is None:
            return
        if self.timeline.tts_text_sent is None:
            self.timeline.tts_text_sent = asyncio.get_running_loop().time()
        self._spoken.append(SpokenPhrase(phrase, sent_ms))

    async def _speak(self, phrases: asyncio.Queue[str | None]) -> None:
        loop = asyncio.get_running_loop()
        encoder, timeline = self._voice.encoder, self.timeline
        audio = self._voice.tts.synthesize(_PhraseFeed(self, phrases), self._voice.sample_rate)
        finished = False
        try:
            async with aclosing(audio):
                async for pcm in audio:
                    if timeline.tts_first_audio is None:
                        timeline.tts_first_audio = loop.time()
                    for payload in encoder.encode(pcm):
                        await self._send(payload)
            self.tts_end = loop.time()
            for payload in encoder.flush():
                await self._send(payload)
            finished = True
        finally:
            if not finished:
                encoder.flush()  # a cut turn's leftover samples must not open the next one
        await self._released.wait()
        last = protocol.pack_audio(self.turn_id, self._seq, b"", last=True)
        await self._voice.outbound.put(AudioOut(self.turn_id, last, timeline))

    async def _send(self, payload: bytes) -> None:
        """Queue one frame, first waiting until it would be at most `lead_ms` ahead of the ear
        (and then until `REFILL` of the lead has played)."""
        await self._released.wait()
        loop = asyncio.get_running_loop()
        ms = self._voice.encoder.duration_ms(payload)
        ahead_ms = self.clock.ahead_ms(loop.time()) + ms
        lead_ms = self._voice.lead_ms
        if ahead_ms > lead_ms:
            await asyncio.sleep((ahead_ms - lead_ms * (1 - REFILL)) / 1000)
        frame = protocol.pack_audio(self.turn_id, self._seq, payload)
        await self._voice.outbound.put(AudioOut(self.turn_id, frame, self.timeline))
        self.clock.on_sent(ms, loop.time())
        self._seq += 1


class _PhraseFeed:
    """Phrases to the TTS, noting where each starts in the turn's audio.

    An iterator, not a generator: a TTS provider failing over cancels the `anext` it was
    awaiting, which must not end the feed for the provider that takes over.
    """

    def __init__(self, reply: Reply, phrases: asyncio.Queue[str | None]) -> None:
        self._reply = reply
        self._phrases = phrases
        self._ended = False

    def __aiter__(self) -> _PhraseFeed:
        return self

    async def __anext__(self) -> str:
        phrase = None if self._ended else await self._phrases.get()
        self._reply.note_phrase(phrase)
        if phrase is None:
            self._ended = True
            raise StopAsyncIteration
        return phrase
