"""Resume tokens, and the storage keys derived from them.

A token is 32 random bytes (`secrets.token_urlsafe`: 43 URL-safe characters), the only thing a
client needs to resume, so it is never stored: the key is the SHA-256 of the token *together
with* the pipeline and the `sub` it is bound to, so a Redis dump holds no usable token, and a
token presented on another pipeline or by another user hashes to a key that does not exist. No
lookup can then find, consume or even learn about someone else's conversation. The three parts
are hashed as one msgpack array, which keeps them apart unambiguously (a `sub` of None is not
the empty string). A plain hash suffices because the token is uniformly random and long: no
dictionary or brute force can invert it, so no server-side pepper is needed.
"""

from __future__ import annotations

import hashlib
import re
import secrets

import msgspec

TOKEN_BYTES = 32
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_parts = msgspec.msgpack.Encoder()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def well_formed(token: str) -> bool:
    """Whether `token` could be one of ours: anything else is refused without a lookup."""
    return _TOKEN.fullmatch(token) is not None


def storage_key(token: str, pipeline: str, sub: str | None) -> str:
    """The key a conversation is stored under (hex SHA-256 of pipeline, sub and token)."""
    return hashlib.sha256(_parts.encode((pipeline, sub, token))).hexdigest()
