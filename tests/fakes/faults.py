"""Faults a fake provider can inject, shared by every fake so tests read the same way."""

from __future__ import annotations

import enum


class Fault(enum.StrEnum):
    NONE = "none"
    REFUSE = "refuse"
    """Refuse the connection or the WebSocket upgrade (HTTP 503)."""
    HANG = "hang"
    """Accept, then never answer."""
    RATE_LIMIT = "rate_limit"
    """HTTP 429 with a `retry-after` header (kept tiny, as SDKs honour it)."""
    SERVER_ERROR = "server_error"
    """HTTP 500."""
    DROP = "drop"
    """Start answering, then drop the connection mid-stream."""
    MALFORMED = "malformed"
    """Answer with something that is not the provider's JSON."""
    UNAUTHORIZED = "unauthorized"
    """HTTP 401, as for a wrong API key."""
