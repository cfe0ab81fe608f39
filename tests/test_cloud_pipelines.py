"""The shipped cloud pipelines end to end: the real files, the real SDKs, fake providers.

`pipelines/deepgram-openai-cartesia.yaml` and `pipelines/openai.yaml` are loaded as a user
deploys them, with their `*_BASE_URL` variables pointing every stage at a fake server on
127.0.0.1 that speaks the provider's wire protocol; a client talks to the gateway over a real
socket. Covered: a spoken turn, barge-in cancelling Cartesia's context, failover to each
stage's fallback, and a refused key that is never tried again.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import structlog

from gateway import protocol
from gateway.client import AudioChunk, Event, VoiceClient
from gateway.loader import expand_paths, load_pipeline, load_pipelines, run_check
from gateway.pipeline import Pipeline
from gateway.reload import warn_missing_keys
from tests.conftest import Gateway, running_gateway, wait_sessions_closed
from tests.fakes.cartesia import API_KEY as CARTESIA_KEY
from tests.fakes.cartesia import FakeCartesia
from tests.fakes.deepgram import FakeDeepgram
from tests.fakes.faults import Fault
from tests.fakes.openai import FakeOpenAI
from tests.test_session import closed_with

PIPELINES = Path(__file__).parent.parent / "pipelines"
QUESTION = "what is the capital of france"
ANSWER = "Paris is the capital of France. It sits on the Seine, in the north of the country."


@dataclass
class Cloud:
    deepgram: FakeDeepgram
    openai: FakeOpenAI
    cartesia: FakeCartesia

    def env(self) -> dict[str, str]:
        return {
            "DEEPGRAM_API_KEY": self.deepgram.api_key,
            "DEEPGRAM_BASE_URL": self.deepgram.base_url,
            "OPENAI_API_KEY": self.openai.api_key,
            "OPENAI_BASE_URL": self.openai.base_url,
            "CARTESIA_API_KEY": CARTESIA_KEY,
            "CARTESIA_BASE_URL": self.cartesia.base_url,
        }

    def pipeline(self, name: str) -> Pipeline:
        return load_pipeline(PIPELINES / f"{name}.yaml", self.env())


@asynccontextmanager
async def cloud(**cartesia: float) -> AsyncIterator[Cloud]:
    async with AsyncExitStack() as stack:
        yield Cloud(
            await stack.enter_async_context(FakeDeepgram(transcript=QUESTION)),
            await stack.enter_async_context(FakeOpenAI(reply=ANSWER, transcript=QUESTION)),
            await stack.enter_async_context(FakeCartesia(**cartesia)),  # type: ignore[arg-type]
        )


async def spoken_turn(
    gw: Gateway, route: str, speech: bytes
) -> tuple[list[Event], protocol.TurnEnd]:
    async with VoiceClient.connect(gw.url(route)) as client:
        await client.start()
        await client.send_audio(speech)
        return await client.collect_until(protocol.TurnEnd)


def said(events: list[Event]) -> str:
    return next(e.text for e in events if isinstance(e, protocol.TranscriptFinal))


def answered(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, protocol.LLMToken))


def audio_bytes(events: list[Event]) -> int:
    return sum(len(e.payload) for e in events if isinstance(e, AudioChunk))


async def test_deepgram_openai_cartesia_answers_a_spoken_turn(speech: bytes) -> None:
    async with cloud() as fakes, running_gateway(fakes.pipeline("deepgram-openai-cartesia")) as gw:
        events, end = await spoken_turn(gw, "/ws/deepgram-openai-cartesia", speech)
        await wait_sessions_closed(gw)

    assert (said(events), answered(events), end.reason) == (QUESTION, ANSWER, "completed")
    assert "TranscriptPartial" in [type(e).__name__ for e in events]
    (stream,) = fakes.deepgram.streams
    assert (stream.param("model"), stream.param("encoding"), stream.param("sample_rate")) == (
        "nova-3",
        "linear16",
        "16000",
    )
    (chat,) = fakes.openai.seen("chat")
    assert chat.body["messages"][-1] == {"role": "user", "content": QUESTION}
    assert chat.body["messages"][0]["role"] == "system"
    (context,) = fakes.cartesia.contexts()
    spoken = "".join(fakes.cartesia.transcripts(context))
    assert spoken.split() == ANSWER.split(), "every word went to Cartesia, in one context"
    assert audio_bytes(events) == sum(
        FakeCartesia.audio_bytes(t, 24000) for t in fakes.cartesia.transcripts(context)
    )


@pytest.mark.parametrize("name", ["deepgram-openai-cartesia", "openai"])
async def test_an_utterance_sent_as_one_frame_is_flushed_with_its_words(
    speech: bytes, name: str
) -> None:
    """A recorded utterance in one frame, then `audio_end`: the VAD's pause inside the frame
    asks the STT to flush, and the words in front of it must reach the STT before that
    (Deepgram's Finalize sent ahead of them flushed nothing: the turn ended without words)."""
    voice = speech[: len(speech) - 9600 * 2]  # without the added silence: its own 0.3 s
    async with (
        cloud() as fakes,
        running_gateway(fakes.pipeline(name)) as gw,
        VoiceClient.connect(gw.url(f"/ws/{name}")) as client,
    ):
        await client.start()
        await client.send_audio(voice, chunk_bytes=len(voice))
        await client.send(protocol.AudioEnd())
        async with asyncio.timeout(10):
            events, end = await client.collect_until(protocol.TurnEnd)
    assert (said(events), answered(events), end.reason) == (QUESTION, ANSWER, "completed")


async def test_two_sentences_sent_at_once_are_one_turn_with_both(speech: bytes) -> None:
    """Two sentences with a pause, in one frame, then `audio_end`: the pause's Finalize is
    answered after the second sentence and `audio_end` are in, so the turn asks again for the
    words after it, and Deepgram's `UtteranceEnd` for the first sentence does not answer that."""
    voice = speech[: len(speech) - 9600 * 2]
    two = speech + voice  # a 0.9 s pause between them
    async with (
        cloud() as fakes,
        running_gateway(fakes.pipeline("deepgram-openai-cartesia")) as gw,
        VoiceClient.connect(gw.url("/ws/deepgram-openai-cartesia")) as client,
    ):
        await client.start()
        await client.send_audio(two, chunk_bytes=len(two))
        await client.send(protocol.AudioEnd())
        async with asyncio.timeout(10):
            events, end = await client.collect_until(protocol.TurnEnd)
    assert (said(events), end.reason) == (f"{QUESTION} {QUESTION}", "completed")
    (stream,) = fakes.deepgram.streams
    assert stream.controls.count("Finalize") == 2


FIRST_SESSION = """
import asyncio, ssl, sys
import numpy as np
from tests.audio_fixtures import speech_at
from tests.conftest import running_gateway, wait_sessions_closed
from tests.test_cloud_pipelines import QUESTION, cloud, said, spoken_turn

SDKS = {"deepgram", "openai", "cartesia", "httpx", "httpx2", "httpcore", "httpcore2", "aiohttp",
        "websockets"}

async def main():
    voice = speech_at(16000, QUESTION)
    speech = np.concatenate((voice, np.zeros(9600, dtype=np.int16))).tobytes()
    async with cloud() as fakes:
        pipeline = fakes.pipeline("deepgram-openai-cartesia")
        async with running_gateway(pipeline) as gw:
            await gw.table.preload(pipeline)  # as `voxgate serve` does before it serves
            before = set(sys.modules)
            ca_loads = []
            load = ssl.SSLContext.load_verify_locations
            def counted(context, *args, **kwargs):
                ca_loads.append(args or kwargs)
                return load(context, *args, **kwargs)
            ssl.SSLContext.load_verify_locations = counted
            events, _ = await spoken_turn(gw, pipeline.route, speech)
            await wait_sessions_closed(gw)
    assert said(events) == QUESTION
    print(len(ca_loads), "TLS contexts built")
    print(sorted(m for m in set(sys.modules) - before if m.split(".")[0] in SDKS))

asyncio.run(main())
"""


def test_the_first_session_waits_for_no_sdk_import_or_tls_context() -> None:
    """Importing the three SDKs took ~0.4 s, and their clients' TLS contexts ~20 ms each on
    the event loop, which the process's first session waited for before `session_started`:
    the preload does both before the server serves."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_SESSION],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PIPELINES.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    *_, contexts, imported = done.stdout.splitlines()
    assert imported == "[]", "imported by the first session"
    assert contexts == "0 TLS contexts built"


async def test_barge_in_cuts_the_reply_and_cancels_its_cartesia_context(speech: bytes) -> None:
    async with (
        cloud(chunk_delay_s=0.05) as fakes,
        running_gateway(fakes.pipeline("deepgram-openai-cartesia")) as gw,
        VoiceClient.connect(gw.url("/ws/deepgram-openai-cartesia")) as client,
    ):
        await client.start()
        await client.send_audio(speech)
        first = await client.expect(AudioChunk)
        await client.send_audio(speech)  # the user talks over the reply
        cut = await client.expect(protocol.Interrupted)
        await client.expect(protocol.TurnEnd)

    assert cut.turn_id == first.header.turn_id
    first_context = fakes.cartesia.contexts()[0]
    assert first_context in fakes.cartesia.cancels, "Cartesia stops generating the cut reply"


async def test_stages_fail_over_when_deepgram_and_cartesia_are_down(speech: bytes) -> None:
    async with cloud() as fakes:
        fakes.deepgram.fault = Fault.REFUSE
        fakes.cartesia.fault = Fault.SERVER_ERROR
        async with running_gateway(fakes.pipeline("deepgram-openai-cartesia")) as gw:
            events, end = await spoken_turn(gw, "/ws/deepgram-openai-cartesia", speech)

    assert (said(events), answered(events), end.reason) == (QUESTION, ANSWER, "completed")
    assert fakes.openai.seen("transcriptions"), "OpenAI transcribed in Deepgram's place"
    assert fakes.openai.seen("speech"), "OpenAI spoke in Cartesia's place"
    assert audio_bytes(events) > 0
    assert not any(isinstance(e, protocol.Error) for e in events), "the user sees no failure"


async def test_a_refused_deepgram_key_is_not_tried_again(speech: bytes) -> None:
    async with cloud() as fakes:
        fakes.deepgram.fault = Fault.UNAUTHORIZED
        async with running_gateway(fakes.pipeline("deepgram-openai-cartesia")) as gw:
            for _ in range(2):
                events, end = await spoken_turn(gw, "/ws/deepgram-openai-cartesia", speech)
                assert (said(events), end.reason) == (QUESTION, "completed")

    assert fakes.deepgram.attempts == 1, "after a 401, no session asks Deepgram again"
    assert len(fakes.openai.seen("transcriptions")) == 2


async def test_openai_pipeline_answers_a_spoken_turn(speech: bytes) -> None:
    async with cloud() as fakes, running_gateway(fakes.pipeline("openai")) as gw:
        events, end = await spoken_turn(gw, "/ws/openai", speech)

    assert (said(events), answered(events), end.reason) == (QUESTION, ANSWER, "completed")
    (upload,) = fakes.openai.seen("transcriptions")
    assert upload.body["model"] == "gpt-4o-mini-transcribe"
    speech_requests = fakes.openai.seen("speech")
    assert speech_requests and all(r.body["voice"] == "alloy" for r in speech_requests)
    assert audio_bytes(events) > 0


async def test_a_keyless_pipeline_names_every_missing_key_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    pipeline = load_pipeline(PIPELINES / "deepgram-openai-cartesia.yaml", {})
    route = "/ws/deepgram-openai-cartesia"
    async with running_gateway(pipeline) as gw, VoiceClient.connect(gw.url(route)) as ws:
        await ws.send(
            protocol.SessionStart(input=protocol.InputFormat(codec="pcm16", sample_rate=16000))
        )
        error = await ws.expect(protocol.Error)
        code, _ = await closed_with(ws)
        async with httpx.AsyncClient() as http:
            listed = (await http.get(f"http://127.0.0.1:{gw.port}/pipelines")).json()

    assert error.fatal and error.code == "provider_error" and code == 1011
    for name in ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY"):
        assert error.message.count(name) == 1, error.message
    assert "${" not in error.message, "the file already says where the key comes from"
    assert listed == [
        {
            "name": "deepgram-openai-cartesia",
            "route": route,
            "available": False,
            "missing_keys": ["DEEPGRAM_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY"],
        }
    ]


async def test_a_pipeline_runs_on_its_fallbacks_when_only_their_key_is_set(
    speech: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cloud() as fakes:
        env = {k: v for k, v in fakes.env().items() if not k.startswith(("DEEPGRAM", "CARTESIA"))}
        monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
        monkeypatch.delenv("CARTESIA_API_KEY", raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", fakes.openai.api_key)
        pipeline = load_pipeline(PIPELINES / "deepgram-openai-cartesia.yaml", env)
        async with running_gateway(pipeline) as gw:
            events, end = await spoken_turn(gw, "/ws/deepgram-openai-cartesia", speech)
    assert (said(events), end.reason) == (QUESTION, "completed")
    assert not fakes.deepgram.streams, "a provider without its key is not even tried"


def test_voxgate_check_lists_which_routes_this_environment_can_serve() -> None:
    out, err = io.StringIO(), io.StringIO()
    env = {"OPENAI_API_KEY": "sk-test", "VOXGATE_TOKEN_SECRET": "s" * 32}
    assert run_check([str(PIPELINES)], env, out, err) == 0
    lines = {line.split()[0]: line for line in out.getvalue().splitlines()}
    assert lines["openai"].endswith("[ready]")
    assert (
        "providers skipped until DEEPGRAM_API_KEY, CARTESIA_API_KEY"
        in lines["deepgram-openai-cartesia"]
    )
    assert "sk-test" not in out.getvalue()
    assert run_check([str(PIPELINES)], {}, io.StringIO(), io.StringIO()) == 1


def test_the_server_warns_once_per_route_that_lacks_keys() -> None:
    pipelines = load_pipelines(expand_paths([str(PIPELINES)]), {})
    with structlog.testing.capture_logs() as logs:
        warn_missing_keys(pipelines, {})
    warned = {
        entry["route"]: entry["missing"] for entry in logs if entry["event"] == "keys_missing"
    }
    assert warned == {
        "/ws/deepgram-openai-cartesia": ["DEEPGRAM_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY"],
        "/ws/openai": ["OPENAI_API_KEY"],
        "/ws/private": ["VOXGATE_TOKEN_SECRET"],
    }
