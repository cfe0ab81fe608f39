"""Wire codecs: G.711 mu-law against the stdlib reference, streaming PCM decode, resampling,
Opus output packets."""

from __future__ import annotations

import warnings
from types import ModuleType

import numpy as np
import pytest

from gateway.audio.codecs import (
    MulawDecoder,
    MulawEncoder,
    PCM16Decoder,
    PCM16Encoder,
    Resampler,
    Samples,
    mulaw_encode,
    open_decoder,
    open_encoder,
)
from gateway.audio.containers import live_codec_contexts
from gateway.audio.opus import OpusEncoder, opus_packet_ms
from gateway.errors import BadAudio
from gateway.protocol import OPUS_RATES, InputCodec, OutputCodec
from tests.audio_fixtures import best_correlation, random_chunks, speech, tone

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)


@pytest.fixture(scope="module")
def audioop() -> ModuleType:
    """The stdlib G.711 reference (deprecated since 3.11, removed in 3.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    return audioop


def peak_hz(pcm: Samples, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(pcm.size)))
    return float(np.fft.rfftfreq(pcm.size, 1 / rate)[np.argmax(spectrum)])


# ---- mu-law ---------------------------------------------------------------------------------


def test_mulaw_encode_matches_audioop_for_every_int16(audioop: ModuleType) -> None:
    ours = np.frombuffer(mulaw_encode(ALL_INT16), dtype=np.uint8)
    reference = np.frombuffer(audioop.lin2ulaw(ALL_INT16.tobytes(), 2), dtype=np.uint8)
    mismatched = np.flatnonzero(ours != reference)
    assert mismatched.size == 0, f"differs at samples {ALL_INT16[mismatched][:10].tolist()}"


def test_mulaw_decode_matches_audioop_for_every_code(audioop: ModuleType) -> None:
    codes = bytes(range(256))
    reference = np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16)
    ours = MulawDecoder(8000, 1).decode(codes)
    assert ours.dtype == np.int16
    np.testing.assert_array_equal(ours, reference)


def test_mulaw_round_trip_error_is_within_half_a_quantisation_step() -> None:
    x = ALL_INT16.astype(np.int32)
    decoded = MulawDecoder(8000, 1).decode(mulaw_encode(ALL_INT16)).astype(np.int32)
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
    assert MulawEncoder().encode(pcm.tobytes()) == [mulaw_encode(pcm)]
    assert len(MulawEncoder().encode(pcm.tobytes())[0]) == pcm.size


def test_mulaw_decoder_resamples_to_the_pipeline_rate() -> None:
    decoder = MulawDecoder(16000, 1)
    encoded = mulaw_encode(tone(440, 8000, 1.0))
    out = np.concatenate([decoder.decode(encoded[i : i + 160]) for i in range(0, 8000, 160)])
    # soxr works in blocks: without an end-of-stream flush up to ~115 ms stays buffered.
    assert 16000 - 16 * 150 <= out.size <= 16000
    assert abs(peak_hz(out, 16000) - 440) < 5


# ---- pcm16 ----------------------------------------------------------------------------------


def test_pcm16_decoder_carries_an_odd_byte_to_the_next_chunk() -> None:
    decoder = PCM16Decoder(16000, 16000, 1)
    data = np.array([0x1234, -2, 300], dtype="<i2").tobytes()
    assert decoder.decode(data[:3]).tolist() == [0x1234]
    assert decoder.decode(data[3:4]).tolist() == [-2]
    assert decoder.decode(data[4:5]).tolist() == []
    assert decoder.decode(data[5:]).tolist() == [300]


def test_pcm16_decoder_streaming_equals_one_shot_decode() -> None:
    pcm = np.random.default_rng(1).integers(-32768, 32768, 5001, dtype=np.int16)
    data = pcm.astype("<i2").tobytes()
    decoder = PCM16Decoder(16000, 16000, 1)
    streamed = np.concatenate(
        [decoder.decode(chunk) for chunk in random_chunks(data, seed=2, max_size=37)]
    )
    np.testing.assert_array_equal(streamed, PCM16Decoder(16000, 16000, 1).decode(data))
    np.testing.assert_array_equal(streamed, pcm)


def test_pcm16_decoder_reads_little_endian() -> None:
    assert PCM16Decoder(16000, 16000, 1).decode(b"\x01\x00\x00\x80").tolist() == [1, -32768]


def test_pcm16_encoder_passes_pcm_through() -> None:
    assert PCM16Encoder().encode(b"\x01\x02\x03\x04") == [b"\x01\x02\x03\x04"]


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
    decoder = PCM16Decoder(44100, 16000, 1)
    chunks = random_chunks(data, max_size=3000, seed=4)
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


@pytest.mark.parametrize("codec", sorted(InputCodec))
def test_open_decoder_opens_every_input_codec_and_closes_it(codec: InputCodec) -> None:
    decoder = open_decoder(codec, 48000, 16000)
    assert decoder.decode(b"").size == 0
    assert decoder.flush().size == 0
    decoder.close()
    decoder.close()


@pytest.mark.parametrize("codec", sorted(OutputCodec))
def test_open_encoder_opens_every_output_codec(codec: OutputCodec) -> None:
    rate = 8000 if codec is OutputCodec.MULAW else 24000
    encoder = open_encoder(codec, rate)
    payloads = encoder.encode(b"\x00\x00" * 480)  # 20 ms
    assert len(payloads) == 1
    assert encoder.duration_ms(payloads[0]) == pytest.approx(20 if rate == 24000 else 60)
    encoder.close()
    encoder.close()


@pytest.mark.parametrize("codec", [OutputCodec.PCM16, OutputCodec.MULAW])
def test_raw_encoders_send_one_payload_per_call_and_hold_nothing_back(codec: OutputCodec) -> None:
    encoder = open_encoder(codec, 8000)
    assert len(encoder.encode(b"\x00\x00" * 7)) == 1
    assert encoder.encode(b"") == []
    assert encoder.flush() == []


@pytest.mark.parametrize(
    ("codec", "rate", "payload_bytes", "ms"),
    [
        (OutputCodec.PCM16, 16000, 320, 10.0),
        (OutputCodec.PCM16, 24000, 480, 10.0),
        (OutputCodec.PCM16, 44100, 882, 10.0),
        (OutputCodec.MULAW, 8000, 80, 10.0),
    ],
)
def test_raw_payload_duration_follows_codec_and_rate(
    codec: OutputCodec, rate: int, payload_bytes: int, ms: float
) -> None:
    assert open_encoder(codec, rate).duration_ms(b"\x00" * payload_bytes) == pytest.approx(ms)


@pytest.mark.parametrize("codec", [InputCodec.PCM16, InputCodec.MULAW])
def test_raw_decoders_flush_what_the_resampler_holds(codec: InputCodec) -> None:
    decoder = open_decoder(codec, 8000, 16000)
    data = tone(440, 8000, 1.0)
    payload = mulaw_encode(data) if codec is InputCodec.MULAW else data.tobytes()
    out = np.concatenate([decoder.decode(payload), decoder.flush()])
    assert abs(out.size - 16000) <= 2


# ---- opus output ----------------------------------------------------------------------------


def decode_opus(packets: list[bytes], rate: int = 48000) -> Samples:
    """Raw packets decoded as WebCodecs would: no OpusHead, mono, at `rate`."""
    import av

    ctx = av.CodecContext.create("opus", "r")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate, ctx.layout = rate, "mono"
    frames = [f for p in packets for f in ctx.decode(av.Packet(p))]
    out = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    return (np.clip(out, -1, 1) * 32767).astype(np.int16)


@pytest.mark.parametrize("rate", sorted(OPUS_RATES))
def test_opus_packets_decode_back_to_audio_correlating_with_the_input(rate: int) -> None:

    pcm, speech_rate = speech()
    source = Resampler(speech_rate, rate)(pcm, last=True)
    encoder = OpusEncoder(rate)
    pieces = np.array_split(source, 37)  # TTS chunks of odd sizes
    packets = [p for piece in pieces for p in encoder.encode(piece.tobytes())]
    packets += encoder.flush()
    decoded = Resampler(48000, rate)(decode_opus(packets), last=True)
    assert best_correlation(source, decoded, rate // 50) > 0.8
    encoder.close()


def test_every_opus_packet_is_20_ms_and_one_packet_per_frame_of_input() -> None:
    encoder = OpusEncoder(24000)
    packets = encoder.encode(tone(440, 24000, 1.0).tobytes())
    assert len(packets) == 50
    assert all(opus_packet_ms(p) == 20 for p in packets)
    assert all(encoder.duration_ms(p) == 20 for p in packets)
    assert [f.size for f in np.split(decode_opus(packets), 50)] == [960] * 50
    encoder.close()


def test_opus_encoder_carries_a_partial_frame_to_the_next_call() -> None:
    encoder = OpusEncoder(16000)
    pcm = tone(440, 16000, 0.05)  # 800 samples: two 320-sample frames and 160 over
    assert encoder.encode(pcm[:300].tobytes()) == []
    assert len(encoder.encode(pcm[300:].tobytes())) == 2
    assert len(encoder.encode(pcm[:160].tobytes())) == 1
    encoder.close()


def test_opus_flush_pads_the_rest_with_silence_and_lets_the_lookahead_out() -> None:
    encoder = OpusEncoder(48000)
    pcm = tone(440, 48000, 0.05)  # 2400 samples: two frames of 960, 480 left over
    packets = encoder.encode(pcm.tobytes())
    tail = encoder.flush()
    assert len(packets) == 2 and len(tail) == 1  # 480 + 480 silence; 10 ms covers the 6.5
    assert encoder.flush() == []  # nothing left
    encoder.encode(pcm[:960].tobytes())
    assert len(encoder.flush()) == 1  # frame-aligned: one silent packet carries the lookahead
    decoded = decode_opus([*packets, *tail])
    assert decoded.size == 3 * 960
    level = np.abs(decoded[:2400].astype(np.int32)).max()
    assert level > 10000 and np.abs(decoded[2400 + 400 :]).max() < level / 10
    encoder.close()


def test_opus_encoder_refuses_rates_libopus_cannot_encode() -> None:
    with pytest.raises(BadAudio, match="48000"):
        open_encoder(OutputCodec.OPUS, 22050)
    with pytest.raises(BadAudio, match="sample_rate"):
        open_encoder(OutputCodec.OPUS)


def test_opus_encoder_close_frees_its_context_and_is_idempotent() -> None:
    before = live_codec_contexts()
    encoder = OpusEncoder(48000)
    assert live_codec_contexts() == before + 1
    encoder.close()
    encoder.close()
    assert live_codec_contexts() == before
    with pytest.raises(BadAudio, match="closed"):
        encoder.encode(b"\x00\x00" * 960)


def test_opus_packet_ms_reads_the_toc_byte() -> None:
    assert opus_packet_ms(b"") == 0
    assert opus_packet_ms(bytes([0b11111_000])) == 20  # CELT 20 ms, one frame
    assert opus_packet_ms(bytes([0b00011_001])) == 120  # SILK 60 ms, two frames
    assert opus_packet_ms(bytes([0b10000_011, 4])) == 10  # CELT 2.5 ms, four frames


def test_interleaved_stereo_pcm16_is_down_mixed_by_averaging() -> None:
    left = np.array([1000, -2000, 30000, 7], dtype=np.int16)
    right = np.array([3000, -2000, 30000, -7], dtype=np.int16)
    stereo = np.column_stack((left, right)).astype("<i2").tobytes()
    decoder = PCM16Decoder(16000, 16000, 2)
    # Split mid-frame: the partial left/right pair waits for its other half.
    mono = np.concatenate((decoder.decode(stereo[:5]), decoder.decode(stereo[5:])))
    assert mono.tolist() == [2000, -2000, 30000, 0]
