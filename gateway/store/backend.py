"""What a storage backend does for the conversation store, and how it fails.

A backend is deliberately dumb: it moves and writes opaque records under keys it is given, and
enforces expiry. Everything else (tokens, coalescing, timeouts, metrics, outage logs) lives in
`ConversationStore`, once, for every backend. Backends raise exactly one error,
`StoreUnavailable`, for anything that means "could not be done now"; the store catches it and
degrades (a fresh conversation, a save retried later), so a session never sees it.

GatewayError
└── StoreError
    ├── StoreUnavailable   the backend could not be reached, or refused or failed the command
    └── StoreNotRunning    the store was used before `async with` entered it (a wiring bug)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from gateway.errors import GatewayError


class StoreError(GatewayError):
    """Root of the conversation store's errors."""


class StoreUnavailable(StoreError):
    """The backend could not do it now (unreachable, timed out, refused the command)."""


class StoreNotRunning(StoreError):
    """`open` or `save` before the store was entered: the app's lifespan must enter it."""


class Write(NamedTuple):
    """One record to store under `key` until `expires_at` (Unix time)."""

    key: str
    record: bytes
    expires_at: float


class Backend(Protocol):
    @property
    def name(self) -> str:
        """`memory` or `redis`: the `backend` label of the store's metrics."""
        ...

    async def take(self, key: str, new_key: str) -> bytes | None:
        """Atomically move the unexpired record at `key` to `new_key` (keeping its expiry)
        and return it; None if there is none. Of two concurrent takes of one key, one wins."""
        ...

    async def put(self, writes: Sequence[Write]) -> None:
        """Store every record, replacing what its key held, each until its `expires_at`."""
        ...

    async def ping(self) -> None:
        """Raises StoreUnavailable unless the backend answers."""
        ...

    async def aclose(self) -> None: ...
