"""The conversation store (gateway/store): resume tokens, expiry, coalesced saves, outages.

Behaviour common to both backends runs against each: `memory`, and a real `redis-server`
started for the test session (tests/redis_server.py). A `Stores` builds stores the way gateway
processes would: for redis each store has its own client and connections to the one server
(another process), for memory they share the process's backend (a pipeline reload). Tests
that kill or hang Redis get a server of their own. Nothing waits a fixed time: tests wait on
the store's own `flush`, or poll the state they expect.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio
import structlog
from prometheus_client import REGISTRY

from gateway.store import (
    Conversation,
    ConversationStore,
    MemoryBackend,
    MemoryStoreConfig,
    Message,
    RedisStoreConfig,
    StoreConfig,
    StoreNotRunning,
    Write,
)
from gateway.store import Stores as AppStores
from tests.redis_server import RedisServer, free_port

PIPELINE = "support"
LOAD_BOUND_S = 1.0
"""Generous wall-clock bound on a session start against a dead or hung Redis; the store's
load timeout is 200 ms, redis-py's own socket timeouts are several seconds."""


def conversation(
    turns: int = 1, *, sub: str | None = None, pipeline: str = PIPELINE
) -> Conversation:
    history = [
        message
        for turn in range(turns)
        for message in (
            Message("user", f"question {turn}: where is my order?"),
            Message("assistant", f"answer {turn}: it ships tomorrow morning."),
        )
    ]
    return Conversation(pipeline=pipeline, sub=sub, turns=turns, history=history)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


class Stores:
    """Builds stores on one backend: `redis` (a server of the test session, this test's own
    key prefix) or `memory` (one backend shared by every store built here)."""

    def __init__(self, kind: str, redis_url: str | None = None) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.prefix = f"test:{uuid.uuid4().hex}:"
        self._memory: MemoryBackend | None = None

    def config(self, **keys: Any) -> StoreConfig:
        if self.kind == "redis":
            return RedisStoreConfig(url=self.redis_url or "", key_prefix=self.prefix, **keys)
        return MemoryStoreConfig(**keys)

    @asynccontextmanager
    async def running(
        self, config: dict[str, Any] | None = None, **options: Any
    ) -> AsyncIterator[ConversationStore]:
        settings = self.config(**(config or {}))
        backend = None
        if isinstance(settings, MemoryStoreConfig):
            if self._memory is None:
                self._memory = MemoryBackend(settings.max_conversations)
            backend = self._memory
        async with ConversationStore(settings, backend=backend, **options) as store:
            yield store


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server this test may kill, hang and restart."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest) -> Stores:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return Stores("redis", server.url)
    return Stores("memory")


# Resuming


async def test_a_conversation_saved_on_one_gateway_resumes_on_another(stores: Stores) -> None:
    async with stores.running() as first, stores.running() as second:
        opened = await first.open(None, pipeline=PIPELINE, sub="alice")
        assert not opened.resumed
        first.save(opened.token, conversation(3, sub="alice"))
        await first.flush()

        resumed = await second.open(opened.token, pipeline=PIPELINE, sub="alice")

    assert resumed.resumed and resumed.conversation is not None
    assert resumed.conversation.history == conversation(3).history
    assert resumed.conversation.turns == 3
    assert (resumed.conversation.pipeline, resumed.conversation.sub) == (PIPELINE, "alice")


async def test_resuming_gives_a_new_token_and_spends_the_old_one(stores: Stores) -> None:
    async with stores.running() as store:
        first = await store.open(None, pipeline=PIPELINE, sub=None)
        store.save(first.token, conversation(2))
        await store.flush()

        second = await store.open(first.token, pipeline=PIPELINE, sub=None)
        replayed = await store.open(first.token, pipeline=PIPELINE, sub=None)
        third = await store.open(second.token, pipeline=PIPELINE, sub=None)

    assert second.resumed and second.token != first.token
    assert not replayed.resumed
    assert third.resumed and third.conversation is not None and second.conversation is not None
    # The same conversation; its expiry moved on when `second` resumed it.
    assert third.conversation.history == second.conversation.history
    assert third.conversation.turns == second.conversation.turns == 2


async def test_two_sessions_racing_with_one_token_resume_the_conversation_once(
    stores: Stores,
) -> None:
    async with stores.running() as store, stores.running() as other:
        opened = await store.open(None, pipeline=PIPELINE, sub=None)
        store.save(opened.token, conversation(2))
        await store.flush()

        racers = await asyncio.gather(
            store.open(opened.token, pipeline=PIPELINE, sub=None),
            other.open(opened.token, pipeline=PIPELINE, sub=None),
        )

    assert sorted(r.resumed for r in racers) == [False, True]


