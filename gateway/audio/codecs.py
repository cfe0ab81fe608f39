"""Streaming input decoders and output encoders between the wire codecs and PCM.

The pipeline works on mono 16-bit PCM at `input.sample_rate`; clients send `input.codec` at
their own rate and receive `output.codec`. Decoders are fed chunk by chunk (chunk edges
anywhere, even mid-sample) and return the PCM available so far, so audio reaches VAD and STT
as it arrives (less the resampler's short filter delay, see `Resampler`). `DECODABLE` and
`ENCODABLE` are what the pipeline loader checks files against: a codec listed there has a
real implementation below.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt
import soxr

from gateway.errors import BadAudio
from gateway.pipeline import InputCodec, OutputCodec

Samples = npt.NDArray[np.int16]

DECODABLE: frozenset[InputCodec] = frozenset({InputCodec.PCM16, InputCodec.MULAW})
ENCODABLE: frozenset[OutputCodec] = frozenset({OutputCodec.PCM16, OutputCodec.MULAW})
MULAW_RATE = 8000


def _mulaw_decode_table() -> Samples:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


_MULAW_DECODE = _mulaw_decode_table()


def mulaw_encode(pcm: Samples) -> bytes:
    """G.711 mu-law, the telephony codec (ITU-T G.711, with the 0x84 bias and 14-bit clip).

    Byte-identical to the reference (Sun's g711.c, as in audioop, sox and ffmpeg): the sample
    is first cut to 14 bits by an arithmetic shift, which rounds negative samples down."""
    x = pcm.astype(np.int32) >> 2
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), 8158) + (0x84 >> 2)
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 5
    mantissa = (magnitude >> (exponent + 1)) & 0x0F
    encoded: bytes = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()
    return encoded


class Resampler:
    """Streaming rate conversion that keeps filter state across chunks (soxr).

    Quality "LQ" on purpose: soxr holds samples back for its filter, and at "HQ" that is
    37-115 ms of input (measured with 20 ms chunks; 8 kHz mu-law is worst), which delays the
    VAD's end of speech and so every reply. "LQ" holds back 20-60 ms and is still a proper
    band-limited filter, far cleaner than speech recognition needs.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._stream = (
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="LQ")
            if in_rate != out_rate
            else None
        )

    def __call__(self, pcm: Samples, last: bool = False) -> Samples:
        if self._stream is None:
            return pcm
        out: Samples = self._stream.resample_chunk(pcm, last=last)
        return out


class Decoder(Protocol):
    """Turns the client's byte stream into PCM at the pipeline's rate."""

    def decode(self, data: bytes) -> Samples: ...


class PCM16Decoder:
    """Little-endian 16-bit mono PCM; an odd trailing byte waits for the next chunk."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._resample = Resampler(in_rate, out_rate)
        self._carry = b""

    def decode(self, data: bytes) -> Samples:
        if self._carry:
            data = self._carry + data
        cut = len(data) & ~1
        self._carry = data[cut:]
        return self._resample(np.frombuffer(data[:cut], dtype="<i2"))


class MulawDecoder:
    """8 kHz G.711 mu-law, one byte per sample."""

    def __init__(self, out_rate: int) -> None:
        self._resample = Resampler(MULAW_RATE, out_rate)

    def decode(self, data: bytes) -> Samples:
        return self._resample(_MULAW_DECODE[np.frombuffer(data, dtype=np.uint8)])


def open_decoder(codec: InputCodec, client_rate: int | None, pipeline_rate: int) -> Decoder:
    """A fresh decoder for one session; raises BadAudio for a codec this build cannot decode."""
    if codec is InputCodec.PCM16:
        if client_rate is None:
            raise BadAudio("pcm16 input needs input.sample_rate in session_start")
        return PCM16Decoder(client_rate, pipeline_rate)
    if codec is InputCodec.MULAW:
        return MulawDecoder(pipeline_rate)
    raise BadAudio(f"no decoder for {codec} in this build; send one of {sorted(DECODABLE)}")


class Encoder(Protocol):
    """Turns TTS PCM (at `output.sample_rate`) into the client's output codec."""

    def encode(self, pcm: bytes) -> bytes: ...


class PCM16Encoder:
    def encode(self, pcm: bytes) -> bytes:
        return pcm


class MulawEncoder:
    def encode(self, pcm: bytes) -> bytes:
        return mulaw_encode(np.frombuffer(pcm, dtype="<i2"))


def open_encoder(codec: OutputCodec) -> Encoder:
    if codec is OutputCodec.PCM16:
        return PCM16Encoder()
    if codec is OutputCodec.MULAW:
        return MulawEncoder()
    raise BadAudio(f"no encoder for {codec} in this build; use one of {sorted(ENCODABLE)}")


def bytes_per_ms(codec: OutputCodec, sample_rate: int) -> float:
    """Payload bytes per millisecond of audio, for pacing and played-time accounting."""
    per_sample = 1 if codec is OutputCodec.MULAW else 2
    return sample_rate * per_sample / 1000
