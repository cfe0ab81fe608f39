"""CPU cost of the audio-in path per second of audio, for each input codec.

For every codec the gateway accepts: the same 20 s of espeak-ng speech (with pauses), encoded
as a browser or phone would send it and cut into the chunks they send, is pushed through a
session's decoder (demux + decode + down-mix + resample to 16 kHz) and silero VAD, timed with
process CPU time. "Streams per core" is how many real-time streams one core sustains on this
path alone. Usage:

    .venv/bin/python bench/audio_in.py [--seconds 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.audio.codecs import mulaw_encode, open_decoder  # noqa: E402
from gateway.audio.vad import FrameSplitter, VADModels  # noqa: E402
from gateway.config import VAD, InputCodec  # noqa: E402
from tests.audio_fixtures import encode, recorder_chunks, speech_at  # noqa: E402

RATE = 16000
MODELS = VADModels()
"""The process's silero network, as a server's: loaded once, every stream's frames batched."""
TEXT = "What is the capital of France? It is Paris, on the river Seine."


def recording(seconds: float) -> np.ndarray:
    """Speech and pauses, repeated to `seconds`."""
    voice = speech_at(RATE, TEXT)
    unit = np.concatenate((voice, np.zeros(RATE, dtype=np.int16)))
    return np.tile(unit, int(seconds * RATE / unit.size) + 1)[: int(seconds * RATE)]


def chunks_for(codec: InputCodec, pcm: np.ndarray) -> tuple[list[bytes], int | None]:
    seconds = pcm.size / RATE
    if codec is InputCodec.PCM16:
        data = pcm.astype("<i2").tobytes()
        return [data[i : i + 640] for i in range(0, len(data), 640)], RATE  # 20 ms
    if codec is InputCodec.MULAW:
        import soxr

        data = mulaw_encode(soxr.resample(pcm, RATE, 8000).astype(np.int16))
        return [data[i : i + 160] for i in range(0, len(data), 160)], None  # 20 ms
    fmt = {InputCodec.WEBM_OPUS: "webm", InputCodec.OGG_OPUS: "ogg", InputCodec.MP4_AAC: "mp4"}
    data = encode(pcm, RATE, fmt[codec])
    return recorder_chunks(data, fmt[codec], seconds), None


async def cpu_ms(codec: InputCodec, chunks: list[bytes], rate: int | None, vad: bool) -> float:
    """Process CPU time for one stream's audio."""
    decoder = open_decoder(codec, rate, RATE)
    frames = vad_frames() if vad else None
    start = time.process_time()
    for chunk in chunks:
        pcm = decoder.decode(chunk)
        if frames is not None:
            await frames.probabilities(pcm)
    elapsed = time.process_time() - start
    decoder.close()
    return elapsed * 1000


def vad_frames() -> FrameSplitter:
    model = MODELS.open(VAD(), RATE)
    assert model is not None
    return FrameSplitter(model, RATE)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


async def memory_per_stream(codec: InputCodec, chunks: list[bytes], streams: int) -> float:
    """KiB of RSS per live stream (decoder + VAD state), after each has decoded 2 s."""
    vad_frames()  # the shared network is loaded once per process, not per stream
    before = rss_kib()
    live = []
    for _ in range(streams):
        decoder = open_decoder(codec, None, RATE)
        frames = vad_frames()
        for chunk in chunks[:12]:
            await frames.probabilities(decoder.decode(chunk))
        live.append((decoder, frames))
    per_stream = (rss_kib() - before) / streams
    for decoder, _ in live:
        decoder.close()
    return per_stream


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pcm = recording(args.seconds)
    print(f"{args.seconds:g} s of speech per run, best of {args.repeat}; CPU ms per audio second")
    print(f"{'codec':10} {'decode':>8} {'+ silero':>9} {'streams/core':>13}")
    for codec in InputCodec:
        chunks, rate = chunks_for(codec, pcm)
        decode = min(asyncio.run(cpu_ms(codec, chunks, rate, False)) for _ in range(args.repeat))
        total = min(asyncio.run(cpu_ms(codec, chunks, rate, True)) for _ in range(args.repeat))
        per_s, with_vad = decode / args.seconds, total / args.seconds
        print(f"{codec.value:10} {per_s:8.2f} {with_vad:9.2f} {1000 / with_vad:13.0f}")
    chunks, _ = chunks_for(InputCodec.WEBM_OPUS, pcm)
    kib = asyncio.run(memory_per_stream(InputCodec.WEBM_OPUS, chunks, 200))
    print(f"memory: {kib:.0f} KiB RSS per live webm/opus stream with silero VAD (200 streams)")


if __name__ == "__main__":
    main()
