"""The OpenAI adapters on the real `openai` SDK against a fake OpenAI on a loopback socket.

Nothing of the SDK is replaced: requests go over HTTP/1.1 to `tests.fakes.openai.FakeOpenAI`,
which records what it received and injects the faults failover must survive.
"""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeVar

import msgspec
import numpy as np
import pytest

from adapters.base import ChatMessage, Final, Partial, Provider, STTEvent, ToolCall, ToolSpec
from adapters.openai_llm import OpenAIChat, OpenAILLM
from adapters.openai_stt import OpenAISTT, OpenAITranscriber
from adapters.openai_tts import OpenAISpeech, OpenAITTS
from gateway import protocol
from gateway.client import AudioChunk, VoiceClient
from gateway.errors import PermanentProviderError, ProviderError
from gateway.providers.failover import FailoverLLM, FailoverTTS
from gateway.providers.health import ProviderHealth
from tests.conftest import make_pipeline, running_gateway, wait_sessions_closed
from tests.fakes.faults import Fault
from tests.fakes.openai import PCM_RATE, FakeOpenAI

QUESTION = [
    ChatMessage("system", "Answer in one sentence."),
    ChatMessage("user", "What is the capital of France?"),
]

B = TypeVar("B")
P = TypeVar("P", bound=Provider)


def at(fake: FakeOpenAI) -> dict[str, Any]:
    """The keys that point a provider block at `fake`."""
    return {"provider": "openai", "base_url": fake.base_url, "api_key": fake.api_key}


def block(kind: type[B], fake: FakeOpenAI, **keys: Any) -> B:
    """A pipeline block pointed at `fake`; `keys` are the block's own keys."""
    return msgspec.convert({**at(fake), **keys}, kind)


@asynccontextmanager
async def started(adapter: P) -> AsyncIterator[P]:
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.aclose()


async def collect(items: AsyncGenerator[B, None]) -> list[B]:
    async with aclosing(items) as stream:
        return [item async for item in stream]


async def phrases(*texts: str) -> AsyncGenerator[str, None]:
    for text in texts:
        yield text


async def reply(llm: OpenAIChat | FailoverLLM) -> str:
    return "".join(await collect(llm.stream(QUESTION)))


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for something the server side does on its own schedule."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def tone_hz(pcm: bytes, rate: int) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


# ---- LLM --------------------------------------------------------------------------------------


async def test_chat_request_carries_key_model_messages_sampling_and_options(
    fake: FakeOpenAI,
) -> None:
    config = block(
        OpenAILLM,
        fake,
        temperature=0.2,
        max_tokens=50,
        options={"top_p": 0.9, "seed": 7},
    )
    async with started(OpenAIChat(config)) as llm:
        await reply(llm)

    (request,) = fake.seen("chat")
    assert request.headers["authorization"] == "Bearer sk-test"
    body = request.body
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert body["temperature"] == 0.2
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    # A compatible server gets the field every server reads.
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body
    assert body["top_p"] == 0.9 and body["seed"] == 7


async def test_options_may_name_the_length_limit_field_themselves(fake: FakeOpenAI) -> None:
    config = block(OpenAILLM, fake, options={"max_completion_tokens": 64})
    async with started(OpenAIChat(config)) as llm:
        await reply(llm)
    body = fake.seen("chat")[0].body
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body


async def test_openai_itself_gets_max_completion_tokens() -> None:
    config = msgspec.convert({"provider": "openai", "api_key": "sk-x", "max_tokens": 80}, OpenAILLM)
    async with started(OpenAIChat(config)) as llm:
        assert llm.request_body() == {"max_completion_tokens": 80}


