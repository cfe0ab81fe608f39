"""The app's conversation stores: one `ConversationStore` per distinct `store:` block.

The app's lifespan enters `Stores` and starts the stores its pipelines name, so no session
start pays for a connect; a pipeline a reload adds with a block not seen before gets its store
at its first session (whose start then waits for the store's first ping, at most
`load_timeout_ms`). A store lives as long as the app even when no pipeline names its block any
more: a session that began before a reload goes on saving into the store it resumed from.
Leaving `Stores` closes every store at once, each flushing its pending saves within its own
drain deadline.

Memory stores with the same `max_conversations` share one MemoryBackend, so a reload that
changes only `resume_ttl_s` or `load_timeout_ms` does not forget this process's conversations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import structlog

from gateway.store.config import MemoryStoreConfig, StoreConfig
from gateway.store.conversations import ConversationStore
from gateway.store.memory import MemoryBackend

log = structlog.get_logger()


class Stores:
    """The running stores by config; `options` go to every `ConversationStore` built."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._running: dict[StoreConfig, ConversationStore] = {}
        self._built: list[ConversationStore] = []
        self._memory: dict[int, MemoryBackend] = {}
        self._lock = asyncio.Lock()
        self._open = False

    async def __aenter__(self) -> Self:
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self, configs: Iterable[StoreConfig]) -> None:
        """Build and enter the stores of `configs` now (the app's start)."""
        await asyncio.gather(*(self.get(config) for config in dict.fromkeys(configs)))

    async def get(self, config: StoreConfig) -> ConversationStore | None:
        """The running store of `config`, built and entered at its first use; None outside
        `async with` (before the app started, or once it stopped)."""
        store = self._running.get(config)
        if store is not None or not self._open:
            return store
        async with self._lock:
            store = self._running.get(config)
            if store is None and self._open:
                store = ConversationStore(config, backend=self._backend(config), **self._options)
                self._built.append(store)  # closed at the end even if entering is cut short
                await store.__aenter__()
                self._running[config] = store
        return store

    def _backend(self, config: StoreConfig) -> MemoryBackend | None:
        if not isinstance(config, MemoryStoreConfig):
            return None  # the store builds its own Redis client
        bound = config.max_conversations
        return self._memory.setdefault(bound, MemoryBackend(bound))

    async def close(self) -> None:
        """Close every store (flushing pending saves, each within its drain deadline)."""
        self._open = False
        built, self._built = self._built, []
        self._running.clear()
        results = await asyncio.gather(*(s.close() for s in built), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("store_close_failed", exc_info=result)
