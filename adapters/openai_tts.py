"""OpenAI speech (`/audio/speech`), one request per phrase, streamed as raw PCM.

`pcm` is the only format that needs no decoder and can be played from its first byte: 24 kHz
mono s16le, resampled here to the rate the pipeline asks for. The body arrives in whatever
pieces the network makes, so a piece may end in the middle of a sample: the odd byte waits for
the next piece rather than shifting every later sample by one byte.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta

from adapters.openai_client import OPENAI_HOSTS, OpenAIAdapter, import_sdk
from gateway.config import TTSBlock

OPENAI_PCM_RATE = 24000


class OpenAITTS(TTSBlock, tag="openai", frozen=True):
    """OpenAI `audio.speech`, streamed as raw PCM, one request per phrase."""

    key_env = "OPENAI_API_KEY"
    own_hosts = OPENAI_HOSTS

    model: Annotated[
        str | None, Meta(description="A speech model: `gpt-4o-mini-tts`, `tts-1`, `tts-1-hd`.")
    ] = "gpt-4o-mini-tts"
    voice: Annotated[str, Meta(description="An OpenAI voice, e.g. `alloy`.")] = "alloy"
    instructions: Annotated[
        str | None, Meta(description="How to speak (tone, pace); gpt-4o-mini-tts only.")
    ] = None
    speed: Annotated[float, Meta(ge=0.25, le=4.0, description="1.0: the voice's own pace.")] = 1.0

    def open(self) -> OpenAISpeech:
        return OpenAISpeech(self)

    def preload(self) -> None:
        import_sdk()

    def voice_name(self) -> str:
        return self.voice

    def with_voice(self, voice: str) -> OpenAITTS:
        return msgspec.structs.replace(self, voice=voice)


class OpenAISpeech(OpenAIAdapter):
    def __init__(self, config: OpenAITTS) -> None:
        super().__init__(config, "tts")
        self._config = config

    async def synthesize(
        self, phrases: AsyncIterator[str], sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        from openai import omit

        config = self._config
        async for phrase in phrases:
            if not phrase.strip():
                continue  # the API rejects empty input with a 400, which would refuse us
            pcm = PCMStream(sample_rate)
            with self.translated_errors():
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
        from gateway.audio.pcm import Resampler  # loads with a session, not a file check

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
