"""Real MediaRecorder output from Chromium (tests/recordings/) decodes chunk by chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.audio.codecs import open_decoder
from gateway.audio.vad import SileroModel, SpeechDetector, SpeechEnd, SpeechStart
from gateway.pipeline import VAD, InputCodec

RECORDINGS = Path(__file__).parent / "recordings"
RATE = 16000
CASES = {"chromium-webm-opus": InputCodec.WEBM_OPUS, "chromium-mp4-opus": InputCodec.MP4_AAC}


async def utterance_ms(name: str) -> tuple[float, list[SpeechStart | SpeechEnd]]:
    """Decoded duration and VAD events, feeding the chunks as the browser delivered them."""
    decoder = open_decoder(CASES[name], None, RATE)
    vad = SpeechDetector(SileroModel(RATE), VAD(speech_pad_ms=0, min_silence_ms=300), RATE)
    pcm = [decoder.decode(chunk.read_bytes()) for chunk in sorted((RECORDINGS / name).iterdir())]
    pcm.append(decoder.flush())
    decoder.close()
    audio = np.concatenate(pcm)
    return audio.size * 1000 / RATE, await vad.push(audio)


@pytest.mark.parametrize("name", list(CASES))
async def test_real_recording_decodes_to_its_length_with_one_utterance(name: str) -> None:
    duration_ms, events = await utterance_ms(name)
    assert 2700 <= duration_ms <= 3100, "recorded for 3 s"
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]


async def test_both_browser_formats_carry_the_same_utterance() -> None:
    spans = []
    for name in CASES:
        _, (start, end) = await utterance_ms(name)
        spans.append(end.t_ms - start.t_ms)
    assert abs(spans[0] - spans[1]) <= 60
