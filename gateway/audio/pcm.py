"""PCM helpers shared by every decoder: the streaming resampler and the mono down-mix.

They live apart from `codecs` so the container decoders (`containers`) can use them without
an import cycle.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

Samples = npt.NDArray[np.int16]


class Resampler:
    """Streaming rate conversion that keeps filter state across chunks (soxr).

    Quality "LQ" on purpose: soxr holds samples back for its filter, and at "HQ" that is
    37-115 ms of input (measured with 20 ms chunks; 8 kHz mu-law is worst), which delays the
    VAD's end of speech and so every reply. "LQ" holds back 20-60 ms and is still a proper
    band-limited filter, far cleaner than speech recognition needs.

    It filters in float32 and rounds to int16 itself: soxr's own int16 output adds random
    dither, so the same input would give different samples on every run.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._stream = (
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="LQ")
            if in_rate != out_rate
            else None
        )

    def __call__(self, pcm: Samples, last: bool = False) -> Samples:
        if self._stream is None:
            return pcm
        out = self._stream.resample_chunk(pcm.astype(np.float32), last=last)
        rounded: Samples = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
        return rounded


EMPTY: Samples = np.empty(0, dtype=np.int16)


def to_mono(planes: npt.NDArray[np.generic], channels: int, planar: bool) -> Samples:
    """Average the channels of one decoded frame into mono int16.

    `planes` is what PyAV's `AudioFrame.to_ndarray()` gives: (channels, n) for planar formats,
    (1, n * channels) interleaved for packed ones. Averaging (not summing at 0.707) keeps the
    level of a browser's dual-mono "stereo" equal to the mono source. Float input is full
    scale at 1.0; s32 is scaled down to 16 bits.
    """
    data = planes if planar else planes.reshape(-1, channels).T
    if np.issubdtype(data.dtype, np.floating):
        mono = data.mean(axis=0, dtype=np.float32) * 32768.0
    else:
        scale = 1.0 / 65536 if data.dtype == np.int32 else 1.0
        mono = data.astype(np.float32).mean(axis=0) * scale
    out: Samples = np.clip(np.rint(mono), -32768, 32767).astype(np.int16)
    return out
