"""The `twilio` dialect: Twilio Media Streams on the session core.

Pure tests drive `TwilioTransport` with Twilio's messages over an in-memory socket; the rest
run real calls from the fake Twilio of tests/fakes/twilio.py (written from Twilio's reference)
against a gateway on a loopback port, with scripted providers.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import soxr
from websockets.asyncio.client import connect

from gateway import protocol
from gateway.audio.codecs import mulaw_encode
from gateway.dialects.twilio import TwilioTransport, twiml
from gateway.errors import ProtocolViolation
from gateway.security import mint_token
from tests.conftest import Gateway, make_pipeline, running_gateway, wait_sessions_closed
from tests.fakes.twilio import FakeTwilioCall, twilio_call

SID = "MZ0123"
LONG_REPLY = (
    "Paris is the capital of France. It has been the heart of French life for centuries, "
    "with museums, cafes, bridges and parks that visitors remember for the rest of their lives."
)
SECRET = "s" * 40


class MemorySocket:
    """The socket under a transport: frames queued in, messages recorded out."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []

    def twilio(self, event: str, **fields: Any) -> None:
        self.incoming.put_nowait(json.dumps({"event": event, "streamSid": SID, **fields}))

    async def receive(self) -> str | bytes | None:
        return await self.incoming.get()

    async def send_text(self, data: str) -> None:
        self.sent.append(json.loads(data))

    async def send_bytes(self, data: bytes) -> None:
        raise AssertionError("Twilio takes text messages only")

    async def close(self, code: int, reason: str) -> None:
        self.sent.append({"closed": code})

    def events(self) -> list[str]:
        return [m["event"] for m in self.sent]

    def media(self) -> bytes:
        return b"".join(
            base64.b64decode(m["media"]["payload"]) for m in self.sent if m["event"] == "media"
        )

    def marks(self) -> list[str]:
        return [m["mark"]["name"] for m in self.sent if m["event"] == "mark"]


def start_fields(**parameters: str) -> dict[str, Any]:
    fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    return {
        "start": {
            "streamSid": SID,
            "callSid": "CA1",
            "accountSid": "AC1",
            "tracks": ["inbound"],
            "customParameters": parameters,
            "mediaFormat": fmt,
        }
    }


async def started(**overrides: Any) -> tuple[TwilioTransport, MemorySocket]:
    socket = MemorySocket()
    transport = TwilioTransport(socket, make_pipeline(**overrides))
    socket.twilio("connected", protocol="Call", version="1.0.0")
    socket.twilio("start", **start_fields(token="tok"))
    first = await transport.receive()
    assert isinstance(first, str)
    start = protocol.decode_client(first)
    assert isinstance(start, protocol.SessionStart)
    return transport, socket


def media(audio: bytes) -> dict[str, Any]:
    payload = base64.b64encode(audio).decode()
    return {"media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": payload}}


def audio(turn_id: int, seq: int, payload: bytes, last: bool = False) -> bytes:
    return protocol.pack_audio(turn_id, seq, payload, last)


async def test_start_becomes_a_mulaw_session_start_with_the_token_parameter() -> None:
    socket = MemorySocket()
    transport = TwilioTransport(socket, make_pipeline())
    socket.twilio("connected", protocol="Call", version="1.0.0")
    socket.twilio("start", **start_fields(token="tok"))
    socket.twilio("media", **media(b"\x01\x02\x03"))
    start = protocol.decode_client(await transport.receive() or "")
    assert isinstance(start, protocol.SessionStart)
    assert start.input.codec == "mulaw" and start.auth == protocol.Auth(token="tok")
    assert await transport.receive() == b"\x01\x02\x03"


async def test_stop_ends_the_stream_like_a_client_leaving() -> None:
    transport, socket = await started()
    socket.twilio("stop", stop={"accountSid": "AC1", "callSid": "CA1"})
    assert await transport.receive() is None


async def test_reply_audio_goes_out_in_20_ms_frames_with_marks_and_a_padded_end() -> None:
    transport, socket = await started()
    for seq in range(3):
        await transport.send_bytes(audio(1, seq, b"\x10" * 320))  # 40 ms chunks
    await transport.send_bytes(audio(1, 3, b"\x10" * 100))
    await transport.send_bytes(audio(1, 4, b"", last=True))
    frames = [base64.b64decode(m["media"]["payload"]) for m in socket.sent if m["event"] == "media"]
    assert [len(f) for f in frames] == [160] * 7
    assert frames[-1] == b"\x10" * 100 + b"\xff" * 60, "the last frame is padded with silence"
    assert all(m["streamSid"] == SID for m in socket.sent)
    assert socket.marks() == ["0.1.800", "0.1.1060.end"]


