"""Token auth on a real socket: a session opens only with a valid token for its pipeline."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from prometheus_client import REGISTRY

from gateway import protocol
from gateway.client import VoiceClient
from gateway.errors import PipelineError
from gateway.loader import load_pipeline
from gateway.security import mint_token
from tests.conftest import make_pipeline, running_gateway
from tests.test_session import closed_with

SECRET = "s3cret-for-tests-0123456789abcdef"
GUARDED = make_pipeline(auth={"mode": "token", "secret": SECRET})


def test_short_secret_is_rejected_at_load(tmp_path: Path) -> None:
    short = tmp_path / "short.yaml"
    short.write_text(
        "auth:\n  mode: token\n  secret: ${S}\n"
        "stt: {provider: scripted}\nllm: {provider: scripted}\ntts: {provider: scripted}\n"
    )
    with pytest.raises(PipelineError) as error:
        load_pipeline(short, {"S": "tiny"})
    assert "short.yaml:3:" in str(error.value) and "openssl rand" in str(error.value)
    assert "tiny" not in str(error.value), "a secret must never be printed"


def start_with(token: str | None) -> protocol.SessionStart:
    return protocol.SessionStart(
        input=protocol.InputFormat(codec=protocol.InputCodec.PCM16, sample_rate=16000),
        auth=protocol.Auth(token=token) if token is not None else None,
    )


def token_with_header(header: bytes) -> str:
    """A JWT-shaped token whose header is `header` (base64url): not JSON, not even UTF-8."""
    import base64

    return base64.urlsafe_b64encode(header).decode().rstrip("=") + ".e30.c2ln"


# Minted at collection, long before these tests run in a full suite: an hour of validity.
@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "needs a token"),
        ("not-a-jwt", "malformed token"),
        (token_with_header(b"\xb7\xfa\x00garbage"), "malformed token"),
        (mint_token("another-secret-0123456789abcdefghij", "test", 3600), "bad signature"),
        (mint_token(SECRET, "test", -10), "expired"),
        (mint_token(SECRET, "other-pipeline", 3600), "another pipeline ('other-pipeline')"),
        (jwt.encode({"exp": int(time.time()) + 3600}, SECRET), "no `pipeline` claim"),
        (jwt.encode({"pipeline": "test"}, SECRET), "no `exp` claim"),
    ],
)
async def test_bad_token_gets_unauthorized_then_1008(token: str | None, reason: str) -> None:
    async with running_gateway(GUARDED) as gw, VoiceClient.connect(gw.url()) as client:
        await client.send(start_with(token))
        error = await client.expect(protocol.Error)
        code, _ = await closed_with(client)
    assert error.code == "unauthorized" and error.fatal and reason in error.message
    assert "codec" not in error.message and "segments" not in error.message, "PyJWT's own words"
    assert code == 1008


async def test_valid_token_in_session_start_or_query_opens_the_session() -> None:
    token = mint_token(SECRET, "test", 60, sub="user-1")
    async with running_gateway(GUARDED) as gw:
        async with VoiceClient.connect(gw.url()) as client:
            await client.send(start_with(token))
            started = await client.expect(protocol.SessionStarted)
            assert started.pipeline == "test"
        async with VoiceClient.connect(gw.url() + f"?token={token}") as client:
            await client.send(start_with(None))
            await client.expect(protocol.SessionStarted)


def refused(pipeline: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "voxgate_sessions_refused_total", {"pipeline": pipeline, "reason": reason}
    )
    return value or 0.0


async def test_a_token_route_without_its_secret_refuses_every_session_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VOXGATE_TOKEN_SECRET", raising=False)
    before = refused("test", "provider_refused")
    secretless = make_pipeline(auth={"mode": "token"})
    async with running_gateway(secretless) as gw, VoiceClient.connect(gw.url()) as client:
        await client.send(start_with("any-token"))
        error = await client.expect(protocol.Error)
        code, _ = await closed_with(client)
    assert error.fatal and "VOXGATE_TOKEN_SECRET" in error.message and code == 1011
    assert refused("test", "provider_refused") == before + 1


async def test_a_session_refused_at_start_is_counted_by_reason() -> None:
    before = refused("test", "unauthorized")
    async with running_gateway(GUARDED) as gw, VoiceClient.connect(gw.url()) as client:
        await client.send(start_with("not-a-jwt"))
        await closed_with(client)
    assert refused("test", "unauthorized") == before + 1
