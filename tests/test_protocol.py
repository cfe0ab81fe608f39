"""Wire protocol v1: the binary audio header, golden JSON messages, schema evolution, and the
per-turn metrics carried in `turn_end`."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.protocol import (
    AUDIO_KIND_TTS,
    HEADER_SIZE,
    AudioHeader,
    ClientMessage,
    InputFormat,
    Playback,
    ServerMessage,
    SessionStart,
    Text,
    TurnMetrics,
    decode_client,
    decode_server,
    encode,
    pack_audio,
    unpack_audio,
)
from gateway.timings import TurnTimeline

GOLDEN = Path(__file__).parent / "golden"
MAX_U32 = 2**32 - 1


# ---- binary audio header --------------------------------------------------------------------


def test_header_is_twelve_bytes() -> None:
    assert HEADER_SIZE == 12
    assert len(pack_audio(1, 0, b"")) == 12


def test_header_bytes_match_protocol_md_layout() -> None:
    frame = pack_audio(turn_id=0x01020304, seq=0x0A0B0C0D, payload=b"\xaa\xbb", last=True)
    assert frame == bytes(
        [
            0x01,  # kind: TTS audio
            0x01,  # flags: bit 0 = last chunk
            0x00, 0x00,  # reserved
            0x01, 0x02, 0x03, 0x04,  # turn_id, big-endian
            0x0A, 0x0B, 0x0C, 0x0D,  # seq, big-endian
            0xAA, 0xBB,  # payload
        ]
    )  # fmt: skip


def test_header_flags_are_zero_when_not_last() -> None:
    assert pack_audio(turn_id=7, seq=1, payload=b"")[:4] == b"\x01\x00\x00\x00"


@pytest.mark.parametrize(
    ("turn_id", "seq", "last"),
    [
        (0, 0, False),
        (1, 0, True),
        (3, 41, False),
        (MAX_U32, MAX_U32, True),
        (2**31, 2**31 - 1, False),
    ],
)
def test_header_round_trips(turn_id: int, seq: int, last: bool) -> None:
    payload = bytes(range(256)) * 3
    header, rest = unpack_audio(pack_audio(turn_id, seq, payload, last=last))
    assert header == AudioHeader(turn_id=turn_id, seq=seq, last=last, kind=AUDIO_KIND_TTS)
    assert rest == payload


def test_unpack_of_bare_header_gives_empty_payload() -> None:
    header, payload = unpack_audio(pack_audio(9, 2, b"", last=True))
    assert (header.turn_id, header.seq, header.last, payload) == (9, 2, True, b"")


@pytest.mark.parametrize("size", [0, 1, 11])
def test_unpack_of_short_frame_raises_value_error(size: int) -> None:
    with pytest.raises(ValueError, match="shorter than its header"):
        unpack_audio(pack_audio(1, 1, b"")[:size])


def test_unpack_ignores_unknown_flag_bits() -> None:
    frame = bytearray(pack_audio(5, 6, b"x"))
    frame[1] = 0b1111_1110  # every bit but "last"
    header, _ = unpack_audio(bytes(frame))
    assert not header.last


# ---- golden JSON messages ---------------------------------------------------------------------


def tag(cls: type[msgspec.Struct]) -> str:
    value = cls.__struct_config__.tag
    assert isinstance(value, str)
    return value


CLIENT_TYPES = {tag(cls): cls for cls in typing.get_args(ClientMessage)}
SERVER_TYPES = {tag(cls): cls for cls in typing.get_args(ServerMessage)}
SIDES = {"client": (CLIENT_TYPES, decode_client), "server": (SERVER_TYPES, decode_server)}
ALL_GOLDEN = [(side, name) for side, (types, _) in SIDES.items() for name in sorted(types)]


def golden_text(side: str, name: str) -> str:
    return (GOLDEN / side / f"{name}.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("side", sorted(SIDES))
def test_golden_files_are_exactly_the_union_members(side: str) -> None:
    types, _ = SIDES[side]
    assert {path.stem for path in (GOLDEN / side).glob("*.json")} == set(types)
    assert sorted(path.name for path in (GOLDEN / side).iterdir()) == sorted(
        f"{name}.json" for name in types
    )


@pytest.mark.parametrize(("side", "name"), ALL_GOLDEN)
def test_golden_file_decodes_to_its_type(side: str, name: str) -> None:
    types, decode = SIDES[side]
    message = decode(golden_text(side, name))
    assert type(message) is types[name]


@pytest.mark.parametrize(("side", "name"), ALL_GOLDEN)
def test_golden_file_re_encodes_to_the_same_json(side: str, name: str) -> None:
    _, decode = SIDES[side]
    text = golden_text(side, name)
    assert json.loads(encode(decode(text))) == json.loads(text)


def missing_fields(value: Any, data: Any, path: str) -> list[str]:
    """Struct fields (recursively) that `data`, the JSON of `value`, does not spell out."""
    if not isinstance(value, msgspec.Struct):
        return []
    missing = []
    for field in msgspec.structs.fields(value):
        if field.encode_name not in data:
            missing.append(f"{path}.{field.encode_name}")
        else:
            sub = getattr(value, field.name)
            missing += missing_fields(sub, data[field.encode_name], f"{path}.{field.encode_name}")
    return missing


@pytest.mark.parametrize(("side", "name"), ALL_GOLDEN)
def test_golden_file_spells_out_every_field(side: str, name: str) -> None:
    _, decode = SIDES[side]
    text = golden_text(side, name)
    assert missing_fields(decode(text), json.loads(text), "$") == []


@pytest.mark.parametrize(("side", "name"), ALL_GOLDEN)
def test_golden_file_is_pretty_printed(side: str, name: str) -> None:
    text = golden_text(side, name)
    data = json.loads(text)
    assert data["type"] == name
    assert text == json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# ---- schema evolution and validation ------------------------------------------------------


def test_unknown_top_level_field_in_client_message_is_accepted() -> None:
    message = decode_client('{"type": "text", "text": "hi", "client_sent_at": 1712345678.5}')
    assert message == Text(text="hi")


def test_unknown_nested_field_in_client_message_is_accepted() -> None:
    message = decode_client(
        '{"type": "session_start", "input": {"codec": "mulaw", "dtx": true}, "trace": {"id": 1}}'
    )
    assert isinstance(message, SessionStart)
    assert message.input == InputFormat(codec=message.input.codec)


def test_defaults_fill_omitted_optional_fields() -> None:
    assert decode_client('{"type": "playback", "turn_id": 2, "played_ms": 0}') == Playback(
        turn_id=2, played_ms=0, finished=False
    )


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ('{"type": "playback", "turn_id": "3", "played_ms": 0}', "`$.turn_id`"),
        ('{"type": "playback", "turn_id": 3, "played_ms": -1}', "`$.played_ms`"),
        ('{"type": "playback", "turn_id": 3, "played_ms": 1, "finished": "yes"}', "`$.finished`"),
        ('{"type": "interrupt", "played_ms": 1.5}', "`$.played_ms`"),
        ('{"type": "text", "text": 42}', "`$.text`"),
        ('{"type": "text", "text": ""}', "`$.text`"),
        (
            '{"type": "session_start", "input": {"codec": "pcm16", "sample_rate": "16k"}}',
            "`$.input.sample_rate`",
        ),
        (
            '{"type": "session_start", "input": {"codec": "pcm16", "sample_rate": 4000}}',
            "`$.input.sample_rate`",
        ),
        ('{"type": "session_start", "input": {"codec": "flac"}}', "`$.input.codec`"),
        (
            '{"type": "session_start", "input": {"codec": "pcm16"}, "auth": {"token": 1}}',
            "`$.auth.token`",
        ),
        ('{"type": "dance"}', "`$.type`"),
    ],
)
def test_wrong_field_raises_validation_error_with_its_path(data: str, path: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(f"at {path}")):
        decode_client(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"type": "playback", "turn_id": 3}', "missing required field `played_ms`"),
        ('{"type": "session_start"}', "missing required field `input`"),
        ('{"type": "session_start", "input": {}}', "missing required field `codec` - at `$.input`"),
    ],
)
def test_missing_required_field_is_named(data: str, message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        decode_client(data)


def test_malformed_json_raises_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_client('{"type": "text", ')


# ---- per-turn metrics ---------------------------------------------------------------------


def voice_timeline() -> TurnTimeline:
    """A spoken turn on the loop clock (seconds); each provider span is a round number of ms."""
    return TurnTimeline(
        speech_end=100.000,
        stt_final=100.150,  # STT: 150 ms
        llm_start=100.160,  # 10 ms of gateway work
        llm_first_token=100.400,  # TTFT: 250 ms after the final transcript
        llm_first_phrase=100.700,  # LLM to first phrase: 540 ms
        tts_text_sent=100.705,  # 5 ms of gateway work
        tts_first_audio=100.825,  # TTS: 120 ms
        first_audio_sent=100.830,  # 5 ms of gateway work
    )


def test_voice_turn_metrics_are_the_stage_differences() -> None:
    metrics = voice_timeline().metrics()
    assert metrics.stt_final_ms == pytest.approx(150.0)
    assert metrics.llm_ttft_ms == pytest.approx(250.0)
    assert metrics.tts_ttfb_ms == pytest.approx(120.0)
    assert metrics.voice_to_voice_ms == pytest.approx(830.0)


def test_gateway_overhead_is_voice_to_voice_minus_provider_spans() -> None:
    metrics = voice_timeline().metrics()
    # 830 - 150 (stt) - 540 (llm_start..first phrase) - 120 (tts) = 10 + 5 + 5
    assert metrics.gateway_overhead_ms == pytest.approx(20.0)


def test_metrics_are_rounded_to_microseconds() -> None:
    timeline = TurnTimeline(speech_end=1.0, stt_final=1.0 + 0.123456789)
    assert timeline.metrics().stt_final_ms == 123.457


def test_absent_stages_give_none() -> None:
    timeline = TurnTimeline(llm_start=5.0, llm_first_token=5.2)
    metrics = timeline.metrics()
    assert metrics.llm_ttft_ms == pytest.approx(200.0)
    assert metrics == TurnMetrics(llm_ttft_ms=metrics.llm_ttft_ms)
    assert TurnTimeline().metrics() == TurnMetrics()


def test_overhead_needs_every_provider_span() -> None:
    timeline = voice_timeline()
    timeline.tts_first_audio = None
    metrics = timeline.metrics()
    assert metrics.tts_ttfb_ms is None
    assert metrics.gateway_overhead_ms is None
    assert metrics.voice_to_voice_ms == pytest.approx(830.0)


def test_turn_with_no_audio_sent_has_no_voice_to_voice() -> None:
    timeline = voice_timeline()
    timeline.first_audio_sent = None
    metrics = timeline.metrics()
    assert metrics.voice_to_voice_ms is None
    assert metrics.gateway_overhead_ms is None


def test_text_turn_measures_overhead_from_llm_start() -> None:
    timeline = TurnTimeline(
        llm_start=50.000,
        llm_first_token=50.300,
        llm_first_phrase=50.600,
        tts_text_sent=50.604,
        tts_first_audio=50.704,
        first_audio_sent=50.710,
    )
    metrics = timeline.metrics()
    assert metrics.stt_final_ms is None
    assert metrics.voice_to_voice_ms is None
    assert metrics.llm_ttft_ms == pytest.approx(300.0)
    assert metrics.tts_ttfb_ms == pytest.approx(100.0)
    # 710 from llm_start - 600 (llm) - 100 (tts) = 4 + 6
    assert metrics.gateway_overhead_ms == pytest.approx(10.0)


def test_audio_sent_keeps_the_first_time_only() -> None:
    timeline = TurnTimeline()
    timeline.audio_sent(3.0)
    timeline.audio_sent(4.0)
    assert timeline.first_audio_sent == 3.0


def test_absent_metrics_are_omitted_on_the_wire() -> None:
    metrics = TurnTimeline(speech_end=1.0, stt_final=1.1).metrics()
    assert json.loads(msgspec.json.encode(metrics)) == {"stt_final_ms": pytest.approx(100.0)}


# ---- PROTOCOL.md's field tables (v1.1: every field listed without `?` is on the wire) ------

PROTOCOL_MD = Path(__file__).resolve().parents[1] / "PROTOCOL.md"
# Listed in "Version 1.1" but sent or accepted only once their feature lands (PROTOCOL.md's
# notes say so); each leaves this set in the change that builds it.
NOT_YET_SERVED: set[tuple[str, str]] = set()


class Listed(msgspec.Struct):
    """One field as a table lists it: `name`, `name?`, `name: {a, b?}`."""

    name: str
    optional: bool
    fields: list[Listed] | None = None


def parse_fields(cell: str) -> list[Listed]:
    """The fields of a table cell: "`a`, `b?`, `c: {x, y?}`, `d` (`e`, `f`)"."""
    cell = re.sub(r"\([^)]*\)", "", cell)  # enum values in parentheses, not fields
    return [parse_field(item) for item in re.findall(r"`([^`]+)`", cell)]


def parse_field(spec: str) -> Listed:
    name, _, nested = spec.partition(":")
    name = name.strip()
    inner = nested.strip().strip("{}")
    fields = None
    if inner and inner != "str: any":  # a free-form mapping has no fixed fields
        fields = [parse_field(part) for part in inner.split(",")]
    return Listed(name.rstrip("?"), name.endswith("?"), fields)


def protocol_tables() -> dict[tuple[str, str], list[Listed]]:
    """(side, type) -> listed fields, from the v1 tables and the Version 1.1 table; a 1.1 row
    `type.field?` adds a field to a v1 message."""
    tables: dict[tuple[str, str], list[Listed]] = {}
    side = ""
    for line in PROTOCOL_MD.read_text().splitlines():
        if line.startswith("## "):
            side = {"## Client -> server": "client", "## Server -> client": "server"}.get(line, "")
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (
            not line.startswith("| `")
            and not line.startswith("| server")
            and not (line.startswith("| client"))
        ):
            continue
        if cells[0] in ("server", "client"):  # the Version 1.1 table
            row_side, what = cells[0], cells[1]
            spec = re.match(r"`([a-z_]+)` `\{([^}]*)\}`", what)
            if spec:
                tables[(row_side, spec[1])] = parse_fields(
                    ", ".join(f"`{f.strip()}`" for f in spec[2].split(",") if f.strip())
                )
                continue
            for dotted in re.findall(r"`([a-z_]+\.[a-z_]+\??)`", what):
                kind, field = dotted.split(".")
                tables.setdefault((row_side, kind), []).append(parse_field(field))
        elif side and len(cells) == 3 and cells[1] != "fields":
            for kind in re.findall(r"`([a-z_]+)`", cells[0]):
                tables[(side, kind)] = parse_fields(cells[1])
    return tables


TABLES = protocol_tables()
TYPES_BY_SIDE = {"client": CLIENT_TYPES, "server": SERVER_TYPES}


def test_every_protocol_table_row_is_served_or_known_to_be_pending() -> None:
    served = {(side, kind) for side, types in TYPES_BY_SIDE.items() for kind in types}
    listed_types = set(TABLES)
    assert served <= listed_types, "a message type the tables do not list"
    assert listed_types - served <= NOT_YET_SERVED, "a listed type is neither served nor pending"
    assert ("server", "error") in TABLES and ("client", "playback") in TABLES  # parser sanity


def with_defaults(cls: type[msgspec.Struct], sample: msgspec.Struct) -> msgspec.Struct:
    """`sample` with every field that has a default set to it: the sparsest message we send."""
    values = {}
    for field in msgspec.structs.fields(cls):
        value = getattr(sample, field.name)
        if field.default is not msgspec.NODEFAULT:
            value = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            value = field.default_factory()
        elif isinstance(value, msgspec.Struct):
            value = with_defaults(type(value), value)
        values[field.name] = value
    return cls(**values)


def wire_problems(listed: list[Listed], cls: Any, data: Any, at: str) -> list[str]:
    """How the JSON `data` of a `cls` breaks the listed fields; `at` is its dotted path."""
    problems = []
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    for item in listed:
        where = f"{at}.{item.name}"
        if item.name not in fields:
            if not any(s for s, kind in NOT_YET_SERVED if kind == where):
                problems.append(f"{where}: listed, but the message has no such field")
            continue
        if item.name not in data:
            if not item.optional:
                problems.append(f"{where}: listed without `?`, but not on the wire")
            continue
        if data[item.name] is None:
            problems.append(f"{where}: sent as null; leave a `?` field out instead")
        field_type = _struct_of(fields[item.name].type)
        if item.fields and field_type is not None:
            problems += wire_problems(item.fields, field_type, data[item.name], where)
    return problems


def _struct_of(tp: Any) -> type[msgspec.Struct] | None:
    for arg in (tp, *typing.get_args(tp)):
        if isinstance(arg, type) and issubclass(arg, msgspec.Struct):
            return arg
    return None


@pytest.mark.parametrize(("side", "name"), ALL_GOLDEN)
def test_sparsest_message_still_carries_every_listed_field(side: str, name: str) -> None:
    types, decode = SIDES[side]
    cls = types[name]
    sparse = with_defaults(cls, decode(golden_text(side, name)))
    data = json.loads(encode(sparse))
    assert wire_problems(TABLES[(side, name)], cls, data, name) == []


def test_error_sends_fatal_false() -> None:
    from gateway.protocol import Error, ErrorCode

    data = json.loads(encode(Error(code=ErrorCode.BAD_MESSAGE, message="x", fatal=False)))
    assert data == {"type": "error", "code": "bad_message", "message": "x", "fatal": False}