async def test_returned_marks_are_the_sessions_playback_reports() -> None:
    transport, socket = await started()
    await transport.send_bytes(audio(1, 0, b"\x10" * 800))
    await transport.send_bytes(audio(1, 1, b"", last=True))
    for name in socket.marks():
        socket.twilio("mark", mark={"name": name})
    reports = [protocol.decode_client(await transport.receive() or "") for _ in range(2)]
    assert reports == [
        protocol.Playback(turn_id=1, played_ms=100, finished=False),
        protocol.Playback(turn_id=1, played_ms=100, finished=True),
    ]


async def test_interrupted_sends_clear_and_marks_it_returns_are_not_playback() -> None:
    transport, socket = await started()
    await transport.send_bytes(audio(1, 0, b"\x10" * 1600))
    await transport.send_text(protocol.encode(protocol.Interrupted(turn_id=1)))
    assert socket.events()[-1] == "clear"
    for name in socket.marks():  # what Twilio does on `clear`: every pending mark comes back
        socket.twilio("mark", mark={"name": name})
    socket.twilio("media", **media(b"\x00"))
    assert await transport.receive() == b"\x00", "no playback report for cleared audio"


async def test_a_paused_reply_is_cleared_then_sent_again_from_the_last_played_mark() -> None:
    transport, socket = await started()
    await transport.send_bytes(audio(1, 0, bytes(range(200)) * 8))  # 1600 bytes: 200 ms
    first_mark = socket.marks()[0]
    socket.twilio("mark", mark={"name": first_mark})  # 100 ms played
    await transport.receive()
    await transport.send_text(protocol.encode(protocol.ReplyPaused(turn_id=1)))
    assert socket.events()[-1] == "clear"
    before = len(socket.sent)
    await transport.send_bytes(audio(1, 1, b"\x20" * 160))  # made while paused: held
    assert len(socket.sent) == before
    await transport.send_text(protocol.encode(protocol.ReplyResumed(turn_id=1)))
    resent = b"".join(
        base64.b64decode(m["media"]["payload"])
        for m in socket.sent[before:]
        if m["event"] == "media"
    )
    assert resent == (bytes(range(200)) * 8)[800:] + b"\x20" * 160
    marks_after = [m["mark"]["name"] for m in socket.sent[before:] if m["event"] == "mark"]
    assert marks_after == ["1.1.1600"], "a new clear-generation"


async def test_dtmf_digits_are_a_typed_turn_on_hash_or_after_a_pause() -> None:
    transport, socket = await started(twilio={"dtmf": "text", "dtmf_pause_ms": 100})
    for digit in "12#":
        socket.twilio("dtmf", dtmf={"track": "inbound_track", "digit": digit})
    assert protocol.decode_client(await transport.receive() or "") == protocol.Text(text="12")
    socket.twilio("dtmf", dtmf={"track": "inbound_track", "digit": "7"})
    for _ in range(5):  # 100 ms of the call's audio with no key
        socket.twilio("media", **media(b"\xff" * 160))
    frames = [await transport.receive() for _ in range(6)]
    assert protocol.Text(text="7") in [
        protocol.decode_client(f) for f in frames if isinstance(f, str)
    ]


async def test_dtmf_is_ignored_by_default() -> None:
    transport, socket = await started()
    socket.twilio("dtmf", dtmf={"track": "inbound_track", "digit": "5"})
    socket.twilio("dtmf", dtmf={"track": "inbound_track", "digit": "#"})
    socket.twilio("media", **media(b"\x01"))
    assert await transport.receive() == b"\x01"


async def test_an_event_twilio_may_add_later_is_ignored() -> None:
    transport, socket = await started()
    socket.twilio("transcription", transcription={"text": "hi"})
    socket.twilio("media", **media(b"\x01"))
    assert await transport.receive() == b"\x01"


