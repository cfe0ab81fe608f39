"""Where the client is in playing one assistant turn's audio, reported or estimated.

The server needs this for three things: pacing (stay at most `lead_ms` ahead of the ear),
barge-in (is the assistant audible right now?) and truncating history to what was heard. The
estimate models a client that starts playing each chunk on arrival and plays continuously, so
an underrun (TTS slower than real time) restarts the clock instead of running ahead of the
audio; each `playback` report from the client re-anchors it. While the reply is paused
(`reply_paused`, protocol 1.1) the clock stands still: nothing more is heard, and the reply
still counts as on (it will resume or be cut).
"""

from __future__ import annotations


class PlaybackClock:
    def __init__(self) -> None:
        self.sent_ms = 0.0
        self._ends_at: float | None = None
        self._finished = False
        self._paused_played_ms: float | None = None

    @property
    def started(self) -> bool:
        return self._ends_at is not None

    @property
    def paused(self) -> bool:
        return self._paused_played_ms is not None

    def on_sent(self, ms: float, now: float) -> None:
        """`ms` of audio left for the client at `now`."""
        self.sent_ms += ms
        if self.paused:
            return  # it queues on the client; `resume` places it
        self._ends_at = max(now, self._ends_at or now) + ms / 1000
        self._finished = False

    def on_report(self, played_ms: float, finished: bool, now: float) -> None:
        if self.paused:
            self._paused_played_ms = min(played_ms, self.sent_ms)
            return
        self._finished = finished
        self._ends_at = now + max(0.0, self.sent_ms - played_ms) / 1000

    def pause(self, now: float) -> None:
        if not self.paused:
            self._paused_played_ms = self.played_ms(now)

    def resume(self, now: float) -> None:
        played = self._paused_played_ms
        if played is None:
            return
        self._paused_played_ms = None
        if self._ends_at is not None:
            self._ends_at = now + max(0.0, self.sent_ms - played) / 1000

    def played_ms(self, now: float) -> float:
        if self._paused_played_ms is not None:
            return self._paused_played_ms
        if self._ends_at is None:
            return 0.0
        if self._finished:
            return self.sent_ms
        return max(0.0, self.sent_ms - max(0.0, self._ends_at - now) * 1000)

    def playing(self, now: float) -> bool:
        """Audio of this turn is sounding on the client (sent, not yet all played), or paused
        and waiting to sound again."""
        if self.paused:
            return True
        return self._ends_at is not None and not self._finished and self._ends_at > now

    def ahead_ms(self, now: float) -> float:
        """Audio sent but not yet played: what a barge-in would throw away."""
        return self.sent_ms - self.played_ms(now)