async def test_our_request_body_is_what_the_sdks_typed_create_would_send(fake: FakeOpenAI) -> None:
    """We post the body as is (adapters/openai_llm.py): the transform `create` would run on it
    must change nothing, for every message shape we send, or the skip would lose a rename."""
    from openai._utils import async_maybe_transform
    from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming

    call = ToolCall(id="call_1", name="weather", arguments='{"city": "Paris"}')
    messages = [
        *QUESTION,
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", '{"ok": true}', tool_call_id="call_1"),
        ChatMessage("assistant", "It is sunny."),
    ]
    tool = ToolSpec("weather", "The weather in a city.", {"type": "object", "properties": {}})
    config = block(OpenAILLM, fake, options={"top_p": 0.9})
    async with started(OpenAIChat(config)) as llm:
        body = llm.body(messages, [tool])
        typed = await async_maybe_transform(body, CompletionCreateParamsStreaming)
        assert typed == body
        await collect(llm.stream(messages, [tool]))
    assert fake.seen("chat")[0].body == body


async def test_sessions_that_start_together_find_a_warm_connection_for_each_first_turn() -> None:
    """Four sessions start at once: their starts open the four connections their first turns
    use at once, so no first turn pays a handshake; the turns open nothing more."""
    async with FakeOpenAI(connect_delay_s=0.05) as fake:
        chats = [OpenAIChat(block(OpenAILLM, fake)) for _ in range(4)]
        await asyncio.gather(*(chat.start() for chat in chats))
        warmed = fake.connections
        replies = await asyncio.gather(*(collect(chat.stream(QUESTION)) for chat in chats))
        await asyncio.gather(*(chat.aclose() for chat in chats))
    assert all(replies)
    assert (warmed, fake.connections) == (4, 4)


async def test_reply_streams_as_deltas_and_ends_after_the_usage_chunk(fake: FakeOpenAI) -> None:
    async with started(OpenAIChat(block(OpenAILLM, fake))) as llm:
        deltas = await collect(llm.stream(QUESTION))
    assert deltas == ["Hello", " there!", " How", " can", " I", " help?"]
    assert not fake.seen("chat")[0].disconnected


@pytest.mark.parametrize("stop", ["aclose", "cancel"])
async def test_stopping_a_reply_closes_its_http_stream_at_once(stop: str) -> None:
    async with (
        FakeOpenAI(token_delay_s=60) as fake,
        started(OpenAIChat(block(OpenAILLM, fake))) as llm,
    ):
        if stop == "aclose":
            async with aclosing(llm.stream(QUESTION)) as deltas:
                assert await anext(deltas) == "Hello"
        else:
            first = asyncio.Event()

            async def read() -> None:
                async with aclosing(llm.stream(QUESTION)) as deltas:
                    async for _ in deltas:
                        first.set()

            reader = asyncio.create_task(read())
            await first.wait()
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
        # The next token is a minute away: only the client hanging up ends it sooner.
        await until(lambda: fake.seen("chat")[0].disconnected)


async def test_no_answer_within_timeout_ms_is_a_provider_error_and_hangs_up() -> None:
    async with FakeOpenAI() as fake:
        fake.fail("chat", Fault.HANG)
        config = block(OpenAILLM, fake, timeout_ms=200)
        async with started(OpenAIChat(config)) as llm:
            with pytest.raises(ProviderError, match=r"within llm.timeout_ms \(200 ms\)") as error:
                await reply(llm)
            # Hung up by the request itself, not by closing the client.
            await until(lambda: fake.seen("chat")[0].disconnected)
        assert not isinstance(error.value, PermanentProviderError)


REFUSALS = [
    pytest.param({}, Fault.UNAUTHORIZED, "refused the API key (401): check llm.api_key", id="401"),
    pytest.param({"api_key": "sk-wrong"}, Fault.NONE, "check llm.api_key", id="wrong-key"),
    pytest.param({"model": "gpt-nope"}, Fault.NONE, "`gpt-nope` does not exist", id="no-model"),
]


@pytest.mark.parametrize(("keys", "fault", "message"), REFUSALS)
async def test_refusals_are_permanent(
    fake: FakeOpenAI, keys: dict[str, Any], fault: Fault, message: str
) -> None:
    fake.fail("chat", fault)
    llm = OpenAIChat(block(OpenAILLM, fake, **keys))
    with pytest.raises(PermanentProviderError) as error:  # a wrong key: already at start
        async with started(llm):
            await reply(llm)
    assert message in str(error.value)
    assert "sk-wrong" not in str(error.value), "a key must never reach a message"


