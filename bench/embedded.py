"""The embedded pipeline (pipelines/local.yaml) stage by stage, then whole turns over a socket.

Stages run in this process through our adapters, one inference at a time, with the models and
settings local.yaml uses: model load time, STT time per utterance (and what partials cost),
LLM time to first token and tokens per second, TTS time to first audio and real-time factor.
Whole turns run against `voxgate serve` as its own process: espeak-ng questions are spoken
into /ws/local at real-time pace, then silence keeps flowing like an open microphone, and the
client measures end of speech (the last voiced sample) -> first reply audio.

`--users 1 2 3 4` is the capacity question instead: that many conversations at once on one
server (each user speaks, listens to the whole reply, speaks again; starts staggered over 2 s),
reported per count, to find how many one machine holds before first audio passes 1.5 s. Usage:

    .venv/bin/python bench/embedded.py [--turns 10] [--variants shipped preemptive_200]
    .venv/bin/python bench/embedded.py --skip-stages --users 1 2 3 4 --turns 6
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.base import ChatMessage, Final  # noqa: E402
from adapters.espeak import EspeakTTS  # noqa: E402
from adapters.llama import LlamaLLM  # noqa: E402
from adapters.whisper import WhisperStream, WhisperSTT  # noqa: E402
from bench.gateway_process import free_port, start_server  # noqa: E402
from gateway import protocol  # noqa: E402
from gateway.client import AudioChunk, VoiceClient  # noqa: E402
from gateway.loader import load_pipeline  # noqa: E402
from tests.audio_fixtures import speech_at  # noqa: E402

LOCAL = ROOT / "pipelines" / "local.yaml"
RATE = 16000
OUT_RATE = 24000
QUESTIONS = [
    "what is the capital of france",
    "can you recommend a good book",
    "what is the weather like today",
    "what is the tallest mountain in the world",
    "what color is the sky",
    "how do i boil an egg",
    "who wrote romeo and juliet",
    "what time is it in london",
    "tell me something about the moon",
    "what should i cook for dinner",
]
SENTENCES = [
    "The capital of France is Paris.",
    "Mount Everest is the tallest mountain in the world.",
    "The sky is blue because air scatters blue light more than red light.",
    "Sure.",
    "Boil the egg for about seven minutes, then cool it in cold water.",
]
# Variants of local.yaml for the whole-turn runs: keys merged over the shipped file.
VARIANTS: dict[str, str] = {
    "shipped": "",
    "no_preemptive": "turns: {preemptive_ms: null}\n",
    "no_partials": "stt: {provider: whisper, partial_interval_ms: 0}\n",
    "history_1": "llm: {provider: llama, history_turns: 1}\n",
    "threads_1": (
        "stt: {provider: whisper, threads: 0}\n"
        "tts: {provider: piper, threads: 0, fallback: [{provider: espeak}]}\n"
    ),
}


def pct(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def summary(values: list[float], unit: str = "ms") -> str:
    return (
        f"p50 {pct(values, 50):7.1f} {unit}  p90 {pct(values, 90):7.1f} {unit}  (n={len(values)})"
    )


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def words(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c == " " else " " for c in text.lower()).split()


# ---- stages ------------------------------------------------------------------------------


def shipped_stt(**keys: Any) -> WhisperSTT:
    """local.yaml's STT block with `keys` changed."""
    stt = load_pipeline(LOCAL, {}).stt
    assert isinstance(stt, WhisperSTT)
    return msgspec.structs.replace(stt, **keys)


def load_times() -> None:
    pipeline = load_pipeline(LOCAL, {})
    for name, block in [
        ("whisper tiny.en", shipped_stt(model="tiny.en")),
        ("whisper base", shipped_stt(model="base")),
        ("llama SmolLM2-135M", pipeline.llm),
        ("piper en_US-joe-medium", pipeline.tts),
    ]:
        started = time.perf_counter()
        block.preload()
        print(f"load {name:24} {(time.perf_counter() - started) * 1000:7.0f} ms")


