"""SpeechDetector hysteresis (with a scripted model) and the real VAD models on real speech."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.audio.codecs import Samples
from gateway.audio.vad import (
    Pause,
    Resume,
    SileroModel,
    SpeechDetector,
    SpeechEnd,
    SpeechStart,
    WebRTCModel,
)
from gateway.pipeline import VAD, VADProvider
from tests.audio_fixtures import speech_at

RATE = 16000
FRAME = 160  # 10 ms at 16 kHz
CONFIG = VAD(threshold=0.5, min_speech_ms=100, min_silence_ms=200, speech_pad_ms=30)


class ScriptedModel:
    """A VADModel whose answer is written in the audio: each frame's first sample / 1000.

    Tests build audio with `frames(...)`, so the probability of every 10 ms frame is scripted,
    and the frames the detector hands over are recorded to check it keeps frame alignment."""

    frame_samples = FRAME

    def __init__(self) -> None:
        self.seen: list[Samples] = []

    async def probability(self, frame: Samples) -> float:
        assert frame.shape == (FRAME,)
        self.seen.append(frame.copy())
        return float(frame[0]) / 1000


def frames(*runs: tuple[float, int]) -> Samples:
    """Audio made of (probability, frame count) runs."""
    parts = [np.full(FRAME * count, round(p * 1000), dtype=np.int16) for p, count in runs]
    return np.concatenate(parts)


def speech(count: int) -> tuple[float, int]:
    return (0.9, count)


def quiet(count: int) -> tuple[float, int]:
    return (0.1, count)


def detector(config: VAD = CONFIG) -> tuple[SpeechDetector, ScriptedModel]:
    model = ScriptedModel()
    return SpeechDetector(model, config, RATE), model


# ---- hysteresis with a scripted model -----------------------------------------------------


async def test_speech_shorter_than_min_speech_never_starts() -> None:
    vad, _ = detector()
    assert await vad.push(frames(quiet(20), speech(9), quiet(100))) == []
    assert not vad.speaking


async def test_speech_lasting_min_speech_starts_once() -> None:
    vad, _ = detector()
    assert await vad.push(frames(quiet(50), speech(9))) == []
    assert await vad.push(frames(speech(1))) == [SpeechStart(t_ms=500 - 30)]
    assert vad.speaking
    assert await vad.push(frames(speech(50))) == []


async def test_start_needs_consecutive_voiced_frames() -> None:
    vad, _ = detector()
    events = await vad.push(frames(quiet(10), speech(6), quiet(1), speech(6), quiet(1), speech(9)))
    assert events == []
    assert not vad.speaking


async def test_probability_equal_to_threshold_counts_as_speech() -> None:
    vad, _ = detector()
    assert await vad.push(frames((0.5, 10))) == [SpeechStart(t_ms=0)]


async def test_probability_just_below_threshold_is_quiet() -> None:
    vad, _ = detector()
    assert await vad.push(frames((0.499, 100))) == []


async def test_start_time_has_speech_pad_subtracted() -> None:
    vad, _ = detector(VAD(threshold=0.5, min_speech_ms=100, min_silence_ms=200, speech_pad_ms=200))
    assert await vad.push(frames(quiet(73), speech(10))) == [SpeechStart(t_ms=730 - 200)]


async def test_start_time_is_clamped_at_zero() -> None:
    vad, _ = detector()
    assert await vad.push(frames(quiet(1), speech(10))) == [SpeechStart(t_ms=0)]


async def test_silence_shorter_than_min_silence_does_not_end() -> None:
    vad, _ = detector()
    events = await vad.push(frames(speech(30), quiet(19), speech(5), quiet(19), speech(1)))
    assert events == [SpeechStart(t_ms=0)]
    assert vad.speaking


async def test_end_after_min_silence_at_silence_start_plus_pad() -> None:
    vad, _ = detector()
    events = await vad.push(frames(quiet(20), speech(30)))
    assert events == [SpeechStart(t_ms=200 - 30)]
    assert await vad.push(frames(quiet(19))) == []
    assert await vad.push(frames(quiet(1))) == [SpeechEnd(t_ms=500 + 30)]
    assert not vad.speaking


async def test_second_utterance_gives_a_second_start_and_end() -> None:
    vad, _ = detector()
    events = await vad.push(frames(speech(20), quiet(30), speech(15), quiet(25)))
    assert events == [
        SpeechStart(t_ms=0),
        SpeechEnd(t_ms=200 + 30),
        SpeechStart(t_ms=500 - 30),
        SpeechEnd(t_ms=650 + 30),
    ]


async def test_times_are_input_audio_time_across_pushes() -> None:
    vad, _ = detector()
    for _ in range(10):
        assert await vad.push(frames(quiet(100))) == []  # 10 s of quiet in 1 s pushes
    assert await vad.push(frames(speech(10))) == [SpeechStart(t_ms=10_000 - 30)]


async def test_a_pause_shorter_than_min_silence_is_announced_then_resumed() -> None:
    vad = SpeechDetector(ScriptedModel(), CONFIG, RATE, pause_ms=50)
    events = await vad.push(frames(speech(20), quiet(8), speech(20), quiet(30)))
    assert events == [
        SpeechStart(t_ms=0),
        Pause(t_ms=250),  # 50 ms into the first silence, which started at 200 ms
        Resume(),
        Pause(t_ms=530),
        SpeechEnd(t_ms=480 + 30),  # the second speech ended at 480 ms; padded
    ]


async def test_no_pause_events_when_pause_ms_is_not_shorter_than_min_silence() -> None:
    vad = SpeechDetector(ScriptedModel(), CONFIG, RATE, pause_ms=CONFIG.min_silence_ms)
    events = await vad.push(frames(speech(20), quiet(30)))
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]


async def test_frame_duration_follows_the_sample_rate() -> None:
    vad = SpeechDetector(ScriptedModel(), CONFIG, 8000)  # 160 samples = 20 ms at 8 kHz
    assert await vad.push(frames(quiet(10), speech(5))) == [SpeechStart(t_ms=200 - 30)]


ODD_SIZES = [1, 7, 159, 161, 333, 2, 480, 1000, 13]


def chunked(audio: Samples, sizes: list[int]) -> list[Samples]:
    chunks, start, i = [], 0, 0
    while start < audio.size:
        size = sizes[i % len(sizes)]
        chunks.append(audio[start : start + size])
        start, i = start + size, i + 1
    return chunks


async def test_leftovers_carried_across_odd_sized_pushes_give_the_same_events() -> None:
    audio = frames(quiet(37), speech(8), quiet(2), speech(40), quiet(12), speech(3), quiet(30))
    whole, whole_model = detector()
    expected = await whole.push(audio)
    assert len(expected) == 2  # the script does start and end a turn

    parts, parts_model = detector()
    events = [event for chunk in chunked(audio, ODD_SIZES) for event in await parts.push(chunk)]
    assert events == expected
    assert len(parts_model.seen) == len(whole_model.seen) == audio.size // FRAME
    assert all(
        np.array_equal(a, b) for a, b in zip(parts_model.seen, whole_model.seen, strict=True)
    )


async def test_partial_frame_is_held_until_completed() -> None:
    vad, model = detector()
    await vad.push(frames(speech(1))[:100])
    assert model.seen == []
    await vad.push(frames(speech(1))[:60])
    assert len(model.seen) == 1


async def test_speech_ms_grows_while_speaking_and_is_zero_when_quiet() -> None:
    vad, _ = detector()
    assert vad.speech_ms == 0.0
    await vad.push(frames(quiet(10), speech(9)))
    assert vad.speech_ms == 0.0  # still only a candidate
    await vad.push(frames(speech(1)))
    assert vad.speech_ms == pytest.approx(100.0)
    await vad.push(frames(speech(25)))
    assert vad.speech_ms == pytest.approx(350.0)
    await vad.push(frames(quiet(10)))  # a pause inside the turn still counts
    assert vad.speech_ms == pytest.approx(450.0)
    await vad.push(frames(quiet(10)))
    assert not vad.speaking
    assert vad.speech_ms == 0.0


# ---- the real models on real speech -------------------------------------------------------

SILENCE_S = 1.0


@pytest.fixture(scope="module")
def spoken() -> tuple[Samples, float]:
    """espeak-ng speech at 16 kHz with 1 s of silence either side, and its onset in ms."""
    voice = speech_at(RATE, "The quick brown fox jumps over the lazy dog near the river bank.")
    silence = np.zeros(int(RATE * SILENCE_S), dtype=np.int16)
    audio = np.concatenate((silence, voice, silence))
    onset_ms = np.flatnonzero(np.abs(audio) > 328)[0] * 1000 / RATE  # first sample over -40 dBFS
    return audio, onset_ms


async def push_in_20ms_chunks(vad: SpeechDetector, audio: Samples) -> list[SpeechStart | SpeechEnd]:
    return [event for chunk in chunked(audio, [RATE // 50]) for event in await vad.push(chunk)]


async def test_silero_finds_exactly_one_utterance_in_real_speech(
    spoken: tuple[Samples, float],
) -> None:
    audio, onset_ms = spoken
    vad = SpeechDetector(SileroModel(RATE), VAD(), RATE)
    events = await push_in_20ms_chunks(vad, audio)
    assert [type(event) for event in events] == [SpeechStart, SpeechEnd]
    start, end = events
    assert abs(start.t_ms - onset_ms) <= 300
    assert end.t_ms > start.t_ms + 2000  # the sentence takes about 3.4 s
    assert end.t_ms <= audio.size * 1000 / RATE


async def test_webrtc_detects_real_speech(spoken: tuple[Samples, float]) -> None:
    audio, _ = spoken
    vad = SpeechDetector(WebRTCModel(RATE, threshold=0.5), VAD(provider=VADProvider.WEBRTC), RATE)
    events = await push_in_20ms_chunks(vad, audio)
    assert any(isinstance(event, SpeechStart) for event in events)


async def test_silero_ignores_digital_silence() -> None:
    vad = SpeechDetector(SileroModel(RATE), VAD(), RATE)
    assert await push_in_20ms_chunks(vad, np.zeros(RATE * 3, dtype=np.int16)) == []


async def test_silero_ignores_low_white_noise() -> None:
    rms = 32768 * 10 ** (-50 / 20)  # -50 dBFS
    noise = np.random.default_rng(7).normal(0.0, rms, RATE * 3).round().astype(np.int16)
    vad = SpeechDetector(SileroModel(RATE), VAD(), RATE)
    assert await push_in_20ms_chunks(vad, noise) == []
    assert not vad.speaking


SENTENCES = ("Good morning.", "Where is the train station?", "Thank you very much.")


async def test_silero_finds_each_sentence_start_and_end_within_150_ms() -> None:
    silence = np.zeros(RATE, dtype=np.int16)
    parts: list[Samples] = [silence]
    truth: list[tuple[float, float]] = []
    offset = silence.size
    for text in SENTENCES:
        voice = speech_at(RATE, text)
        loud = np.flatnonzero(np.abs(voice) > 328)  # over -40 dBFS
        truth.append(((offset + loud[0]) * 1000 / RATE, (offset + loud[-1]) * 1000 / RATE))
        parts += [voice, silence]
        offset += voice.size + silence.size
    config = VAD(min_speech_ms=100, min_silence_ms=500, speech_pad_ms=0)
    vad = SpeechDetector(SileroModel(RATE), config, RATE)
    events = await push_in_20ms_chunks(vad, np.concatenate(parts))
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd] * len(SENTENCES)
    found = list(zip(events[::2], events[1::2], strict=True))
    for (start, end), (true_start, true_end) in zip(found, truth, strict=True):
        assert abs(start.t_ms - true_start) <= 150, (start, true_start)
        assert abs(end.t_ms - true_end) <= 150, (end, true_end)


async def test_batched_sessions_get_the_same_probabilities_as_one_alone(
    spoken: tuple[Samples, float],
) -> None:
    # Three sessions on different audio: run one at a time, then all at once (then silero
    # batches their frames into shared onnxruntime calls); each must see identical scores.
    audio, _ = spoken
    streams = [audio, audio[::-1].copy(), (audio // 2).astype(np.int16)]
    frame = SileroModel(RATE).frame_samples

    async def scores(stream: Samples) -> list[float]:
        model = SileroModel(RATE)
        return [
            await model.probability(stream[i : i + frame]) for i in range(RATE, 3 * RATE, frame)
        ]

    alone = [await scores(stream) for stream in streams]
    together = await asyncio.gather(*(scores(stream) for stream in streams))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert max(alone[0]) > 0.5, "the speech must actually be scored as speech"
