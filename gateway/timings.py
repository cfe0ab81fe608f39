"""Per-turn stage timings: when each stage started and first produced, on the loop's clock;
what they add up to is the turn's `TurnMetrics` (telemetry puts them in logs and Prometheus).

Each provider span is measured where it happens (end of speech -> final transcript, LLM call
-> first complete phrase, text to TTS -> first audio), so the gateway's own share of the
voice-to-voice time is what remains; that number is what a gateway can improve.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from gateway.protocol import TurnMetrics


class EndOfTurn(msgspec.Struct, frozen=True):
    """How the turn engine decided the user's turn was over (gateway.turns.EndTurn)."""

    reason: str
    score: float | None
    wait_ms: float


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start) * 1000, 3)


@dataclass
class TurnTimeline:
    speech_end: float | None = None
    """When the user's turn was closed (VAD silence window elapsed, audio_end, or STT endpoint)."""
    stt_final: float | None = None
    llm_start: float | None = None
    llm_first_token: float | None = None
    llm_first_phrase: float | None = None
    tts_text_sent: float | None = None
    tts_first_audio: float | None = None
    first_audio_sent: float | None = None
    released: float | None = None
    """A preemptive reply's output was held until the turn was confirmed at this moment."""
    decided: EndOfTurn | None = None
    resumed: int = 0
    """Times this reply was paused for a backchannel or noise and played on."""

    def audio_sent(self, now: float) -> None:
        if self.first_audio_sent is None:
            self.first_audio_sent = now

    def metrics(self) -> TurnMetrics:
        v2v = _ms(self.speech_end, self.first_audio_sent)
        stt = _ms(self.speech_end, self.stt_final)
        llm_phrase = _ms(self.llm_start, self.llm_first_phrase)
        tts = _ms(self.tts_text_sent, self.tts_first_audio)
        start = self.speech_end if self.speech_end is not None else self.llm_start
        path = _ms(start, self.first_audio_sent)
        overhead = None
        if path is not None and llm_phrase is not None and tts is not None:
            held = _ms(self.tts_first_audio, self.released) or 0.0
            overhead = round(path - (stt or 0.0) - llm_phrase - tts - max(held, 0.0), 3)
        decided = self.decided
        return TurnMetrics(
            end_of_turn_score=decided.score if decided is not None else None,
            end_of_turn_wait_ms=round(decided.wait_ms, 3) if decided is not None else None,
            resumed=self.resumed or None,
            stt_final_ms=stt,
            llm_ttft_ms=_ms(
                self.stt_final if self.stt_final is not None else self.llm_start,
                self.llm_first_token,
            ),
            tts_ttfb_ms=tts,
            voice_to_voice_ms=v2v,
            gateway_overhead_ms=overhead,
        )
