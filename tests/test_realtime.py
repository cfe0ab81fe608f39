"""The `openai-realtime` dialect: the OpenAI Realtime API on the session core.

Pure tests check how `session.update` shapes the session's pipeline and the A-law codec; the
rest drive a gateway on a loopback port with a client we did not write: the official `openai`
SDK's realtime client (`openai[realtime]`), pointed at the gateway with `websocket_base_url`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import numpy as np
import pytest
import soxr
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.audio.codecs import mulaw_encode
from gateway.config import TurnDetector, VADProvider
from gateway.dialects.g711 import alaw_decode, alaw_encode
from gateway.dialects.realtime import (
    Refused,
    SessionConfig,
    Settings,
    bearer_token,
    session_pipeline,
    updated,
)
from gateway.protocol import OutputCodec
from gateway.security import mint_token
from tests.conftest import Gateway, make_pipeline, running_gateway, wait_sessions_closed

LONG_REPLY = (
    "Paris is the capital of France. It has been the heart of French life for centuries, "
    "with museums, cafes, bridges and parks that visitors remember for the rest of their lives."
)
SECRET = "s" * 40
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Today's weather in a city.",
    "parameters": WEATHER_PARAMETERS,
}


def config(**session: Any) -> SessionConfig:
    return msgspec.convert(session, SessionConfig)


# ---- session.update -> the session's pipeline ---------------------------------------------


def test_defaults_are_pcm_24k_both_ways_and_the_pipelines_own_turn_taking() -> None:
    base = make_pipeline(output={"codec": "opus", "sample_rate": 48000})
    pipeline = session_pipeline(base, Settings())
    assert (pipeline.output.codec, pipeline.output.sample_rate) == (OutputCodec.PCM16, 24000)
    assert pipeline.input.codecs == ["pcm16", "mulaw"]
    assert (pipeline.vad, pipeline.turns, pipeline.llm) == (base.vad, base.turns, base.llm)


def test_server_vad_settings_become_the_vad_and_a_silence_detector() -> None:
    detection = {"type": "server_vad", "threshold": 0.7, "silence_duration_ms": 450}
    detection |= {"prefix_padding_ms": 250, "interrupt_response": False}
    settings = updated(Settings(), config(audio={"input": {"turn_detection": detection}}))
    pipeline = session_pipeline(make_pipeline(), settings)
    assert pipeline.vad.threshold == 0.7 and pipeline.vad.min_silence_ms == 450
    assert pipeline.vad.speech_pad_ms == 250
    assert pipeline.turns.detector is TurnDetector.SILENCE and pipeline.turns.barge_in is False


def test_semantic_vad_is_the_end_of_turn_model_waiting_as_eagerness_says() -> None:
    detection = {"type": "semantic_vad", "eagerness": "low"}
    settings = updated(Settings(), config(audio={"input": {"turn_detection": detection}}))
    pipeline = session_pipeline(make_pipeline(turns={"detector": "silence"}), settings)
    assert pipeline.turns.detector is TurnDetector.SMART_TURN
    assert pipeline.turns.max_wait_ms == 8000


def test_no_turn_detection_means_turns_end_on_commit_only() -> None:
    settings = updated(Settings(), config(audio={"input": {"turn_detection": None}}))
    assert session_pipeline(make_pipeline(), settings).vad.provider is VADProvider.NONE
    # Left out, it stays as it was.
    assert updated(settings, config(instructions="hi")).turn_detection is None


def test_instructions_become_the_system_prompt_and_voice_goes_to_a_voice_provider() -> None:
    settings = updated(
        Settings(), config(instructions="Be brief.", audio={"output": {"voice": "marin"}})
    )
    scripted = session_pipeline(make_pipeline(), settings)
    assert scripted.llm.system_prompt == "Be brief."
    openai_tts = make_pipeline(tts={"provider": "openai", "voice": "alloy"})
    assert getattr(session_pipeline(openai_tts, settings).tts, "voice", None) == "marin"
    cartesia = make_pipeline(tts={"provider": "cartesia"})
    assert session_pipeline(cartesia, settings).tts == cartesia.tts, "not a Realtime voice name"


def test_g711_formats_and_the_beta_aliases() -> None:
    ga = updated(
        Settings(),
        config(
            audio={
                "input": {"format": {"type": "audio/pcmu"}},
                "output": {"format": {"type": "audio/pcma"}},
            }
        ),
    )
    beta = updated(
        Settings(), config(input_audio_format="g711_ulaw", output_audio_format="g711_alaw")
    )
    assert (ga.input_format, ga.output_format) == ("audio/pcmu", "audio/pcma")
    assert (beta.input_format, beta.output_format) == (ga.input_format, ga.output_format)
    pipeline = session_pipeline(make_pipeline(), ga)
    assert (pipeline.output.codec, pipeline.output.sample_rate) == (OutputCodec.PCM16, 8000)


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"output_modalities": ["text"]}, "modalities"),
        ({"tools": [{"type": "mcp", "server_url": "https://example.com/mcp"}]}, "tools"),
        ({"tools": [{"type": "function", "name": "f"}] * 2}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "create_response": False}}
                }
            },
            "session.audio.input.turn_detection.create_response",
        ),
    ],
)
def test_what_is_not_served_is_refused_by_name(session: dict[str, Any], param: str) -> None:
    with pytest.raises(Refused) as refused:
        updated(Settings(), config(**session))
    assert refused.value.param == param


def test_declared_functions_join_the_pipelines_server_tools_as_client_tools() -> None:
    base = make_pipeline(
        tools=[
            {"name": "lookup", "http": {"url": "https://api.example.com/lookup"}},
            {"name": "show_map"},  # the pipeline's own client tool: not this client's
        ]
    )
    weather = {"type": "function", "name": "get_weather", "parameters": WEATHER_PARAMETERS}
    settings = updated(Settings(), config(tools=[weather], tool_choice="auto"))
    tools = {t.name: t for t in session_pipeline(base, settings).tools}
    assert sorted(tools) == ["get_weather", "lookup"]
    assert tools["get_weather"].http is None and tools["get_weather"].mcp is None
    assert tools["get_weather"].parameters == WEATHER_PARAMETERS


def test_the_api_key_comes_as_a_bearer_header_or_a_browser_subprotocol() -> None:
    assert bearer_token({"authorization": "Bearer k1"}, []) == "k1"
    assert bearer_token({}, ["realtime", "openai-insecure-api-key.k2"]) == "k2"
    assert bearer_token({"authorization": "Basic x"}, []) is None


def test_alaw_is_byte_identical_to_the_reference() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # the reference, in Python up to 3.12
    pcm = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert alaw_encode(pcm) == audioop.lin2alaw(pcm, 2)
    assert alaw_decode(bytes(range(256))) == audioop.alaw2lin(bytes(range(256)), 2)


# ---- the official SDK against the gateway ----------------------------------------------------


@asynccontextmanager
async def realtime(
    gw: Gateway, model: str = "test", api_key: str = "unused"
) -> AsyncIterator[AsyncRealtimeConnection]:
    client = AsyncOpenAI(api_key=api_key, websocket_base_url=f"ws://127.0.0.1:{gw.port}/v1")
    async with client.realtime.connect(model=model) as conn:
        yield conn


async def until(
    conn: AsyncRealtimeConnection, done: Callable[[Any], bool], timeout_s: float = 15
) -> list[Any]:
    """Every event up to and including the first `done` accepts."""
    events: list[Any] = []
    async with asyncio.timeout(timeout_s):
        async for event in conn:
            events.append(event)
            if done(event):
                return events
    raise AssertionError(f"closed before the event came: {[e.type for e in events]}")


def of_type(kind: str, **fields: Any) -> Callable[[Any], bool]:
    return lambda e: e.type == kind and all(_field(e, k) == v for k, v in fields.items())


def _field(event: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        event = getattr(event, part, None)
    return event


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events if not e.type.endswith(("audio.delta", "transcript.delta"))]


def in_order(names: list[str], expected: list[str]) -> bool:
    """`expected` is a subsequence of `names`."""
    rest = iter(names)
    return all(name in rest for name in expected)


def audio_bytes(events: list[Any]) -> bytes:
    return b"".join(
        base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"
    )


async def append(conn: AsyncRealtimeConnection, audio: bytes, chunk: int = 960) -> None:
    for start in range(0, len(audio), chunk):
        await conn.input_audio_buffer.append(
            audio=base64.b64encode(audio[start : start + chunk]).decode()
        )


async def say(conn: AsyncRealtimeConnection, text: str) -> None:
    content = [{"type": "input_text", "text": text}]
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": content}
    )
    await conn.response.create()


@pytest.fixture(scope="module")
def speech_24k() -> bytes:
    from tests.audio_fixtures import speech_at

    voice = speech_at(24000, "what is the capital of france")
    return bytes(np.concatenate((voice, np.zeros(24000 * 6 // 10, dtype=np.int16))).tobytes())


def realtime_pipeline(**overrides: Any) -> Any:
    return make_pipeline(dialects=["openai-realtime"], turns={"detector": "silence"}, **overrides)


async def test_a_spoken_turn_streams_the_realtime_events_in_order(speech_24k: bytes) -> None:
    async with running_gateway(realtime_pipeline()) as gw, realtime(gw) as conn:
        created = await until(conn, of_type("session.created"))
        await append(conn, speech_24k)
        events = await until(conn, of_type("response.done"))
    assert created[-1].session.model == "test"
    assert in_order(
        types(events),
        [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",  # the user's audio
            "conversation.item.input_audio_transcription.delta",
            "conversation.item.input_audio_transcription.completed",
            "conversation.item.done",
            "response.created",
            "response.output_item.added",
            "conversation.item.added",  # the assistant's
            "response.content_part.added",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ],
    )
    heard = next(e for e in events if e.type.endswith("transcription.completed"))
    assert heard.transcript == "what is the capital of france"
    assert 2.0 < heard.usage.seconds < 3.0, "the audio the transcript is of"
    done = events[-1].response
    assert done.status == "completed"
    assert done.output[0].content[0].transcript == "Paris is the capital of France."
    assert len(audio_bytes(events)) == 2 * 24000 * 2, "two seconds of 24 kHz pcm16"
    started = next(e for e in events if e.type == "input_audio_buffer.speech_started")
    assert started.item_id == heard.item_id, "speech_started names the item to come"
    await wait_sessions_closed(gw)


async def test_a_typed_turn_is_answered_and_kept_in_the_history() -> None:
    async with running_gateway(realtime_pipeline()) as gw, realtime(gw) as conn:
        await say(conn, "tell me about paris")
        events = await until(conn, of_type("response.done"))
        (session,) = gw.table.sessions
        history = [(m.role, m.content) for m in session.history]
    added = [e for e in events if e.type == "conversation.item.added"]
    assert added[0].item.role == "user" and added[0].item.content[0].text == "tell me about paris"
    deltas = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
    assert deltas == "Paris is the capital of France."
    assert events[-1].response.status == "completed"
    assert history == [("user", "tell me about paris"), ("assistant", deltas)]


async def test_speech_over_a_response_cancels_it_then_is_answered(speech_24k: bytes) -> None:
    long = realtime_pipeline(
        llm={"reply": LONG_REPLY},
        stt={"transcript": "wait what about lyon"},
        tts={"words_per_minute": 600},
    )
    async with running_gateway(long) as gw, realtime(gw) as conn:
        await say(conn, "tell me about paris")
        await until(conn, of_type("response.output_audio.delta"))
        await asyncio.sleep(0.8)
        await append(conn, speech_24k)
        cut = await until(conn, of_type("response.done"))
        answered = await until(conn, of_type("response.done"))
        (session,) = gw.table.sessions
        history = [(m.role, m.content) for m in session.history]
    assert cut[-1].response.status == "cancelled"
    assert cut[-1].response.status_details.reason == "turn_detected"
    assert "input_audio_buffer.speech_started" in types(cut)
    assert answered[-1].response.status == "completed"
    assert history[2] == ("user", "wait what about lyon")
    assert LONG_REPLY.startswith(history[1][1]) and len(history[1][1]) < len(LONG_REPLY) // 2


async def test_response_cancel_stops_the_response() -> None:
    long = realtime_pipeline(llm={"reply": LONG_REPLY})
    async with running_gateway(long) as gw, realtime(gw) as conn:
        await say(conn, "tell me about paris")
        await until(conn, of_type("response.output_audio.delta"))
        await conn.response.cancel()
        events = await until(conn, of_type("response.done"))
    assert events[-1].response.status == "cancelled"
    assert events[-1].response.status_details.reason == "client_cancelled"


@pytest.mark.parametrize("wait_s", [0.0, 0.6], ids=["still-playing", "played-out"])
async def test_truncate_cuts_the_history_to_what_was_heard(wait_s: float) -> None:
    # 0.2 s of reply audio at 1800 words per minute, 2 s at 180: both cut at half.
    wpm = 1800 if wait_s else 180
    pipeline = realtime_pipeline(tts={"words_per_minute": wpm})
    async with running_gateway(pipeline) as gw, realtime(gw) as conn:
        await say(conn, "tell me about paris")
        done = (await until(conn, of_type("response.done")))[-1]
        await asyncio.sleep(wait_s)
        item = done.response.output[0].id
        half = 100 if wait_s else 1000
        await conn.conversation.item.truncate(item_id=item, content_index=0, audio_end_ms=half)
        truncated = (await until(conn, of_type("conversation.item.truncated")))[-1]
        (session,) = gw.table.sessions
        history = [m.content for m in session.history]
    assert (truncated.item_id, truncated.audio_end_ms) == (item, half)
    assert history == ["tell me about paris", "Paris is the"]


async def test_manual_turns_commit_the_buffer_and_ask_for_the_response(speech_24k: bytes) -> None:
    async with running_gateway(realtime_pipeline()) as gw, realtime(gw) as conn:
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        )
        updated_ = (await until(conn, of_type("session.updated")))[-1]
        await append(conn, speech_24k)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await until(conn, of_type("response.done"))
    assert updated_.session.audio.input.turn_detection is None
    names = types(events)
    assert "input_audio_buffer.speech_started" not in names
    assert names.index("input_audio_buffer.committed") < names.index("response.created")
    assert events[-1].response.status == "completed"


async def test_a_committed_buffer_with_no_words_is_an_error_not_a_response_never_sent(
    speech_24k: bytes,
) -> None:
    async with running_gateway(realtime_pipeline()) as gw, realtime(gw) as conn:
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        )
        await until(conn, of_type("session.updated"))
        await append(conn, bytes(24000))  # half a second of silence
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        silent = await until(conn, of_type("error"))
        await conn.response.create()  # that commit is spent: nothing is left to answer
        spent = await until(conn, of_type("error"))
        await append(conn, speech_24k)  # the session goes on: the next commit is answered
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        answered = await until(conn, of_type("response.done"))
    assert "input_audio_buffer.committed" in types(silent)
    assert "response.created" not in types(silent)
    assert silent[-1].error.code == "no_speech"
    assert spent[-1].error.code == "nothing_to_respond_to"
    assert answered[-1].response.status == "completed"


@pytest.mark.parametrize(("fmt", "decode"), [("audio/pcmu", None), ("audio/pcma", alaw_decode)])
async def test_g711_in_and_out(
    speech_24k: bytes, fmt: str, decode: Callable[[bytes], bytes] | None
) -> None:
    pcm8k = soxr.resample(np.frombuffer(speech_24k, dtype="<i2"), 24000, 8000).astype("<i2")
    spoken = mulaw_encode(pcm8k) if fmt == "audio/pcmu" else alaw_encode(pcm8k.tobytes())
    session = {
        "type": "realtime",
        "audio": {"input": {"format": {"type": fmt}}, "output": {"format": {"type": fmt}}},
    }
    async with running_gateway(realtime_pipeline()) as gw, realtime(gw) as conn:
        await conn.session.update(session=session)
        await until(conn, of_type("session.updated"))
        await append(conn, spoken, chunk=160)
        events = await until(conn, of_type("response.done"))
    audio = audio_bytes(events)
    assert events[-1].response.status == "completed"
    assert len(audio) == 2 * 8000, "two seconds at one byte per 8 kHz sample"
    if decode is not None:
        tone = np.frombuffer(decode(audio), dtype="<i2")
        assert np.abs(tone).max() > 4000, "A-law that decodes to the reply's tone"


async def test_instructions_change_mid_session_but_formats_do_not() -> None:
    quick = realtime_pipeline(tts={"words_per_minute": 1800})
    async with running_gateway(quick) as gw, realtime(gw) as conn:
        await say(conn, "hello")
        await until(conn, of_type("response.done"))
        await conn.session.update(
            session={"type": "realtime", "instructions": "Talk like a pirate."}
        )
        updated_ = (await until(conn, of_type("session.updated")))[-1]
        pcmu = {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}}
        await conn.session.update(session=pcmu)
        refused = (await until(conn, of_type("error")))[-1]
        (session,) = gw.table.sessions
    assert updated_.session.instructions == "Talk like a pirate."
    assert session.pipeline.llm.system_prompt == "Talk like a pirate."
    assert refused.error.code == "session_update_too_late"


def weather_pipeline() -> Any:
    return realtime_pipeline(
        llm={
            "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
            "after_tools": "The weather: {results}.",
        },
        tts={"words_per_minute": 1800},
    )


async def test_a_declared_function_is_called_then_the_answer_uses_its_output() -> None:
    async with running_gateway(weather_pipeline()) as gw, realtime(gw) as conn:
        await conn.session.update(session={"type": "realtime", "tools": [WEATHER_TOOL]})
        updated_ = (await until(conn, of_type("session.updated")))[-1]
        await say(conn, "what is the weather in paris")
        calling = await until(conn, of_type("response.done"))
        (call,) = [i for i in calling[-1].response.output if i.type == "function_call"]
        await conn.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": '{"sky": "sunny"}',
            }
        )
        await conn.response.create()
        answering = await until(conn, of_type("response.done"))
        (session,) = gw.table.sessions
        history = [(m.role, m.content) for m in session.history]
    assert [t.name for t in updated_.session.tools] == ["get_weather"]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert in_order(
        types(calling),
        [
            "response.created",
            "response.output_item.added",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.done",
        ],
    )
    done = next(e for e in calling if e.type == "response.function_call_arguments.done")
    assert (done.call_id, done.name, done.arguments) == (call.call_id, call.name, call.arguments)
    assert calling[-1].response.status == "completed"
    # The model said nothing before calling: the response holds the call alone, at index 0.
    assert [i.type for i in calling[-1].response.output] == ["function_call"]
    added = [e for e in calling if e.type == "response.output_item.added"]
    assert [(e.item.type, e.output_index) for e in added] == [("function_call", 0)]
    assert "response.content_part.added" not in types(calling)
    assert types(answering)[:2] == ["conversation.item.added", "conversation.item.done"]
    assert answering[0].item.type == "function_call_output"
    assert "response.created" in types(answering) and "error" not in types(answering)
    said = "".join(e.delta for e in answering if e.type == "response.output_audio_transcript.delta")
    assert said == 'The weather: {"sky":"sunny"}.', "the model read the output as JSON"
    assert answering[-1].response.status == "completed"
    assert audio_bytes(answering), "the answer is spoken"
    assert history[-1] == ("assistant", said)


async def test_a_response_create_after_the_answer_began_claims_it() -> None:
    async with running_gateway(weather_pipeline()) as gw, realtime(gw) as conn:
        await conn.session.update(session={"type": "realtime", "tools": [WEATHER_TOOL]})
        await until(conn, of_type("session.updated"))
        await say(conn, "what is the weather in paris")
        calling = await until(conn, of_type("response.done"))
        (call,) = [i for i in calling[-1].response.output if i.type == "function_call"]
        output = {"type": "function_call_output", "call_id": call.call_id, "output": "rain"}
        await conn.conversation.item.create(item=output)
        began = await until(conn, of_type("response.created"))
        await conn.response.create()  # late: the model went on as soon as the output came
        answering = await until(conn, of_type("response.done"))
    assert "error" not in types(began + answering)
    said = "".join(e.delta for e in answering if e.type == "response.output_audio_transcript.delta")
    assert said == 'The weather: "rain".', "output that is not JSON is a JSON string"


async def test_a_tool_the_gateway_runs_cannot_be_declared_by_the_client() -> None:
    pipeline = realtime_pipeline(tools=[{"name": "get_weather", "http": {"url": "http://x/"}}])
    async with running_gateway(pipeline) as gw, realtime(gw) as conn:
        await conn.session.update(session={"type": "realtime", "tools": [WEATHER_TOOL]})
        refused = (await until(conn, of_type("error")))[-1]
    assert refused.error.param == "tools" and "get_weather" in refused.error.message


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{oops", "invalid_json"),
        ('{"type": "conversation.item.delete", "item_id": "x"}', "invalid_event"),
        ('{"type": "input_audio_buffer.append", "audio": 42}', "invalid_event"),
        ('{"type": "input_audio_buffer.append", "audio": "@@@"}', "invalid_audio"),
        ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty"),
        ('{"type": "response.cancel"}', "response_cancel_not_active"),
        ('{"type": "response.create"}', "nothing_to_respond_to"),
        (
            '{"type": "conversation.item.create", "item": {"type": "function_call_output"}}',
            "missing_required_parameter",
        ),
        (
            '{"type": "conversation.item.truncate", "item_id": "no", "audio_end_ms": 5}',
            "item_truncate_invalid_item_id",
        ),
    ],
)
async def test_bad_input_gets_an_openai_error_and_the_session_goes_on(raw: str, code: str) -> None:
    quick = realtime_pipeline(tts={"words_per_minute": 1800})
    async with running_gateway(quick) as gw, realtime(gw) as conn:
        await until(conn, of_type("session.created"))
        await conn.send_raw(raw)
        error = (await until(conn, of_type("error")))[-1]
        await say(conn, "still there?")
        done = (await until(conn, of_type("response.done")))[-1]
    assert error.error.code == code and error.error.type == "invalid_request_error"
    assert done.response.status == "completed"
    await wait_sessions_closed(gw)


async def test_a_second_response_create_while_one_runs_is_refused() -> None:
    long = realtime_pipeline(llm={"reply": LONG_REPLY})
    async with running_gateway(long) as gw, realtime(gw) as conn:
        await say(conn, "tell me about paris")
        await until(conn, of_type("response.created"))
        await say(conn, "and london?")
        error = (await until(conn, of_type("error")))[-1]
    assert error.error.code == "conversation_already_has_active_response"


async def closing_events(conn: AsyncRealtimeConnection) -> tuple[list[Any], int | None]:
    """Every event until the server closes, and its close code."""
    events: list[Any] = []
    try:
        async for event in conn:
            events.append(event)
    except ConnectionClosed as closed:
        return events, closed.rcvd.code if closed.rcvd is not None else None
    return events, 1000


@pytest.mark.parametrize(
    ("size", "said"),
    [(3100, "max_message_bytes"), (60_000, "exceeds limit")],
    ids=["over-the-pipeline-limit", "over-the-server-cap"],
)
async def test_an_oversized_event_gets_an_error_then_close_1009(size: int, said: str) -> None:
    small = realtime_pipeline(limits={"max_message_bytes": 4096})
    async with running_gateway(small) as gw, realtime(gw) as conn:
        await until(conn, of_type("session.created"))
        await append(conn, bytes(size), chunk=size)
        events, code = await closing_events(conn)
        await wait_sessions_closed(gw)
    assert code == 1009
    assert [e.type for e in events] == ["error"] and said in events[0].error.message


async def test_the_api_key_is_the_pipelines_token() -> None:
    locked = realtime_pipeline(auth={"mode": "token", "secret": SECRET})
    token = mint_token(SECRET, "test", 60)
    async with running_gateway(locked) as gw:
        async with realtime(gw, api_key=token) as conn:
            await say(conn, "hello")
            assert (await until(conn, of_type("response.done")))[-1].response.status == "completed"
        async with realtime(gw, api_key="not-a-token") as conn:
            await say(conn, "hello")
            refused, code = await closing_events(conn)
        await wait_sessions_closed(gw)
    assert code == 1008
    assert [e.type for e in refused][-1:] == ["error"]
    assert refused[-1].error.code == "invalid_api_key"


async def test_an_unknown_model_is_refused_before_upgrade() -> None:
    async with running_gateway(realtime_pipeline()) as gw:
        for query in ("?model=nope", ""):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://127.0.0.1:{gw.port}/v1/realtime{query}"):
                    pass
            assert refused.value.response.status_code == 403


async def test_session_created_does_not_show_the_pipelines_system_prompt() -> None:
    secret_prompt = realtime_pipeline(llm={"system_prompt": "Internal: discount code XYZ."})
    async with (
        running_gateway(secret_prompt) as gw,
        connect(f"ws://127.0.0.1:{gw.port}/v1/realtime?model=test") as ws,
    ):
        created = json.loads(await ws.recv())
    assert created["type"] == "session.created"
    assert "XYZ" not in json.dumps(created)


async def test_a_flood_of_events_is_refused_then_closed_1008() -> None:
    # 4 per second: a token comes back only every 250 ms, far longer than the server takes to
    # refuse the flood's first five events (at 10 per second a stall of 100 ms on a busy CI
    # machine refilled one mid-flood and made it two floods)
    strict = realtime_pipeline(limits={"control_frames_per_s": 4})
    async with running_gateway(strict) as gw:
        async with connect(f"ws://127.0.0.1:{gw.port}/v1/realtime?model=test") as ws:
            await ws.recv()  # session.created
            await ws.send('{"type": "response.create"}')  # the session opens
            for _ in range(40):
                await ws.send('{"type": "nope"}')
            codes: list[str] = []
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    codes.append(json.loads(message)["error"]["code"])
        await wait_sessions_closed(gw)
    assert ws.close_code == 1008
    assert codes.count("rate_limited") == 2, "one when the flood starts, one as it closes"
    assert len(codes) < 15
