"""The gateway's exception tree, so callers catch exactly what they can handle.

GatewayError
├── PipelineError           a pipeline file is invalid (carries every problem found)
├── ProtocolViolation       a client broke a rule that ends the session (has a close code)
├── SlowConsumer            a client stopped reading; its outbound queue stayed full
├── AtCapacity              no session slot for an authenticated client (close 1013)
├── BadAudio                input audio that cannot be decoded
└── ProviderError           a provider failed in a way a retry or fallback may fix
    └── PermanentProviderError   auth or request errors: retrying will not help
"""

from __future__ import annotations

from dataclasses import dataclass


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


@dataclass(frozen=True)
class PipelineProblem:
    """One thing wrong in a pipeline file, located precisely enough to fix it."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class PipelineError(GatewayError):
    """Every problem found in one or more pipeline files, reported together."""

    def __init__(self, problems: list[PipelineProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ProtocolViolation(GatewayError):
    """The client broke a rule the protocol answers by closing the socket.

    `error_code` is the protocol's `error.code` sent (as fatal) just before the close.
    """

    def __init__(self, close_code: int, reason: str, error_code: str = "bad_message") -> None:
        self.close_code = close_code
        self.reason = reason
        self.error_code = error_code
        super().__init__(f"{close_code}: {reason}")


class SlowConsumer(GatewayError):
    """The client did not read for `slow_client_timeout_s` while output was waiting."""


class AtCapacity(GatewayError):
    """The route or the process has no session slot left, or the server is draining."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BadAudio(GatewayError):
    """The client's audio does not decode as the codec it announced."""


class ProviderError(GatewayError):
    """A provider failed; a retry or the stage's fallback provider may succeed."""

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        super().__init__(f"{provider}: {message}")


class PermanentProviderError(ProviderError):
    """A provider refused the request (credentials, bad request): retrying will not help."""


class ClientGone(GatewayError):
    """The socket closed under us; there is no one left to tell."""


def status_error(
    provider: str, status: int | None, detail: str, key: str, request: str
) -> ProviderError:
    """How failover must treat an HTTP status a provider answered with.

    401/403: our credentials, permanent (`key` says what to check). Other 4xx but 408 and
    429: our request, permanent (`request` names the settings to check). The rest (429, 5xx,
    no status at all): the provider's trouble, worth the fallback and a later retry.
    """
    what = ": ".join(str(part) for part in (status, detail) if part) or "no details"
    if status in (401, 403):
        return PermanentProviderError(provider, f"refused the API key ({what}): check {key}")
    if status == 429:
        return ProviderError(provider, f"rate limited ({what}): too many concurrent requests")
    if status is not None and 400 <= status < 500 and status != 408:
        return PermanentProviderError(provider, f"rejected the request ({what}): check {request}")
    return ProviderError(provider, f"failed ({what})")
