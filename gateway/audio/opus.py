"""Opus output for browsers: raw 20 ms packets that WebCodecs' `AudioDecoder` plays directly.

One `tts_audio_chunk` frame must carry exactly one Opus packet, so the encoder hands back a
list of packets; PCM that does not fill a whole 20 ms frame waits for the next call, and
`flush()` at the end of a turn pads it with silence. Packets are variable in size, so pacing
must count their duration (`opus_packet_ms`), not their bytes.
"""

from __future__ import annotations

import av
import numpy as np

from gateway.audio.containers import open_context, release_context
from gateway.audio.pcm import Samples
from gateway.errors import BadAudio
from gateway.protocol import OPUS_RATES

FRAME_MS = 20
BIT_RATE = 32000  # plenty for mono speech
LOOKAHEAD_MS = 6.5  # the encoder's delay: the last 6.5 ms of input need one more frame out

_FRAME_MS_BY_CONFIG = [10, 20, 40, 60] * 3 + [10, 20] * 2 + [2.5, 5, 10, 20] * 4


def opus_packet_ms(packet: bytes) -> float:
    """Duration of an Opus packet from its TOC byte (RFC 6716 section 3.1); 0 if empty."""
    if not packet:
        return 0.0
    toc = packet[0]
    code = toc & 3
    count = 1 if code == 0 else 2 if code < 3 else (packet[1] & 0x3F if len(packet) > 1 else 0)
    return float(_FRAME_MS_BY_CONFIG[toc >> 3] * count)


class OpusEncoder:
    """Mono 16-bit PCM at `sample_rate` in, 20 ms raw Opus packets out."""

    def __init__(self, sample_rate: int) -> None:
        if sample_rate not in OPUS_RATES:
            rates = ", ".join(str(r) for r in sorted(OPUS_RATES))
            raise BadAudio(f"opus output needs sample_rate {rates}; got {sample_rate}")
        self.sample_rate = sample_rate
        self._frame = sample_rate * FRAME_MS // 1000
        self._pending = np.empty(0, dtype=np.int16)
        self._pts = 0
        self._unflushed = False  # audio went in since the last flush
        ctx = open_context("libopus", "w")
        self._ctx: av.AudioCodecContext | None = ctx
        ctx.sample_rate = sample_rate
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.bit_rate = BIT_RATE
        ctx.options = {"frame_duration": str(FRAME_MS), "application": "voip"}
        try:
            ctx.open()
        except av.FFmpegError as e:
            self.close()
            raise BadAudio(f"cannot open the Opus encoder: {e.strerror}") from None

    def encode(self, pcm: bytes) -> list[bytes]:
        """Whole 20 ms packets for the PCM so far; a partial frame waits for more."""
        samples = np.concatenate([self._pending, np.frombuffer(pcm, dtype="<i2")])
        whole = samples.size - samples.size % self._frame
        self._pending = samples[whole:].copy()
        return self._encode_frames(samples[:whole])

    def flush(self) -> list[bytes]:
        """End of a turn: the waiting samples padded with silence to whole packets, plus one
        silent packet more if the padding is shorter than the encoder's lookahead."""
        if not self._pending.size and not self._unflushed:
            return []
        pad = -self._pending.size % self._frame
        if pad * 1000 < LOOKAHEAD_MS * self.sample_rate:
            pad += self._frame
        frames = np.concatenate([self._pending, np.zeros(pad, dtype=np.int16)])
        self._pending = frames[:0]
        packets = self._encode_frames(frames)
        self._unflushed = False
        return packets

    def duration_ms(self, payload: bytes) -> float:
        """Audio duration of one packet, for pacing and played-time accounting."""
        return opus_packet_ms(payload)

    def close(self) -> None:
        """Free the codec context; safe to call more than once."""
        if self._ctx is not None:
            self._ctx = None
            release_context()

    def _encode_frames(self, pcm: Samples) -> list[bytes]:
        if self._ctx is None:
            raise BadAudio("the Opus encoder is closed")
        packets: list[bytes] = []
        for i in range(0, pcm.size, self._frame):
            packets += self._encode(self._ctx, pcm[i : i + self._frame])
        return packets

    def _encode(self, ctx: av.AudioCodecContext, frame_pcm: Samples) -> list[bytes]:
        frame = av.AudioFrame.from_ndarray(frame_pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += frame.samples
        self._unflushed = True
        return [bytes(p) for p in ctx.encode(frame)]
