"""Who may open a session on a pipeline: HS256 tokens minted by the app's backend.

A token is checked before any provider is touched, so a stranger costs the gateway one JSON
decode and nothing billable. It must be signed with the pipeline's `auth.secret`, unexpired,
and name the pipeline it is for (a token for the free demo must not open the paid route).
"""

from __future__ import annotations

import time

import jwt

from gateway.errors import ProtocolViolation
from gateway.pipeline import AuthMode, Pipeline
from gateway.protocol import CloseCode, ErrorCode

ALGORITHM = "HS256"


def mint_token(secret: str, pipeline: str, ttl_s: int, sub: str | None = None) -> str:
    claims: dict[str, object] = {"pipeline": pipeline, "exp": int(time.time()) + ttl_s}
    if sub is not None:
        claims["sub"] = sub
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def check_token(pipeline: Pipeline, token: str | None) -> None:
    """Raises ProtocolViolation (close 1008, error `unauthorized`) unless the token admits."""
    if pipeline.auth.mode is AuthMode.NONE:
        return
    if not token:
        raise _unauthorized("this pipeline needs a token: send session_start.auth.token")
    assert pipeline.auth.secret is not None  # the loader rejects token mode without one
    try:
        claims = jwt.decode(
            token,
            pipeline.auth.secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "pipeline"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired: ask your backend for a new one") from None
    except jwt.InvalidTokenError as e:
        raise _unauthorized(f"invalid token ({e})") from None
    if claims["pipeline"] != pipeline.name:
        raise _unauthorized(f"token is for pipeline {claims['pipeline']!r}, not {pipeline.name!r}")


def _unauthorized(reason: str) -> ProtocolViolation:
    return ProtocolViolation(CloseCode.POLICY, reason, ErrorCode.UNAUTHORIZED)
