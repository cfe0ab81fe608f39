"""Per-session rate limiting of control frames.

A client that floods JSON frames (a bug or an attack) costs a decode and often a provider call
each; a token bucket lets normal bursts through (a burst as large as one second's allowance)
and refuses the excess without blocking the socket.
"""

from __future__ import annotations


class TokenBucket:
    def __init__(self, per_second: float, now: float) -> None:
        self._rate = per_second
        self._tokens = per_second
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._tokens = min(self._rate, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
