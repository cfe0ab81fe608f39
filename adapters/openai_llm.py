"""Chat Completions, streamed: OpenAI, or any compatible server (vLLM, Groq, Together, Ollama,
llama.cpp) through `base_url`.

Chat Completions rather than the Responses API because it is the one every compatible server
implements. The reply's length limit goes out as `max_completion_tokens` to OpenAI (its
reasoning models reject `max_tokens`) and as `max_tokens` elsewhere (the field compatible
servers all read); either set in `options` replaces ours.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from msgspec import Meta

from adapters.base import ChatMessage
from adapters.openai_client import OPENAI_HOSTS, OpenAIAdapter
from gateway.config import LLMBlock

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

_LENGTH_LIMITS = frozenset({"max_tokens", "max_completion_tokens"})


class OpenAILLM(LLMBlock, tag="openai", frozen=True):
    """Chat Completions streaming; any OpenAI-compatible server through `base_url`."""

    key_env = "OPENAI_API_KEY"
    own_hosts = OPENAI_HOSTS

    model: Annotated[
        str | None,
        Meta(
            description="A chat model, e.g. `gpt-4o-mini`, or any model a compatible server serves."
        ),
    ] = "gpt-4o-mini"

    def open(self) -> OpenAIChat:
        return OpenAIChat(self)


class OpenAIChat(OpenAIAdapter):
    def __init__(self, config: OpenAILLM) -> None:
        super().__init__(config, "llm")
        self._config = config

    def request_body(self) -> dict[str, Any]:
        """Fields beyond the SDK's typed arguments: the length limit, then `options` as is."""
        options = self._config.options
        limit = "max_completion_tokens" if self.official else "max_tokens"
        ours = {} if _LENGTH_LIMITS & options.keys() else {limit: self._config.max_tokens}
        return {**ours, **options}

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        with self.translated_errors():
            self.used()
            stream = await self._client.chat.completions.create(
                timeout=self._timeout_s,
                model=self._model,
                messages=[_message(m) for m in messages],
                temperature=self._config.temperature,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=self.request_body(),
            )
            # Leaving this block for any reason (the end, an error, the caller's aclose or
            # cancellation) closes the response, which ends the request on the server.
            async with stream:
                content_type = stream.response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    raise self.wrong_content("/chat/completions", content_type)
                async for chunk in stream:
                    if not chunk.choices:  # the usage chunk that ends the stream
                        continue
                    text = chunk.choices[0].delta.content
                    if text:
                        yield text


def _message(message: ChatMessage) -> ChatCompletionMessageParam:
    match message.role:
        case "system":
            return {"role": "system", "content": message.content}
        case "user":
            return {"role": "user", "content": message.content}
        case "assistant":
            return {"role": "assistant", "content": message.content}
