"""Test audio made by the tests: espeak-ng speech and tones, encoded by PyAV into the
containers browsers record (WebM/Opus 48 kHz stereo in 60 ms frames like Chrome, Ogg/Opus,
fragmented MP4/AAC like Safari), then cut into MediaRecorder-like chunks.

Nothing is checked in: every byte comes from espeak-ng and FFmpeg (inside PyAV) at test time.
"""

from __future__ import annotations

import functools
import io
import shutil
import struct
import subprocess
import tempfile
import wave
from pathlib import Path

import av
import numpy as np
import soxr

from gateway.audio.pcm import Samples

RECORDER_RATE = 48000
HEADER_END = {  # what ends the header chunk a recorder sends first
    "webm": b"\x1f\x43\xb6\x75",  # the first Cluster
    "mp4": b"moof",  # the first fragment
}


@functools.cache
def speech(text: str = "Hello there, this is a test of the voice gateway.") -> tuple[Samples, int]:
    """espeak-ng speech: mono int16 at 22050 Hz."""
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is not installed: run `make install`"
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([espeak, "-w", str(wav), text], check=True, capture_output=True)
        with wave.open(str(wav)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    return pcm, rate


def speech_at(rate: int, text: str) -> Samples:
    """espeak-ng speech resampled to `rate`."""
    pcm, source_rate = speech(text)
    return soxr.resample(pcm, source_rate, rate).astype(np.int16)


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> Samples:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)


class _Pipe(io.RawIOBase):
    """A write-only, non-seekable sink: the muxer writes as to a live stream (like a recorder,
    it cannot go back to fill in sizes)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def encode(pcm: Samples, rate: int, fmt: str, channels: int = 2) -> bytes:
    """`pcm` recorded as a browser would: "webm" (Opus, 60 ms frames), "ogg" (Opus, 20 ms) or
    "mp4" (AAC, fragmented with an empty moov), at 48 kHz with `channels` identical channels,
    fed to the encoder in 20 ms pieces like a live microphone."""
    x = soxr.resample(pcm, rate, RECORDER_RATE).astype(np.int16)
    layout = "stereo" if channels == 2 else "mono"
    codec, stream_opts, container_opts = {
        "webm": ("libopus", {"frame_duration": "60"}, {}),
        # A live Ogg writer flushes a page per chunk (a page cannot go out before it is whole).
        "ogg": ("libopus", {"frame_duration": "20"}, {"page_duration": "100000"}),
        "mp4": (
            "aac",
            {},
            {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "240000"},
        ),
    }[fmt]
    sink = _Pipe()
    with av.open(sink, "w", format=fmt, options=container_opts) as out:
        stream = out.add_stream(codec, rate=RECORDER_RATE, layout=layout, options=stream_opts)
        step = RECORDER_RATE // 50
        for start in range(0, x.size, step):
            piece = np.ascontiguousarray(np.repeat(x[None, start : start + step], channels, 0))
            frame = av.AudioFrame.from_ndarray(piece, format="s16p", layout=layout)
            frame.sample_rate, frame.pts = RECORDER_RATE, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    data = bytes(sink.data)
    return with_unknown_cluster_sizes(data) if fmt == "webm" else data


def with_unknown_cluster_sizes(webm: bytes) -> bytes:
    """Rewrite each Cluster's size as "unknown", as Chrome's MediaRecorder writes them (FFmpeg
    writes known sizes). Assumes the Segment itself has unknown size (a non-seekable mux)."""
    out, pos = bytearray(), webm.find(b"\x1f\x43\xb6\x75")
    out += webm[:pos]
    while pos < len(webm):
        eid = webm[pos : pos + 4]
        size_len = 9 - webm[pos + 4].bit_length()
        size = int.from_bytes(webm[pos + 4 : pos + 4 + size_len], "big") & ((1 << 7 * size_len) - 1)
        body = webm[pos + 4 + size_len : pos + 4 + size_len + size]
        out += (
            eid
            + (
                b"\x01\xff\xff\xff\xff\xff\xff\xff"
                if eid == b"\x1f\x43\xb6\x75"
                else webm[pos + 4 : pos + 4 + size_len]
            )
            + body
        )
        pos += 4 + size_len + size
    return bytes(out)


def header_size(data: bytes, fmt: str) -> int:
    """Bytes of the first chunk a recorder sends: the container header, before any audio."""
    if fmt == "ogg":  # the OpusHead page and the OpusTags page(s)
        pos = 0
        for _ in range(2):
            segments = data[pos + 26]
            pos += 27 + segments + sum(data[pos + 27 : pos + 27 + segments])
        return pos
    pos = data.find(HEADER_END[fmt])
    return pos - 4 if fmt == "mp4" else pos


def recorder_chunks(data: bytes, fmt: str, seconds: float, seed: int = 0) -> list[bytes]:
    """The stream as MediaRecorder hands it over: the header alone, then pieces worth 100-250 ms
    of audio each (by byte count, so edges fall anywhere in elements, pages and boxes)."""
    rng = np.random.default_rng(seed)
    head = header_size(data, fmt)
    per_ms = (len(data) - head) / (seconds * 1000)
    chunks, pos = [data[:head]], head
    while pos < len(data):
        size = max(1, int(rng.integers(100, 251) * per_ms))
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def random_chunks(data: bytes, seed: int, max_size: int = 700) -> list[bytes]:
    """Cut at random byte offsets, 1 to max_size bytes apart."""
    rng = np.random.default_rng(seed)
    chunks, start = [], 0
    while start < len(data):
        size = int(rng.integers(1, max_size))
        chunks.append(data[start : start + size])
        start += size
    return chunks


def best_correlation(a: Samples, b: Samples, max_lag: int) -> float:
    """Normalised cross-correlation of `a` and `b` at the best lag within +-max_lag samples."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    n = min(x.size, y.size)
    x, y = x[:n] - x[:n].mean(), y[:n] - y[:n].mean()
    size = 1 << (2 * n).bit_length()
    corr = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size)), size)
    lags = np.concatenate([corr[: max_lag + 1], corr[-max_lag:]])
    return float(lags.max() / np.sqrt((x * x).sum() * (y * y).sum()))


def opus_head(channels: int = 2, pre_skip: int = 312) -> bytes:
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, 48000, 0, 0)
