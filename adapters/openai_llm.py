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

from adapters.base import ChatMessage, ToolCall, ToolSpec
from adapters.openai_client import OPENAI_HOSTS, OpenAIAdapter
from gateway.config import LLMBlock

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

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

    async def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncGenerator[str | ToolCall, None]:
        from openai import omit

        calls = _CallAssembler()
        with self.translated_errors():
            self.used()
            stream = await self._client.chat.completions.create(
                timeout=self._timeout_s,
                model=self._model,
                messages=[_message(m) for m in messages],
                tools=[_tool(t) for t in tools] if tools else omit,
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
                    delta = chunk.choices[0].delta
                    if delta.content:
                        yield delta.content
                    for part in delta.tool_calls or ():
                        function = part.function
                        calls.add(
                            part.index,
                            part.id,
                            function.name if function else None,
                            function.arguments if function else None,
                        )
        for call in calls.done():
            yield call


class _CallAssembler:
    """Tool calls arrive in pieces, keyed by `index`: the id and name in the first delta of
    each, the arguments' JSON text spread over the following ones."""

    def __init__(self) -> None:
        self._parts: dict[int, list[str]] = {}

    def add(self, index: int, call_id: str | None, name: str | None, arguments: str | None) -> None:
        parts = self._parts.setdefault(index, ["", "", ""])
        parts[0] += call_id or ""
        parts[1] += name or ""
        parts[2] += arguments or ""

    def done(self) -> list[ToolCall]:
        return [
            ToolCall(id=call_id or f"call_{index}", name=name, arguments=arguments or "{}")
            for index, (call_id, name, arguments) in sorted(self._parts.items())
        ]


def _tool(spec: ToolSpec) -> ChatCompletionToolParam:
    return {
        "type": "function",
        "function": {
            "name": spec.name,
            "description": spec.description,
            "parameters": spec.parameters,
        },
    }


def _message(message: ChatMessage) -> ChatCompletionMessageParam:
    match message.role:
        case "system":
            return {"role": "system", "content": message.content}
        case "user":
            return {"role": "user", "content": message.content}
        case "tool":
            return {
                "role": "tool",
                "content": message.content,
                "tool_call_id": message.tool_call_id or "",
            }
        case "assistant" if message.tool_calls:
            return {
                "role": "assistant",
                "content": message.content or None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for call in message.tool_calls
                ],
            }
        case "assistant":
            return {"role": "assistant", "content": message.content}