FAILURES = [
    pytest.param(Fault.RATE_LIMIT, None, "rate limiting", id="429"),
    pytest.param(Fault.SERVER_ERROR, None, "500", id="500"),
    pytest.param(Fault.REFUSE, None, "503", id="503"),
    pytest.param(Fault.SERVER_ERROR, 3, "had an error", id="error-event-in-stream"),
    pytest.param(Fault.DROP, 3, "connection", id="drop"),
    pytest.param(Fault.MALFORMED, 2, "not JSON", id="broken-event"),
    pytest.param(Fault.MALFORMED, None, "answered /chat/completions with text/html", id="html"),
]


@pytest.mark.parametrize(("fault", "after", "message"), FAILURES)
async def test_failures_a_retry_may_fix_are_provider_errors(
    fake: FakeOpenAI, fault: Fault, after: int | None, message: str
) -> None:
    fake.fail("chat", fault, after=after)
    async with started(OpenAIChat(block(OpenAILLM, fake))) as llm:
        with pytest.raises(ProviderError, match=message) as error:
            await reply(llm)
    assert not isinstance(error.value, PermanentProviderError)
    assert len(fake.seen("chat")) == 1, "the SDK must not retry on its own"


async def test_an_unreachable_server_is_a_provider_error() -> None:
    async with FakeOpenAI() as gone:
        config = block(OpenAILLM, gone)
    async with started(OpenAIChat(config)) as llm:
        with pytest.raises(ProviderError, match=r"check llm\.base_url"):
            await reply(llm)


async def test_probe_lists_models_and_fails_while_the_service_is_down(fake: FakeOpenAI) -> None:
    async with started(OpenAIChat(block(OpenAILLM, fake))) as llm:
        await llm.probe()
        fake.fail("models", Fault.SERVER_ERROR)
        with pytest.raises(ProviderError):
            await llm.probe()
        fake.fail("models", Fault.MALFORMED)
        with pytest.raises(ProviderError, match="answered /models with text/html"):
            await llm.probe()
        fake.fail("models", Fault.UNAUTHORIZED)
        with pytest.raises(PermanentProviderError):
            await llm.probe()
    assert [r.path for r in fake.requests] == ["/v1/models"] * 5, "start's warm-up, 4 probes"


async def test_no_key_for_openai_itself_is_refused_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = msgspec.convert({"provider": "openai"}, OpenAILLM)
    with pytest.raises(
        PermanentProviderError, match=r"no API key: set OPENAI_API_KEY on the server"
    ):
        OpenAIChat(config)


