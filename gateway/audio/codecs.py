"""Streaming input decoders and output encoders between the wire codecs and PCM.

The pipeline works on mono 16-bit PCM at `input.sample_rate`; clients send `input.codec` at
their own rate and receive `output.codec`. Decoders are fed chunk by chunk (chunk edges
anywhere, even mid-sample) and return the PCM available so far, so audio reaches VAD and STT
as it arrives (less the resampler's short filter delay, see `Resampler`). Browser containers
(WebM/Opus, Ogg/Opus, MP4/AAC) are decoded by `containers`; Opus output is encoded by `opus`.
Every codec of the wire protocol has a decoder or an encoder here (tests/test_codecs.py).

Every decoder and encoder has `close()` (free codec state; idempotent) and `flush()` (end of
stream or turn: what is still held back). Encoders return payloads from `encode`, one per
`tts_audio_chunk` frame, and say how long a payload plays via `duration_ms`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from gateway.audio.containers import ContainerDecoder, Demuxer
from gateway.audio.mp4 import Mp4Demuxer
from gateway.audio.ogg import OggDemuxer
from gateway.audio.opus import OpusEncoder
from gateway.audio.pcm import EMPTY, Resampler, Samples
from gateway.audio.webm import WebmDemuxer
from gateway.errors import BadAudio
from gateway.protocol import MULAW_RATE, InputCodec, OutputCodec

DEMUXERS: dict[InputCodec, Callable[[], Demuxer]] = {
    InputCodec.WEBM_OPUS: WebmDemuxer,
    InputCodec.OGG_OPUS: OggDemuxer,
    InputCodec.MP4_AAC: Mp4Demuxer,
}


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


class Decoder(Protocol):
    """Turns the client's byte stream into PCM at the pipeline's rate."""

    def decode(self, data: bytes) -> Samples:
        """PCM for the bytes so far; raises BadAudio for input that does not decode."""
        ...

    def flush(self) -> Samples:
        """End of the stream: PCM still held back (by the resampler's filter, say)."""
        ...

    def close(self) -> None:
        """Free codec state; idempotent. Call at session end."""
        ...


_MAGIC = {
    b"\x1a\x45\xdf\xa3": "webm/opus",
    b"OggS": "ogg/opus",
}


def _refuse_containers(codec: InputCodec, first: bytes) -> None:
    """A container sent as raw samples decodes to loud noise: name the mix-up instead."""
    found = _MAGIC.get(first[:4]) or ("mp4/aac" if first[4:8] == b"ftyp" else None)
    if found is not None:
        raise BadAudio(
            f"input.codec is {codec.value} but the audio is a {found} stream; "
            f"announce `{found}` in session_start or send raw {codec.value} samples"
        )


class _RawDecoder:
    """Shared by the raw-sample decoders: the resampler, its flush, the first-chunk check, and
    the down-mix of interleaved channels (averaged: a summed stereo pair would be 3 dB hot)."""

    codec: InputCodec
    sample_bytes: int

    def __init__(self, in_rate: int, out_rate: int, channels: int) -> None:
        self._in_rate, self._out_rate = in_rate, out_rate
        self._channels = channels
        self._resample = Resampler(in_rate, out_rate)
        self._first = b""
        self._carry = b""

    def _check_first(self, data: bytes) -> None:
        if len(self._first) < 8:
            self._first += data[: 8 - len(self._first)]
            if len(self._first) >= 8:
                _refuse_containers(self.codec, self._first)

    def _whole_frames(self, data: bytes) -> bytes:
        """The whole sample frames of `data`; a partial one waits for the next chunk."""
        if self._carry:
            data = self._carry + data
        cut = len(data) - len(data) % (self.sample_bytes * self._channels)
        self._carry = data[cut:]
        return data[:cut]

    def _mono(self, samples: Samples) -> Samples:
        if self._channels == 1:
            return samples
        mixed = samples.reshape(-1, self._channels).astype(np.int32).sum(axis=1)
        mono: Samples = (mixed // self._channels).astype(np.int16)
        return mono

    def flush(self) -> Samples:
        tail = self._resample(EMPTY, last=True)
        self._resample = Resampler(self._in_rate, self._out_rate)
        return tail

    def close(self) -> None:
        pass


class PCM16Decoder(_RawDecoder):
    """Little-endian 16-bit PCM, mono or interleaved channels."""

    codec = InputCodec.PCM16
    sample_bytes = 2

    def decode(self, data: bytes) -> Samples:
        self._check_first(data)
        samples = np.frombuffer(self._whole_frames(data), dtype="<i2")
        return self._resample(self._mono(samples))


class MulawDecoder(_RawDecoder):
    """8 kHz G.711 mu-law, one byte per sample."""

    codec = InputCodec.MULAW
    sample_bytes = 1

    def __init__(self, out_rate: int, channels: int) -> None:
        super().__init__(MULAW_RATE, out_rate, channels)

    def decode(self, data: bytes) -> Samples:
        self._check_first(data)
        samples = _MULAW_DECODE[np.frombuffer(self._whole_frames(data), dtype=np.uint8)]
        return self._resample(self._mono(samples))


def open_decoder(
    codec: InputCodec, client_rate: int | None, pipeline_rate: int, channels: int = 1
) -> Decoder:
    """A fresh decoder for one session; raises BadAudio for a codec this build cannot decode.

    `client_rate` is needed for pcm16 only: mu-law is 8 kHz and containers carry their rate
    and channel count; `channels` says how raw samples are interleaved (down-mixed to mono)."""
    if codec is InputCodec.PCM16:
        if client_rate is None:
            raise BadAudio("pcm16 input needs input.sample_rate in session_start")
        return PCM16Decoder(client_rate, pipeline_rate, channels)
    if codec is InputCodec.MULAW:
        return MulawDecoder(pipeline_rate, channels)
    if codec in DEMUXERS:
        return ContainerDecoder(DEMUXERS[codec](), pipeline_rate)  # the container carries its rate
    raise BadAudio(f"no decoder for {codec}")


class Encoder(Protocol):
    """Turns TTS PCM (at `output.sample_rate`) into the client's output codec."""

    def encode(self, pcm: bytes) -> list[bytes]:
        """Payloads to send, one per `tts_audio_chunk` frame (none while opus fills a frame)."""
        ...

    def flush(self) -> list[bytes]:
        """End of a turn: payloads for the samples still waiting (opus pads with silence)."""
        ...

    def duration_ms(self, payload: bytes) -> float:
        """How long one payload plays, for pacing and played-time accounting."""
        ...

    def close(self) -> None:
        """Free codec state; idempotent. Call at session end."""
        ...


class _RawEncoder:
    """Sample-for-sample codecs: every chunk of PCM is one payload, nothing is held back."""

    per_sample = 2
    sample_rate = 0

    def _payload(self, pcm: bytes) -> bytes:
        raise NotImplementedError

    def encode(self, pcm: bytes) -> list[bytes]:
        payload = self._payload(pcm)
        return [payload] if payload else []

    def flush(self) -> list[bytes]:
        return []

    def duration_ms(self, payload: bytes) -> float:
        return len(payload) / (self.sample_rate * self.per_sample / 1000)

    def close(self) -> None:
        pass


class PCM16Encoder(_RawEncoder):
    def __init__(self, sample_rate: int = 24000) -> None:
        self.sample_rate = sample_rate

    def _payload(self, pcm: bytes) -> bytes:
        return pcm


class MulawEncoder(_RawEncoder):
    per_sample = 1
    sample_rate = MULAW_RATE

    def _payload(self, pcm: bytes) -> bytes:
        return mulaw_encode(np.frombuffer(pcm, dtype="<i2"))


def open_encoder(codec: OutputCodec, sample_rate: int | None = None) -> Encoder:
    """A fresh encoder for one session, taking PCM at `sample_rate` (`output.sample_rate`).

    Opus needs the rate (one of OPUS_RATES) and raises BadAudio without a valid one."""
    if codec is OutputCodec.PCM16:
        return PCM16Encoder(sample_rate or 24000)
    if codec is OutputCodec.MULAW:
        return MulawEncoder()
    if codec is OutputCodec.OPUS:
        if sample_rate is None:
            raise BadAudio("opus output needs output.sample_rate passed to open_encoder")
        return OpusEncoder(sample_rate)
    raise BadAudio(f"no encoder for {codec}")
