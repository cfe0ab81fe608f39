"""One conversation on one socket: the protocol's rules, and the shell the turn engine runs in.

The session feeds the turn engine (`gateway.turns`, where every rule of end of turn and
barge-in lives) with what happens: VAD probabilities per audio frame, end-of-turn scores,
STT partials and finals, client messages, clock ticks; and it performs the engine's
decisions: events to the client, STT finalization, model runs, and the assistant's replies
(`gateway.assistant`) started, held, paused, resumed or cut. The session owns every task it
starts (writer, STT listener, model runs, the pause timer, the replies) in one task group, so
whatever ends the session (the client leaving, a protocol violation, a stalled client, the
session time limit) cancels all of them and closes the STT stream: nothing is left running
behind a closed socket. It talks to the socket only through `Transport`, so the same code
serves Litestar in production and anything else in tests or load tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from contextlib import aclosing

import msgspec
import numpy as np
import structlog

from adapters.base import ChatMessage, Partial, STTStream
from gateway import protocol, telemetry, tracing, turns
from gateway.assistant import Assistant
from gateway.audio.codecs import Decoder, Encoder, open_decoder, open_encoder
from gateway.audio.endpointing import WINDOW_SAMPLES, SmartTurnModel
from gateway.audio.gate import SpeechGate
from gateway.audio.pcm import Resampler, Samples
from gateway.audio.vad import FrameSplitter, VADModels
from gateway.capacity import Seat
from gateway.config import TurnDetector
from gateway.errors import (
    AtCapacity,
    BadAudio,
    ClientGone,
    PermanentProviderError,
    ProtocolViolation,
    ProviderError,
    SlowConsumer,
)
from gateway.handshake import check_frame_size, receive_start
from gateway.history import from_record, to_record
from gateway.limits import TokenBucket
from gateway.outbound import Outbound
from gateway.pipeline import Pipeline, missing_keys, unusable
from gateway.protocol import CloseCode, ErrorCode
from gateway.providers.failover import FailoverLLM, FailoverSTT, FailoverTTS
from gateway.providers.health import ProviderHealth
from gateway.reply import Voice
from gateway.security import check_token
from gateway.store import Conversation, ConversationStore, Opened
from gateway.telemetry import AudioLedger
from gateway.timings import EndOfTurn
from gateway.tools.toolbox import Toolbox
from gateway.transport import Transport

log = structlog.get_logger()

PRE_ROLL_MS = 300
"""Audio a gated STT gets from before the VAD heard speech start (at least `speech_pad_ms`):
the VAD decides a frame or two into a word, and a soft first syllable must not be lost."""
TAIL_MS = 500
"""Audio a gated STT gets after the last voiced frame: the end of the last word, and the
silence its endpointing and the turn engine's `min_wait_ms` finalization need."""


class _Ended(Exception):
    """The client left; unwinds the task group."""


class _Drained(Exception):
    """The server is draining and this session is between turns: time to say goodbye."""


