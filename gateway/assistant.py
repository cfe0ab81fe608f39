"""The assistant's side of one session: replies, barge-in cuts, held replies and history.

The session decides *when* the user's turn ends and hands the text over; this module decides
what happens to the assistant's replies: one in flight or still playing at a time, cut in one
event-loop tick on barge-in, a held (preemptive) reply prepared during a pause and released or
dropped, and the history kept to what the user actually heard. Every reply task runs in the
session's task group, so ending the session cancels them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import structlog

from adapters.base import ChatMessage
from gateway import protocol, telemetry, tracing
from gateway.errors import ProviderError
from gateway.history import History
from gateway.outbound import Outbound, TurnEndOut
from gateway.pipeline import Pipeline
from gateway.protocol import ErrorCode, TurnEndReason
from gateway.reply import Reply, Voice
from gateway.timings import EndOfTurn

log = structlog.get_logger()


class Assistant:
    def __init__(
        self, pipeline: Pipeline, voice: Voice, outbound: Outbound, tasks: asyncio.TaskGroup
    ) -> None:
        self._pipeline = pipeline
        self._voice = voice
        self._outbound = outbound
        self._tasks = tasks
        self.history = History(keep=2 * pipeline.llm.history_turns + 2)
        self._reply: Reply | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._held: Reply | None = None
        self._held_task: asyncio.Task[None] | None = None
        self._last: Reply | None = None
        """The latest reply started, kept after it ends or is cut: a dialect's client may
        still say how much of it was heard (`truncate`)."""
        self.on_turn_end: Callable[[], None] = lambda: None
        """Called when a turn's place in the history is settled (it completed, failed or was
        cut, or a reply already over was cut while playing): the session saves the
        conversation then. Must return at once (it runs on the voice path)."""

    # ---- state --------------------------------------------------------------------------

    def active(self) -> bool:
        """A reply is being made or its audio is still playing: what barge-in may cut."""
        reply, task = self._reply, self._reply_task
        if reply is None or task is None:
            return False
        return not task.done() or reply.clock.playing(asyncio.get_running_loop().time())

    @property
    def holding(self) -> bool:
        return self._held is not None

    def on_playback(self, turn_id: int, played_ms: int, finished: bool) -> None:
        reply = self._reply
        if reply is not None and reply.turn_id == turn_id:
            reply.clock.on_report(played_ms, finished, asyncio.get_running_loop().time())

    # ---- replies ------------------------------------------------------------------------

    async def answer(
        self,
        turn_id: int,
        text: str,
        speech_end: float | None,
        stt_final: float | None,
        decided: EndOfTurn,
    ) -> None:
        """Answer a finished user turn; with `barge_in: false` after the reply in flight."""
        previous = self._reply_task
        if self._pipeline.turns.barge_in or previous is None or previous.done():
            await self.interrupt(None)
            previous = None
        self.start(turn_id, text, speech_end, stt_final, after=previous)
        assert self._reply is not None
        self._reply.timeline.decided = decided

    def start(
        self,
        turn_id: int,
        text: str,
        speech_end: float | None = None,
        stt_final: float | None = None,
        after: asyncio.Task[None] | None = None,
    ) -> None:
        """Start the reply task; with `after` (barge-in off) it waits for that reply first."""
        self.discard_held()
        reply = Reply(turn_id, self._voice, text)
        reply.timeline.speech_end = speech_end
        reply.timeline.stt_final = stt_final
        if after is None:
            self.history.said(text)
        self._reply = self._last = reply
        self._reply_task = self._tasks.create_task(self._run(reply, text, after))

    def hold(self, turn_id: int, text: str, paused_at: float | None) -> None:
        """Prepare the answer to what was said before a pause, sending nothing yet."""
        self.discard_held()
        reply = Reply(turn_id, self._voice, text, held=True)
        reply.timeline.speech_end = paused_at
        reply.timeline.stt_final = asyncio.get_running_loop().time()
        messages = self.history.context(self._pipeline.llm, question=text)
        self._held = reply
        self._held_task = self._tasks.create_task(self._run(reply, text, None, messages))

    async def confirm_held(self, decided: EndOfTurn) -> None:
        """The turn ended where the held reply was prepared: it goes out now."""
        reply = self._held
        assert reply is not None, "nothing held"
        reply.timeline.decided = decided
        if self._pipeline.turns.barge_in:
            await self.interrupt(None)  # a reply still playing from before gives way
        telemetry.PREEMPTIVE.labels(self._pipeline.name, "used").inc()
        self._reply, self._reply_task = reply, self._held_task
        self._last = reply
        self._held = self._held_task = None
        await self._outbound.put(
            protocol.TranscriptFinal(turn_id=reply.turn_id, text=reply.user_text)
        )
        self.history.said(reply.user_text)
        await reply.release()

    def discard_held(self) -> None:
        """The user spoke on (or another turn started): the held reply was never heard."""
        if self._held_task is not None:
            self._held_task.cancel()
            telemetry.PREEMPTIVE.labels(self._pipeline.name, "discarded").inc()
        self._held = self._held_task = None

    async def _run(
        self,
        reply: Reply,
        text: str,
        after: asyncio.Task[None] | None,
        messages: list[ChatMessage] | None = None,
    ) -> None:
        """Run a reply to its end; `messages` is given for a held reply, whose question is
        not in the history until the turn is confirmed."""
        reason = TurnEndReason.COMPLETED
        if after is not None:
            await asyncio.wait([after])
            self.history.said(text)
        failure: ProviderError | None = None
        try:
            await reply.run(messages or self.history.context(self._pipeline.llm))
        except* ProviderError as group:
            error = group.exceptions[0]
            assert isinstance(error, ProviderError)
            failure = error
        await reply.released()  # a held reply says nothing, not even its failure, until then
        if failure is not None:
            reason = TurnEndReason.ERROR
            kind = type(failure).__name__
            telemetry.PROVIDER_ERRORS.labels(self._pipeline.name, failure.provider, kind).inc()
            log.warning(
                "provider_error",
                turn_id=reply.turn_id,
                provider=failure.provider,
                error=str(failure),
            )
            await self._outbound.put(
                protocol.Error(
                    code=ErrorCode.PROVIDER_ERROR,
                    message=str(failure),
                    fatal=False,
                    turn_id=reply.turn_id,
                )
            )
        self.history.used_tools(reply.tool_messages)
        self.history.answered(reply.spoken_text())
        await self._end_turn(reply, reason, reply.spoken_text(), failure)

    async def pause(self) -> None:
        """The user may be interrupting: the client stops the sound, the reply waits."""
        reply = self._reply
        if reply is None or not self.active() or reply.clock.paused:
            return
        reply.clock.pause(asyncio.get_running_loop().time())
        await self._outbound.put(protocol.ReplyPaused(turn_id=reply.turn_id))

    async def resume(self, heard: str) -> None:
        """It was a backchannel or noise: the reply plays on where it paused."""
        reply = self._reply
        if reply is None or not reply.clock.paused:
            return
        reply.clock.resume(asyncio.get_running_loop().time())
        reply.timeline.resumed += 1
        telemetry.REPLY_PAUSES.labels(self._pipeline.name, "resumed").inc()
        log.info("reply_resumed", turn_id=reply.turn_id, backchannel=bool(heard))
        await self._outbound.put(protocol.ReplyResumed(turn_id=reply.turn_id))

    async def interrupt(self, played_ms: int | None) -> None:
        """Cut the reply in flight or still playing: no more of its audio leaves the gateway.

        The cut is synchronous (drop queued audio, cancel the stages) so it takes effect in
        this event-loop tick; only the notices to the client wait for the outbound queue.
        """
        reply, task = self._reply, self._reply_task
        if reply is None or task is None or not self.active():
            return
        self._reply = self._reply_task = None
        if reply.clock.paused:
            telemetry.REPLY_PAUSES.labels(self._pipeline.name, "interrupted").inc()
        self._outbound.drop_turn(reply.turn_id)
        in_flight = not task.done()
        task.cancel()
        heard_ms = (
            played_ms
            if played_ms is not None
            else reply.clock.played_ms(asyncio.get_running_loop().time())
        )
        if in_flight:
            self.history.used_tools(reply.tool_messages)  # the rounds that came back
            self.history.answered(reply.heard_text(heard_ms))
        else:
            self.history.cut_last_answer(reply.heard_text(heard_ms))
            self.on_turn_end()
        await self._outbound.put(protocol.Interrupted(turn_id=reply.turn_id))
        if in_flight:
            heard = reply.heard_text(heard_ms)
            await self._end_turn(reply, TurnEndReason.INTERRUPTED, heard, unwinding=task)

    # ---- dialect hooks (gateway/dialects) ------------------------------------------------

    def instruct(self, pipeline: Pipeline) -> None:
        """The session's pipeline changed mid-session (a new system prompt): later replies
        are made with it."""
        self._pipeline = pipeline

    async def truncate(self, turn_id: int, played_ms: int) -> bool:
        """The client heard `played_ms` of reply `turn_id` (OpenAI Realtime's
        `conversation.item.truncate`): a reply still in flight or playing is cut there (True);
        one already over is remembered only up to there, while it is still the last word."""
        reply = self._reply
        if reply is not None and reply.turn_id == turn_id and self.active():
            await self.interrupt(played_ms)
            return True
        last = self._last
        if last is not None and last.turn_id == turn_id:
            self.history.cut_last_answer(last.heard_text(played_ms))
            self.on_turn_end()
        return False

    async def _end_turn(
        self,
        reply: Reply,
        reason: TurnEndReason,
        answered: str,
        failure: ProviderError | None = None,
        unwinding: asyncio.Task[None] | None = None,
    ) -> None:
        """Count, log and trace the turn once its `turn_end` is sent. `unwinding` is the task
        of a reply just cut: its trace waits for the task to end, so that the tool calls the
        cut cancels are in it."""
        pipeline = self._pipeline
        telemetry.TURNS.labels(pipeline.name, reason).inc()
        said = reply.user_text
        trace = self._voice.trace
        error = None
        if failure is not None:
            error = tracing.StageError(reply.failed_stage or "llm", failure)

        def report(metrics: protocol.TurnMetrics) -> None:
            telemetry.observe_turn(pipeline.name, metrics)
            texts = {"said": said, "answered": answered} if pipeline.log_transcripts else {}
            log.info(
                "turn_ended",
                turn_id=reply.turn_id,
                reason=str(reason),
                **msgspec.structs.asdict(metrics),
                **texts,
            )

            def record(_: object = None) -> None:
                trace.record_turn(
                    reply.turn_id,
                    str(reason),
                    reply.timeline,
                    metrics,
                    said=said,
                    answered=answered,
                    llm_calls=reply.llm_calls,
                    tts_end=reply.tts_end,
                    error=error,
                    tools=reply.tools_called,
                )

            if unwinding is None or unwinding.done():
                record()
            else:
                unwinding.add_done_callback(record)

        self.on_turn_end()
        await self._outbound.put(TurnEndOut(reply.turn_id, reason, reply.timeline, report))
