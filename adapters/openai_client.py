"""What the three OpenAI adapters share: the client built from a pipeline block, its lifecycle,
and the translation of the SDK's errors into ours.

One place, so that the three stages fail the same way: a refused key is refused for all of
them, and the failover layer only ever sees `ProviderError`/`PermanentProviderError`. The SDK's
own retries are off (`max_retries=0`): the failover chain decides when to try again and where,
and a retry hidden inside the SDK would spend the turn's `timeout_ms` on a provider that failed.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import anyio
import httpx2
import openai

from gateway import pipeline
from gateway.errors import PermanentProviderError, ProviderError

PROVIDER = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
KEYLESS = "none"
"""Sent to a self-hosted server configured without a key (Ollama, vLLM without `--api-key`):
the SDK refuses to run without one, and these servers ignore it."""

Block = pipeline.OpenAILLM | pipeline.OpenAITTS | pipeline.OpenAISTT

_BROKEN_STREAM = (httpx2.HTTPError, httpx2.StreamError, ssl.SSLError, anyio.EndOfStream)
"""What reading a streamed body raises when the connection breaks: the SDK wraps these in
`APIConnectionError` for SSE streams, but not for raw bodies such as speech audio."""


class OpenAIAdapter:
    """One `AsyncOpenAI` client per session, closed with it; `stage` names the pipeline key
    (`llm`, `tts`, `stt`) that error messages point at."""

    def __init__(self, config: Block, stage: str) -> None:
        self._stage = stage
        self._key_variable = config.key_variable()
        self._base_url = config.base_url or DEFAULT_BASE_URL
        self._host = urlsplit(self._base_url).netloc or self._base_url
        self._timeout_ms = config.timeout_ms
        if not config.model:
            raise PermanentProviderError(PROVIDER, f"{stage}.model is not set: name a model")
        self._model: str = config.model
        self._client = openai.AsyncOpenAI(
            api_key=_api_key(config, stage),
            base_url=self._base_url,
            timeout=config.timeout_ms / 1000,
            max_retries=0,
        )

    @property
    def official(self) -> bool:
        """OpenAI's own API (or Azure's), as opposed to a compatible server."""
        return _is_official(self._base_url)

    async def start(self) -> None:
        """Nothing to connect: HTTP connections open with the first request."""

    async def aclose(self) -> None:
        await self._client.close()

    async def probe(self) -> None:
        """`GET /models`: cheap, authenticated, and served by compatible servers too (Ollama,
        vLLM, llama.cpp), unlike `/models/{id}`. Unparsed: the SDK fails on a non-JSON page
        with its own internal errors, and a probe must only ever raise ours."""
        with self.translated_errors():
            response = await self._client.models.with_raw_response.list()
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            raise self.wrong_content("/models", content_type)

    def wrong_content(self, endpoint: str, content_type: str) -> ProviderError:
        """A 200 with the wrong kind of body: a proxy's page, or not an OpenAI API at all."""
        return ProviderError(
            PROVIDER,
            f"{self._host} answered {endpoint} with {content_type or 'an untyped body'}: "
            f"is {self._stage}.base_url an OpenAI-compatible API?",
        )

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """Raise ours for the SDK's (and for raw httpx2 errors of streamed bodies)."""
        stage, host = self._stage, self._host
        try:
            yield
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            # The server's message is left out: a compatible server may echo the key.
            env = f" / {self._key_variable}" if self._key_variable else ""
            raise PermanentProviderError(
                PROVIDER,
                f"{host} refused the API key ({e.status_code}): check {stage}.api_key{env}",
            ) from None
        except (
            openai.BadRequestError,
            openai.NotFoundError,
            openai.UnprocessableEntityError,
        ) as e:
            raise PermanentProviderError(
                PROVIDER,
                f"{host} rejected the request ({e.message}): check {stage}.model "
                f"({self._model!r}) and {stage}.options",
            ) from None
        except openai.RateLimitError as e:
            raise ProviderError(PROVIDER, f"{host} is rate limiting us ({e.message})") from None
        except openai.APIStatusError as e:
            raise ProviderError(PROVIDER, f"{host} failed ({e.message})") from None
        except (openai.APITimeoutError, httpx2.TimeoutException):
            raise ProviderError(
                PROVIDER, f"no answer from {host} within {stage}.timeout_ms ({self._timeout_ms} ms)"
            ) from None
        except openai.APIConnectionError as e:
            cause = f" ({e.__cause__})" if e.__cause__ is not None else ""
            raise ProviderError(
                PROVIDER,
                f"lost or could not open the connection to {self._base_url}{cause}: "
                f"check {stage}.base_url and the network",
            ) from None
        except _BROKEN_STREAM as e:
            raise ProviderError(
                PROVIDER, f"the stream from {host} broke off ({type(e).__name__}: {e})"
            ) from None
        except json.JSONDecodeError as e:
            raise ProviderError(
                PROVIDER,
                f"{host} answered with something that is not JSON ({e}): "
                f"is {stage}.base_url an OpenAI-compatible API?",
            ) from None
        except openai.OpenAIError as e:  # an `error` object inside a stream, and the rest
            raise ProviderError(PROVIDER, f"{host} reported an error: {e}") from None


def _api_key(config: Block, stage: str) -> str:
    """The block's key; OPENAI_API_KEY only for OpenAI itself, so that OpenAI's key is never
    sent to another host a pipeline points `base_url` at (`OpenAIBlock.key_variable`)."""
    key = config.resolved_key(os.environ)
    if key:
        return key
    if config.key_variable() is None:
        return KEYLESS
    raise PermanentProviderError(
        PROVIDER, f"no API key: set OPENAI_API_KEY on the server (or {stage}.api_key)"
    )


def _is_official(base_url: str) -> bool:
    host = urlsplit(base_url).netloc or base_url
    return host == "api.openai.com" or host.endswith(".openai.azure.com")
