"""Who may open a session on a pipeline: HS256 tokens minted by the app's backend.

A token is checked before any provider is touched, so a stranger costs the gateway one JSON
decode and nothing billable. It must be signed with the pipeline's `auth.secret`, unexpired,
and name the pipeline it is for (a token for the free demo must not open the paid route).
"""

from __future__ import annotations

import os
import time

import jwt

from gateway.config import AuthMode
from gateway.errors import ProtocolViolation
from gateway.pipeline import Pipeline
from gateway.protocol import CloseCode, ErrorCode

ALGORITHM = "HS256"


def mint_token(secret: str, pipeline: str, ttl_s: int, sub: str | None = None) -> str:
    claims: dict[str, object] = {"pipeline": pipeline, "exp": int(time.time()) + ttl_s}
    if sub is not None:
        claims["sub"] = sub
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def check_token(pipeline: Pipeline, token: str | None) -> str | None:
    """Raises ProtocolViolation (close 1008, error `unauthorized`) unless the token admits;
    returns its `sub` (who the session is for: a resumed conversation must be theirs), None
    without auth or when the token names no one.

    The reason says in words what is wrong with the token, never the JWT library's own text
    (which leaks its internals and helps no one fix a client).
    """
    if pipeline.auth.mode is AuthMode.NONE:
        return None
    if not token:
        raise _unauthorized("this pipeline needs a token: send session_start.auth.token")
    secret = pipeline.auth.resolved_secret(os.environ)
    assert secret is not None, "a session never starts on a route without its secret"
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "pipeline"]},
        )
    except jwt.InvalidTokenError as e:
        raise _unauthorized(_why_refused(e)) from None
    if claims["pipeline"] != pipeline.name:
        raise _unauthorized(
            f"token is for another pipeline ({claims['pipeline']!r}), not {pipeline.name!r}: "
            "ask your backend for a token for this one"
        )
    sub = claims.get("sub")
    return None if sub is None else str(sub)


def _why_refused(error: jwt.InvalidTokenError) -> str:
    match error:
        case jwt.ExpiredSignatureError():
            return "token expired: ask your backend for a new one"
        case jwt.InvalidSignatureError():
            return "bad signature: the token was not signed with this pipeline's secret"
        case jwt.InvalidAlgorithmError():
            return f"token is not signed with {ALGORITHM}: mint it with `voxgate token`"
        case jwt.MissingRequiredClaimError(claim=claim):
            return f"token has no `{claim}` claim: it needs `pipeline` and `exp`"
        case jwt.ImmatureSignatureError():
            return "token is not valid yet (its `nbf` or `iat` is in the future)"
        case jwt.DecodeError():
            return "malformed token: not a JWT (three base64url parts joined by dots)"
    return "invalid token: mint one with `voxgate token` or your backend"


def _unauthorized(reason: str) -> ProtocolViolation:
    return ProtocolViolation(CloseCode.POLICY, reason, ErrorCode.UNAUTHORIZED)