async def test_a_resume_before_the_last_save_was_written_gets_that_save(stores: Stores) -> None:
    async with stores.running() as store:
        opened = await store.open(None, pipeline=PIPELINE, sub=None)
        store.save(opened.token, conversation(1))
        await store.flush()
        store.save(opened.token, conversation(2))  # the session's last save: still queued

        resumed = await store.open(opened.token, pipeline=PIPELINE, sub=None)
        await store.flush()
        replayed = await store.open(opened.token, pipeline=PIPELINE, sub=None)

    assert resumed.conversation is not None and resumed.conversation.turns == 2
    assert not replayed.resumed, "the queued save did not bring the spent token back"


class HeldWrites(MemoryBackend):
    """A memory backend whose writes wait until the test lets them land (a slow Redis)."""

    def __init__(self) -> None:
        super().__init__(100)
        self.writing = asyncio.Event()
        self.land = asyncio.Event()

    async def put(self, writes: Sequence[Write]) -> None:
        self.writing.set()
        await self.land.wait()
        await super().put(writes)


async def test_a_resume_waits_for_a_write_of_its_conversation_in_flight() -> None:
    backend = HeldWrites()
    async with ConversationStore(MemoryStoreConfig(), backend=backend) as store:
        opened = await store.open(None, pipeline=PIPELINE, sub=None)
        store.save(opened.token, conversation(3))
        await backend.writing.wait()

        resuming = asyncio.create_task(store.open(opened.token, pipeline=PIPELINE, sub=None))
        await asyncio.sleep(0.05)
        waited = not resuming.done()
        backend.land.set()
        resumed = await resuming
        await store.flush()
        replayed = await store.open(opened.token, pipeline=PIPELINE, sub=None)

    assert waited
    assert resumed.conversation is not None and resumed.conversation.turns == 3
    assert not replayed.resumed, "the write that landed late did not bring the token back"


async def test_a_conversation_cannot_be_resumed_once_resume_ttl_s_passed(stores: Stores) -> None:
    async with stores.running({"resume_ttl_s": 1}) as store:
        opened = await store.open(None, pipeline=PIPELINE, sub=None)
        store.save(opened.token, conversation(1))
        expired_after = time.time() + 1
        await store.flush()

        await until(lambda: time.time() > expired_after)
        late = await store.open(opened.token, pipeline=PIPELINE, sub=None)

    assert not late.resumed


async def test_starting_without_a_token_starts_a_fresh_conversation(stores: Stores) -> None:
    async with stores.running() as store:
        opened = await store.open(None, pipeline=PIPELINE, sub=None)
        again = await store.open(None, pipeline=PIPELINE, sub=None)

    assert not opened.resumed and opened.conversation is None
    assert opened.token != again.token and len(opened.token) >= 43


# Whose conversation it is


async def saved_token(store: ConversationStore, sub: str | None = "alice") -> str:
    opened = await store.open(None, pipeline=PIPELINE, sub=sub)
    store.save(opened.token, conversation(2, sub=sub))
    await store.flush()
    return opened.token


async def test_a_token_for_another_pipeline_starts_a_fresh_conversation(stores: Stores) -> None:
    async with stores.running() as store:
        token = await saved_token(store)
        elsewhere = await store.open(token, pipeline="billing", sub="alice")

    assert not elsewhere.resumed


async def test_a_token_from_another_user_starts_a_fresh_conversation(stores: Stores) -> None:
    async with stores.running() as store:
        token = await saved_token(store, sub="alice")
        mallory = await store.open(token, pipeline=PIPELINE, sub="mallory")
        anonymous = await store.open(token, pipeline=PIPELINE, sub=None)

    assert not mallory.resumed and not anonymous.resumed


async def test_an_unknown_token_starts_a_fresh_conversation(stores: Stores) -> None:
    async with stores.running() as store:
        await saved_token(store)
        unknown = await store.open("A" * 43, pipeline=PIPELINE, sub="alice")

    assert not unknown.resumed


async def test_a_tampered_token_starts_a_fresh_conversation(stores: Stores) -> None:
    async with stores.running() as store:
        token = await saved_token(store)
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        tampered = [flipped, token[:-1], token + "A", token.upper(), "", "x" * 10_000, "../*"]
        opened = [await store.open(t, pipeline=PIPELINE, sub="alice") for t in tampered]

    assert not any(o.resumed for o in opened)


