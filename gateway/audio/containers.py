"""Decoders for the browser recorders' container formats: WebM/Opus, Ogg/Opus, MP4/AAC.

MediaRecorder hands over a container stream in pieces whose edges fall anywhere, with the
header only in the first piece, so no off-the-shelf demuxer can read a later piece alone. Each
format therefore has a small incremental demuxer of our own (`webm`, `ogg`, `mp4`) that turns
bytes into codec packets as soon as a whole packet has arrived; one long-lived PyAV codec
context per session then decodes those packets (no thread or process per session, ~2-3 ms of
CPU per audio second). Frames are averaged to mono and resampled to the pipeline's rate.

Every failure surfaces as `BadAudio` naming what was expected and what was found; on any error
the codec context is released at once, and `close()` (idempotent) releases it at session end.

Gaps: a client under backpressure may drop whole chunks (the SDK never drops the first, which
holds the header). Chromium's chunks happen to join up again after such a drop (its WebM chunks
end one byte into a SimpleBlock and the next begins with that block's size; its MP4 chunks are
whole moof+mdat fragments), but other recorders may cut elsewhere, so a demuxer that finds the
stream broken after the header does not fail at once: it looks for the next element it can
trust (`StreamDemuxer._resume`) within `RESYNC_WINDOW` bytes and goes on from there, the audio
in between lost. Bytes that never lead back into the stream still end in one `BadAudio`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import av
import numpy as np
import structlog

from gateway.audio.pcm import EMPTY, Resampler, Samples, to_mono
from gateway.errors import BadAudio

log = structlog.get_logger()
_live_contexts = 0
RESYNC_WINDOW = 64 << 10
"""After a break, an element to resume at must begin within this many bytes, else the break
was garbage, not a gap. It bounds the audio skipped (4 s of Chromium's 128 kbit/s Opus) and
spans an Ogg page (at most 65,307 bytes) and far more than a recorder's cluster or fragment."""


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
    gaps: int  # breaks in the stream resumed after (chunks the client dropped)

    def feed(self, data: bytes) -> list[Packet]: ...


class Cut(BadAudio):
    """The stream broke where a gap (chunks the client dropped) could have cut it: after the
    header, the demuxer looks for an element to resume at instead of failing."""


class StreamDemuxer:
    """Base of the demuxers that parse a growing byte buffer one step at a time.

    `feed` appends the chunk and steps until a step needs bytes that have not arrived;
    `_offset` is the stream position of `_buf[0]`, so element and box ends can be kept as
    stream offsets while consumed bytes are dropped from the buffer.

    A step raises `Cut` where a gap in the bytes would show. Before the header that is fatal like
    any `BadAudio`; after it the demuxer scans for `SYNC` (the magic of the element it can
    resume at, `SYNC_AT` bytes into it), asks `_trust` whether a candidate really continues the
    stream, and resumes there after `_restart`. `gaps` and `skipped_bytes` count what happened.
    A gap can also leave a size that spans later bytes, so the demuxer would wait for an element
    that never ends: while a step waits, a trusted element found inside the awaited bytes is a
    break too (`_look_ahead`).
    """

    name: str
    SYNC: bytes
    SYNC_AT = 0

    def __init__(self) -> None:
        self.config: StreamConfig | None = None
        self.gaps = 0
        self.skipped_bytes = 0
        self._buf = bytearray()
        self._offset = 0
        self._cut: Cut | None = None
        self._cut_at = 0  # stream offset where the break was found
        self._scan = 0  # buffer index to look for SYNC from
        self._peeked = 0  # stream offset up to which `_look_ahead` found no trusted element

    def feed(self, data: bytes) -> list[Packet]:
        self._buf += data
        packets: list[Packet] = []
        while self._cut is None or self._resume():
            try:
                if not self._step(packets):
                    if self.config is not None and self._resumable():
                        self._look_ahead()
                    break
            except Cut as cut:
                if self.config is None or not self._resumable():
                    raise
                self._cut, self._cut_at, self._scan = cut, self._offset, 1
        return packets

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._offset += n

    def _step(self, packets: list[Packet]) -> bool:
        """Advance over one unit of the container; False when more bytes are needed."""
        raise NotImplementedError

    def _resumable(self) -> bool:
        """Whether the header is complete, so a break may be a gap rather than a bad stream."""
        return True

    def _trust(self, at: int) -> bool | None:
        """Whether the candidate element at `_buf[at]` (SYNC found in it) continues the stream;
        None when more bytes are needed to tell."""
        raise NotImplementedError

    def _restart(self) -> None:
        """Forget the state of the element the gap cut: parsing resumes at `_buf[0]`."""
        raise NotImplementedError

    def _resume(self) -> bool:
        """After a break: True once resumed at a trusted element, False while bytes are needed;
        BadAudio (the break's own message) when none begins within RESYNC_WINDOW bytes."""
        while (found := self._buf.find(self.SYNC, self._scan + self.SYNC_AT)) >= 0:
            at = found - self.SYNC_AT
            self._check_window(self._offset + at)
            verdict = self._trust(at)
            if verdict is None:  # a candidate not yet whole: wait for it; the bytes before it go
                self._skip_bytes(at)
                return False
            if verdict:
                self._skip_bytes(at)
                log.info(
                    "audio_gap_resumed",
                    codec=self.name,
                    at_byte=self._offset,
                    skipped_bytes=self._offset - self._cut_at,
                )
                self._cut, self._peeked = None, 0
                self.gaps += 1
                self._restart()
                return True
            self._scan = at + 1
        # No candidate: keep only what may be the start of one.
        self._skip_bytes(max(0, len(self._buf) - len(self.SYNC) - self.SYNC_AT + 1))
        self._check_window(self._offset)
        return False

    def _look_ahead(self) -> None:
        """Called while the element at `_buf[0]` waits for bytes (so the buffer holds only part
        of it): raise Cut if an element `_trust` accepts begins inside it."""
        start = max(1, self._peeked - self._offset)
        while (found := self._buf.find(self.SYNC, start + self.SYNC_AT)) >= 0:
            at = found - self.SYNC_AT
            verdict = self._trust(at)
            if verdict is None:  # look again when it is whole
                self._peeked = self._offset + at
                return
            if verdict:
                raise Cut(
                    f"{self.name} element at byte {self._offset} is cut short: another begins "
                    f"inside it at byte {self._offset + at}"
                )
            start = at + 1
        self._peeked = self._offset + max(1, len(self._buf) - len(self.SYNC) - self.SYNC_AT + 1)

    def _check_window(self, position: int) -> None:
        if position - self._cut_at > RESYNC_WINDOW:
            raise BadAudio(
                f"{self._cut} (and nothing to resume at within {RESYNC_WINDOW} bytes after it, "
                "so it is not a gap from dropped chunks)"
            )

    def _skip_bytes(self, n: int) -> None:
        self.skipped_bytes += n
        self._consume(n)
        self._scan = 0


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
        self._decoded = False  # a packet decoded: the stream was right to begin with
        self._undecodable = 0  # bytes of packets rejected in a row since the last good one
        self.undecodable_packets = 0

    @property
    def gaps(self) -> int:
        """Breaks in the stream the demuxer resumed after (chunks the client dropped)."""
        return self._demuxer.gaps

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
            return np.concatenate([self._decode_packet(ctx, p) for p in packets])
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

    def _decode_packet(self, ctx: av.AudioCodecContext, packet: Packet) -> Samples:
        """One packet's PCM. A gap inside a packet (an mdat, a block) is only seen by the
        demuxer at the element after it, so a packet the codec rejects once audio has decoded
        is dropped as lost (a rejected packet leaves the codec's state alone); rejected
        packets beyond RESYNC_WINDOW bytes in a row, or before any decoded, are a bad stream."""
        try:
            frames = ctx.decode(av.Packet(packet.data))
        except av.FFmpegError:
            self._undecodable += len(packet.data)
            if not self._decoded or self._undecodable > RESYNC_WINDOW:
                raise
            self.undecodable_packets += 1
            return EMPTY
        self._decoded, self._undecodable = True, 0
        return self._convert(frames, packet.discard_ns)

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
