"""espeak-ng formant synthesis: the robotic voice that is always there when Piper is not.

It runs the `espeak-ng` program (Debian's package, installed by `make install`) once per
phrase and streams its WAV output as it is written. The program was chosen over the
`espeakng-loader` wheel because the wheel only carries the library: speaking through it
would take a ctypes binding of espeak's callback API, while the program is already what the
tests make their speech with. Each phrase is its own process, so synthesis runs off the event
loop without taking a worker from the inference pool, and closing the stream kills it.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

import numpy as np
from msgspec import Meta

from adapters.base import Local
from gateway.config import TTSBlock
from gateway.errors import PermanentProviderError, ProviderError
from gateway.inference import audio_chunks

WAV_HEADER = 44
"""espeak-ng writes a plain 44-byte RIFF header (sizes unknown when writing to a pipe)."""
READ_BYTES = 8192


def _flag(key: str, value: Any) -> list[str]:
    """`options` as espeak-ng flags: `{p: 60}` is `-p 60`, `{punct: "?"}` is `--punct=?`."""
    return [f"-{key}", str(value)] if len(key) == 1 else [f"--{key}={value}"]


class EspeakTTS(TTSBlock, tag="espeak", frozen=True):
    """espeak-ng formant synthesis: robotic, but tiny, instant and always available."""

    voice: Annotated[str, Meta(description="An espeak-ng voice, e.g. `en-us`.")] = "en-us"
    words_per_minute: Annotated[int, Meta(ge=80, le=450, description="Speaking rate.")] = 175

    def open(self) -> EspeakVoice:
        return EspeakVoice(self)


class EspeakVoice(Local):
    def __init__(self, config: EspeakTTS) -> None:
        self._config = config
        self._args = [
            "--stdout",
            "--stdin",
            "-v",
            config.voice,
            "-s",
            str(config.words_per_minute),
            *(flag for key, value in config.options.items() for flag in _flag(key, value)),
        ]

    async def start(self) -> None:
        """Fail the session's start (not its first reply) when the program is missing."""
        self._program()

    def _program(self) -> str:
        program = shutil.which("espeak-ng")
        if program is None:
            raise PermanentProviderError(
                "espeak",
                "the espeak-ng program is not installed: run `make install` "
                "(or `apt-get install espeak-ng`)",
            )
        return program

    async def synthesize(
        self, phrases: AsyncIterator[str], sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        async for phrase in phrases:
            speech = self._speak(phrase, sample_rate)
            try:
                async for pcm in speech:
                    yield pcm
            finally:
                await speech.aclose()

    async def _speak(self, phrase: str, sample_rate: int) -> AsyncGenerator[bytes, None]:
        from gateway.audio.pcm import EMPTY, Resampler  # loads with a session, not a file check

        process = await asyncio.create_subprocess_exec(
            self._program(),
            *self._args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin and process.stdout and process.stderr
        try:
            process.stdin.write(phrase.encode())
            process.stdin.close()
            try:
                header = await process.stdout.readexactly(WAV_HEADER)
            except asyncio.IncompleteReadError:
                problem = (await process.stderr.read()).decode(errors="replace").strip()
                raise PermanentProviderError(
                    "espeak",
                    f"espeak-ng made no audio ({problem or 'no message'}): check tts.voice",
                ) from None
            (rate,) = struct.unpack_from("<I", header, 24)
            resample = Resampler(rate, sample_rate)
            carry = b""
            while data := await process.stdout.read(READ_BYTES):
                data, carry = _whole_samples(carry + data)
                pcm = resample(np.frombuffer(data, dtype="<i2")).tobytes()
                for chunk in audio_chunks(pcm, sample_rate):
                    yield chunk
            for chunk in audio_chunks(resample(EMPTY, last=True).tobytes(), sample_rate):
                yield chunk
            if await process.wait() != 0:
                problem = (await process.stderr.read()).decode(errors="replace").strip()
                raise ProviderError("espeak", f"espeak-ng failed: {problem}")
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def _whole_samples(data: bytes) -> tuple[bytes, bytes]:
    """Bytes that make whole 16-bit samples, and the odd byte left for the next read."""
    cut = len(data) - len(data) % 2
    return data[:cut], data[cut:]
