"""Twilio Media Streams (a bidirectional `<Connect><Stream>`) on the session core.

Twilio's messages come in as JSON text frames: `connected`, then `start` (stream and call ids,
custom parameters, the media format), then `media` every 20 ms (base64 mu-law 8 kHz mono),
`dtmf` for key presses, `mark` when audio we sent before a mark has played (or was dropped by a
`clear`), and `stop` when the call ends. We send `media`, `mark` and `clear`, each with the
stream's `streamSid`. The translation, both ways:

- `start` is the session's `session_start` (mu-law in, the token from the `token` custom
  parameter), each `media` payload is an audio frame, `stop` is the client leaving (a normal
  close), and with `twilio.dtmf: text` the digits pressed are a `text` turn.
- Reply audio goes out re-cut into 20 ms `media` messages: a phone network plays each message
  as one packet, and uneven ones make the call choppy (openai-agents-python PR #1926). A
  turn's last piece is padded with mu-law silence to a whole frame.
- Every 100 ms of audio (and at a turn's end) we send a `mark` naming its position in the
  turn. Twilio echoes it once the audio before it has played, which becomes the session's
  `playback` report: pacing (`output.lead_ms`) and the history's "what the caller heard"
  come from the phone's own playback, not an estimate.
- `interrupted` (barge-in) sends `clear` at once; without it the caller hears the rest of the
  buffered reply over their own words (cloudflare/agents #2261, openai-agents-js #1173).
  `reply_paused` also clears, keeping the unplayed audio here, and `reply_resumed` sends it
  again from the last confirmed mark: a phone cannot pause, but it can stop and restart.
  Marks that a `clear` returns are not playback: each mark names the clear-generation it was
  sent in, and marks of an earlier generation are ignored.

Twilio never sends anything else, so a frame that breaks these rules (not JSON, binary, media
before `start`, a second `start`, a payload that is not base64, a format other than mu-law
8 kHz mono) is not Twilio: the socket is closed 1008 (1009 for an oversized frame) with a
reason, and the session logs it. An event type Twilio may add later is ignored.
"""

from __future__ import annotations

import binascii
from collections import deque
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import msgspec
import structlog

from gateway import protocol
from gateway.config import DTMF
from gateway.errors import ProtocolViolation
from gateway.handshake import check_frame_size
from gateway.pipeline import Pipeline
from gateway.protocol import CloseCode, InputCodec, OutputCodec
from gateway.transport import Transport

log = structlog.get_logger()

FRAME_BYTES = 160
"""20 ms of 8 kHz mu-law: one outbound `media` message."""
MARK_EVERY_BYTES = 800
"""100 ms of audio between marks: the resolution of the caller's playback position."""
MULAW_SILENCE = b"\xff"
MAX_DIGITS = 64
"""Keys kept for one typed turn: a phone keypad entry, not a document."""


# ---- Twilio's messages (Media Streams WebSocket messages reference) ------------------------


class _Incoming(msgspec.Struct, tag_field="event", rename="camel", kw_only=True):
    stream_sid: str = ""
    sequence_number: str = ""


class Connected(_Incoming, tag="connected"):
    protocol: str = ""
    version: str = ""


class MediaFormat(msgspec.Struct, rename="camel", kw_only=True):
    encoding: str
    sample_rate: int
    channels: int = 1


class StartInfo(msgspec.Struct, rename="camel", kw_only=True):
    stream_sid: str
    account_sid: str = ""
    call_sid: str = ""
    tracks: list[str] = []
    custom_parameters: dict[str, str] = {}
    media_format: MediaFormat | None = None


class Start(_Incoming, tag="start"):
    start: StartInfo


class MediaIn(msgspec.Struct, kw_only=True):
    payload: str
    track: str = "inbound"
    chunk: str = ""
    timestamp: str = ""


class Media(_Incoming, tag="media"):
    media: MediaIn


class DtmfInfo(msgspec.Struct, kw_only=True):
    digit: str
    track: str = ""


class Dtmf(_Incoming, tag="dtmf"):
    dtmf: DtmfInfo


class MarkInfo(msgspec.Struct):
    name: str


class Mark(_Incoming, tag="mark"):
    mark: MarkInfo


class StopInfo(msgspec.Struct, rename="camel", kw_only=True):
    account_sid: str = ""
    call_sid: str = ""


class Stop(_Incoming, tag="stop"):
    stop: StopInfo | None = None


TwilioMessage = Connected | Start | Media | Dtmf | Mark | Stop
KNOWN_EVENTS = frozenset(("connected", "start", "media", "dtmf", "mark", "stop"))


class _Outgoing(msgspec.Struct, tag_field="event", rename="camel", kw_only=True):
    stream_sid: str


class MediaOut(msgspec.Struct):
    payload: str


class SendMedia(_Outgoing, tag="media"):
    media: MediaOut


class SendMark(_Outgoing, tag="mark"):
    mark: MarkInfo


class Clear(_Outgoing, tag="clear"):
    pass


class _Envelope(msgspec.Struct):
    event: str = ""


_decoder = msgspec.json.Decoder(TwilioMessage)
_envelope = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()


