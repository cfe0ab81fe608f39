"""The pipeline file's `store:` block: where conversations live between sockets.

A tagged union on `provider`, like the provider blocks, so `memory` and `redis` each take exactly
their own keys; closed to unknown keys and immutable like every config struct, and described
field by field because the JSON Schema and docs/pipelines.md are generated from these types.
`resume_ttl_s` and `load_timeout_ms` are common to both: how long a resume token lives after a
conversation's last save, and how long a session start may wait for the store before it gives
up and starts a fresh conversation.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from msgspec import Meta

from gateway.config import Config

MASK = "***"


class StoreBlock(Config, frozen=True, tag_field="provider"):
    """Where conversations live between sockets, so a client can resume one."""

    resume_ttl_s: Annotated[
        int,
        Meta(
            ge=1,
            le=7 * 86_400,
            description=(
                "Seconds a conversation can be resumed after its last save (its session's "
                "end): the life of `session_started.resume_token`."
            ),
        ),
    ] = 300
    load_timeout_ms: Annotated[
        int,
        Meta(
            ge=1,
            le=10_000,
            description=(
                "The most a session start waits for the store to find the conversation to "
                "resume; past it (a slow or unreachable store) the session starts a fresh one."
            ),
        ),
    ] = 200


class MemoryStoreConfig(StoreBlock, tag="memory", frozen=True):
    """This process's memory: a conversation survives a dropped socket, not a restart, a
    deploy or a reconnect that lands on another machine."""

    max_conversations: Annotated[
        int,
        Meta(
            ge=1,
            le=10_000_000,
            description=(
                "Conversations kept at most; beyond it the least recently saved is forgotten "
                "first, so a flood of sessions cannot grow memory without bound."
            ),
        ),
    ] = 10_000


class RedisStoreConfig(StoreBlock, tag="redis", frozen=True):
    """A Redis server every gateway process shares: a conversation survives drops, deploys and
    machines."""

    url: Annotated[
        str,
        Meta(
            pattern=r"^(redis|rediss|unix)://",
            description=(
                "The Redis server: `redis://[[user]:password@]host:port/db`, `rediss://` for "
                "TLS, `unix:///path/redis.sock?db=0`. Secret-like: it may hold a password, so "
                "write `${REDIS_URL}` rather than the URL itself; logs show it with the "
                "password masked."
            ),
        ),
    ] = "redis://127.0.0.1:6379/0"
    key_prefix: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=128,
            description=(
                "Put before every key the gateway writes (each key is then a SHA-256 hash, "
                "never a token), to share a Redis database with other applications."
            ),
        ),
    ] = "voxgate:conv:"

    def redacted_url(self) -> str:
        """`url` as logs and errors may show it: any password replaced by `***`."""
        return redacted(self.url)

    def __repr__(self) -> str:
        # The default repr would print the password wherever the config is logged or shown.
        return (
            f"RedisStoreConfig(url={self.redacted_url()!r}, key_prefix={self.key_prefix!r}, "
            f"resume_ttl_s={self.resume_ttl_s}, load_timeout_ms={self.load_timeout_ms})"
        )


StoreConfig = MemoryStoreConfig | RedisStoreConfig


def redacted(url: str) -> str:
    """A Redis URL without its secrets: the userinfo password and a `password=` query value."""
    parts = urlsplit(url)
    if parts.password is None and "password" not in parts.query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        netloc = f"{user}:{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if "password" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
