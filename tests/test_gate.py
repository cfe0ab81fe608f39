"""The speech gate: only speech, with its pre-roll and tail, reaches a gated STT."""

from __future__ import annotations

from gateway.audio.gate import SpeechGate

CHUNK = bytes(640)  # 20 ms of 16 kHz pcm16


def test_silence_is_held_back_and_only_the_pre_roll_is_kept() -> None:
    gate = SpeechGate(16000, pre_roll_ms=100, tail_ms=100)
    assert [gate.push(CHUNK, voiced=False) for _ in range(50)] == [[]] * 50
    sent = gate.push(b"v" * 640, voiced=True)
    assert sent[-1] == b"v" * 640 and len(sent) - 1 == 5, "100 ms of pre-roll, then the speech"


def test_the_tail_follows_the_last_voiced_chunk_then_the_gate_closes() -> None:
    gate = SpeechGate(16000, pre_roll_ms=0, tail_ms=60)
    gate.push(b"v" * 640, voiced=True)
    assert [len(gate.push(CHUNK, voiced=False)) for _ in range(5)] == [1, 1, 1, 0, 0]


def test_speech_again_in_the_tail_keeps_it_open() -> None:
    gate = SpeechGate(16000, pre_roll_ms=0, tail_ms=40)
    gate.push(b"v" * 640, voiced=True)
    gate.push(CHUNK, voiced=False)
    assert gate.push(b"v" * 640, voiced=True) == [b"v" * 640]
    assert [len(gate.push(CHUNK, voiced=False)) for _ in range(3)] == [1, 1, 0]
