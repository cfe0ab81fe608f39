"""The `redis` backend: conversations in a Redis server every gateway process shares.

Each record is one string key, `key_prefix` + the hashed key, written with `SET ... PX` so Redis
itself forgets it at `expires_at`. A resume moves the record to the new token's key with one
Lua script (GET, then RENAME, which keeps the TTL): atomic, so of two sessions racing with one
token exactly one gets the conversation, and one round trip, so a resume costs a session start
about what a GET does. Saves go out in batches through one pipelined round trip.

redis-py's own retries are cut to one immediate retry: enough to replace a pooled connection
that a Redis restart left dead, without its default backoff (up to 10 retries, seconds apart)
holding a session start or the store's writer; the store bounds every call with its own
timeouts and backs off itself. The pool blocks (up to the command timeout) rather than failing
when all its connections are busy, so a burst of session starts waits its turn instead of
looking like an outage. A single Redis (or a primary) is assumed: the move touches two keys,
which Redis Cluster would only allow within one hash slot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.store.backend import StoreUnavailable, Write

_MOVE = """
local record = redis.call('GET', KEYS[1])
if record then
  redis.call('RENAME', KEYS[1], KEYS[2])
end
return record
"""


class RedisBackend:
    name = "redis"

    def __init__(
        self,
        url: str,
        key_prefix: str,
        clock: Callable[[], float] = time.time,
        *,
        connect_timeout_s: float = 1.0,
        command_timeout_s: float = 2.0,
        max_connections: int = 64,
    ) -> None:
        self._prefix = key_prefix
        self._clock = clock
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=command_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=command_timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self._client = Redis.from_pool(pool)
        self._move = self._client.register_script(_MOVE)

    async def take(self, key: str, new_key: str) -> bytes | None:
        try:
            record = await self._move(keys=[self._prefix + key, self._prefix + new_key])
        except RedisError as error:
            raise StoreUnavailable(f"redis: {error}") from error
        if record is not None and not isinstance(record, bytes):
            raise StoreUnavailable(f"redis: the move script answered {type(record).__name__}")
        return record

    async def put(self, writes: Sequence[Write]) -> None:
        now = self._clock()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, record, expires_at in writes:
                    ttl_ms = max(1, int((expires_at - now) * 1000))
                    pipe.set(self._prefix + key, record, px=ttl_ms)
                await pipe.execute()
        except RedisError as error:
            raise StoreUnavailable(f"redis: {error}") from error

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except RedisError as error:
            raise StoreUnavailable(f"redis: {error}") from error

    async def aclose(self) -> None:
        await self._client.aclose()