def session_pipeline(pipeline: Pipeline) -> Pipeline:
    """The pipeline as a phone call needs it: mu-law 8 kHz in and out."""
    return msgspec.structs.replace(
        pipeline,
        input=msgspec.structs.replace(pipeline.input, codecs=[InputCodec.MULAW]),
        output=msgspec.structs.replace(pipeline.output, codec=OutputCodec.MULAW, sample_rate=8000),
    )


def twiml(stream_url: str, token: str | None = None) -> str:
    """TwiML that connects a call to `stream_url`, passing `token` as a custom parameter
    (Twilio drops a query string from a `<Stream>` URL, and cannot send headers)."""
    parameter = f'\n      <Parameter name="token" value="{_attr(token)}" />' if token else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Response>\n"
        "  <Connect>\n"
        f'    <Stream url="{_attr(stream_url)}">{parameter}\n'
        "    </Stream>\n"
        "  </Connect>\n"
        "</Response>\n"
    )


@dataclass
class _Playback:
    """One turn's audio on its way to the caller, by absolute byte position in the turn."""

    turn_id: int
    unplayed: bytearray = field(default_factory=bytearray)
    """The turn's audio from `played` on: what a pause may have to send again."""
    played: int = 0
    """Confirmed played by a returned mark."""
    wired: int = 0
    """Sent to Twilio in the current clear-generation."""
    marked: int = 0
    """Where the last mark was sent."""
    complete: bool = False
    """The turn's last audio came: the rest is padded to a frame and an end mark follows."""
    end_marked: bool = False
    paused: bool = False

    @property
    def received(self) -> int:
        return self.played + len(self.unplayed)


