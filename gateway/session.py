"""One conversation on one socket: the protocol's rules and the user's side of each turn.

The session decides when the user's turn ends (VAD, STT endpoint, `audio_end`, a pause for
preemptive generation) and when speech barges in; `gateway.assistant` runs the replies.
The session owns every task it starts (writer, STT listener, the replies) in one task
group, so whatever ends the session (the client leaving, a protocol violation, a stalled
client, the session time limit) cancels all of them and closes the STT stream: nothing is
left running behind a closed socket. It talks to the socket only through `Transport`, so the
same code serves Litestar in production and anything else in tests or load tools.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import aclosing

import msgspec
import structlog

from adapters.base import ChatMessage, Final, Partial, STTStream
from adapters.failover import FailoverLLM, FailoverSTT, FailoverTTS
from adapters.health import ProviderHealth
from gateway import protocol, telemetry
from gateway.assistant import Assistant
from gateway.audio.codecs import Decoder, Encoder, open_decoder, open_encoder
from gateway.audio.vad import (
    Pause,
    Resume,
    SpeechDetector,
    SpeechEnd,
    SpeechStart,
    VADEvent,
    open_model,
)
from gateway.capacity import Seat
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
from gateway.limits import TokenBucket
from gateway.outbound import Outbound
from gateway.pipeline import EndOfTurn, Pipeline, missing_keys, unusable
from gateway.protocol import CloseCode, ErrorCode
from gateway.reply import Voice
from gateway.security import check_token
from gateway.transport import Transport

log = structlog.get_logger()


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
    ) -> None:
        self.pipeline = pipeline
        self._seat = seat
        self._health = health if health is not None else ProviderHealth()
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
        self._user_text: list[str] = []
        self._closing_turn = False
        self._turn_closed_at: float | None = None
        self._assistant: Assistant | None = None
        # Armed by each VAD speech start; disarmed when that speech has barged in or its turn
        # was closed (audio_end can close a turn while the VAD still hears its tail, and a
        # user must not interrupt the answer to what they just said).
        self._may_barge_in = False
        self._heard_words = False
        self._false_interrupt: asyncio.TimerHandle | None = None
        self._bad_audio = False
        self._decoder: Decoder | None = None
        self._encoder: Encoder | None = None
        self._drain_requested = asyncio.Event()
        self._bucket = TokenBucket(limits.control_frames_per_s, 0.0)
        self._refused_frames = 0
        self._codec = ""
        # Preemptive generation (turns.preemptive_ms): the VAD heard a pause, the STT was
        # asked for its final, and a held reply may be running on it.
        self._paused_at: float | None = None
        self._pause_final_pending = False
        self._held_segments = 0
        self._llm: FailoverLLM | None = None
        self._tts: FailoverTTS | None = None
        self._stt: FailoverSTT | None = None

    # ---- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket until the client leaves or a rule closes it; never raises."""
        structlog.contextvars.bind_contextvars(
            session_id=self.session_id, pipeline=self.pipeline.name
        )
        close: tuple[int, str] = (CloseCode.NORMAL, "session over")
        fatal: protocol.Error | None = None
        started = False
        try:
            start = await receive_start(self._transport, self.pipeline)
            self._check_keys()
            check_token(self.pipeline, start.auth.token if start.auth else self._query_token)
            self._seat.admit()
            telemetry.SESSIONS_ACTIVE.labels(self.pipeline.name).inc()
            stt = await self._open(start)
            await self._transport.send_text(protocol.encode(self._started_message(start)))
            started = True
            telemetry.SESSIONS_TOTAL.labels(self.pipeline.name).inc()
            log.info("session_started", codec=start.input.codec)
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
            error = group.exceptions[0]
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
        finally:
            if self._seat.admitted:
                telemetry.SESSIONS_ACTIVE.labels(self.pipeline.name).dec()
            if self._false_interrupt is not None:
                self._false_interrupt.cancel()
            for provider in (self._stt, self._llm, self._tts):
                if provider is not None:
                    await provider.aclose()
            for codec in (self._decoder, self._encoder):
                if codec is not None:
                    codec.close()
            log.info("session_ended", close_code=int(close[0]), reason=close[1])
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
        model = open_model(p.vad, rate)
        pause_ms = p.turns.preemptive_ms if p.turns.end_of_turn is not EndOfTurn.STT else None
        self._vad = SpeechDetector(model, p.vad, rate, pause_ms) if model is not None else None
        self._llm = FailoverLLM(p.llm, self._health, pipeline=p.name)
        self._tts = FailoverTTS(p.tts, self._health, pipeline=p.name)
        stt = FailoverSTT(p.stt, rate, self._health, pipeline=p.name)
        self._stt = stt
        self._voice = Voice(
            llm=self._llm,
            tts=self._tts,
            encoder=self._encoder,
            outbound=self.outbound,
            sample_rate=p.output.sample_rate,
            lead_ms=p.output.lead_ms,
        )
        async with asyncio.TaskGroup() as connecting:
            for provider in (self._llm, self._tts, stt):
                connecting.create_task(provider.start())
        return stt

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
        )

    async def _serve(self, stt: STTStream) -> None:
        async with asyncio.TaskGroup() as tasks:
            self._assistant = Assistant(self.pipeline, self._voice, self.outbound, tasks)
            tasks.create_task(self.outbound.run())
            tasks.create_task(self._listen(stt))
            tasks.create_task(self._warn_before_the_end())
            tasks.create_task(self._leave_when_drained())
            while (frame := await self._transport.receive()) is not None:
                check_frame_size(frame, self.pipeline.limits.max_message_bytes)
                if isinstance(frame, bytes):
                    await self._on_audio(frame, stt)
                else:
                    await self._on_text(frame, stt)
            raise _Ended()

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
        speaking = self._vad is not None and self._vad.speaking
        open_turn = self._user_turn is not None or self._closing_turn or speaking
        return open_turn or self._replies.active()

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
        match message:
            case protocol.AudioEnd():
                await self._close_user_turn(stt)
            case protocol.Text(text=text):
                await self._replies.interrupt(None)
                self._paused_at = None
                self._replies.start(self._new_turn_id(), text)
            case protocol.Interrupt(played_ms=played_ms):
                await self._replies.interrupt(played_ms)
            case protocol.Playback(turn_id=turn_id, played_ms=played_ms, finished=finished):
                self._replies.on_playback(turn_id, played_ms, finished)
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
        if self._vad is not None:
            for event in await self._vad.push(pcm):
                await self._on_vad(event, stt)
            await self._maybe_barge_in()
        await stt.send_audio(pcm.tobytes())

    async def _on_vad(self, event: VADEvent, stt: STTStream) -> None:
        match event:
            case SpeechStart(t_ms=t_ms):
                await self.outbound.put(protocol.SpeechStarted(t_ms=t_ms))
                self._may_barge_in = True
                if self._user_turn is None:
                    self._user_turn = self._new_turn_id()
            case SpeechEnd(t_ms=t_ms):
                await self.outbound.put(protocol.SpeechStopped(t_ms=t_ms))
                if self.pipeline.turns.end_of_turn is not EndOfTurn.STT:
                    await self._close_user_turn(stt)
            case Pause():
                await self._on_pause(stt)
            case Resume():
                self._paused_at = None
                self._replies.discard_held()

    async def _on_pause(self, stt: STTStream) -> None:
        """The user paused: get the transcript now, so a reply can be ready (held) by the time
        the silence window confirms the end of the turn."""
        if self._closing_turn or self._user_turn is None or self._replies.active():
            return
        self._paused_at = asyncio.get_running_loop().time()
        self._pause_final_pending = True
        await stt.finalize()

    async def _maybe_barge_in(self) -> None:
        turns = self.pipeline.turns
        assert self._vad is not None
        if not turns.barge_in or not self._may_barge_in or not self._replies.active():
            return
        if self._vad.speech_ms >= turns.min_barge_in_ms:
            self._may_barge_in = False
            await self._replies.interrupt(None)
            if not self._heard_words:
                # Words of this utterance may come later; if none come in time it was noise.
                loop = asyncio.get_running_loop()
                self._false_interrupt = loop.call_later(
                    turns.false_interrupt_ms / 1000, self._false_interruption
                )

    def _false_interruption(self) -> None:
        self._false_interrupt = None
        telemetry.FALSE_INTERRUPTIONS.labels(self.pipeline.name).inc()
        log.info("false_interruption", false_interrupt_ms=self.pipeline.turns.false_interrupt_ms)

    # ---- turns --------------------------------------------------------------------------

    def _new_turn_id(self) -> int:
        turn_id, self._next_turn_id = self._next_turn_id, self._next_turn_id + 1
        return turn_id

    async def _close_user_turn(self, stt: STTStream) -> None:
        """The user stopped: ask the STT for its final text (handled in `_listen`)."""
        if self._closing_turn:
            return
        self._closing_turn = True
        self._may_barge_in = False
        self._turn_closed_at = asyncio.get_running_loop().time()
        if self._replies.holding and self._held_segments == len(self._user_text):
            self._user_text, self._closing_turn, self._turn_closed_at = [], False, None
            self._heard_words, self._user_turn, self._paused_at = False, None, None
            await self._replies.confirm_held()
        elif not self._pause_final_pending:  # else the pause's final closes the turn
            self._replies.discard_held()
            await stt.finalize()

    async def _listen(self, stt: STTStream) -> None:
        async with aclosing(stt.events()) as events:
            async for event in events:
                if event.text:
                    self._heard_words = True
                    if self._false_interrupt is not None:
                        self._false_interrupt.cancel()
                        self._false_interrupt = None
                if isinstance(event, Partial):
                    if event.text:
                        self._user_turn = self._user_turn or self._new_turn_id()
                        await self.outbound.put(
                            protocol.TranscriptPartial(turn_id=self._user_turn, text=event.text)
                        )
                    continue
                assert isinstance(event, Final)
                if event.text:
                    self._user_text.append(event.text)
                answers_pause, self._pause_final_pending = self._pause_final_pending, False
                # A final we asked for on a pause does not end the turn: the VAD decides that.
                stt_endpoint = event.speech_final and not answers_pause
                ends_turn = self._closing_turn or (
                    stt_endpoint and self.pipeline.turns.end_of_turn is not EndOfTurn.VAD
                )
                if ends_turn:
                    await self._finish_user_turn()
                elif answers_pause and self._paused_at is not None:
                    self._start_held()

    async def _finish_user_turn(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        speech_end = self._turn_closed_at if self._closing_turn else now
        text = " ".join(self._user_text)
        self._user_text, self._closing_turn, self._turn_closed_at = [], False, None
        self._heard_words = False
        self._may_barge_in = False  # the speech that made this turn cannot cut its answer
        turn_id, self._user_turn = self._user_turn, None
        if not text:
            return
        turn_id = turn_id or self._new_turn_id()
        await self.outbound.put(protocol.TranscriptFinal(turn_id=turn_id, text=text))
        self._paused_at = None
        await self._replies.answer(turn_id, text, speech_end, stt_final=now)

    def _start_held(self) -> None:
        """Answer what was said before the pause, keeping the answer until the turn ends."""
        text = " ".join(self._user_text)
        if not text:
            return
        self._user_turn = self._user_turn or self._new_turn_id()
        self._held_segments = len(self._user_text)
        self._replies.hold(self._user_turn, text, self._paused_at)

    async def _error(self, code: ErrorCode, message: str, turn_id: int | None = None) -> None:
        await self.outbound.put(
            protocol.Error(code=code, message=message, fatal=False, turn_id=turn_id)
        )

    @property
    def history(self) -> list[ChatMessage]:
        return self._assistant.history.messages if self._assistant is not None else []