@pytest.mark.parametrize(
    ("send", "code", "fragment"),
    [
        (lambda s: s.incoming.put_nowait(b"\x00\x01"), 1008, "binary"),
        (lambda s: s.incoming.put_nowait("{not json"), 1008, "not a Media Streams message"),
        (lambda s: s.twilio("media", **media(b"\x01")), 1008, "`media` before `start`"),
        (lambda s: s.twilio("start", **start_fields()), 1008, "a second `start`"),
        (lambda s: s.twilio("media", media={"payload": "@@not base64@@"}), 1008, "base64"),
        (lambda s: s.twilio("media", media={"track": "inbound"}), 1008, "malformed `media`"),
        (lambda s: s.twilio("media", **media(b"\x01" * 300_000)), 1009, "max_message_bytes"),
    ],
)
async def test_what_twilio_never_sends_closes_the_stream(
    send: Callable[[MemorySocket], None], code: int, fragment: str
) -> None:
    socket = MemorySocket()
    transport = TwilioTransport(socket, make_pipeline())
    if "before" not in fragment and "binary" not in fragment and "json" not in fragment:
        socket.twilio("start", **start_fields())
        await transport.receive()
    send(socket)
    with pytest.raises(ProtocolViolation) as refused:
        await transport.receive()
    assert refused.value.close_code == code and fragment in refused.value.reason


async def test_a_format_other_than_mulaw_8k_is_refused() -> None:
    socket = MemorySocket()
    transport = TwilioTransport(socket, make_pipeline())
    fields = start_fields()
    fields["start"]["mediaFormat"] = {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}
    socket.twilio("start", **fields)
    with pytest.raises(ProtocolViolation, match="expected audio/x-mulaw 8000 Hz mono"):
        await transport.receive()


def test_twiml_connects_the_stream_and_passes_the_token_as_a_parameter() -> None:
    xml = twiml("wss://voice.example.com/ws/support/twilio", 'a"b&c')
    assert '<Stream url="wss://voice.example.com/ws/support/twilio">' in xml
    assert '<Parameter name="token" value="a&quot;b&amp;c" />' in xml
    assert "<Connect>" in xml and "Parameter" not in twiml("wss://h/ws/x/twilio")


# ---- real calls from the fake Twilio -------------------------------------------------------


@pytest.fixture(scope="module")
def caller(speech_at_16k: bytes) -> bytes:
    """The test speech as a phone sends it: mu-law 8 kHz."""
    pcm = np.frombuffer(speech_at_16k, dtype="<i2")
    return mulaw_encode(soxr.resample(pcm, 16000, 8000).astype("<i2"))


@pytest.fixture(scope="module")
def speech_at_16k() -> bytes:
    from tests.audio_fixtures import speech_at

    voice = speech_at(16000, "what is the capital of france")
    return bytes(np.concatenate((voice, np.zeros(9600, dtype=np.int16))).tobytes())


def phone(**overrides: Any) -> Any:
    return make_pipeline(dialects=["twilio"], turns={"detector": "silence"}, **overrides)


async def until(call: FakeTwilioCall, condition: Callable[[], bool], timeout_s: float = 15) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            call.check()
            await asyncio.sleep(0.02)


def twilio_url(gw: Gateway, route: str = "/ws/test/twilio") -> str:
    return gw.url(route)


async def test_a_spoken_call_hears_the_reply_paced_by_returned_marks(caller: bytes) -> None:
    async with running_gateway(phone(output={"lead_ms": 300})) as gw:
        async with twilio_call(twilio_url(gw)) as call:
            call.say(caller)
            await until(call, lambda: len(call.heard) >= 2 * 8000)  # the 2 s reply
            (session,) = gw.table.sessions
            history = [(m.role, m.content) for m in session.history]
        await wait_sessions_closed(gw)
    assert history == [
        ("user", "what is the capital of france"),
        ("assistant", "Paris is the capital of France."),
    ]
    assert set(call.media_sizes) == {160}, "every media message is one 20 ms frame"
    assert {m["event"] for m in call.sent_by_server} == {"media", "mark"}
    assert call.marks_returned, "the gateway asked for playback marks"
    # Paced by the phone's own playback: never much more than lead_ms queued at the phone.
    assert call.max_ahead_bytes <= (300 + 100 + 40) * 8