class TwilioTransport:
    """The session's `Transport` over a Twilio Media Streams socket."""

    def __init__(self, socket: Transport, pipeline: Pipeline) -> None:
        self._socket = socket
        self._limit = pipeline.limits.max_message_bytes
        self._dtmf = pipeline.twilio
        self._stream_sid: str | None = None
        self._frames: deque[str | bytes] = deque()
        self._stopped = False
        self._ignored: set[str] = set()
        self._digits = ""
        self._since_digit_bytes = 0
        self._playback: _Playback | None = None
        self._generation = 0
        """Bumped by every `clear`: marks sent before it come back unplayed."""

    # ---- Twilio -> session ---------------------------------------------------------------

    async def receive(self) -> str | bytes | None:
        while not self._frames:
            if self._stopped:
                return None
            frame = await self._socket.receive()
            if frame is None:
                return None
            self._take(frame)
        return self._frames.popleft()

    def _take(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            raise _not_twilio("a binary frame (Media Streams messages are JSON text)")
        check_frame_size(frame, self._limit)
        try:
            message = _decoder.decode(frame)
        except (msgspec.DecodeError, RecursionError) as e:
            self._unknown(frame, str(e))
            return
        if self._stream_sid is None and not isinstance(message, Connected | Start | Stop):
            raise _not_twilio(f"`{_event_name(message)}` before `start`")
        match message:
            case Start(start=start):
                self._start(start)
            case Media(media=media):
                self._media(media)
            case Dtmf(dtmf=dtmf):
                self._key(dtmf.digit)
            case Mark(mark=mark):
                self._marked(mark.name)
            case Stop():
                self._stopped = True

    def _unknown(self, frame: str, error: str) -> None:
        """An event Twilio may add later is ignored (logged once); anything else is not from
        Twilio."""
        try:
            event = _envelope.decode(frame).event
        except (msgspec.DecodeError, RecursionError):
            raise _not_twilio(f"not a Media Streams message ({error})") from None
        if event in KNOWN_EVENTS or not event:
            raise _not_twilio(f"a malformed `{event or '?'}` message ({error})")
        if event not in self._ignored:
            self._ignored.add(event)
            log.info("twilio_event_ignored", twilio_event=event[:40])

    def _start(self, start: StartInfo) -> None:
        if self._stream_sid is not None:
            raise _not_twilio("a second `start`")
        fmt = start.media_format
        if fmt is not None and (fmt.encoding, fmt.sample_rate, fmt.channels) != (
            "audio/x-mulaw",
            8000,
            1,
        ):
            raise _not_twilio(
                f"media format {fmt.encoding} {fmt.sample_rate} Hz x{fmt.channels}; "
                "expected audio/x-mulaw 8000 Hz mono"
            )
        self._stream_sid = start.stream_sid
        structlog.contextvars.bind_contextvars(
            call_sid=start.call_sid[:64], stream_sid=start.stream_sid[:64]
        )
        token = start.custom_parameters.get("token")
        self._frames.append(
            protocol.encode(
                protocol.SessionStart(
                    input=protocol.InputFormat(codec=InputCodec.MULAW),
                    auth=protocol.Auth(token=token) if token else None,
                )
            )
        )

    def _media(self, media: MediaIn) -> None:
        if media.track not in ("inbound", ""):
            return  # only the caller's side is ours to hear
        try:
            audio = binascii.a2b_base64(media.payload, strict_mode=True)
        except binascii.Error as e:
            raise _not_twilio(f"media.payload that is not base64 ({e})") from None
        self._frames.append(audio)
        if self._digits:
            self._since_digit_bytes += len(audio)
            if self._since_digit_bytes >= self._dtmf.dtmf_pause_ms * 8:
                self._send_digits()

    def _key(self, digit: str) -> None:
        if self._dtmf.dtmf is DTMF.IGNORE:
            return
        if digit == "#":
            self._send_digits()
            return
        if len(self._digits) < MAX_DIGITS:
            self._digits += digit[:1]
        self._since_digit_bytes = 0

    def _send_digits(self) -> None:
        """The caller's keys as their turn, timed by the call's own audio (Twilio streams it
        every 20 ms, silence included), so no timer runs beside the session."""
        if self._digits:
            self._frames.append(protocol.encode(protocol.Text(text=self._digits)))
        self._digits = ""

    def _marked(self, name: str) -> None:
        """A mark came back: the audio before it has played, unless a `clear` returned it."""
        parts = name.split(".")
        playback = self._playback
        try:
            generation, turn_id, position = (int(part) for part in parts[:3])
        except ValueError:
            return  # not one of ours
        if generation != self._generation or playback is None or playback.turn_id != turn_id:
            return
        if position > playback.played:
            del playback.unplayed[: position - playback.played]
            playback.played = position
        finished = parts[3:] == ["end"]
        self._frames.append(
            protocol.encode(
                protocol.Playback(turn_id=turn_id, played_ms=position // 8, finished=finished)
            )
        )

    # ---- session -> Twilio ---------------------------------------------------------------

    async def send_text(self, data: str) -> None:
        match protocol.decode_server(data):
            case protocol.Interrupted():
                await self._clear()
                self._playback = None
            case protocol.ReplyPaused(turn_id=turn_id):
                await self._pause(turn_id)
            case protocol.ReplyResumed(turn_id=turn_id):
                await self._resume(turn_id)
            case protocol.Error(code=code, message=message, fatal=fatal):
                log.info("error_not_sent", code=str(code), message=message, fatal=fatal)
            case _:
                pass  # transcripts, tokens and timings have no place on a phone line

    async def send_bytes(self, data: bytes) -> None:
        header, payload = protocol.unpack_audio(data)
        playback = self._playback
        if playback is None or playback.turn_id != header.turn_id:
            playback = self._playback = _Playback(header.turn_id)
        playback.unplayed += payload
        playback.complete = playback.complete or header.last
        await self._flush(playback)

    async def close(self, code: int, reason: str) -> None:
        await self._socket.close(code, reason)

    async def _flush(self, playback: _Playback) -> None:
        """Send what Twilio does not have yet, in whole 20 ms frames, with marks."""
        while not playback.paused:
            start = playback.wired - playback.played
            frame = bytes(playback.unplayed[start : start + FRAME_BYTES])
            if len(frame) < FRAME_BYTES and not (playback.complete and frame):
                break
            await self._send(
                SendMedia(
                    stream_sid=self._sid,
                    media=MediaOut(
                        binascii.b2a_base64(
                            frame.ljust(FRAME_BYTES, MULAW_SILENCE), newline=False
                        ).decode()
                    ),
                )
            )
            playback.wired += len(frame)
            if playback.wired - playback.marked >= MARK_EVERY_BYTES:
                await self._mark(playback)
        done = playback.complete and playback.wired == playback.received
        if done and not playback.paused and not playback.end_marked:
            await self._mark(playback, end=True)

    async def _mark(self, playback: _Playback, end: bool = False) -> None:
        name = f"{self._generation}.{playback.turn_id}.{playback.wired}"
        await self._send(
            SendMark(stream_sid=self._sid, mark=MarkInfo(name + (".end" if end else "")))
        )
        playback.marked = playback.wired
        playback.end_marked = end

    async def _pause(self, turn_id: int) -> None:
        playback = self._playback
        if playback is None or playback.turn_id != turn_id or playback.paused:
            return
        playback.paused = True
        if playback.wired > playback.played:
            await self._clear()
            playback.wired = playback.marked = playback.played
            playback.end_marked = False

    async def _resume(self, turn_id: int) -> None:
        playback = self._playback
        if playback is not None and playback.turn_id == turn_id and playback.paused:
            playback.paused = False
            await self._flush(playback)

    async def _clear(self) -> None:
        if self._playback is not None:
            self._generation += 1
            await self._send(Clear(stream_sid=self._sid))

    @property
    def _sid(self) -> str:
        assert self._stream_sid is not None, "audio only flows after start"
        return self._stream_sid

    async def _send(self, message: _Outgoing) -> None:
        await self._socket.send_text(_encoder.encode(message).decode())


def _attr(value: str) -> str:
    return escape(value, {'"': "&quot;"})


def _event_name(message: TwilioMessage) -> str:
    return str(type(message).__struct_config__.tag)


def _not_twilio(what: str) -> ProtocolViolation:
    return ProtocolViolation(CloseCode.POLICY, f"not a Twilio media stream: {what}")
