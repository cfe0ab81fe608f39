"""How a tool call fails: one exception with a kind, so the toolbox can count and log every
failure the same way and tell the model what went wrong instead of failing the reply."""

from __future__ import annotations

from urllib.parse import urlsplit


class ToolFailed(Exception):
    """A tool call that did not produce a result; `kind` labels metrics and logs.

    The message goes to the model and to the logs as it is: plain words about what was wrong,
    and never a header value (they carry the tools' secrets)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def place(url: str) -> str:
    """`url` as messages name it: host and path only, since a user name, password or query
    string may carry a secret."""
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] + parts.path
