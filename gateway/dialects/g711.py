"""G.711 A-law, the European telephony codec, for OpenAI Realtime's `audio/pcma`.

The session's codecs (gateway/audio/codecs.py) know mu-law only, so the Realtime dialect turns
A-law into 8 kHz pcm16 on the way in and pcm16 into A-law on the way out, here. Both
directions are table look-ups built once: 256 entries to decode, one per 16-bit sample (64 KiB)
to encode. The tables follow the reference (Sun's g711.c, as in audioop, sox and ffmpeg), so
the bytes are the ones every other implementation produces.
"""

from __future__ import annotations

import numpy as np

from gateway.audio.pcm import Samples

_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _decode_table() -> Samples:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    mantissa = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    magnitude = np.where(
        segment == 0,
        mantissa + 8,
        (mantissa + 0x108) << np.maximum(segment - 1, 0),
    )
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def _encode_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3
    negative = pcm < 0
    mask = np.where(negative, 0x55, 0xD5)
    value = np.where(negative, -pcm - 1, pcm)
    segment = np.searchsorted(_SEGMENT_ENDS, value)  # the first segment whose end >= value
    shift = np.where(segment < 2, 1, segment)
    code = (np.minimum(segment, 7) << 4) | ((value >> shift) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


_DECODE = _decode_table()
_ENCODE = _encode_table()


def alaw_decode(data: bytes) -> bytes:
    """A-law bytes -> little-endian pcm16 at the same rate (8 kHz)."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def alaw_encode(pcm16: bytes) -> bytes:
    """Little-endian pcm16 -> A-law, one byte per sample (a trailing odd byte is dropped)."""
    samples = np.frombuffer(pcm16[: len(pcm16) // 2 * 2], dtype="<i2").astype(np.int32)
    return _ENCODE[samples + 32768].tobytes()