async def test_a_refused_token_still_resumes_for_its_owner(stores: Stores) -> None:
    async with stores.running() as store:
        token = await saved_token(store, sub="alice")
        await store.open(token, pipeline=PIPELINE, sub="mallory")
        await store.open(token, pipeline="billing", sub="alice")

        owner = await store.open(token, pipeline=PIPELINE, sub="alice")

    assert owner.resumed


# Saving off the voice path


async def test_many_saves_of_one_conversation_are_written_once_as_the_latest(
    stores: Stores,
) -> None:
    async with stores.running() as store:
        opened = await store.open(None, pipeline=PIPELINE, sub=None)
        writes = metric("voxgate_store_writes_total", backend=stores.kind)
        for turns in range(1, 101):
            store.save(opened.token, conversation(turns))
        await store.flush()
        written = metric("voxgate_store_writes_total", backend=stores.kind) - writes

        resumed = await store.open(opened.token, pipeline=PIPELINE, sub=None)

    assert written == 1
    assert resumed.conversation is not None and resumed.conversation.turns == 100


async def test_a_full_save_queue_drops_the_oldest_save_and_counts_it(stores: Stores) -> None:
    labels = {"backend": stores.kind, "reason": "overflow"}
    async with stores.running(max_pending=3) as store:
        tokens = [(await store.open(None, pipeline=PIPELINE, sub=None)).token for _ in range(5)]
        dropped = metric("voxgate_store_saves_dropped_total", **labels)
        for turns, token in enumerate(tokens, 1):
            store.save(token, conversation(turns))
        assert metric("voxgate_store_saves_dropped_total", **labels) - dropped == 2
        await store.flush()

        opened = [await store.open(t, pipeline=PIPELINE, sub=None) for t in tokens]

    assert [o.resumed for o in opened] == [False, False, True, True, True]


async def test_closing_the_store_writes_every_pending_save(stores: Stores) -> None:
    async with stores.running() as store:
        tokens = [(await store.open(None, pipeline=PIPELINE, sub=None)).token for _ in range(50)]
        for turns, token in enumerate(tokens, 1):
            store.save(token, conversation(turns))
        assert store.pending == 50
    # Leaving the block closed the store with all 50 saves still queued.

    async with stores.running() as later:
        opened = [await later.open(t, pipeline=PIPELINE, sub=None) for t in tokens]

    assert [o.conversation.turns if o.conversation else None for o in opened] == list(range(1, 51))


async def test_a_save_after_the_store_closed_is_dropped_and_counted(stores: Stores) -> None:
    labels = {"backend": stores.kind, "reason": "closed"}
    async with stores.running() as store:
        opened = await store.open(None, pipeline=PIPELINE, sub=None)
    dropped = metric("voxgate_store_saves_dropped_total", **labels)

    store.save(opened.token, conversation(1))  # a session that outlived the drain

    assert metric("voxgate_store_saves_dropped_total", **labels) - dropped == 1


async def test_a_store_used_before_it_was_entered_says_so() -> None:
    store = ConversationStore(MemoryStoreConfig())

    with pytest.raises(StoreNotRunning):
        await store.open(None, pipeline=PIPELINE, sub=None)
    with pytest.raises(StoreNotRunning):
        store.save("A" * 43, conversation(1))


# Memory


async def test_the_memory_store_forgets_the_least_recently_saved_beyond_its_bound() -> None:
    stores = Stores("memory")
    evicted = metric("voxgate_store_evictions_total", backend="memory")
    async with stores.running({"max_conversations": 3}) as store:
        tokens = [(await store.open(None, pipeline=PIPELINE, sub=None)).token for _ in range(5)]
        for token in tokens[:3]:
            store.save(token, conversation(1))
            await store.flush()
        store.save(tokens[0], conversation(2))  # the oldest is saved again: now the newest
        await store.flush()
        for token in tokens[3:]:
            store.save(token, conversation(1))
            await store.flush()

        opened = [await store.open(t, pipeline=PIPELINE, sub=None) for t in tokens]

    assert [o.resumed for o in opened] == [True, False, False, True, True]
    assert metric("voxgate_store_evictions_total", backend="memory") - evicted == 2


# Redis


