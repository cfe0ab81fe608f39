"""The `memory` backend: conversations in this process, bounded and expiring.

An insertion-ordered dict keyed by the hashed key, ordered by last write, so the least recently
saved conversation is the first forgotten when `max_conversations` is reached and expired
records are swept from the front on every write: memory stays bounded by the bound, whatever
number of sessions comes through. Expiry is also checked on every take, so a record is never
returned late even before a sweep reaches it. `aclose` keeps the records: a store rebuilt by a
pipeline reload can be handed the same backend and keep its conversations.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from prometheus_client import Counter

from gateway.store.backend import Write

EVICTIONS = Counter(
    "voxgate_store_evictions",
    "Conversations the memory store forgot before their expiry, to stay within max_conversations",
    ["backend"],
)


class MemoryBackend:
    name = "memory"

    def __init__(self, max_conversations: int, clock: Callable[[], float] = time.time) -> None:
        self._max = max_conversations
        self._clock = clock
        self._records: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    async def take(self, key: str, new_key: str) -> bytes | None:
        entry = self._records.pop(key, None)
        if entry is None or entry[1] <= self._clock():
            return None
        self._records[new_key] = entry
        return entry[0]

    async def put(self, writes: Sequence[Write]) -> None:
        for key, record, expires_at in writes:
            self._records[key] = (record, expires_at)
            self._records.move_to_end(key)
        now = self._clock()
        while self._records and next(iter(self._records.values()))[1] <= now:
            self._records.popitem(last=False)
        while len(self._records) > self._max:
            self._records.popitem(last=False)
            EVICTIONS.labels(self.name).inc()

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
