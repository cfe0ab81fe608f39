"""The conversation store a session talks to: resume at session start, save off the voice path.

`open` runs once per session start and is the only call that waits for the backend, never
longer than `load_timeout_ms`: a slow or unreachable Redis costs a session start at most that,
and the session then starts a fresh conversation. A resumed conversation gets a new token, and
the old one is spent in the same atomic step, so a leaked or replayed token cannot open the same
conversation twice in parallel, and a token is useless once its owner has resumed with it. A
resume that arrives before its conversation's last save was written (a client back at once)
waits for a write in flight and takes a save still queued, so it gets the latest state and the
old token cannot come back to life when that save lands later.

`save` never waits: it encodes the conversation's latest state and queues it for the store's
one writer task, keyed by conversation, so a conversation has at most one save pending and many
saves in a row cost one write (only the latest state matters). The queue is bounded; when full
the oldest save is dropped and counted. When the backend fails, the writer keeps what it could
not write (unless newer state arrived) and retries with a backoff, so an outage of seconds loses
nothing and a long one holds at most the queue's bound; a record that expires while waiting is
dropped. Leaving the store's `async with` flushes what is pending within `drain_timeout_s`.

One warning is logged when the backend becomes unreachable (at most one a minute, even if it
flaps) and one line when it is back; each failed call is counted in Prometheus instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import msgspec
import structlog
from prometheus_client import Counter, Gauge, Histogram

from gateway.store.backend import Backend, StoreNotRunning, StoreUnavailable, Write
from gateway.store.config import MemoryStoreConfig, RedisStoreConfig, StoreConfig
from gateway.store.memory import MemoryBackend
from gateway.store.record import Conversation, decode, encode
from gateway.store.tokens import new_token, storage_key, well_formed

log = structlog.get_logger()

LOAD_SECONDS = Histogram(
    "voxgate_store_load_seconds",
    "Time a session start waited for the store to find the conversation to resume",
    ["backend"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
)
LOADS = Counter(
    "voxgate_store_loads",
    "Session starts by what the store answered: resumed, fresh (no token given), not_found "
    "(unknown, expired, spent, or another pipeline's or user's token), unavailable (the "
    "store failed or timed out: a fresh conversation)",
    ["backend", "outcome"],
)
SAVES = Counter("voxgate_store_saves", "Conversation states handed to the store", ["backend"])
WRITES = Counter(
    "voxgate_store_writes",
    "Records written to the backend (fewer than saves: saves of one conversation coalesce)",
    ["backend"],
)
DROPPED = Counter(
    "voxgate_store_saves_dropped",
    "Saves never written, by reason: overflow (the queue was full: the oldest went), expired "
    "(waited past their expiry), shutdown (still pending at the drain deadline), closed "
    "(saved after the store closed)",
    ["backend", "reason"],
)
ERRORS = Counter(
    "voxgate_store_errors",
    "Store calls that failed or timed out, by op: load, save, ping, decode",
    ["backend", "op"],
)
PENDING = Gauge("voxgate_store_pending_saves", "Saves waiting for the writer", ["backend"])

BATCH = 128
"""Records per write: one pipelined round trip to Redis."""
RETRY_FIRST_S = 0.05
WARN_EVERY_S = 60.0


class Opened(msgspec.Struct, frozen=True):
    """What a session starts with: the token to hand the client, and the conversation it
    continues (None: a fresh conversation)."""

    token: str
    conversation: Conversation | None

    @property
    def resumed(self) -> bool:
        return self.conversation is not None


def backend_for(config: StoreConfig, clock: Callable[[], float] = time.time) -> Backend:
    match config:
        case MemoryStoreConfig():
            return MemoryBackend(config.max_conversations, clock)
        case RedisStoreConfig():
            # Imported here: redis-py takes ~0.4 s to import, and `voxgate validate` (which
            # reads the `store:` block's types) must not pay for it.
            from gateway.store.redis import RedisBackend

            return RedisBackend(config.url, config.key_prefix, clock)


class ConversationStore:
    """Resumable conversations for sessions; enter it (`async with`) for its writer to run.

    `backend` defaults to the one `config` names; pass one to share a memory backend across
    stores (a pipeline reload) or to test. The store closes its backend when it closes.
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        backend: Backend | None = None,
        max_pending: int = 10_000,
        write_timeout_s: float = 2.0,
        drain_timeout_s: float = 5.0,
        retry_cap_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend if backend is not None else backend_for(config, clock)
        self._name = self._backend.name
        self._ttl_s = float(config.resume_ttl_s)
        self._load_timeout_s = config.load_timeout_ms / 1000
        self._max_pending = max_pending
        self._write_timeout_s = write_timeout_s
        self._drain_timeout_s = drain_timeout_s
        self._retry_cap_s = retry_cap_s
        self._clock = clock
        where = config.redacted_url() if isinstance(config, RedisStoreConfig) else "memory"
        self._outage = Outage(self._name, where)
        self._pending: dict[str, Write] = {}
        self._in_flight: frozenset[str] = frozenset()
        """Keys of the batch the writer is writing now."""
        self._put_done = asyncio.Event()
        self._counted_pending = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._closing = asyncio.Event()
        self._closed = False
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        if self._writer is not None:
            raise StoreNotRunning("a conversation store runs once; build a new one")
        self._writer = asyncio.create_task(self._write(), name=f"store-writer-{self._name}")
        self._writer.add_done_callback(self._writer_done)
        # Connect now, so the first session start does not pay for it and an unreachable
        # Redis is reported at start-up rather than by the first caller.
        try:
            async with asyncio.timeout(self._load_timeout_s):
                await self._backend.ping()
        except (StoreUnavailable, TimeoutError) as error:
            ERRORS.labels(self._name, "ping").inc()
            self._outage.failed("ping", error)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def pending(self) -> int:
        """Saves waiting for the writer."""
        return len(self._pending)

    async def open(self, resume_token: str | None, *, pipeline: str, sub: str | None) -> Opened:
        """The conversation `resume_token` continues, under a new token; else a fresh one.

        Never raises for what the client sent or for the backend's trouble: an unknown,
        expired, spent, malformed, other-pipeline or other-user token, a slow or unreachable
        backend all start a fresh conversation. Waits at most `load_timeout_ms`.
        """
        self._check_running()
        if resume_token is None:
            return self._fresh("fresh")
        if not well_formed(resume_token):
            return self._fresh("not_found")
        if self._closed:
            return self._fresh("unavailable")
        token = new_token()
        key = storage_key(resume_token, pipeline, sub)
        loop = asyncio.get_running_loop()
        started = loop.time()
        unsaved: Write | None = None
        try:
            async with asyncio.timeout(self._load_timeout_s):
                # A client back within milliseconds of a drop (or a drain's 1001) may come
                # before its last save is written: let a write in flight land first, and take
                # a save still queued here, which is newer than anything the backend holds.
                while key in self._in_flight:
                    await self._put_done.wait()
                unsaved = self._pending.pop(key, None)
                record = await self._backend.take(key, storage_key(token, pipeline, sub))
        except (StoreUnavailable, TimeoutError) as error:
            if unsaved is not None and key not in self._pending:
                self._pending[key] = unsaved  # not ours to use now: still to be written
                self._idle.clear()
                self._wake.set()
            ERRORS.labels(self._name, "load").inc()
            self._outage.failed("load", error)
            # The move may still land after the timeout: never hand out its target key.
            return self._fresh("unavailable")
        finally:
            self._count_pending()
            LOAD_SECONDS.labels(self._name).observe(loop.time() - started)
        self._outage.recovered()
        conversation = self._check(unsaved.record if unsaved else record, pipeline, sub)
        if conversation is None:
            return self._fresh("not_found")
        LOADS.labels(self._name, "resumed").inc()
        self.save(token, conversation)  # its expiry now runs from the resume
        return Opened(token, conversation)

    def _fresh(self, outcome: str) -> Opened:
        LOADS.labels(self._name, outcome).inc()
        return Opened(new_token(), None)

    def _check(self, record: bytes | None, pipeline: str, sub: str | None) -> Conversation | None:
        if record is None:
            return None
        try:
            conversation = decode(record)
        except msgspec.DecodeError as error:
            ERRORS.labels(self._name, "decode").inc()
            log.warning("store_record_unreadable", backend=self._name, error=str(error))
            return None
        if conversation.pipeline != pipeline or conversation.sub != sub:
            return None  # the key binds both, so only a hash collision could get here
        return conversation if conversation.expires_at > self._clock() else None

    def save(self, token: str, conversation: Conversation) -> None:
        """Queue `conversation`'s latest state under `token`; returns at once.

        Stamps `expires_at` (now + `resume_ttl_s`). After the store closed the save is
        dropped and counted (a session outliving the drain), not raised.
        """
        self._check_running()
        SAVES.labels(self._name).inc()
        if self._closed:
            DROPPED.labels(self._name, "closed").inc()
            return
        expires_at = self._clock() + self._ttl_s
        record = encode(msgspec.structs.replace(conversation, expires_at=expires_at))
        key = storage_key(token, conversation.pipeline, conversation.sub)
        self._pending.pop(key, None)
        self._pending[key] = Write(key, record, expires_at)
        self._bound_pending()
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every save so far is written or dropped (forever while the backend
        is down: bound it with a timeout)."""
        self._check_running()
        await self._idle.wait()

    async def close(self) -> None:
        """Flush pending saves within `drain_timeout_s`, drop (and count) the rest, stop the
        writer and close the backend. Idempotent."""
        writer = self._writer
        if writer is None or self._closed:
            return
        self._closing.set()
        self._wake.set()
        try:
            await asyncio.wait([writer], timeout=self._drain_timeout_s)
        finally:
            if not writer.done():
                writer.cancel()
                await asyncio.wait([writer])
            self._closed = True
            self._idle.set()
            if self._pending:
                DROPPED.labels(self._name, "shutdown").inc(len(self._pending))
                log.warning("store_saves_lost", backend=self._name, saves=len(self._pending))
                self._pending.clear()
                self._count_pending()
            await self._backend.aclose()
        if not writer.cancelled() and (error := writer.exception()) is not None:
            raise error

    def _writer_done(self, writer: asyncio.Task[None]) -> None:
        # Only a bug ends the writer early; say so now, not at shutdown (`close` raises it).
        if not writer.cancelled() and (error := writer.exception()) is not None:
            log.error("store_writer_failed", backend=self._name, exc_info=error)

    def _check_running(self) -> None:
        if self._writer is None:
            raise StoreNotRunning("enter the conversation store (async with) before using it")

    async def _write(self) -> None:
        """The writer: oldest pending saves first, in batches; on failure keep and back off."""
        backoff = RETRY_FIRST_S
        while True:
            if not self._pending:
                self._idle.set()
                if self._closing.is_set():
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch = self._next_batch()
            if not batch:
                continue
            self._in_flight = frozenset(write.key for write in batch)
            self._put_done.clear()
            try:
                try:
                    async with asyncio.timeout(self._write_timeout_s):
                        await self._backend.put(batch)
                finally:
                    # Waiters run at the writer's next await: after a failed batch is queued
                    # again below, so a resume waiting on it finds it pending.
                    self._in_flight = frozenset()
                    self._put_done.set()
            except asyncio.CancelledError:
                self._retry_later(batch)  # pending again, so `close` counts it as lost
                raise
            except (StoreUnavailable, TimeoutError) as error:
                ERRORS.labels(self._name, "save").inc()
                self._outage.failed("save", error)
                self._retry_later(batch)
                await self._back_off(backoff)
                backoff = min(backoff * 2, self._retry_cap_s)
            else:
                WRITES.labels(self._name).inc(len(batch))
                self._outage.recovered()
                backoff = RETRY_FIRST_S

    def _next_batch(self) -> list[Write]:
        now = self._clock()
        batch = [self._pending.pop(key) for key in list(itertools.islice(self._pending, BATCH))]
        self._count_pending()
        live = [write for write in batch if write.expires_at > now]
        if len(live) < len(batch):
            DROPPED.labels(self._name, "expired").inc(len(batch) - len(live))
        return live

    def _retry_later(self, batch: list[Write]) -> None:
        """Put back what failed ahead of newer saves, unless a newer state of it arrived."""
        failed = {write.key: write for write in batch if write.key not in self._pending}
        self._pending = failed | self._pending
        self._bound_pending()

    def _bound_pending(self) -> None:
        overflow = len(self._pending) - self._max_pending
        if overflow > 0:
            for key in list(itertools.islice(self._pending, overflow)):
                del self._pending[key]
            DROPPED.labels(self._name, "overflow").inc(overflow)
        self._count_pending()

    def _count_pending(self) -> None:
        # A gauge shared by every store of this backend: add this store's change only.
        PENDING.labels(self._name).inc(len(self._pending) - self._counted_pending)
        self._counted_pending = len(self._pending)

    async def _back_off(self, seconds: float) -> None:
        """Wait before retrying; closing cuts the wait short (the drain has a deadline), but
        the retries then still pause briefly rather than spin on a dead backend."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        if self._closing.is_set():
            await asyncio.sleep(min(seconds, RETRY_FIRST_S))


class Outage:
    """Logs an unreachable backend once per outage (and at most once a minute, should it
    flap), and its return once; every failure is counted in `voxgate_store_errors` instead."""

    def __init__(
        self, backend: str, where: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._backend = backend
        self._where = where
        self._clock = clock
        self._down_since: float | None = None
        self._warned = False
        self._last_warning = -WARN_EVERY_S

    def failed(self, op: str, error: BaseException) -> None:
        if self._down_since is not None:
            return
        now = self._clock()
        self._down_since = now
        self._warned = now - self._last_warning >= WARN_EVERY_S
        if self._warned:
            self._last_warning = now
            log.warning(
                "store_unavailable",
                backend=self._backend,
                where=self._where,
                op=op,
                error=str(error) or type(error).__name__,
                effect="sessions start fresh conversations; saves wait and are retried",
            )

    def recovered(self) -> None:
        if self._down_since is None:
            return
        if self._warned:
            down_s = round(self._clock() - self._down_since, 3)
            log.info("store_recovered", backend=self._backend, where=self._where, down_s=down_s)
        self._down_since = None