async def transcribe(
    stt: WhisperStream, pcm: np.ndarray[Any, Any], pace_s: float
) -> tuple[str, float]:
    """Feed an utterance (at `pace_s` per 20 ms chunk), then finalize: (text, finalize -> final)."""
    async with aclosing(stt.events()) as events:
        final: asyncio.Future[tuple[str, float]] = asyncio.ensure_future(_final(events))
        for start in range(0, pcm.size, 320):
            await stt.send_audio(pcm[start : start + 320].tobytes())
            if pace_s:
                await asyncio.sleep(pace_s)
        asked = time.perf_counter()
        await stt.finalize()
        text, done = await final
    return text, (done - asked) * 1000


async def _final(events: AsyncIterator[Any]) -> tuple[str, float]:
    async for event in events:
        if isinstance(event, Final):
            return event.text, time.perf_counter()
    raise RuntimeError("no final")


async def stt_times(model: str) -> None:
    stt = WhisperStream(shipped_stt(model=model, partial_interval_ms=0), RATE)
    await stt.start()
    times, right, total = [], 0, 0
    for question in QUESTIONS:
        text, ms = await transcribe(stt, speech_at(RATE, question), 0.0)
        times.append(ms)
        expected, heard = words(question), set(words(text))
        right += sum(w in heard for w in expected)
        total += len(expected)
    await stt.aclose()
    print(f"stt {model:8} per utterance  {summary(times)}  words right {right}/{total}")


async def partial_cost() -> None:
    """The same utterances at real-time pace with partials every 700 or 300 ms and with none:
    the process CPU they take and how long the final then takes (a partial that already heard
    all of the speech is reused as the final)."""
    for interval in (0, 700, 300):
        stt = WhisperStream(shipped_stt(partial_interval_ms=interval), RATE)
        await stt.start()
        latencies, cpu, audio_s = [], 0.0, 0.0
        for question in QUESTIONS[:5]:
            # Cut at the end of speech: no quiet, so no early decode; only partials help.
            pcm = speech_at(RATE, question)
            pcm = pcm[: int(speech_end_s(pcm) * RATE)]
            before = cpu_s()
            _, ms = await transcribe(stt, pcm, 0.02)
            cpu += cpu_s() - before
            audio_s += pcm.size / RATE
            latencies.append(ms)
        await stt.aclose()
        print(
            f"stt partials every {interval:3} ms: CPU {cpu / audio_s * 100:5.1f}% of a core while "
            f"speaking; final {summary(latencies)}"
        )


async def llm_times() -> None:
    pipeline = load_pipeline(LOCAL, {})
    config = pipeline.llm
    assert isinstance(config, LlamaLLM)
    model = config.open()
    await model.start()
    ttfts, rates = [], []
    for question in QUESTIONS:
        messages = [ChatMessage("system", config.system_prompt), ChatMessage("user", question)]
        started = time.perf_counter()
        first, tokens = 0.0, 0
        async for _ in model.stream(messages):
            tokens += 1
            if tokens == 1:
                first = time.perf_counter()
        ttfts.append((first - started) * 1000)
        if tokens > 1:
            rates.append((tokens - 1) / (time.perf_counter() - first))
    print(f"llm time to first token      {summary(ttfts)}")
    print(f"llm tokens per second        {summary(rates, 'tok/s')}")


async def phrases(text: str) -> AsyncIterator[str]:
    yield text


async def tts_times(name: str, make: Callable[[], Any]) -> None:
    firsts, factors = [], []
    tts = make()
    await tts.start()
    for sentence in SENTENCES:
        started = time.perf_counter()
        first, samples = 0.0, 0
        async for pcm in tts.synthesize(phrases(sentence), OUT_RATE):
            first = first or time.perf_counter()
            samples += len(pcm) // 2
        firsts.append((first - started) * 1000)
        factors.append((time.perf_counter() - started) / (samples / OUT_RATE))
    print(f"tts {name:6} first audio   {summary(firsts)}")
    print(f"tts {name:6} real-time factor p50 {statistics.median(factors):.3f}")


# ---- whole turns ---------------------------------------------------------------------------