async def test_barge_in_clears_the_phone_and_history_keeps_what_the_caller_heard(
    caller: bytes,
) -> None:
    pipeline = phone(llm={"reply": LONG_REPLY}, tts={"words_per_minute": 360})
    async with running_gateway(pipeline) as gw, twilio_call(twilio_url(gw)) as call:
        call.say(caller)
        await until(call, lambda: len(call.heard) >= 8000)  # a second of the reply heard
        call.say(caller)  # the caller talks over it
        await until(call, lambda: call.clears > 0)
        heard_at_clear = len(call.heard)
        (session,) = gw.table.sessions
        await until(call, lambda: len([m for m in session.history if m.role == "user"]) == 2)
        cut = next(m.content for m in session.history if m.role == "assistant")
        await until(call, lambda: len(call.heard) > heard_at_clear + 8000)  # the next reply
    assert cut and LONG_REPLY.startswith(cut) and len(cut) < len(LONG_REPLY) // 2
    # The cut matches what the caller heard: ~2.2 words per second of audio at 360 wpm... up
    # to the phrase being said when the caller came in.
    heard_words = len(cut.split())
    assert heard_words <= heard_at_clear / 8000 * 6 + 1


async def test_a_backchannel_pauses_the_phone_and_the_reply_plays_on_in_full(
    caller: bytes, speech_at_16k: bytes
) -> None:
    pipeline = phone(
        llm={"reply": LONG_REPLY}, tts={"words_per_minute": 600}, stt={"transcript": "mm hmm"}
    )
    onset = int(np.flatnonzero(np.abs(np.frombuffer(speech_at_16k, dtype="<i2")) > 328)[0]) // 2
    short = caller[onset : onset + 8000 * 6 // 10]  # a 600 ms "mm hmm"
    async with running_gateway(pipeline) as gw, twilio_call(twilio_url(gw)) as call:
        call.say(caller)
        await until(call, lambda: len(call.heard) >= 4000)
        call.say(short)
        await until(call, lambda: call.clears > 0)
        reply_bytes = int(len(LONG_REPLY.split()) * 60 / 600 * 8000)
        await until(call, lambda: len(call.heard) >= reply_bytes, timeout_s=20)
        (session,) = gw.table.sessions
        history = [m.content for m in session.history]
    assert call.clears == 1, "paused once, never interrupted"
    assert history == ["mm hmm", LONG_REPLY], "the reply was not cut, the backchannel no turn"


async def test_the_token_comes_as_a_stream_parameter_or_on_the_url() -> None:
    locked = phone(auth={"mode": "token", "secret": SECRET}, twilio={"dtmf": "text"})
    token = mint_token(SECRET, "test", 60)
    async with running_gateway(locked) as gw:
        for url, parameters in (
            (twilio_url(gw), {"token": token}),
            (twilio_url(gw, f"/ws/test/twilio?token={token}"), {}),
        ):
            async with twilio_call(url, parameters) as call:
                await call.press("1")
                await call.press("#")
                await until(call, lambda: len(call.heard) > 0)
        async with twilio_call(twilio_url(gw)) as call:
            assert await call.wait_closed() == 1008
        await wait_sessions_closed(gw)


async def test_dtmf_digits_reach_the_llm_as_the_callers_words() -> None:
    keypad = phone(twilio={"dtmf": "text"}, llm={"reply": "You pressed {user}."})
    async with running_gateway(keypad) as gw, twilio_call(twilio_url(gw)) as call:
        for digit in "42#":
            await call.press(digit)
        await until(call, lambda: len(call.heard) > 0)
        (session,) = gw.table.sessions
        await until(call, lambda: len(session.history) == 2)
        history = [(m.role, m.content) for m in session.history]
    assert history == [("user", "42"), ("assistant", "You pressed 42.")]


async def test_stop_ends_the_session_cleanly() -> None:
    async with running_gateway(phone()) as gw:
        async with twilio_call(twilio_url(gw)) as call:
            await until(call, lambda: len(gw.table.sessions) == 1)
        await wait_sessions_closed(gw)


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ("{not json", 1008),
        (b"\x00\x01", 1008),
        (json.dumps({"event": "media", "streamSid": SID, **media(b"\x01")}), 1008),
    ],
)
async def test_a_socket_that_is_not_twilio_is_closed(first: str | bytes, code: int) -> None:
    async with running_gateway(phone()) as gw:
        async with connect(twilio_url(gw)) as ws:
            await ws.send(first)
            await ws.wait_closed()
            assert ws.close_code == code
        await wait_sessions_closed(gw)


async def test_twilio_is_served_only_where_the_pipeline_lists_it() -> None:
    from websockets.exceptions import InvalidStatus

    async with running_gateway(make_pipeline()) as gw:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(twilio_url(gw)):
                pass
    assert refused.value.response.status_code == 403