async def test_redis_holds_only_hashes_of_tokens_and_every_record_expires(
    redis_server: RedisServer,
) -> None:
    stores = Stores("redis", redis_server.url)
    async with stores.running({"resume_ttl_s": 60}) as store:
        token = await saved_token(store)
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        keys = [key async for key in client.scan_iter(match=stores.prefix + "*")]
        records = [await client.get(key) for key in keys]
        ttls_ms = [await client.pttl(key) for key in keys]
    finally:
        await client.aclose()

    assert len(keys) == 1
    hashed = keys[0].decode().removeprefix(stores.prefix)
    assert len(hashed) == 64 and set(hashed) <= set("0123456789abcdef")
    assert token.encode() not in keys[0] and all(token.encode() not in r for r in records if r)
    assert all(0 < ttl <= 60_000 for ttl in ttls_ms)


async def test_a_killed_redis_starts_fresh_conversations_and_saves_wait_for_its_return(
    own_redis: RedisServer,
) -> None:
    stores = Stores("redis", own_redis.url)
    backend = {"backend": "redis"}
    async with stores.running(max_pending=3, retry_cap_s=0.2) as store:
        before = await saved_token(store, sub=None)
        errors = metric("voxgate_store_errors_total", **backend, op="save")
        dropped = metric("voxgate_store_saves_dropped_total", **backend, reason="overflow")
        with structlog.testing.capture_logs() as logs:
            own_redis.kill()
            async with asyncio.timeout(LOAD_BOUND_S):
                during = await store.open(before, pipeline=PIPELINE, sub=None)
            tokens = [(await store.open(None, pipeline=PIPELINE, sub=None)).token for _ in range(5)]
            for turns, token in enumerate(tokens, 1):
                store.save(token, conversation(turns))
            await until(lambda: metric("voxgate_store_errors_total", **backend, op="save") > errors)
            await until(
                lambda: metric("voxgate_store_errors_total", **backend, op="save") > errors + 2
            )

            own_redis.start()
            async with asyncio.timeout(10):
                await store.flush()
            store.save(tokens[0], conversation(9))
            await store.flush()
            after = [await store.open(t, pipeline=PIPELINE, sub=None) for t in tokens]

    assert not during.resumed
    assert metric("voxgate_store_saves_dropped_total", **backend, reason="overflow") - dropped == 2
    assert [o.conversation.turns if o.conversation else None for o in after] == [9, None, 3, 4, 5]
    events = [entry["event"] for entry in logs]
    assert events.count("store_unavailable") == 1 and events.count("store_recovered") == 1


async def test_a_save_queued_while_redis_is_down_survives_a_failed_resume(
    own_redis: RedisServer,
) -> None:
    stores = Stores("redis", own_redis.url)
    async with stores.running(retry_cap_s=0.1) as store:
        opened = await store.open(None, pipeline=PIPELINE, sub=None)
        own_redis.kill()
        store.save(opened.token, conversation(5))
        during = await store.open(opened.token, pipeline=PIPELINE, sub=None)
        own_redis.start()
        async with asyncio.timeout(10):
            await store.flush()
        later = await store.open(opened.token, pipeline=PIPELINE, sub=None)

    assert not during.resumed
    assert later.conversation is not None and later.conversation.turns == 5


async def test_a_hung_redis_costs_a_session_start_at_most_the_load_timeout(
    own_redis: RedisServer,
) -> None:
    stores = Stores("redis", own_redis.url)
    async with stores.running() as store:
        token = await saved_token(store, sub=None)
        unavailable = metric("voxgate_store_loads_total", backend="redis", outcome="unavailable")
        own_redis.pause()
        try:
            async with asyncio.timeout(LOAD_BOUND_S):
                during = await store.open(token, pipeline=PIPELINE, sub=None)
            store.save(during.token, conversation(4))  # returns at once: the writer waits
        finally:
            own_redis.resume()
        async with asyncio.timeout(10):
            await store.flush()
        later = await store.open(during.token, pipeline=PIPELINE, sub=None)

    assert not during.resumed
    assert metric("voxgate_store_loads_total", backend="redis", outcome="unavailable") == (
        unavailable + 1
    )
    assert later.conversation is not None and later.conversation.turns == 4


async def test_a_save_that_expires_while_redis_is_down_is_dropped(
    own_redis: RedisServer,
) -> None:
    stores = Stores("redis", own_redis.url)
    labels = {"backend": "redis", "reason": "expired"}
    async with stores.running({"resume_ttl_s": 1}, retry_cap_s=0.1) as store:
        opened = await store.open(None, pipeline=PIPELINE, sub=None)
        own_redis.kill()
        dropped = metric("voxgate_store_saves_dropped_total", **labels)
        store.save(opened.token, conversation(1))
        await until(lambda: metric("voxgate_store_saves_dropped_total", **labels) > dropped)
        own_redis.start()

        late = await store.open(opened.token, pipeline=PIPELINE, sub=None)

    assert not late.resumed and store.pending == 0


