"""Conversations that survive drops, deploys and machines (PROTOCOL.md 1.1 resume tokens).

A session calls `ConversationStore.open` once at its start (with the client's
`session_start.resume`, if any) and `save` after each turn and at its end; the app's lifespan
enters the store (`async with`), which runs its writer and flushes it on the way out.

    config.py         the pipeline file's `store:` block (memory | redis)
    record.py         Message, Conversation: the record, msgpack-encoded
    tokens.py         resume tokens and the hashed keys they are stored under
    conversations.py  ConversationStore: open (bounded wait), save (never waits), the writer
    backend.py        the Backend protocol and the store's errors
    memory.py         this process, bounded, expiring
    redis.py          a shared Redis, keys with a TTL, an atomic move on resume (imported
                      only when a `redis` store is built: redis-py is slow to import)
    stores.py         Stores: the app's stores, one per `store:` block its pipelines name
"""

from gateway.store.backend import (
    Backend,
    StoreError,
    StoreNotRunning,
    StoreUnavailable,
    Write,
)
from gateway.store.config import MemoryStoreConfig, RedisStoreConfig, StoreConfig
from gateway.store.conversations import ConversationStore, Opened, backend_for
from gateway.store.memory import MemoryBackend
from gateway.store.record import Conversation, Message, ToolCall
from gateway.store.stores import Stores

__all__ = [
    "Backend",
    "Conversation",
    "ConversationStore",
    "MemoryBackend",
    "MemoryStoreConfig",
    "Message",
    "Opened",
    "RedisStoreConfig",
    "StoreConfig",
    "StoreError",
    "StoreNotRunning",
    "StoreUnavailable",
    "Stores",
    "ToolCall",
    "Write",
    "backend_for",
]