def speech_end_s(pcm: np.ndarray[Any, Any]) -> float:
    """Where the last voiced 10 ms window (above -40 dBFS) ends."""
    frames = pcm[: pcm.size // 160 * 160].astype(np.float32).reshape(-1, 160)
    voiced = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) >= 330)
    return float((voiced[-1] + 1) * 160 / RATE)


async def turn(client: VoiceClient, question: str) -> tuple[float, protocol.TurnEnd]:
    """Speak at real-time pace and keep the microphone open (silence) until the reply ends:
    (end of speech -> first reply audio in ms, the turn's end)."""
    pcm = speech_at(RATE, question)
    end_s = speech_end_s(pcm)
    loop = asyncio.get_running_loop()
    started = loop.time()
    silence = np.zeros(320, np.int16).tobytes()

    async def microphone() -> None:
        for i in range(10**6):
            chunk = pcm[i * 320 : (i + 1) * 320].tobytes() if i * 320 < pcm.size else silence
            await client.ws.send(chunk)
            await asyncio.sleep(max(0.0, started + (i + 1) * 0.02 - loop.time()))

    mic = asyncio.ensure_future(microphone())
    try:
        async with asyncio.timeout(30):
            await client.expect(AudioChunk)
            first = (loop.time() - started - end_s) * 1000
            end = await client.expect(protocol.TurnEnd)
    finally:
        mic.cancel()
        await asyncio.gather(mic, return_exceptions=True)
    return first, end


async def whole_turns(variant: str, turns: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "local.yaml"
        path.write_text(f"extends: {LOCAL}\n{VARIANTS[variant]}")
        port = free_port()
        server, cold_s = start_server(port, path)
        try:
            firsts, stt = [], []
            async with VoiceClient.connect(f"ws://127.0.0.1:{port}/ws/local") as client:
                await client.start()
                for i in range(turns):
                    first, end = await turn(client, QUESTIONS[i % len(QUESTIONS)])
                    firsts.append(first)
                    if end.metrics.stt_final_ms is not None:
                        stt.append(end.metrics.stt_final_ms)
        finally:
            server.terminate()
            server.wait(10)
    print(
        f"turns {variant:15} end of speech -> first audio {summary(firsts)}; "
        f"server stt_final_ms p50 {statistics.median(stt):.0f}; cold start {cold_s:.1f} s"
    )


async def conversation(url: str, n: int, count: int, turns: int, firsts: list[float]) -> None:
    """User `n` of `count`: starts after its share of 2 s, then speaks `turns` questions."""
    await asyncio.sleep(2.0 * n / count)
    async with VoiceClient.connect(url) as client:
        await client.start()
        for i in range(turns):
            first, _ = await turn(client, QUESTIONS[(n + i) % len(QUESTIONS)])
            firsts.append(first)


async def conversations(users: list[int], turns: int) -> None:
    """Per user count: end of speech -> first audio over every turn of every user."""
    port = free_port()
    server, _ = start_server(port, LOCAL)
    try:
        for count in users:
            firsts: list[float] = []
            async with asyncio.TaskGroup() as tg:
                for n in range(count):
                    url = f"ws://127.0.0.1:{port}/ws/local"
                    tg.create_task(conversation(url, n, count, turns, firsts))
            print(f"users {count:2d}  end of speech -> first audio {summary(firsts)}", flush=True)
    finally:
        server.terminate()
        server.wait(10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--skip-stages", action="store_true")
    parser.add_argument("--users", type=int, nargs="*", help="conversations at once (capacity)")
    args = parser.parse_args()
    if not args.skip_stages:
        load_times()
        await stt_times("tiny.en")
        await stt_times("base")
        await partial_cost()
        await llm_times()
        pipeline = load_pipeline(LOCAL, {})
        await tts_times("piper", pipeline.tts.open)
        espeak = msgspec.convert({"provider": "espeak"}, EspeakTTS)
        await tts_times("espeak", espeak.open)
    if args.users:
        await conversations(args.users, args.turns)
        return
    for variant in args.variants:
        await whole_turns(variant, args.turns)


if __name__ == "__main__":
    asyncio.run(main())
