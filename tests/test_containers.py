"""Browser containers (WebM/Opus, Ogg/Opus, fragmented MP4/AAC) decoded chunk by chunk, as
MediaRecorder delivers them; garbage refused with BadAudio (after the header: once no element
to resume at follows within RESYNC_WINDOW bytes); codec contexts never leaked. Gaps from
dropped chunks, in real Chromium recordings, are tests/test_recordings.py."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator

import av
import numpy as np
import pytest
import soxr

from gateway.audio.codecs import open_decoder
from gateway.audio.containers import RESYNC_WINDOW, ContainerDecoder, live_codec_contexts
from gateway.audio.pcm import Samples
from gateway.audio.webm import WebmDemuxer, _frames
from gateway.errors import BadAudio
from gateway.protocol import InputCodec
from tests.audio_fixtures import (
    best_correlation,
    encode,
    header_size,
    random_chunks,
    recorder_chunks,
    speech,
    tone,
)

RATE = 16000
FORMATS = {"webm": InputCodec.WEBM_OPUS, "ogg": InputCodec.OGG_OPUS, "mp4": InputCodec.MP4_AAC}


@pytest.fixture(scope="module")
def recorded() -> dict[str, tuple[bytes, Samples, float]]:
    """Each format: (container bytes, the source speech at RATE, its duration in seconds)."""
    pcm, rate = speech()
    source = soxr.resample(pcm, rate, RATE).astype(np.int16)
    return {fmt: (encode(pcm, rate, fmt), source, pcm.size / rate) for fmt in FORMATS}


@pytest.fixture(autouse=True)
def no_leaked_contexts() -> Iterator[None]:
    before = live_codec_contexts()
    yield
    assert live_codec_contexts() == before, "a test left a codec context open"


def decode_all(fmt: str, chunks: list[bytes], rate: int = RATE) -> Samples:
    decoder = open_decoder(FORMATS[fmt], None, rate)
    try:
        return np.concatenate([*(decoder.decode(c) for c in chunks), decoder.flush()])
    finally:
        decoder.close()


NOISE = np.random.default_rng(8).integers(0, 256, RESYNC_WINDOW + 20_000, dtype=np.uint8).tobytes()


def bad_audio(fmt: str, *chunks: bytes) -> str:
    """Feed chunks until BadAudio; its message."""
    decoder = open_decoder(FORMATS[fmt], None, RATE)
    try:
        for chunk in chunks:
            decoder.decode(chunk)
    except BadAudio as e:
        return str(e)
    finally:
        decoder.close()
    pytest.fail(f"{fmt}: no BadAudio")


# ---- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_recorder_chunks_decode_to_the_source_duration_and_waveform(
    fmt: str, recorded: dict[str, tuple[bytes, Samples, float]]
) -> None:
    data, source, seconds = recorded[fmt]
    out = decode_all(fmt, recorder_chunks(data, fmt, seconds))
    assert out.dtype == np.int16
    assert abs(out.size / RATE - seconds) <= 0.020
    assert best_correlation(source, out, RATE // 10) > 0.8


@pytest.mark.parametrize("fmt", FORMATS)
def test_audio_comes_out_within_one_chunk_of_arriving(
    fmt: str, recorded: dict[str, tuple[bytes, Samples, float]]
) -> None:
    data, _, seconds = recorded[fmt]
    chunks = recorder_chunks(data, fmt, seconds)
    head = len(chunks[0])
    bytes_per_ms = (len(data) - head) / (seconds * 1000)
    decoder = open_decoder(FORMATS[fmt], None, RATE)
    assert decoder.decode(chunks[0]).size == 0  # the header alone: no audio yet
    decoded_ms, fed = 0.0, 0
    for chunk in chunks[1:-1]:
        decoded_ms += decoder.decode(chunk).size / (RATE / 1000)
        fed += len(chunk)
        sent_ms = fed / bytes_per_ms
        # Behind by at most about a chunk: an Opus frame or Ogg page, the resampler's filter.
        assert decoded_ms > 0 and decoded_ms >= sent_ms - 300, (decoded_ms, sent_ms)
    decoder.close()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("seed", [1, 2])
def test_chunk_edges_anywhere_give_the_same_pcm_as_one_push(
    fmt: str, seed: int, recorded: dict[str, tuple[bytes, Samples, float]]
) -> None:
    data = recorded[fmt][0]
    whole = decode_all(fmt, [data])
    tiny_then_larger = random_chunks(data[:3000], seed, 5) + random_chunks(data[3000:], seed)
    np.testing.assert_array_equal(decode_all(fmt, tiny_then_larger), whole)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stereo_is_averaged_to_mono_at_the_source_level(fmt: str) -> None:
    source = tone(440, 48000, 1.0, amplitude=0.3)
    out = decode_all(fmt, [encode(source, 48000, fmt, channels=2)], rate=48000)
    rms = np.sqrt(np.mean(out[4800:-4800].astype(np.float64) ** 2))
    expected = np.sqrt(np.mean(source.astype(np.float64) ** 2))
    assert 0.85 < rms / expected < 1.15  # summing at 0.707 would give 1.41


@pytest.mark.parametrize("fmt", FORMATS)
def test_mono_recordings_decode_too(fmt: str) -> None:
    out = decode_all(fmt, [encode(tone(300, 48000, 0.5), 48000, fmt, channels=1)])
    assert abs(out.size / RATE - 0.5) <= 0.020


def test_webm_clusters_of_unknown_size_as_chrome_writes_them_decode(
    recorded: dict[str, tuple[bytes, Samples, float]],
) -> None:
    data = recorded["webm"][0]
    first_cluster = data.find(b"\x1f\x43\xb6\x75")
    assert data[first_cluster + 4 : first_cluster + 12] == b"\x01" + b"\xff" * 7
    assert data.count(b"\x1f\x43\xb6\x75\x01\xff\xff\xff\xff\xff\xff\xff") > 1
    assert decode_all("webm", [data]).size > 0


def test_ogg_packets_spanning_pages_are_joined() -> None:
    sink = io.BytesIO()
    with av.open(sink, "w", format="ogg") as out:
        out.metadata["comment"] = "x" * 100_000  # an OpusTags packet over many pages
        stream = out.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(440, 48000, 0.5)[None], "s16", "mono")
        frame.sample_rate, frame.pts = 48000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    out_pcm = decode_all("ogg", random_chunks(sink.getvalue(), 5, 4000))
    assert abs(out_pcm.size / RATE - 0.5) <= 0.020


def test_webm_lacing_splits_xiph_ebml_and_fixed_laced_frames() -> None:
    frames = [b"a" * 300, b"b" * 7, b"c" * 40]
    payload = b"".join(frames)
    xiph = bytes([2, 255, 45, 7]) + payload
    # EBML: 300 as a 2-byte vint, then 7 - 300 as a 2-byte signed vint (bias 2**13 - 1).
    ebml = (
        bytes([2])
        + (0x4000 | 300).to_bytes(2, "big")
        + (0x4000 | 7 - 300 + 8191).to_bytes(2, "big")
    )
    assert _frames(xiph, 0b010) == frames
    assert _frames(ebml + payload, 0b110) == frames
    assert _frames(bytes([2]) + b"x" * 30, 0b100) == [b"x" * 10] * 3
    assert _frames(b"plain", 0) == [b"plain"]


# ---- garbage --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("webm", "expected a WebM stream"), ("ogg", "expected an Ogg stream"), ("mp4", "ftyp")],
)
def test_random_bytes_are_refused_naming_the_expected_format(fmt: str, expected: str) -> None:
    noise = np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    assert expected in bad_audio(fmt, noise[:100], noise[100:])


@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_after_a_valid_header_is_refused_once_no_gap_explains_it(
    fmt: str, recorded: dict[str, tuple[bytes, Samples, float]]
) -> None:
    data = recorded[fmt][0]
    head = header_size(data, fmt)
    decoder = open_decoder(FORMATS[fmt], None, RATE)
    decoder.decode(data[: head + 500])
    fed, step, message = 0, 4096, ""
    while not message and fed < len(NOISE):
        try:
            decoder.decode(NOISE[fed : fed + step])
        except BadAudio as e:
            message = str(e)
        fed += step
    decoder.close()
    assert "corrupt" in message or "CRC" in message or "does not decode" in message
    # One error, within the window after the break (a break may wait on a whole page or box).
    assert fed <= RESYNC_WINDOW + 2 * step, fed
    if "not a gap" in message:  # the demuxer's verdict: none before the window was spent
        assert fed >= RESYNC_WINDOW - 2 * step, fed


def test_a_cut_ogg_page_followed_by_garbage_fails_the_crc_check(
    recorded: dict[str, tuple[bytes, Samples, float]],
) -> None:
    data = recorded["ogg"][0]
    second_audio_page = data.find(b"OggS", header_size(data, "ogg") + 1)
    cut = data[: second_audio_page - 50] + bytes(range(256)) * (RESYNC_WINDOW // 256 + 1)
    message = bad_audio("ogg", cut)
    assert "CRC" in message and "not a gap" in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_later_chunk_without_the_header_asks_for_the_first_chunk(
    fmt: str, recorded: dict[str, tuple[bytes, Samples, float]]
) -> None:
    data = recorded[fmt][0]
    assert "first" in bad_audio(fmt, data[header_size(data, fmt) :])


def test_an_aac_config_the_decoder_rejects_is_refused(
    recorded: dict[str, tuple[bytes, Samples, float]],
) -> None:
    data = recorded["mp4"][0]
    head = header_size(data, "mp4")
    # The DecoderSpecificInfo descriptor (tag 5, 5 bytes): AAC-LC, 48 kHz, stereo, SBR hint.
    config = bytes.fromhex("05 80 80 80 05 11 90 56 e5 00")
    assert data[:head].count(config) == 1
    broken = data[:head].replace(config, config[:5] + b"\xff" * 5)
    message = bad_audio("mp4", broken, data[head:])
    assert "rejects" in message and "AudioSpecificConfig" in message


def test_mp4_with_mp3_instead_of_aac_is_refused() -> None:
    sink = io.BytesIO()
    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    with av.open(sink, "w", format="mp4", options=options) as out:
        stream = out.add_stream("libmp3lame", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(440, 48000, 0.2)[None], "s16p", "mono")
        frame.sample_rate, frame.pts = 48000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert "expected AAC" in bad_audio("mp4", sink.getvalue())


def test_ogg_with_flac_instead_of_opus_is_refused() -> None:
    sink = io.BytesIO()
    with av.open(sink, "w", format="ogg") as out:
        stream = out.add_stream("flac", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(440, 48000, 0.2)[None], "s16", "mono")
        frame.sample_rate, frame.pts = 48000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert "expected Opus in Ogg" in bad_audio("ogg", sink.getvalue())


def test_pcm_sent_as_webm_is_refused(recorded: dict[str, tuple[bytes, Samples, float]]) -> None:
    pcm = tone(440, 16000, 0.1).tobytes()
    assert "expected a WebM stream" in bad_audio("webm", pcm)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_container_sent_as_pcm16_is_refused_naming_its_format(
    fmt: str, recorded: dict[str, tuple[bytes, Samples, float]]
) -> None:
    decoder = open_decoder(InputCodec.PCM16, 48000, RATE)
    with pytest.raises(BadAudio, match=f"is a {FORMATS[fmt].value} stream"):
        decoder.decode(recorded[fmt][0][:200])


def test_a_webm_block_larger_than_the_limit_is_refused_without_buffering_it(
    recorded: dict[str, tuple[bytes, Samples, float]],
) -> None:
    data = recorded["webm"][0]
    head = header_size(data, "webm") + 12  # past the Cluster's header
    huge_block = b"\xa3\x01" + (100 << 20).to_bytes(7, "big")
    assert "limit" in bad_audio("webm", data[:head] + huge_block, bytes(RESYNC_WINDOW + 100))


def test_an_mp4_fragment_larger_than_the_limit_is_refused(
    recorded: dict[str, tuple[bytes, Samples, float]],
) -> None:
    data = recorded["mp4"][0]
    head = header_size(data, "mp4")
    huge = struct.pack(">I4s", 1 << 30, b"moof")
    assert "over the limit" in bad_audio("mp4", data[:head] + huge, bytes(RESYNC_WINDOW + 100))


def opus_packets(data: bytes) -> list[bytes]:
    """The Opus packets of a WebM stream, as the demuxer returns them."""
    return [p.data for p in WebmDemuxer().feed(data)]


def reject_packet(data: bytes, packet: bytes) -> bytes:
    """`data` with `packet` made one the Opus decoder rejects (frame count 0), same length."""
    at = data.index(packet)
    return data[:at] + bytes([packet[0] | 3, 0]) + data[at + 2 :]


def test_a_packet_the_codec_rejects_after_audio_decoded_is_dropped_as_lost(
    recorded: dict[str, tuple[bytes, Samples, float]],
) -> None:
    data, _, seconds = recorded["webm"]
    packets = opus_packets(data)
    decoder = open_decoder(InputCodec.WEBM_OPUS, None, RATE)
    assert isinstance(decoder, ContainerDecoder)
    broken = reject_packet(data, packets[len(packets) // 2])
    out = np.concatenate([decoder.decode(c) for c in random_chunks(broken, 3, 3000)])
    out = np.concatenate([out, decoder.flush()])
    decoder.close()
    assert decoder.undecodable_packets == 1
    assert abs(out.size / RATE - (seconds - 0.060)) <= 0.020, "one 60 ms packet lost"


def test_a_first_packet_the_codec_rejects_is_bad_audio(
    recorded: dict[str, tuple[bytes, Samples, float]],
) -> None:
    data = recorded["webm"][0]
    message = bad_audio("webm", reject_packet(data, opus_packets(data)[0]))
    assert "does not decode" in message


# ---- closing --------------------------------------------------------------------------------


def test_close_frees_the_codec_context_and_is_idempotent(
    recorded: dict[str, tuple[bytes, Samples, float]],
) -> None:
    before = live_codec_contexts()
    decoder = open_decoder(InputCodec.WEBM_OPUS, None, RATE)
    assert isinstance(decoder, ContainerDecoder)
    decoder.decode(recorded["webm"][0][:5000])
    assert live_codec_contexts() == before + 1
    decoder.close()
    decoder.close()
    assert live_codec_contexts() == before
    with pytest.raises(BadAudio, match="closed"):
        decoder.decode(b"more")


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_audio_frees_the_codec_context_before_close_is_called(
    fmt: str, recorded: dict[str, tuple[bytes, Samples, float]]
) -> None:
    before = live_codec_contexts()
    data = recorded[fmt][0]
    decoder = open_decoder(FORMATS[fmt], None, RATE)
    decoder.decode(data[: header_size(data, fmt) + 2000])
    with pytest.raises(BadAudio):
        decoder.decode(bytes(range(256)) * (RESYNC_WINDOW // 256 + 10))
    assert live_codec_contexts() == before
    decoder.close()
