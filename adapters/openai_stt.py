"""OpenAI transcription of each utterance the gateway cuts (`/audio/transcriptions`).

The HTTP API has no endpointing and hears nothing until it has the whole file, so this STT
buffers the audio of the user's utterance and, when the gateway's VAD ends the turn
(`finalize`), uploads it as a WAV. `gpt-4o-*-transcribe` models stream the text back as it is
decoded (partials, then the final); `whisper` models answer once.

`finalize` only queues the utterance; `events()`, which the session is already reading, makes
the request. So the request belongs to the reader: closing `events()` (the session ending, a
failover) cancels it, and no task is left behind.

Silence is not uploaded: audio before the first voiced chunk is cut to a short pre-roll (the
mic streams all the time, also while the assistant speaks), and an utterance with no voiced
chunk at all is `Final("")` without a request (Whisper-family models invent text for silence).
"""

from __future__ import annotations

import asyncio
import collections
import io
import math
import wave
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated

import numpy as np
from msgspec import Meta

from adapters.base import Final, Partial, STTEvent
from adapters.openai_client import OPENAI_HOSTS, PROVIDER, OpenAIAdapter, import_sdk
from gateway.config import STTBlock
from gateway.errors import ProviderError

VOICED_RMS = 100.0
"""RMS (int16 units) from which a chunk counts as voiced: about -50 dBFS, below any speech the
VAD would take for a turn, above a quiet room."""

PRE_ROLL_S = 0.5
"""Audio kept before the first voiced chunk, so a soft first syllable is not clipped."""

MAX_UPLOAD_BYTES = 24 * 1024 * 1024
"""The API takes files up to 25 MB; a longer utterance keeps its end."""


class OpenAISTT(STTBlock, tag="openai", frozen=True):
    """OpenAI transcription of each VAD-cut utterance, streamed (`gpt-4o-*-transcribe`)."""

    key_env = "OPENAI_API_KEY"
    own_hosts = OPENAI_HOSTS
    billed_by_audio = True

    model: Annotated[
        str | None,
        Meta(
            description=(
                "A transcription model: `gpt-4o-mini-transcribe`, `gpt-4o-transcribe`, `whisper-1`."
            )
        ),
    ] = "gpt-4o-mini-transcribe"
    language: Annotated[
        str | None, Meta(description="ISO-639-1 code such as `en`; unset: detected.")
    ] = None
    prompt: Annotated[
        str | None, Meta(description="Words to expect (names, jargon) to steer recognition.")
    ] = None

    def open(self, sample_rate: int) -> OpenAITranscriber:
        return OpenAITranscriber(self, sample_rate)

    def preload(self) -> None:
        import_sdk()


class OpenAITranscriber(OpenAIAdapter):
    def __init__(self, config: OpenAISTT, sample_rate: int) -> None:
        super().__init__(config, "stt")
        self._config = config
        self._sample_rate = sample_rate
        self._streams = "whisper" not in self._model
        self._utterance = Utterance(sample_rate)
        self._previous = b""
        """The last utterance uploaded: a turn continued after a pause is sent whole."""
        self._pending: asyncio.Queue[tuple[bytes, bool] | None] = asyncio.Queue()
        """Utterances `finalize` cut (and whether they revise the previous final), for
        `events()` to transcribe; None: closed."""

    async def send_audio(self, pcm: bytes) -> None:
        self._utterance.add(pcm)

    async def finalize(self, continues: bool = False) -> None:
        audio = self._utterance.take()
        revises = continues and bool(audio) and bool(self._previous)
        if revises:  # a fragment after a pause transcribes badly on its own
            audio = (self._previous + audio)[-MAX_UPLOAD_BYTES:]
        if audio:
            self._previous = audio
        self._pending.put_nowait((audio, revises))

    async def events(self) -> AsyncGenerator[STTEvent, None]:
        while (pending := await self._pending.get()) is not None:
            audio, revises = pending
            if not audio:
                yield Final("")
                continue
            upload = wav(audio, self._sample_rate)
            with self.translated_errors():
                async with aclosing(self._transcribe(upload)) as events:
                    async for event in events:
                        if isinstance(event, Final):
                            yield Final(event.text, revises=revises)
                        elif not revises:  # its partials would repeat words already final
                            yield event

    async def aclose(self) -> None:
        self._pending.put_nowait(None)  # ends events()
        await super().aclose()

    async def _transcribe(self, file: bytes) -> AsyncGenerator[STTEvent, None]:
        from openai import omit
        from openai.types.audio import (
            Transcription,
            TranscriptionTextDeltaEvent,
            TranscriptionTextDoneEvent,
        )

        config = self._config
        request = self._client.audio.transcriptions
        upload = ("utterance.wav", file, "audio/wav")
        language = config.language or omit
        prompt = config.prompt or omit
        extra = config.options or None
        timeout = self._timeout_s
        if not self._streams:
            result = await request.create(
                model=self._model,
                file=upload,
                language=language,
                prompt=prompt,
                extra_body=extra,
                timeout=timeout,
            )
            if not isinstance(result, Transcription):
                raise ProviderError(PROVIDER, f"{self._host} sent no transcription: {result!r:.80}")
            yield Final(result.text)
            return
        stream = await request.create(
            model=self._model,
            file=upload,
            language=language,
            prompt=prompt,
            stream=True,
            extra_body=extra,
            timeout=timeout,
        )
        done = False
        async with stream:
            text = ""
            async for event in stream:
                if isinstance(event, TranscriptionTextDeltaEvent):
                    text += event.delta
                    yield Partial(text)
                elif isinstance(event, TranscriptionTextDoneEvent):
                    done = True
                    yield Final(event.text)
        if not done:  # without its final the user's turn would never end
            raise ProviderError(
                PROVIDER,
                f"the transcription stream from {self._host} ended without its text: if the "
                "server does not stream transcriptions, use a `whisper` model name",
            )


class Utterance:
    """The audio of the user's utterance since the last final, from just before its voice."""

    def __init__(self, sample_rate: int) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._voiced = False
        self._pre_roll = int(PRE_ROLL_S * sample_rate) * 2

    def add(self, pcm: bytes) -> None:
        self._chunks.append(pcm)
        self._bytes += len(pcm)
        self._voiced = self._voiced or _rms(pcm) >= VOICED_RMS
        limit = MAX_UPLOAD_BYTES if self._voiced else self._pre_roll
        while self._bytes - len(self._chunks[0]) >= limit:
            self._bytes -= len(self._chunks.popleft())

    def take(self) -> bytes:
        """The utterance, or b"" if nothing in it was voiced; starts the next one."""
        audio = b"".join(self._chunks) if self._voiced else b""
        self._chunks.clear()
        self._bytes = 0
        self._voiced = False
        return audio


def _rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    return math.sqrt(float(np.mean(samples**2))) if samples.size else 0.0


def wav(pcm: bytes, sample_rate: int) -> bytes:
    """Mono s16le as a WAV file: the API needs a container to know the rate."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return out.getvalue()
