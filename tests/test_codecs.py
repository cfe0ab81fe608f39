"""Wire codecs: G.711 mu-law against the stdlib reference, streaming PCM decode, resampling."""

from __future__ import annotations

import warnings
from types import ModuleType

import numpy as np
import pytest

from gateway.audio.codecs import (
    DECODABLE,
    ENCODABLE,
    MulawDecoder,
    MulawEncoder,
    PCM16Decoder,
    PCM16Encoder,
    Resampler,
    Samples,
    bytes_per_ms,
    mulaw_encode,
    open_decoder,
    open_encoder,
)
from gateway.errors import BadAudio
from gateway.pipeline import InputCodec, OutputCodec

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)


@pytest.fixture(scope="module")
def audioop() -> ModuleType:
    """The stdlib G.711 reference (deprecated since 3.11, removed in 3.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    return audioop


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> Samples:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)


def peak_hz(pcm: Samples, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(pcm.size)))
    return float(np.fft.rfftfreq(pcm.size, 1 / rate)[np.argmax(spectrum)])


def random_chunks(data: bytes, seed: int, max_size: int = 3000) -> list[bytes]:
    rng = np.random.default_rng(seed)
    chunks, start = [], 0
    while start < len(data):
        size = int(rng.integers(1, max_size))
        chunks.append(data[start : start + size])
        start += size
    return chunks


# ---- mu-law ---------------------------------------------------------------------------------


def test_mulaw_encode_matches_audioop_for_every_int16(audioop: ModuleType) -> None:
    ours = np.frombuffer(mulaw_encode(ALL_INT16), dtype=np.uint8)
    reference = np.frombuffer(audioop.lin2ulaw(ALL_INT16.tobytes(), 2), dtype=np.uint8)
    mismatched = np.flatnonzero(ours != reference)
    assert mismatched.size == 0, f"differs at samples {ALL_INT16[mismatched][:10].tolist()}"


def test_mulaw_decode_matches_audioop_for_every_code(audioop: ModuleType) -> None:
    codes = bytes(range(256))
    reference = np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16)
    ours = MulawDecoder(8000).decode(codes)
    assert ours.dtype == np.int16
    np.testing.assert_array_equal(ours, reference)


def test_mulaw_round_trip_error_is_within_half_a_quantisation_step() -> None:
    x = ALL_INT16.astype(np.int32)
    decoded = MulawDecoder(8000).decode(mulaw_encode(ALL_INT16)).astype(np.int32)
    error = np.abs(decoded - x)
    unclipped = np.abs(x) <= 32635
    # Steps are 8 near zero and grow with the segment, staying under 1/8 of the magnitude.
    assert error[np.abs(x) < 64].max() <= 8
    assert (error[unclipped] <= 8 + np.abs(x[unclipped]) / 16).all()


def test_mulaw_extremes_use_the_extreme_codes() -> None:
    encoded = mulaw_encode(np.array([32767, -32768, 0], dtype=np.int16))
    assert encoded == bytes([0x80, 0x00, 0xFF])


def test_mulaw_encoder_takes_little_endian_pcm_bytes() -> None:
    pcm = np.array([0, 1000, -1000, 32767], dtype="<i2")
    assert MulawEncoder().encode(pcm.tobytes()) == mulaw_encode(pcm)
    assert len(MulawEncoder().encode(pcm.tobytes())) == pcm.size


def test_mulaw_decoder_resamples_to_the_pipeline_rate() -> None:
    decoder = MulawDecoder(16000)
    encoded = mulaw_encode(tone(440, 8000, 1.0))
    out = np.concatenate([decoder.decode(encoded[i : i + 160]) for i in range(0, 8000, 160)])
    # soxr works in blocks: without an end-of-stream flush up to ~115 ms stays buffered.
    assert 16000 - 16 * 150 <= out.size <= 16000
    assert abs(peak_hz(out, 16000) - 440) < 5


# ---- pcm16 ----------------------------------------------------------------------------------


def test_pcm16_decoder_carries_an_odd_byte_to_the_next_chunk() -> None:
    decoder = PCM16Decoder(16000, 16000)
    data = np.array([0x1234, -2, 300], dtype="<i2").tobytes()
    assert decoder.decode(data[:3]).tolist() == [0x1234]
    assert decoder.decode(data[3:4]).tolist() == [-2]
    assert decoder.decode(data[4:5]).tolist() == []
    assert decoder.decode(data[5:]).tolist() == [300]


def test_pcm16_decoder_streaming_equals_one_shot_decode() -> None:
    pcm = np.random.default_rng(1).integers(-32768, 32768, 5001, dtype=np.int16)
    data = pcm.astype("<i2").tobytes()
    decoder = PCM16Decoder(16000, 16000)
    streamed = np.concatenate([decoder.decode(chunk) for chunk in random_chunks(data, 2, 37)])
    np.testing.assert_array_equal(streamed, PCM16Decoder(16000, 16000).decode(data))
    np.testing.assert_array_equal(streamed, pcm)


def test_pcm16_decoder_reads_little_endian() -> None:
    assert PCM16Decoder(16000, 16000).decode(b"\x01\x00\x00\x80").tolist() == [1, -32768]


def test_pcm16_encoder_passes_pcm_through() -> None:
    assert PCM16Encoder().encode(b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04"


# ---- resampling -----------------------------------------------------------------------------


def test_resampling_44k1_to_16k_in_random_chunks_keeps_length_and_pitch() -> None:
    seconds = 2.0
    pcm = tone(440, 44100, seconds)
    resample = Resampler(44100, 16000)
    edges = np.cumsum(np.random.default_rng(3).integers(1, 1500, 200))
    chunks = np.split(pcm, edges[edges < pcm.size])
    assert len(chunks) > 50
    out = np.concatenate(
        [*(resample(chunk) for chunk in chunks), resample(np.empty(0, dtype=np.int16), last=True)]
    )
    assert out.dtype == np.int16
    assert abs(out.size - 16000 * seconds) <= 3
    assert abs(peak_hz(out, 16000) - 440) < 2
    assert np.abs(out[1000:-1000]).max() > 0.45 * 32767  # the level survives too


def test_pcm16_decoder_resamples_44k1_in_random_chunks_with_odd_edges() -> None:
    seconds = 2.0
    data = tone(440, 44100, seconds).astype("<i2").tobytes()
    decoder = PCM16Decoder(44100, 16000)
    chunks = random_chunks(data, 4)
    assert any(len(chunk) % 2 for chunk in chunks)
    out = np.concatenate([decoder.decode(chunk) for chunk in chunks])
    # No end-of-stream flush here: soxr keeps up to a block (tens of ms) buffered.
    assert 16000 * seconds - 16 * 60 <= out.size <= 16000 * seconds
    assert abs(peak_hz(out, 16000) - 440) < 2


def test_resampler_with_equal_rates_returns_input_unchanged() -> None:
    pcm = tone(440, 16000, 0.1)
    assert Resampler(16000, 16000)(pcm) is pcm


# ---- opening codecs -------------------------------------------------------------------------


def test_open_decoder_for_pcm16_without_sample_rate_raises_bad_audio() -> None:
    with pytest.raises(BadAudio, match="sample_rate"):
        open_decoder(InputCodec.PCM16, None, 16000)


def test_open_decoder_for_pcm16_resamples_from_the_client_rate() -> None:
    decoder = open_decoder(InputCodec.PCM16, 48000, 16000)
    pcm = tone(440, 48000, 1.0)
    out = np.concatenate([decoder.decode(pcm[i : i + 960].tobytes()) for i in range(0, 48000, 960)])
    assert 16000 - 16 * 60 <= out.size <= 16000
    assert abs(peak_hz(out, 16000) - 440) < 5


def test_open_decoder_for_mulaw_needs_no_sample_rate() -> None:
    assert isinstance(open_decoder(InputCodec.MULAW, None, 8000), MulawDecoder)


@pytest.mark.parametrize("codec", sorted(set(InputCodec) - DECODABLE))
def test_open_decoder_for_an_undecodable_codec_raises_bad_audio(codec: InputCodec) -> None:
    with pytest.raises(BadAudio, match="no decoder"):
        open_decoder(codec, 48000, 16000)


@pytest.mark.parametrize("codec", sorted(ENCODABLE))
def test_open_encoder_opens_every_encodable_codec(codec: OutputCodec) -> None:
    assert len(open_encoder(codec).encode(b"\x00\x00" * 10)) in (10, 20)


@pytest.mark.parametrize(
    ("codec", "rate", "expected"),
    [
        (OutputCodec.PCM16, 16000, 32.0),
        (OutputCodec.PCM16, 24000, 48.0),
        (OutputCodec.PCM16, 44100, 88.2),
        (OutputCodec.MULAW, 8000, 8.0),
    ],
)
def test_bytes_per_ms(codec: OutputCodec, rate: int, expected: float) -> None:
    assert bytes_per_ms(codec, rate) == pytest.approx(expected)
