"""End of turn from the audio: how likely it is that the user has finished speaking.

Silence alone is a poor judge of that. A user who hesitates mid-phrase ("I want to send a
package to ... my sister in Denver") falls silent as long as one who is done, so a VAD that
waits long enough for the first keeps the second waiting for the reply. smart-turn v3.2
(Daily's, BSD-2-Clause) listens to the last 8 s of the user's voice (intonation, rhythm, the
trailing silence) and gives the probability that the turn is complete, so the gateway can
answer sooner after a finished phrase and wait longer after an unfinished one.

The model (8.7 MB, int8 ONNX) ships inside the `pipecat-ai` wheel, which we install only for
that file (without its dependencies) and never import. Its input is Whisper's log-mel
spectrogram (80 x 800) of the last 8 s at 16 kHz, zero-padded at the front, computed after the
waveform is normalized to zero mean and unit variance, as pipecat's front end does; faster-
whisper's feature extractor gives the same features as pipecat's (max diff < 1e-5) on that
normalized waveform. The model's attention Softmax runs in float (`onnx_wire.
softmax_unquantized`: onnxruntime's uint8 QLinearSoftmax was a fifth of the model's time). A
call costs about 30 ms of one core, so it runs on the shared inference pool with one
onnxruntime thread, never on the event loop; the model is loaded once per process and shared
by every session. A call still waiting for a worker when its answer stops
mattering (the client's `audio_end` closed the turn, the user spoke again) is dropped rather
than run, and the session asks only once it has handled the frames already received: a client
that sends an utterance faster than real time, then `audio_end`, never pays for a score.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway import inference
from gateway.audio.onnx_wire import softmax_unquantized
from gateway.audio.pcm import Samples
from gateway.errors import PermanentProviderError
from gateway.inference import POOL

PROVIDER = "smart-turn"
PACKAGE = "pipecat-ai"
PACKAGED_MODEL = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
"""The model file inside the `pipecat` folder that `pipecat-ai` installs."""

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 8 * SAMPLE_RATE
"""The model hears the last 8 s: older audio is dropped, a shorter input is padded with
silence in front."""
MEL_BANDS = 80
FRAMES = WINDOW_SAMPLES // 160
"""Whisper's 10 ms hop: 800 frames for 8 s."""
_VARIANCE_FLOOR = 1e-7
"""Added to the variance when normalizing (as pipecat does), so silence stays silence."""


@functools.cache
def _extractor() -> Any:
    """faster-whisper's log-mel front end, imported when first needed (it takes ~0.2 s)."""
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=MEL_BANDS)


def features(samples: Samples) -> npt.NDArray[np.float32]:
    """The model's input (80 x 800) for the last 8 s of 16 kHz mono `samples`."""
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    tail = samples[-WINDOW_SAMPLES:]
    window[WINDOW_SAMPLES - tail.size :] = tail / np.float32(32768)
    window = (window - window.mean()) / np.sqrt(window.var() + _VARIANCE_FLOOR)
    # No end padding: 8 s give 801 STFT frames, and Whisper's front end drops the last.
    return np.asarray(_extractor()(window, padding=0), dtype=np.float32)


class _Loaded:
    """One onnxruntime session, shared by every session of the process (`run` is thread-safe)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One thread per inference: the pool runs a call per core (adapters/inference.py).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = _session(path, options)
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [MEL_BANDS, FRAMES]:
            takes = ", ".join(f"`{i.name}` {i.shape}" for i in inputs)
            raise PermanentProviderError(
                PROVIDER,
                f"{path} takes {takes}, not Whisper log-mel features (batch x {MEL_BANDS} x "
                f"{FRAMES}): it is not a smart-turn v3 model",
            )
        self._input = inputs[0].name
        # The first call imports the feature extractor (~0.2 s) and lets onnxruntime allocate
        # its buffers: paid here, at load, not in the first session's first turn.
        self.probability(np.zeros(SAMPLE_RATE, dtype=np.int16), lambda: True)

    def probability(self, samples: Samples, wanted: Callable[[], bool]) -> float | None:
        if not wanted():
            return None
        (out,) = self._session.run(None, {self._input: features(samples)[np.newaxis]})
        return float(out[0, 0])


def _session(path: Path, options: Any) -> Any:
    """The model with its Softmax in float, loaded from a file: onnxruntime keeps ~12 MiB more
    of a model handed to it as bytes."""
    import onnxruntime

    model = softmax_unquantized(path.read_bytes())
    providers = ["CPUExecutionProvider"]
    try:
        with tempfile.NamedTemporaryFile(suffix=".onnx") as file:
            file.write(model)
            file.flush()
            return onnxruntime.InferenceSession(file.name, options, providers=providers)
    except OSError:  # no writable temporary folder
        return onnxruntime.InferenceSession(model, options, providers=providers)


def _load(path: str | None) -> _Loaded:
    if path is None:
        folder = inference.package_dir(PROVIDER, PACKAGE, module="pipecat")
        return _Loaded(
            inference.existing(PROVIDER, folder / PACKAGED_MODEL, f"the {PACKAGE} model file")
        )
    return _Loaded(
        inference.existing(PROVIDER, Path(path).expanduser(), "the end-of-turn model file")
    )


class SmartTurnModel:
    """smart-turn v3.2: the probability that the user's turn is complete, from the audio.

    `path` is an ONNX smart-turn v3 model file to use instead of the one in `pipecat-ai`.
    Instances are cheap: every instance with the same `path` shares one loaded model.
    """

    def __init__(self, path: str | None = None) -> None:
        self._path = path
        self._key = (PROVIDER, path)

    def preload(self) -> None:
        """Load and warm the model before serving (blocking: on a worker thread), so the
        first session neither waits for it nor pays its first inference."""
        inference.CACHE.get(self._key, lambda: _load(self._path))

    async def start(self) -> None:
        """Load the model now (on a worker) unless it is loaded: a missing package or file, or
        a file that is not a smart-turn v3 model, raises `PermanentProviderError` here."""
        await self._model()

    async def probability(
        self, samples: Samples, wanted: Callable[[], bool] = lambda: True
    ) -> float | None:
        """P(turn complete), in [0, 1], from the last (up to) 8 s of the user's 16 kHz mono
        audio, ending now, with the silence heard so far. The score grows with that silence
        (Piper requests cut mid-phrase: ~0.05 after 0.3 s, often > 0.6 after 0.5 s), so ask
        at a fixed point after speech stops, such as the VAD's pause.

        None: `wanted()`, asked on the worker just before the model runs, said the answer no
        longer matters, and the model did not run. `wanted` must only read state."""
        model = await self._model()
        return await POOL.run(model.probability, samples, wanted)

    async def _model(self) -> _Loaded:
        return await inference.load_model(PROVIDER, self._key, lambda: _load(self._path))
