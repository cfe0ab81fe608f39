"""Decoders for the browser recorders' container formats: WebM/Opus, Ogg/Opus, MP4/AAC.

MediaRecorder hands over a container stream in pieces whose edges fall anywhere, with the
header only in the first piece, so no off-the-shelf demuxer can read a later piece alone. Each
format therefore has a small incremental demuxer of our own (`webm`, `ogg`, `mp4`) that turns
bytes into codec packets as soon as a whole packet has arrived; one long-lived PyAV codec
context per session then decodes those packets (no thread or process per session, ~2-3 ms of
CPU per audio second). Frames are averaged to mono and resampled to the pipeline's rate.

Every failure surfaces as `BadAudio` naming what was expected and what was found; on any error
the codec context is released at once, and `close()` (idempotent) releases it at session end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import av
import numpy as np

from gateway.audio.pcm import EMPTY, Resampler, Samples, to_mono
from gateway.errors import BadAudio

_live_contexts = 0


def live_codec_contexts() -> int:
    """Codec contexts opened by decoders and encoders here and not yet closed (for tests and
    leak checks)."""
    return _live_contexts


def open_context(name: str, mode: Literal["r", "w"]) -> av.AudioCodecContext:
    """A PyAV audio codec context, counted in `live_codec_contexts` until `release_context`."""
    global _live_contexts
    ctx = av.CodecContext.create(name, mode)
    assert isinstance(ctx, av.AudioCodecContext)
    _live_contexts += 1
    return ctx


def release_context() -> None:
    """Uncount a context whose last reference the caller has just dropped (PyAV frees it)."""
    global _live_contexts
    _live_contexts -= 1


@dataclass(frozen=True)
class StreamConfig:
    """What a container's header says about its audio: enough to open the decoder."""

    codec: str  # the FFmpeg decoder name: "opus" or "aac"
    extradata: bytes  # OpusHead, or the AAC AudioSpecificConfig
    skip_frames: int = 0  # leading decoded frames to drop (AAC encoder priming)
    skip_samples: int = 0  # leading samples to drop, at `skip_rate`
    skip_rate: int = 0


class Packet(NamedTuple):
    """One codec packet; `discard_ns` of decoded audio at its end is padding to drop."""

    data: bytes
    discard_ns: int = 0


class Demuxer(Protocol):
    """Bytes in, whole codec packets out; `config` is set before the first packet."""

    name: str
    config: StreamConfig | None

    def feed(self, data: bytes) -> list[Packet]: ...


class StreamDemuxer:
    """Base of the demuxers that parse a growing byte buffer one step at a time.

    `feed` appends the chunk and steps until a step needs bytes that have not arrived;
    `_offset` is the stream position of `_buf[0]`, so element and box ends can be kept as
    stream offsets while consumed bytes are dropped from the buffer.
    """

    name: str

    def __init__(self) -> None:
        self.config: StreamConfig | None = None
        self._buf = bytearray()
        self._offset = 0

    def feed(self, data: bytes) -> list[Packet]:
        self._buf += data
        packets: list[Packet] = []
        while self._step(packets):
            pass
        return packets

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._offset += n

    def _step(self, packets: list[Packet]) -> bool:
        """Advance over one unit of the container; False when more bytes are needed."""
        raise NotImplementedError


class ContainerDecoder:
    """Demuxer -> codec context -> mono -> pipeline rate, chunk by chunk."""

    def __init__(self, demuxer: Demuxer, out_rate: int) -> None:
        self._demuxer = demuxer
        self._out_rate = out_rate
        self._ctx: av.AudioCodecContext | None = None
        self._resample: Resampler | None = None
        self._in_rate = 0
        self._skip_frames = 0
        self._skip_samples = 0
        self._closed = False

    def decode(self, data: bytes) -> Samples:
        """PCM at the pipeline rate for every whole packet that has arrived so far."""
        if self._closed:
            raise BadAudio(f"{self._demuxer.name} decoder is closed (an earlier chunk failed)")
        try:
            packets = self._demuxer.feed(data)
            if not packets:
                if self._ctx is None and self._demuxer.config is not None:
                    self._open(self._demuxer.config)
                return EMPTY
            ctx = self._ctx or self._open(self._demuxer.config)
            out = [self._convert(ctx.decode(av.Packet(p.data)), p.discard_ns) for p in packets]
            return np.concatenate(out)
        except BadAudio:
            self.close()
            raise
        except av.FFmpegError as e:
            self.close()
            config = self._demuxer.config
            codec = config.codec if config is not None else "codec"
            raise BadAudio(
                f"{self._demuxer.name}: an {codec} packet does not decode ({e.strerror}); "
                "the stream is corrupt or not what input.codec says"
            ) from None

    def flush(self) -> Samples:
        """End of the stream: what the codec and the resampler still hold.

        The decoder stays usable; audio fed after a flush starts a fresh resampler."""
        if self._ctx is None:
            return EMPTY
        try:
            tail = self._convert(self._ctx.decode(None))
        except av.FFmpegError:
            tail = EMPTY
        self._ctx.flush_buffers()
        if self._resample is not None:
            tail = np.concatenate([tail, self._resample(EMPTY, last=True)])
            self._resample, self._in_rate = None, 0
        return tail

    def close(self) -> None:
        """Free the codec context; safe to call more than once."""
        self._closed = True
        if self._ctx is not None:
            self._ctx = None
            release_context()

    def _open(self, config: StreamConfig | None) -> av.AudioCodecContext:
        assert config is not None, "demuxers set config before returning packets"
        ctx = open_context(config.codec, "r")
        self._ctx = ctx
        ctx.extradata = config.extradata
        try:
            ctx.open()
        except av.FFmpegError as e:
            raise BadAudio(
                f"{self._demuxer.name}: the {config.codec} decoder rejects the stream's "
                f"configuration {config.extradata.hex()} ({e.strerror}); "
                f"expected {_EXPECTED[config.codec]}"
            ) from None
        self._skip_frames = config.skip_frames
        return ctx

    def _convert(self, frames: list[av.AudioFrame], discard_ns: int = 0) -> Samples:
        """One packet's frames as mono PCM at the pipeline rate, less priming and padding."""
        out: list[Samples] = []
        if self._skip_frames:
            n = min(self._skip_frames, len(frames))
            self._skip_frames -= n
            frames = frames[n:]
        if not frames:
            return EMPTY
        rate = frames[0].sample_rate
        if rate != self._in_rate:
            self._start_resampler(rate, out)
        parts = [to_mono(f.to_ndarray(), f.layout.nb_channels, f.format.is_planar) for f in frames]
        pcm = np.concatenate(parts)
        if discard_ns > 0:
            pcm = pcm[: max(0, pcm.size - discard_ns * rate // 1_000_000_000)]
        if self._skip_samples:
            cut = min(self._skip_samples, pcm.size)
            pcm, self._skip_samples = pcm[cut:], self._skip_samples - cut
        assert self._resample is not None
        out.append(self._resample(pcm))
        return np.concatenate(out)

    def _start_resampler(self, rate: int, out: list[Samples]) -> None:
        if self._resample is not None:  # the rate changed mid-stream: drain the old filter
            out.append(self._resample(EMPTY, last=True))
        elif (config := self._demuxer.config) is not None and config.skip_rate:
            self._skip_samples = config.skip_samples * rate // config.skip_rate
        self._resample = Resampler(rate, self._out_rate)
        self._in_rate = rate


_EXPECTED = {
    "opus": "an OpusHead header (RFC 7845)",
    "aac": "an AAC AudioSpecificConfig (AAC-LC or HE-AAC)",
}