class Session:
    def __init__(
        self,
        pipeline: Pipeline,
        transport: Transport,
        session_id: str,
        seat: Seat,
        query_token: str | None = None,
        health: ProviderHealth | None = None,
        vad_models: VADModels | None = None,
        store: ConversationStore | None = None,
        dialect: str = "voxgate",
    ) -> None:
        self.pipeline = pipeline
        self._dialect = dialect
        self._trace = tracing.OFF
        """The session's trace (gateway/tracing), from its admission to its close."""
        self._seat = seat
        self._health = health if health is not None else ProviderHealth()
        self._vad_models = vad_models if vad_models is not None else VADModels()
        self.session_id = session_id
        self._transport = transport
        self._query_token = query_token
        limits = pipeline.limits
        self.outbound = Outbound(
            transport.send_text,
            transport.send_bytes,
            limits.outbound_queue,
            limits.slow_client_timeout_s,
        )
        self._next_turn_id = 1
        self._user_turn: int | None = None
        """The id of the user's turn in progress, given at its first words."""
        self._assistant: Assistant | None = None
        self._bad_audio = False
        self._decoder: Decoder | None = None
        self._encoder: Encoder | None = None
        self._drain_requested = asyncio.Event()
        self._bucket = TokenBucket(limits.control_frames_per_s, 0.0)
        self._refused_frames = 0
        self._codec = ""
        self._frames: FrameSplitter | None = None
        self._engine = turns.TurnEngine(pipeline.vad, pipeline.turns, frame_ms=32.0)
        self._turn_model: SmartTurnModel | None = None
        self._recent: _RecentAudio | None = None
        self._gate: SpeechGate | None = None
        self._audio = AudioLedger(pipeline.name, pipeline.input.sample_rate)
        self._deadline_moved = asyncio.Event()
        """Set when the engine's wall-clock deadline changes: the tick task re-reads it."""
        self._deadline: float | None = None
        self._awaiting_input = asyncio.Event()
        """Set while the receive loop waits for the client: every frame that has arrived is
        handled (the engine has heard all the audio sent so far, and any `audio_end`)."""
        self._tasks: asyncio.TaskGroup | None = None
        self._llm: FailoverLLM | None = None
        self._tts: FailoverTTS | None = None
        self._stt: FailoverSTT | None = None
        self._toolbox = Toolbox(pipeline, self.outbound)
        self._store = store
        """Where the conversation is kept between sockets (gateway/store); None for dialects
        whose clients cannot resume (Twilio, OpenAI Realtime)."""
        self._sub: str | None = None
        self._opened: Opened | None = None
        """The conversation's resume token, and what it continued (if anything)."""
        self._resumed_with: str | None = None

    # ---- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket until the client leaves or a rule closes it; never raises."""
        structlog.contextvars.bind_contextvars(
            session_id=self.session_id, pipeline=self.pipeline.name
        )
        close: tuple[int, str] = (CloseCode.NORMAL, "session over")
        fatal: protocol.Error | None = None
        failure: BaseException | None = None
        started = False
        try:
            start = await receive_start(self._transport, self.pipeline)
            self._check_keys()
            self._sub = check_token(
                self.pipeline, start.auth.token if start.auth else self._query_token
            )
            self._seat.admit()
            telemetry.SESSIONS_ACTIVE.labels(self.pipeline.name).inc()
            self._trace = tracing.start_session(
                _traced(self.pipeline), self.session_id, self._dialect
            )
            stt = await self._open_resuming(start)
            await self._transport.send_text(protocol.encode(self._started_message(start)))
            started = True
            telemetry.SESSIONS_TOTAL.labels(self.pipeline.name).inc()
            resumed = self._opened.resumed if self._opened is not None else None
            log.info("session_started", codec=start.input.codec, resumed=resumed)
            async with asyncio.timeout(self.pipeline.limits.max_session_s):
                await self._serve(stt)
        except* ProtocolViolation as group:
            violation = group.exceptions[0]
            assert isinstance(violation, ProtocolViolation)
            close = (violation.close_code, violation.reason)
            fatal = protocol.Error(
                code=ErrorCode(violation.error_code), message=violation.reason, fatal=True
            )
            if not started:
                self._refused(violation.error_code)
        except* ProviderError as group:
            # No provider of a stage could be reached at start, or speech recognition failed
            # on every provider mid-session: the session cannot go on, a later one may.
            error = failure = group.exceptions[0]
            log.error("providers_unavailable", error=str(error))
            if isinstance(error, PermanentProviderError):  # the server's configuration
                close = (CloseCode.SERVER_ERROR, "provider refused: check the server's keys")
                message = str(error)
            else:
                close = (CloseCode.TRY_AGAIN_LATER, "providers unavailable: try again later")
                message = f"{error}; reconnect in a few seconds"
            fatal = protocol.Error(code=ErrorCode.PROVIDER_ERROR, message=message, fatal=True)
            if not started:
                permanent = isinstance(error, PermanentProviderError)
                self._refused("provider_refused" if permanent else "providers_unavailable")
        except* AtCapacity as group:
            reason = group.exceptions[0]
            assert isinstance(reason, AtCapacity)
            self._refused(reason.reason)
            restarting = reason.reason == "draining"
            close = (
                CloseCode.TRY_AGAIN_LATER,
                f"{'server restarting' if restarting else 'at capacity'}: retry in a few seconds",
            )
        except* SlowConsumer as group:
            telemetry.SLOW_CONSUMER_CLOSES.labels(self.pipeline.name).inc()
            log.warning("slow_consumer", detail=str(group.exceptions[0]))
            close = (CloseCode.TRY_AGAIN_LATER, "client not reading: slow consumer")
        except* (_Ended, ClientGone):
            pass
        except* _Drained:
            telemetry.DRAIN_CLOSES.labels(self.pipeline.name).inc()
            close = (CloseCode.GOING_AWAY, "server restarting: reconnect")
        except* TimeoutError:
            close = (CloseCode.NORMAL, "max_session_s reached")
        except* Exception as group:
            log.error("session_failed", exc_info=group)
            close = (CloseCode.SERVER_ERROR, "unexpected server error")
            failure = group.exceptions[0]
        finally:
            self._save_at_end(started)
            if self._seat.admitted:
                telemetry.SESSIONS_ACTIVE.labels(self.pipeline.name).dec()
            for provider in (self._stt, self._llm, self._tts):
                if provider is not None:
                    await provider.aclose()
            for codec in (self._decoder, self._encoder):
                if codec is not None:
                    codec.close()
            log.info(
                "session_ended", close_code=int(close[0]), reason=close[1], **self._audio.report()
            )
            self._trace.end(int(close[0]), close[1], failure)
        await self._close(*close, fatal)

    def _check_keys(self) -> None:
        """A route whose keys this server lacks refuses its session_start, naming every
        variable (no user can fix it), before any token is checked or provider tried."""
        if parts := unusable(self.pipeline, os.environ):
            variables = ", ".join(missing_keys(self.pipeline, os.environ))
            raise PermanentProviderError(
                ", ".join(parts),
                f"no key on the server: set {variables} where the gateway runs, then restart it",
            )

    def _refused(self, reason: str) -> None:
        telemetry.SESSIONS_REFUSED.labels(self.pipeline.name, reason).inc()

    async def _close(self, code: int, reason: str, fatal: protocol.Error | None) -> None:
        # A client that stopped reading cannot take the close frame until it reads again:
        # give it as long as a slow client gets, then the server aborts the connection
        # (gateway.connections).
        try:
            async with asyncio.timeout(self.pipeline.limits.slow_client_timeout_s):
                if fatal is not None:
                    await self._transport.send_text(protocol.encode(fatal))
                await self._transport.close(code, reason[:120])
        except (TimeoutError, ClientGone):
            pass

    async def _open(self, start: protocol.SessionStart) -> STTStream:
        """Decoders, VAD and the three provider chains, connected before `session_started`
        so the first turn pays no handshake."""
        p = self.pipeline
        rate = p.input.sample_rate
        self._codec = str(start.input.codec)
        try:
            self._decoder = open_decoder(
                start.input.codec, start.input.sample_rate, rate, start.input.channels or 1
            )
        except BadAudio as e:
            raise ProtocolViolation(CloseCode.POLICY, str(e)) from None
        self._encoder = open_encoder(p.output.codec, p.output.sample_rate)
        model = self._vad_models.open(p.vad, rate)
        if model is not None:
            self._frames = FrameSplitter(model, rate)
            self._engine = turns.TurnEngine(p.vad, p.turns, self._frames.frame_ms)
        if p.stt.speech_only() and model is not None:
            self._gate = SpeechGate(rate, max(p.vad.speech_pad_ms, PRE_ROLL_MS), TAIL_MS)
        if p.turns.detector is TurnDetector.SMART_TURN and model is not None:
            self._turn_model = SmartTurnModel(p.turns.model)
            self._recent = _RecentAudio(rate)
            await self._turn_model.start()
        self._llm = FailoverLLM(p.llm, self._health, pipeline=p.name)
        self._tts = FailoverTTS(p.tts, self._health, pipeline=p.name)
        stt = FailoverSTT(p.stt, rate, self._health, pipeline=p.name, audio=self._audio)
        self._stt = stt
        self._voice = Voice(
            llm=self._llm,
            tts=self._tts,
            encoder=self._encoder,
            outbound=self.outbound,
            sample_rate=p.output.sample_rate,
            lead_ms=p.output.lead_ms,
            max_sentences=p.llm.max_sentences,
            toolbox=self._toolbox or None,
            tool_use=p.tool_use,
            trace=self._trace,
        )
        async with asyncio.TaskGroup() as connecting:
            for provider in (self._llm, self._tts, stt):
                connecting.create_task(provider.start())
        return stt

    async def _open_resuming(self, start: protocol.SessionStart) -> STTStream:
        """`_open`, while the store finds the conversation `session_start.resume` continues:
        the two overlap, so a resume adds nothing to a session start whose providers take
        longer to connect than the store to answer (at most `store.load_timeout_ms`)."""
        store = self._store
        if store is None:
            return await self._open(start)
        self._resumed_with = start.resume
        finding = asyncio.create_task(
            store.open(start.resume, pipeline=self.pipeline.name, sub=self._sub)
        )
        try:
            return await self._open(start)
        finally:
            # Even when the providers failed: a conversation taken out of the store must be
            # put back (`_save_at_end`), so the client's retry still resumes it.
            self._opened = await finding
            if self._opened.conversation is not None:
                self._next_turn_id = self._opened.conversation.turns + 1

    def _continue(self, assistant: Assistant) -> None:
        """The assistant goes on from the resumed conversation, and has it saved after each
        turn."""
        if self._opened is not None and self._opened.conversation is not None:
            assistant.history.load(from_record(self._opened.conversation.history))
        if self._store is not None:
            assistant.on_turn_end = self._save

    def _save(self) -> None:
        """Hand the conversation's state to the store, which writes it off the voice path."""
        if self._store is None or self._opened is None:
            return
        self._store.save(self._opened.token, self._conversation())

    def _conversation(self) -> Conversation:
        if self._assistant is not None:
            history = to_record(self._assistant.history.messages)
        elif self._opened is not None and self._opened.conversation is not None:
            history = self._opened.conversation.history
        else:
            history = []
        return Conversation(
            pipeline=self.pipeline.name,
            sub=self._sub,
            turns=self._next_turn_id - 1,
            history=history,
        )

    def _save_at_end(self, started: bool) -> None:
        """The session is over: save where it got to. One that never started (a provider
        down, the client gone) puts a conversation it took back under the client's token, so
        a retry resumes it."""
        opened, store = self._opened, self._store
        if store is None or opened is None:
            return
        if started:
            self._save()
        elif opened.conversation is not None and self._resumed_with is not None:
            store.save(self._resumed_with, opened.conversation)

    def _started_message(self, start: protocol.SessionStart) -> protocol.SessionStarted:
        p = self.pipeline
        return protocol.SessionStarted(
            session_id=self.session_id,
            pipeline=p.name,
            input=protocol.OutputFormat(
                codec=start.input.codec,
                sample_rate=start.input.sample_rate or p.input.sample_rate,
                channels=start.input.channels or 1,
            ),
            output=protocol.OutputFormat(codec=p.output.codec, sample_rate=p.output.sample_rate),
            resume_token=self._opened.token if self._opened is not None else None,
            resumed=self._opened.resumed if self._opened is not None else None,
        )

    async def _serve(self, stt: STTStream) -> None:
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            self._assistant = Assistant(self.pipeline, self._voice, self.outbound, tasks)
            self._continue(self._assistant)
            tasks.create_task(self.outbound.run())
            tasks.create_task(self._listen(stt))
            tasks.create_task(self._tick(stt))
            tasks.create_task(self._warn_before_the_end())
            tasks.create_task(self._leave_when_drained())
            while (frame := await self._receive()) is not None:
                check_frame_size(frame, self.pipeline.limits.max_message_bytes)
                if isinstance(frame, bytes):
                    await self._on_audio(frame, stt)
                else:
                    await self._on_text(frame, stt)
            raise _Ended()

    async def _receive(self) -> str | bytes | None:
        self._awaiting_input.set()
        try:
            return await self._transport.receive()
        finally:
            self._awaiting_input.clear()

    async def _input_handled(self) -> None:
        """Until the receive loop has handled every frame that has arrived. A frame already
        queued is returned without suspending, so the event is only seen set when the loop
        truly waits for the client."""
        while not self._awaiting_input.is_set():
            await self._awaiting_input.wait()

    def request_drain(self) -> None:
        """The server is going away: finish the turn in progress, then close 1001."""
        self._drain_requested.set()

    async def _leave_when_drained(self) -> None:
        await self._drain_requested.wait()
        # Polled, and only while draining: a turn ends in several places (reply done, cut,
        # failed, an utterance with no words), and a 50 ms poll cannot miss any of them.
        while self._in_a_turn():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        raise _Drained()

    def _in_a_turn(self) -> bool:
        """The user is mid-turn, or a reply is being made or is still playing on the client
        (per its playback reports or the estimate): a 1001 now would cut it off."""
        return self._engine.in_turn or self._replies.active()

    @property
    def _replies(self) -> Assistant:
        assert self._assistant is not None, "serving"
        return self._assistant

    async def _warn_before_the_end(self) -> None:
        limits = self.pipeline.limits
        await asyncio.sleep(max(0.0, limits.max_session_s - limits.session_warning_s))
        await self._error(
            ErrorCode.SESSION_ENDING,
            f"this session reaches max_session_s ({limits.max_session_s} s) in "
            f"{min(limits.session_warning_s, limits.max_session_s):g} s; open a new one to go on",
        )

    # ---- client frames ------------------------------------------------------------------

    async def _on_text(self, frame: str, stt: STTStream) -> None:
        if not self._bucket.take(asyncio.get_running_loop().time()):
            await self._refuse_frame()
            return
        self._refused_frames = 0
        try:
            message = protocol.decode_client(frame)
        except msgspec.DecodeError as e:
            await self._error(
                ErrorCode.BAD_MESSAGE, f"{e}; see PROTOCOL.md for the message formats"
            )
            return
        loop = asyncio.get_running_loop()
        match message:
            case protocol.AudioEnd():
                await self._apply(self._engine.audio_end(loop.time()), stt)
            case protocol.Text(text=text):
                await self._apply(self._engine.typed(), stt)
                await self._replies.interrupt(None)
                self._user_turn = None
                self._replies.start(self._new_turn_id(), text)
            case protocol.Interrupt(played_ms=played_ms):
                self._engine.client_interrupted()
                await self._replies.interrupt(played_ms)
            case protocol.Playback(turn_id=turn_id, played_ms=played_ms, finished=finished):
                self._replies.on_playback(turn_id, played_ms, finished)
            case protocol.ToolOutput(call_id=call_id):
                if not self._toolbox.answered(message):
                    await self._error(
                        ErrorCode.BAD_MESSAGE,
                        f"no tool call `{call_id}` is waiting for a result (it was answered, "
                        "timed out or cut by a barge-in); answer each `tool_call` with "
                        "`runs_on: client` once, with its `call_id`",
                    )
            case protocol.SessionStart():
                await self._error(
                    ErrorCode.BAD_MESSAGE,
                    "session already started; open a new socket for a new session",
                )

    async def _refuse_frame(self) -> None:
        """Over the control-frame rate: say so once per flood, close 1008 if a flood goes on
        for another second's worth of frames. A frame that fits the bucket again ends the
        flood, so bursts spaced out to the average rate never add up to a close."""
        limit = self.pipeline.limits.control_frames_per_s
        telemetry.RATE_LIMITED.labels(self.pipeline.name).inc()
        self._refused_frames += 1
        if self._refused_frames == 1:
            await self._error(
                ErrorCode.RATE_LIMITED,
                f"more than {limit} JSON frames per second; frames are being dropped, slow down",
            )
        elif self._refused_frames > limit:
            raise ProtocolViolation(
                CloseCode.POLICY, f"kept sending over {limit} frames per second", "rate_limited"
            )

    async def _on_audio(self, frame: bytes, stt: STTStream) -> None:
        if self._bad_audio or self._decoder is None:
            return
        try:
            pcm = self._decoder.decode(frame)
        except (BadAudio, ValueError) as e:
            self._bad_audio = True
            telemetry.DECODE_ERRORS.labels(self.pipeline.name, self._codec).inc()
            await self._error(
                ErrorCode.BAD_AUDIO, f"input audio does not decode ({e}); text turns still work"
            )
            return
        if self._recent is not None:
            self._recent.add(pcm)
        self._audio.received(pcm.size)
        heard = 0
        voiced = False
        if self._frames is not None:
            loop = asyncio.get_running_loop()
            threshold = self.pipeline.vad.threshold
            for i, probability in enumerate(await self._frames.probabilities(pcm)):
                voiced = voiced or probability >= threshold
                replying = self._replies.active()
                decisions = self._engine.frame(loop.time(), probability, replying)
                if any(isinstance(d, turns.Finalize) for d in decisions):
                    # The STT hears the audio up to the silence that asks it to flush: in a
                    # long chunk (a whole utterance sent at once) that is the words themselves.
                    end = self._frames.frame_end(i)
                    await self._hear(pcm[heard:end], voiced, stt)
                    heard, voiced = end, False
                await self._apply(decisions, stt)
        await self._hear(pcm[heard:], voiced, stt)

    async def _hear(self, pcm: Samples, voiced: bool, stt: STTStream) -> None:
        """Send `pcm` to the STT, or what of it the speech gate lets through."""
        if not pcm.size:
            return
        if self._gate is None:
            await stt.send_audio(pcm.tobytes())
            return
        for chunk in self._gate.push(pcm.tobytes(), voiced):
            await stt.send_audio(chunk)

    # ---- the turn engine's decisions ----------------------------------------------------

    async def _apply(self, decisions: list[turns.Decision], stt: STTStream) -> None:
        if (deadline := self._engine.deadline()) != self._deadline:
            self._deadline = deadline
            self._deadline_moved.set()
        for decision in decisions:
            match decision:
                case turns.SpeechBegan(t_ms=t_ms):
                    await self.outbound.put(protocol.SpeechStarted(t_ms=t_ms))
                case turns.SpeechEnded(t_ms=t_ms):
                    await self.outbound.put(protocol.SpeechStopped(t_ms=t_ms))
                case turns.ShowPartial(text=text):
                    turn_id = self._user_turn = self._user_turn or self._new_turn_id()
                    await self.outbound.put(protocol.TranscriptPartial(turn_id=turn_id, text=text))
                case turns.Finalize(continues=continues):
                    await stt.finalize(continues)
                case turns.Score(request=request):
                    assert self._tasks is not None, "serving"
                    self._tasks.create_task(self._score(request, stt))
                case turns.HoldReply(text=text, paused_at=paused_at):
                    self._user_turn = self._user_turn or self._new_turn_id()
                    self._replies.hold(self._user_turn, text, paused_at)
                case turns.DiscardReply():
                    self._replies.discard_held()
                case turns.EndTurn() as end:
                    await self._end_turn(end)
                case turns.PauseReply():
                    await self._replies.pause()
                case turns.ResumeReply(heard=heard):
                    await self._replies.resume(heard)
                case turns.InterruptReply():
                    await self._replies.interrupt(None)
                case turns.NothingHeard():
                    await self._error(
                        ErrorCode.NO_SPEECH,
                        "audio_end came, but no words were heard since the last turn: nothing "
                        "to answer. Speak before audio_end (is the microphone muted?)",
                        self._user_turn,
                    )
                case turns.IgnoreUtterance(text=text):
                    telemetry.BACKCHANNELS.labels(self.pipeline.name).inc()
                    log.info("backchannel_ignored", **self._said(text))

    async def _end_turn(self, end: turns.EndTurn) -> None:
        turn_id = self._user_turn or self._new_turn_id()
        self._user_turn = None
        telemetry.END_OF_TURN.labels(self.pipeline.name, end.reason).inc()
        decided = EndOfTurn(reason=end.reason, score=end.score, wait_ms=end.wait_ms)
        log.info(
            "user_turn_ended",
            turn_id=turn_id,
            reason=end.reason,
            score=end.score,
            wait_ms=round(end.wait_ms),
            **self._said(end.text),
        )
        if end.held:
            await self._replies.confirm_held(decided)
            return
        await self.outbound.put(protocol.TranscriptFinal(turn_id=turn_id, text=end.text))
        now = asyncio.get_running_loop().time()
        await self._replies.answer(turn_id, end.text, end.speech_end, now, decided)

    async def _score(self, request: int, stt: STTStream) -> None:
        """Run the end-of-turn model off the event loop; a failure falls back to silence.

        Not before the frames that have already arrived are handled: a client that sends its
        words faster than real time (a file, a push-to-talk button) has its `audio_end` or
        more speech queued behind the silence that asked, and either makes the score moot
        (~30 ms of CPU for nothing). A live client's next frame is not there yet: no wait."""
        assert self._turn_model is not None and self._recent is not None
        await self._input_handled()
        wanted = functools.partial(self._engine.wants_score, request)
        score: float | None
        try:
            # Moot already: not even the 8 s of audio copied, nor a worker woken.
            score = (
                await self._turn_model.probability(self._recent.samples(), wanted)
                if wanted()
                else None
            )
        except Exception as error:
            log.warning("end_of_turn_model_failed", error=str(error))
            score = None
        else:
            ran = "skipped" if score is None else "run"
            telemetry.END_OF_TURN_MODEL.labels(self.pipeline.name, ran).inc()
            if score is None:
                return  # the turn went on without it
        now = asyncio.get_running_loop().time()
        await self._apply(self._engine.end_of_turn_score(now, request, score), stt)

    async def _tick(self, stt: STTStream) -> None:
        """The engine's wall-clock rules (a paused reply's 2 s, a silence whose audio stopped
        coming): tick it at its deadline, re-read whenever the deadline moves."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._engine.deadline()
            self._deadline_moved.clear()
            if deadline is None:
                await self._deadline_moved.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._deadline_moved.wait()
            if loop.time() >= deadline:
                await self._apply(self._engine.tick(loop.time()), stt)

    def _new_turn_id(self) -> int:
        turn_id, self._next_turn_id = self._next_turn_id, self._next_turn_id + 1
        return turn_id

    async def _listen(self, stt: STTStream) -> None:
        loop = asyncio.get_running_loop()
        async with aclosing(stt.events()) as events:
            async for event in events:
                replying = self._replies.active()
                if isinstance(event, Partial):
                    decisions = self._engine.stt_partial(event.text, replying)
                else:
                    decisions = self._engine.stt_final(
                        loop.time(), event.text, event.speech_final, replying, event.revises
                    )
                await self._apply(decisions, stt)

    def _said(self, text: str) -> dict[str, str]:
        return {"said": text} if self.pipeline.log_transcripts else {}

    async def _error(self, code: ErrorCode, message: str, turn_id: int | None = None) -> None:
        await self.outbound.put(
            protocol.Error(code=code, message=message, fatal=False, turn_id=turn_id)
        )

    # ---- dialect hooks (gateway/dialects) ------------------------------------------------

    def instruct(self, system_prompt: str) -> None:
        """A dialect's client set the system prompt mid-session (OpenAI Realtime's
        `instructions`); the next reply is made with it."""
        llm = msgspec.structs.replace(self.pipeline.llm, system_prompt=system_prompt)
        self.pipeline = msgspec.structs.replace(self.pipeline, llm=llm)
        if self._assistant is not None:
            self._assistant.instruct(self.pipeline)

    async def truncate(self, turn_id: int, played_ms: int) -> None:
        """A dialect's client says how much of reply `turn_id` it played (OpenAI Realtime's
        `conversation.item.truncate`): the history keeps only that, and a reply still playing
        is cut there, as an `interrupt` with `played_ms` would."""
        if self._assistant is not None and await self._assistant.truncate(turn_id, played_ms):
            self._engine.client_interrupted()

    @property
    def history(self) -> list[ChatMessage]:
        return self._assistant.history.messages if self._assistant is not None else []


def _traced(pipeline: Pipeline) -> tracing.PipelineInfo:
    """What a session's trace says of its pipeline: each stage's first provider."""
    stt, llm, tts = pipeline.stt, pipeline.llm, pipeline.tts
    return tracing.PipelineInfo(
        name=pipeline.name,
        stt=tracing.Stage(provider=stt.provider_name(), model=stt.model),
        llm=tracing.Stage(
            provider=llm.provider_name(),
            model=llm.model,
            temperature=llm.temperature,
            max_tokens=llm.max_tokens,
        ),
        tts=tracing.Stage(provider=tts.provider_name(), model=tts.model, voice=tts.voice_name()),
        log_transcripts=pipeline.log_transcripts,
    )


class _RecentAudio:
    """The last 8 s of the user's audio at 16 kHz: what the end-of-turn model listens to."""

    def __init__(self, sample_rate: int) -> None:
        self._resample = Resampler(sample_rate, 16000)
        self._chunks: list[Samples] = []
        self._size = 0

    def add(self, pcm: Samples) -> None:
        chunk = self._resample(pcm)
        self._chunks.append(chunk)
        self._size += chunk.size
        while self._chunks and self._size - self._chunks[0].size >= WINDOW_SAMPLES:
            self._size -= self._chunks.pop(0).size

    def samples(self) -> Samples:
        joined: Samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return joined
