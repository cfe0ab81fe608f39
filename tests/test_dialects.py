"""`dialects` (PIPELINES.md): one pipeline file served as protocol v1.1, Twilio Media Streams
and the OpenAI Realtime API, each at its own path, on the same session core."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway import dialects, protocol
from gateway.client import VoiceClient
from gateway.config import Dialect
from gateway.loader import load_pipeline
from tests.conftest import make_pipeline, running_gateway, wait_sessions_closed
from tests.fakes.twilio import twilio_call

ROOT = Path(__file__).resolve().parent.parent


def request(path: str, **query: str) -> dialects.Request:
    return dialects.Request(path, query, {}, [])


def test_each_dialect_has_its_path() -> None:
    every = make_pipeline(dialects=["voxgate", "twilio", "openai-realtime"])
    table = {every.route: every}
    assert dialects.find(table, request("/ws/test")) == dialects.Found(Dialect.VOXGATE, every)
    assert dialects.find(table, request("/ws/test/twilio")) == dialects.Found(Dialect.TWILIO, every)
    assert dialects.find(table, request("/v1/realtime", model="test")) == dialects.Found(
        Dialect.OPENAI_REALTIME, every
    )
    assert dialects.find(table, request("/v1/realtime", model="other")) is None


def test_a_dialect_is_served_only_where_the_pipeline_lists_it() -> None:
    phone_only = make_pipeline(dialects=["twilio"])
    table = {phone_only.route: phone_only}
    assert dialects.find(table, request("/ws/test")) is None
    assert dialects.find(table, request("/v1/realtime", model="test")) is None
    assert make_pipeline().dialects == [Dialect.VOXGATE], "the default"


def test_browsers_must_be_allowed_but_phones_and_servers_send_no_origin() -> None:
    guarded = make_pipeline(
        dialects=["voxgate", "twilio"], auth={"allowed_origins": ["https://app.example.com"]}
    )
    voxgate = dialects.Found(Dialect.VOXGATE, guarded)
    twilio = dialects.Found(Dialect.TWILIO, guarded)
    assert not voxgate.origin_allowed(None) and voxgate.origin_allowed("https://app.example.com")
    assert twilio.origin_allowed(None) and not twilio.origin_allowed("https://evil.example.com")


async def test_one_pipeline_serves_all_three_dialects_at_once() -> None:
    every = make_pipeline(
        dialects=["voxgate", "twilio", "openai-realtime"],
        twilio={"dtmf": "text"},
        llm={"reply": "You said {user}."},
        tts={"words_per_minute": 1800},
    )
    async with running_gateway(every) as gw:

        async def voxgate() -> str:
            async with VoiceClient.connect(gw.url()) as client:
                await client.start()
                await client.send(protocol.Text(text="hello"))
                tokens, _ = await client.collect_until(protocol.TurnEnd)
            return "".join(t.text for t in tokens if isinstance(t, protocol.LLMToken))

        async def phone() -> str:
            async with twilio_call(gw.url("/ws/test/twilio")) as call:
                for digit in "7#":
                    await call.press(digit)
                async with asyncio.timeout(10):
                    while not call.heard:
                        call.check()
                        await asyncio.sleep(0.02)
            return "heard"

        async def realtime() -> str:
            client = AsyncOpenAI(api_key="-", websocket_base_url=f"ws://127.0.0.1:{gw.port}/v1")
            async with client.realtime.connect(model="test") as conn:
                await conn.conversation.item.create(
                    item={
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "hi"}],
                    }
                )
                await conn.response.create()
                async for event in conn:
                    if event.type == "response.done":
                        return str(event.response.output[0].content[0].transcript)
            return ""

        said = await asyncio.gather(voxgate(), phone(), realtime())
        await wait_sessions_closed(gw)
    assert said == ["You said hello.", "heard", "You said hi."]


async def test_a_path_no_pipeline_serves_is_refused_before_upgrade() -> None:
    async with running_gateway(make_pipeline(dialects=["twilio"])) as gw:
        for path in ("/ws/test", "/v1/realtime?model=test", "/ws/nope/twilio"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(gw.url(path)):
                    pass
            assert refused.value.response.status_code == 403


def test_a_pipeline_file_lists_its_dialects(tmp_path: Path) -> None:
    file = tmp_path / "support.yaml"
    file.write_text(
        "dialects: [voxgate, twilio, openai-realtime]\n"
        "twilio: {dtmf: text, dtmf_pause_ms: 2000}\n"
        "stt: {provider: scripted}\nllm: {provider: scripted}\ntts: {provider: scripted}\n"
    )
    pipeline = load_pipeline(file, {})
    assert pipeline.dialects == list(Dialect) and pipeline.twilio.dtmf_pause_ms == 2000


def test_voxgate_twiml_prints_the_stream_with_a_minted_token(tmp_path: Path) -> None:
    (tmp_path / "phone.yaml").write_text(
        "dialects: [twilio]\nauth: {mode: token}\n"
        "stt: {provider: scripted}\nllm: {provider: scripted}\ntts: {provider: scripted}\n"
    )
    env = {**os.environ, "VOXGATE_TOKEN_SECRET": "t" * 40}
    command = [sys.executable, "-m", "gateway", "twiml", "--pipelines", str(tmp_path)]
    command += ["--pipeline", "phone", "--host", "voice.example.com"]
    without_ttl = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    made = subprocess.run(
        [*command, "--ttl", "600"], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert without_ttl.returncode == 1 and "--ttl" in without_ttl.stderr
    assert made.returncode == 0, made.stderr
    assert '<Stream url="wss://voice.example.com/ws/phone/twilio">' in made.stdout
    assert '<Parameter name="token" value="ey' in made.stdout
