"""OpenAI speech (`/audio/speech`), one request per phrase, streamed as raw PCM.

`pcm` is the only format that needs no decoder and can be played from its first byte: 24 kHz
mono s16le, resampled here to the rate the pipeline asks for. The body arrives in whatever
pieces the network makes, so a piece may end in the middle of a sample: the odd byte waits for
the next piece rather than shifting every later sample by one byte.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import numpy as np
from openai import omit

from adapters.openai_client import OpenAIAdapter
from gateway import pipeline
from gateway.audio.pcm import Resampler

OPENAI_PCM_RATE = 24000


class OpenAITTS(OpenAIAdapter):
    def __init__(self, config: pipeline.OpenAITTS) -> None:
        super().__init__(config, "tts")
        self._config = config

    async def synthesize(
        self, phrases: AsyncIterator[str], sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        config = self._config
        async for phrase in phrases:
            if not phrase.strip():
                continue  # the API rejects empty input with a 400, which would refuse us
            pcm = PCMStream(sample_rate)
            with self.translated_errors():
                self.used()
                async with self._client.audio.speech.with_streaming_response.create(
                    timeout=self._timeout_s,
                    model=self._model,
                    voice=config.voice,
                    input=phrase,
                    response_format="pcm",
                    speed=config.speed,
                    instructions=config.instructions or omit,
                    extra_body=config.options or None,
                ) as response:
                    content_type = response.headers.get("content-type", "")
                    if content_type.startswith(("application/json", "text/")):
                        raise self.wrong_content("/audio/speech", content_type)
                    async for piece in response.iter_bytes():
                        if out := pcm.push(piece):
                            yield out
            if out := pcm.flush():
                yield out


class PCMStream:
    """OpenAI's 24 kHz s16le pieces in, whole samples at `sample_rate` out."""

    def __init__(self, sample_rate: int) -> None:
        self._resample = Resampler(OPENAI_PCM_RATE, sample_rate)
        self._odd = b""

    def push(self, piece: bytes) -> bytes:
        data = self._odd + piece
        whole = len(data) - len(data) % 2
        self._odd = data[whole:]
        return self._resample(np.frombuffer(data[:whole], dtype="<i2")).tobytes()

    def flush(self) -> bytes:
        """The resampler's held-back tail; a dangling half sample is dropped."""
        return self._resample(np.empty(0, dtype="<i2"), last=True).tobytes()