async def test_openais_key_from_the_environment_never_goes_to_another_host(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    config = block(OpenAILLM, fake, api_key=None)
    with pytest.raises(PermanentProviderError):  # refused at start's warm-up
        async with started(OpenAIChat(config)):
            pass
    assert [r.headers["authorization"] for r in fake.requests] == ["Bearer none"]


# ---- TTS --------------------------------------------------------------------------------------


async def test_speech_request_carries_voice_format_speed_instructions_and_options(
    fake: FakeOpenAI,
) -> None:
    config = block(
        OpenAITTS,
        fake,
        voice="nova",
        speed=1.25,
        instructions="Speak warmly.",
        options={"stream_format": "audio"},
    )
    async with started(OpenAISpeech(config)) as tts:
        await collect(tts.synthesize(phrases("Hello there."), 24000))
    plain = block(OpenAITTS, fake)
    async with started(OpenAISpeech(plain)) as tts:
        await collect(tts.synthesize(phrases("Hello there."), 24000))

    first, second = (r.body for r in fake.seen("speech"))
    assert fake.seen("speech")[0].headers["authorization"] == "Bearer sk-test"
    assert first == {
        "model": "gpt-4o-mini-tts",
        "input": "Hello there.",
        "voice": "nova",
        "response_format": "pcm",
        "speed": 1.25,
        "instructions": "Speak warmly.",
        "stream_format": "audio",
    }
    assert "instructions" not in second and second["voice"] == "alloy"


async def test_each_phrase_is_one_request_in_order_and_blank_ones_none(fake: FakeOpenAI) -> None:
    async with started(OpenAISpeech(block(OpenAITTS, fake))) as tts:
        await collect(tts.synthesize(phrases("Hello there.", "  ", "How are you?"), 24000))
    assert [r.body["input"] for r in fake.seen("speech")] == ["Hello there.", "How are you?"]


@pytest.mark.parametrize("rate", [16000, 24000, 48000])
async def test_speech_is_resampled_to_the_requested_rate_whole_samples_intact(
    fake: FakeOpenAI, rate: int
) -> None:
    text = "one two three four five"  # 5 words at 0.3 s: 1.5 s of speech
    async with started(OpenAISpeech(block(OpenAITTS, fake))) as tts:
        pcm = b"".join(await collect(tts.synthesize(phrases(text), rate)))

    assert len(pcm) % 2 == 0
    assert len(pcm) == round(1.5 * rate) * 2
    # 4801-byte pieces split samples; a misjoined byte would turn the tone into noise.
    assert tone_hz(pcm, rate) == pytest.approx(200, abs=2)
    if rate == PCM_RATE:
        t = np.arange(round(1.5 * PCM_RATE)) / PCM_RATE
        assert pcm == (8000 * np.sin(2 * np.pi * 200 * t)).astype("<i2").tobytes()


async def test_closing_the_audio_mid_phrase_hangs_up(fake: FakeOpenAI) -> None:
    fake.fail("speech", Fault.HANG, after=1)  # one piece of audio, then nothing
    async with started(OpenAISpeech(block(OpenAITTS, fake))) as tts:
        audio = tts.synthesize(phrases("Hello there, friend."), 24000)
        assert len(await anext(audio)) == 4800  # 4801 bytes came: the odd one waits
        await audio.aclose()
        await until(lambda: fake.seen("speech")[0].disconnected)


TTS_FAILURES = [
    pytest.param(Fault.UNAUTHORIZED, None, "refused the API key", id="401"),
    pytest.param(Fault.SERVER_ERROR, None, "500", id="500"),
    pytest.param(Fault.DROP, 2, "broke off", id="drop"),
    pytest.param(Fault.MALFORMED, None, "answered /audio/speech with text/html", id="html"),
]


@pytest.mark.parametrize(("fault", "after", "message"), TTS_FAILURES)
async def test_speech_faults_raise_our_errors(
    fake: FakeOpenAI, fault: Fault, after: int | None, message: str
) -> None:
    fake.fail("speech", fault, after=after)
    async with started(OpenAISpeech(block(OpenAITTS, fake))) as tts:
        with pytest.raises(ProviderError, match=message) as raised:
            await collect(tts.synthesize(phrases("Hello there, friend."), 24000))
    assert isinstance(raised.value, PermanentProviderError) is (fault is Fault.UNAUTHORIZED)


# ---- STT --------------------------------------------------------------------------------------


async def transcribe(
    stt: OpenAITranscriber, *audio: bytes, continues: bool = False
) -> list[STTEvent]:
    """Events for one utterance made of `audio`, up to its final."""
    for pcm in audio:
        await stt.send_audio(pcm)
    await stt.finalize(continues)
    events: list[STTEvent] = []
    async with aclosing(stt.events()) as stream:
        async for event in stream:
            events.append(event)
            if isinstance(event, Final):
                return events
    raise AssertionError("events() ended without a final")


def uploaded(fake: FakeOpenAI) -> wave.Wave_read:
    file: bytes = fake.seen("transcriptions")[-1].body["file"]
    return wave.open(io.BytesIO(file), "rb")


async def test_transcription_uploads_a_wav_at_the_input_rate_with_model_language_and_prompt(
    fake: FakeOpenAI, speech: bytes
) -> None:
    config = block(OpenAISTT, fake, language="en", prompt="Paris, France")
    async with started(OpenAITranscriber(config, 16000)) as stt:
        await transcribe(stt, speech)

    (request,) = fake.seen("transcriptions")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"].startswith("multipart/form-data")
    form = request.body
    assert (form["model"], form["language"], form["prompt"], form["stream"]) == (
        "gpt-4o-mini-transcribe",
        "en",
        "Paris, France",
        "true",
    )
    with uploaded(fake) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        assert wav.readframes(wav.getnframes()) == speech


async def test_streamed_transcription_gives_growing_partials_then_the_final(
    fake: FakeOpenAI, speech: bytes
) -> None:
    async with started(OpenAITranscriber(block(OpenAISTT, fake), 16000)) as stt:
        events = await transcribe(stt, speech)
    words = fake.transcript.split()
    assert events == [
        *(Partial(" ".join(words[: n + 1])) for n in range(len(words))),
        Final(fake.transcript),
    ]


async def test_whisper_models_answer_with_one_final(fake: FakeOpenAI, speech: bytes) -> None:
    config = block(OpenAISTT, fake, model="whisper-1")
    async with started(OpenAITranscriber(config, 16000)) as stt:
        assert await transcribe(stt, speech) == [Final(fake.transcript)]
    assert "stream" not in fake.seen("transcriptions")[0].body


async def test_silence_gives_an_empty_final_without_a_request(fake: FakeOpenAI) -> None:
    quiet = np.random.default_rng(1).normal(0, 20, 16000).astype("<i2").tobytes()
    async with started(OpenAITranscriber(block(OpenAISTT, fake), 16000)) as stt:
        assert await transcribe(stt) == [Final("")]
        assert await transcribe(stt, quiet) == [Final("")]
    assert fake.seen("transcriptions") == []


async def test_silence_before_the_voice_is_cut_to_the_pre_roll(
    fake: FakeOpenAI, speech: bytes
) -> None:
    silence = bytes(640)  # 20 ms
    async with started(OpenAITranscriber(block(OpenAISTT, fake), 16000)) as stt:
        await transcribe(stt, *[silence] * 250, speech)  # 5 s of silence first
    with uploaded(fake) as wav:
        extra_s = (wav.getnframes() - len(speech) // 2) / 16000
    assert 0.4 <= extra_s <= 0.52


async def test_each_utterance_is_its_own_upload(fake: FakeOpenAI, speech: bytes) -> None:
    async with started(OpenAITranscriber(block(OpenAISTT, fake), 16000)) as stt:
        await transcribe(stt, speech)
        await transcribe(stt, speech[: len(speech) // 4 * 2])
    first, second = (r.body["file"] for r in fake.seen("transcriptions"))
    assert len(second) < len(first)


async def test_a_turn_resumed_after_a_pause_is_uploaded_whole_and_revises(
    fake: FakeOpenAI, speech: bytes
) -> None:
    async with started(OpenAITranscriber(block(OpenAISTT, fake), 16000)) as stt:
        first = await transcribe(stt, speech[: len(speech) // 4 * 2])
        again = await transcribe(stt, speech[len(speech) // 4 * 2 :], continues=True)
    one, both = (r.body["file"] for r in fake.seen("transcriptions"))
    assert len(both) > len(one), "the second upload carries the first part too"
    assert not first[-1].revises and again[-1] == Final(again[-1].text, revises=True)
    assert not [e for e in again if isinstance(e, Partial)], "no partial repeats final words"


async def test_closing_events_mid_transcription_hangs_up(fake: FakeOpenAI, speech: bytes) -> None:
    fake.fail("transcriptions", Fault.HANG, after=1)
    async with started(OpenAITranscriber(block(OpenAISTT, fake), 16000)) as stt:
        await stt.send_audio(speech)
        await stt.finalize()
        async with aclosing(stt.events()) as events:
            assert await anext(events) == Partial("what")
        await until(lambda: fake.seen("transcriptions")[0].disconnected)


STREAMED, WHISPER = "gpt-4o-mini-transcribe", "whisper-1"
STT_FAILURES = [
    pytest.param(STREAMED, Fault.UNAUTHORIZED, None, "refused the API key", id="401"),
    pytest.param(STREAMED, Fault.RATE_LIMIT, None, "rate limiting", id="429"),
    pytest.param(STREAMED, Fault.DROP, 2, "connection", id="drop"),
    pytest.param(STREAMED, Fault.MALFORMED, 1, "not JSON", id="broken-event"),
    # Without its final the user's turn would never end: it must fail instead.
    pytest.param(STREAMED, Fault.MALFORMED, None, "ended without its text", id="no-stream"),
    pytest.param(WHISPER, Fault.DROP, 1, "connection", id="whisper-drop"),
    pytest.param(WHISPER, Fault.MALFORMED, None, "sent no transcription", id="whisper-html"),
]


@pytest.mark.parametrize(("model", "fault", "after", "message"), STT_FAILURES)
async def test_transcription_faults_raise_our_errors(
    fake: FakeOpenAI, speech: bytes, model: str, fault: Fault, after: int | None, message: str
) -> None:
    fake.fail("transcriptions", fault, after=after)
    config = block(OpenAISTT, fake, model=model)
    async with started(OpenAITranscriber(config, 16000)) as stt:
        with pytest.raises(ProviderError, match=message) as raised:
            await transcribe(stt, speech)
    assert isinstance(raised.value, PermanentProviderError) is (fault is Fault.UNAUTHORIZED)


# ---- failover ---------------------------------------------------------------------------------


@asynccontextmanager
async def two_servers() -> AsyncIterator[tuple[FakeOpenAI, FakeOpenAI]]:
    async with (
        FakeOpenAI(reply="From the primary.") as primary,
        FakeOpenAI(reply="From the fallback.") as backup,
    ):
        yield primary, backup


def chain_config(primary: FakeOpenAI, backup: FakeOpenAI, **keys: Any) -> OpenAILLM:
    return block(OpenAILLM, primary, fallback=[at(backup)], **keys)


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.RATE_LIMIT, Fault.HANG])
async def test_a_failure_before_the_first_token_moves_the_same_turn_to_the_fallback(
    fault: Fault,
) -> None:
    async with two_servers() as (primary, backup):
        primary.fail("chat", fault, after=1 if fault is Fault.HANG else None)
        chain = FailoverLLM(
            chain_config(primary, backup, timeout_ms=300), ProviderHealth(), pipeline="test"
        )
        async with started(chain):
            assert await reply(chain) == "From the fallback."
            if fault is Fault.HANG:  # headers and the role came, then nothing in timeout_ms
                await until(lambda: primary.seen("chat")[0].disconnected)


async def test_a_drop_after_tokens_fails_the_turn_and_the_next_turn_uses_the_fallback() -> None:
    async with two_servers() as (primary, backup):
        primary.fail("chat", Fault.DROP, after=3)  # the role and two words
        chain = FailoverLLM(chain_config(primary, backup), ProviderHealth(), pipeline="test")
        heard: list[str] = []

        async def listen() -> None:
            async with aclosing(chain.stream(QUESTION)) as deltas:
                async for delta in deltas:
                    heard.append(delta)

        async with started(chain):
            with pytest.raises(ProviderError):
                await listen()
            assert heard == ["From", " the"]
            assert await reply(chain) == "From the fallback."
        assert len(primary.seen("chat")) == 1


async def test_a_refused_key_sends_no_further_request_to_that_server() -> None:
    async with two_servers() as (primary, backup):
        primary.fail("chat", Fault.UNAUTHORIZED)
        health = ProviderHealth(first_probe_s=0.01)
        chain = FailoverLLM(chain_config(primary, backup), health, pipeline="test")
        async with health.probing(), started(chain):
            assert await reply(chain) == "From the fallback."
            assert await reply(chain) == "From the fallback."
            await asyncio.sleep(0.1)  # time for a probe, were one (wrongly) scheduled
        # The warm-up at start, the refused request, and nothing after it.
        assert [r.path for r in primary.requests] == ["/v1/models", "/v1/chat/completions"]


async def test_the_background_probe_gives_a_recovered_provider_its_turns_back() -> None:
    async with two_servers() as (primary, backup):
        primary.fail("chat", Fault.SERVER_ERROR)
        primary.fail("models", Fault.SERVER_ERROR)
        health = ProviderHealth(first_probe_s=0.02, max_probe_s=0.02)
        chain = FailoverLLM(chain_config(primary, backup), health, pipeline="test")
        async with health.probing(), started(chain):
            assert await reply(chain) == "From the fallback."
            await until(lambda: len(primary.seen("models")) >= 1)
            assert await reply(chain) == "From the fallback.", "a failed probe keeps it down"
            primary.fail("chat", Fault.NONE)
            primary.fail("models", Fault.NONE)
            async with asyncio.timeout(5):
                while await reply(chain) != "From the primary.":
                    await asyncio.sleep(0.02)
        # While it was down, only probes went to it.
        assert len(primary.seen("chat")) == 2


async def test_speech_that_fails_before_its_first_audio_comes_from_the_fallback() -> None:
    async with two_servers() as (primary, backup):
        primary.fail("speech", Fault.SERVER_ERROR)
        config = block(OpenAITTS, primary, fallback=[at(backup)])
        chain = FailoverTTS(config, ProviderHealth(), pipeline="test")
        async with started(chain):
            pcm = b"".join(await collect(chain.synthesize(phrases("Hi there.", "Bye."), 24000)))
    assert len(pcm) == round(3 * 0.3 * PCM_RATE) * 2
    assert [r.body["input"] for r in backup.seen("speech")] == ["Hi there.", "Bye."]


async def test_speech_that_drops_after_audio_fails_the_turn() -> None:
    async with two_servers() as (primary, backup):
        primary.fail("speech", Fault.DROP, after=2)
        config = block(OpenAITTS, primary, fallback=[at(backup)])
        chain = FailoverTTS(config, ProviderHealth(), pipeline="test")
        async with started(chain):
            with pytest.raises(ProviderError):
                await collect(chain.synthesize(phrases("Hello there, friend."), 24000))
        assert backup.seen("speech") == []


# ---- end to end -------------------------------------------------------------------------------


def audio_bytes(events: Iterable[object]) -> int:
    return sum(len(e.payload) for e in events if isinstance(e, AudioChunk))


async def test_a_spoken_turn_runs_through_openai_stt_llm_and_tts_over_the_gateway(
    speech: bytes,
) -> None:
    async with FakeOpenAI(reply="Paris, of course.") as fake:
        # make_pipeline merges blocks into its scripted ones: the openai blocks replace them.
        openai_pipeline = msgspec.structs.replace(
            make_pipeline(),
            stt=block(OpenAISTT, fake),
            llm=block(OpenAILLM, fake, system_prompt="Be brief."),
            tts=block(OpenAITTS, fake),
        )
        async with running_gateway(openai_pipeline) as gw:
            async with VoiceClient.connect(gw.url()) as client:
                await client.start()
                await client.send_audio(speech)
                events, end = await client.collect_until(protocol.TurnEnd)
            await wait_sessions_closed(gw)

    final = next(e for e in events if isinstance(e, protocol.TranscriptFinal))
    assert final.text == fake.transcript
    tokens = [e.text for e in events if isinstance(e, protocol.LLMToken)]
    assert tokens == ["Paris,", " of", " course."]
    assert end.reason == "completed"
    # 3 words at 0.3 s, sent at the pipeline's 24 kHz.
    assert audio_bytes(events) == round(3 * 0.3 * 24000) * 2
    assert [r.path for r in fake.requests] == [
        *["/v1/models"] * 3,  # each stage's warm-up at session start, on the shared client
        "/v1/audio/transcriptions",
        "/v1/chat/completions",
        "/v1/audio/speech",
    ]
    messages = fake.seen("chat")[0].body["messages"]
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": fake.transcript},
    ]