async def test_closing_while_redis_is_down_gives_up_at_the_drain_deadline(
    own_redis: RedisServer,
) -> None:
    stores = Stores("redis", own_redis.url)
    labels = {"backend": "redis", "reason": "shutdown"}
    dropped = metric("voxgate_store_saves_dropped_total", **labels)
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(5):
            async with stores.running(drain_timeout_s=0.3) as store:
                opened = await store.open(None, pipeline=PIPELINE, sub=None)
                own_redis.kill()
                store.save(opened.token, conversation(1))

    assert metric("voxgate_store_saves_dropped_total", **labels) - dropped == 1
    assert any(e["event"] == "store_saves_lost" and e["saves"] == 1 for e in logs)


async def test_logs_never_show_the_redis_password() -> None:
    config = RedisStoreConfig(url=f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    with structlog.testing.capture_logs() as logs:
        async with ConversationStore(config) as store:
            await store.open("A" * 43, pipeline=PIPELINE, sub=None)

    warnings = [e for e in logs if e["event"] == "store_unavailable"]
    assert len(warnings) == 1 and warnings[0]["where"].startswith("redis://:***@127.0.0.1:")
    assert "hunter2" not in str(logs) and "hunter2" not in repr(config)


# Configuration

PIPELINES_MD = """
store:
  provider: redis
  url: redis://127.0.0.1:6379/0
  resume_ttl_s: 300
"""


class PipelineStore(msgspec.Struct):
    store: StoreConfig


def test_the_store_block_of_pipelines_md_parses() -> None:
    parsed = msgspec.yaml.decode(PIPELINES_MD, type=PipelineStore).store
    memory = msgspec.convert({"provider": "memory"}, StoreConfig)

    assert parsed == RedisStoreConfig(url="redis://127.0.0.1:6379/0", resume_ttl_s=300)
    assert memory == MemoryStoreConfig(resume_ttl_s=300, load_timeout_ms=200)


@pytest.mark.parametrize(
    "block",
    [
        {"provider": "redis", "ttl": 300},
        {"provider": "memory", "url": "redis://127.0.0.1:6379/0"},
        {"provider": "redis", "url": "http://127.0.0.1:6379"},
        {"provider": "memcached"},
        {"provider": "memory", "resume_ttl_s": 0},
    ],
)
def test_a_store_block_with_a_wrong_key_or_value_is_refused(block: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(block, StoreConfig)


def test_every_store_key_is_described_and_the_url_is_marked_secret() -> None:
    _, components = msgspec.json.schema_components([StoreConfig])
    fields = {
        (name, key): spec
        for name, block in components.items()
        for key, spec in block["properties"].items()
        if key != "provider"
    }

    assert fields and all(spec.get("description") for spec in fields.values())
    assert "secret" in fields["RedisStoreConfig", "url"]["description"].lower()


# The app's stores


async def test_the_app_runs_one_store_per_store_block_and_closing_flushes_them() -> None:
    short, default = MemoryStoreConfig(resume_ttl_s=60), MemoryStoreConfig()
    async with AppStores() as stores:
        await stores.start([default, short, default])
        first, again = await stores.get(default), await stores.get(default)
        other = await stores.get(short)
        assert first is not None and other is not None and first is again and other is not first
        opened = await first.open(None, pipeline=PIPELINE, sub=None)
        first.save(opened.token, conversation(2))
        await first.flush()
        # A reload that changes only the expiry keeps this process's conversations.
        found = await other.open(opened.token, pipeline=PIPELINE, sub=None)
        first.save(found.token, conversation(3))
    assert found.resumed
    assert first.pending == 0, "closing the app's stores wrote what was pending"
    assert await stores.get(default) is None, "no store once the app stopped"


async def test_a_store_of_a_block_first_seen_after_a_reload_is_built_at_its_first_session() -> None:
    async with AppStores() as stores:
        late = await stores.get(MemoryStoreConfig(max_conversations=5))
        assert late is not None
        opened = await late.open(None, pipeline=PIPELINE, sub=None)
    assert not opened.resumed and await stores.get(MemoryStoreConfig()) is None
