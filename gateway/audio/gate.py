"""Which of the user's audio reaches a speech recognizer billed by audio time: speech only.

A cloud STT bills every second it is sent (a Deepgram stream the whole session long), while a
user speaks perhaps a third of the time and the microphone hears room tone the rest, also
while the assistant talks. The gate lets through what the VAD calls voiced, plus a pre-roll
before it (the VAD decides a frame or two into a word, and soft first syllables must not be
lost) and a tail after it (the end of the last word, and the silence the STT's own endpointing
and the turn engine's `min_wait_ms` need), and holds back everything else. The VAD and the
turn engine still see every frame; only the STT's input is gated.
"""

from __future__ import annotations

from collections import deque


class SpeechGate:
    def __init__(self, sample_rate: int, pre_roll_ms: float, tail_ms: float) -> None:
        self._bytes_per_ms = sample_rate * 2 / 1000
        self._pre_roll_bytes = int(pre_roll_ms * self._bytes_per_ms)
        self._tail_bytes = int(tail_ms * self._bytes_per_ms)
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self._tail_left = 0

    def push(self, pcm: bytes, voiced: bool) -> list[bytes]:
        """The chunks to send now for `pcm` (mono int16) and whether any of it is voiced."""
        if voiced:
            out = [*self._held, pcm]
            self._held.clear()
            self._held_bytes = 0
            self._tail_left = self._tail_bytes
            return out
        if self._tail_left > 0:
            self._tail_left -= len(pcm)
            return [pcm]
        self._held.append(pcm)
        self._held_bytes += len(pcm)
        while self._held and self._held_bytes - len(self._held[0]) >= self._pre_roll_bytes:
            self._held_bytes -= len(self._held.popleft())
        return []
