"""Chat Completions, streamed: OpenAI, or any compatible server (vLLM, Groq, Together, Ollama,
llama.cpp) through `base_url`.

Chat Completions rather than the Responses API because it is the one every compatible server
implements. The reply's length limit goes out as `max_completion_tokens` to OpenAI (its
reasoning models reject `max_tokens`) and as `max_tokens` elsewhere (the field compatible
servers all read); either set in `options` replaces ours.

The request goes out through the SDK's own `post` (its documented way to send a body as is),
not `chat.completions.create`: `create` first walks every message through the SDK's typed
parameter transform, a pass that renames nothing in the text and tool-call messages built here
but cost ~5 ms of CPU per request at a 20-turn history (half of a cloud turn's server CPU, see
bench/README.md). Auth, timeouts, the connection pool, error types, the server-sent events
and errors inside the stream are the SDK's as before; tests/test_openai.py checks that the
skipped transform would leave our bodies unchanged. The body goes as `content`, JSON encoded
by msgspec (the SDK's `json.dumps` with its own encoder class: 37 against 4 us at a 20-turn
history). The chunks come as parsed JSON and become msgspec Structs (`_Chunk`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

from adapters.base import ChatMessage, ToolCall, ToolSpec
from adapters.openai_client import OPENAI_HOSTS, PROVIDER, OpenAIAdapter, import_sdk
from gateway.config import LLMBlock
from gateway.errors import ProviderError

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

_LENGTH_LIMITS = frozenset({"max_tokens", "max_completion_tokens"})
_encode = msgspec.json.Encoder().encode


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

    def preload(self) -> None:
        import_sdk()
        msgspec.convert({"choices": []}, _Chunk)  # msgspec reads the types on first use


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

    def body(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> dict[str, Any]:
        """The request's JSON, in the API's own field names."""
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [_message(m) for m in messages],
            "temperature": self._config.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = [_tool(t) for t in tools]
        return {**body, **self.request_body()}

    async def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncGenerator[str | ToolCall, None]:
        from openai import AsyncStream

        calls = _CallAssembler()
        with self.translated_errors():
            stream = await self._client.post(
                "/chat/completions",
                cast_to=object,
                content=_encode(self.body(messages, tools)),
                options={"timeout": self._timeout_s},
                stream=True,
                stream_cls=AsyncStream[object],
            )
            # Leaving this block for any reason (the end, an error, the caller's aclose or
            # cancellation) closes the response, which ends the request on the server.
            async with stream:
                content_type = stream.response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    raise self.wrong_content("/chat/completions", content_type)
                async for data in stream:
                    chunk = self._chunk(data)
                    if not chunk.choices:  # the usage chunk that ends the stream
                        continue
                    delta = chunk.choices[0].delta
                    if delta is None:
                        continue
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

    def _chunk(self, data: object) -> _Chunk:
        try:
            return msgspec.convert(data, _Chunk)
        except msgspec.ValidationError as e:
            raise ProviderError(
                PROVIDER, f"{self._host} streamed a chunk that is not a chat completion chunk ({e})"
            ) from None


class _Function(msgspec.Struct, frozen=True):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct, frozen=True):
    index: int = 0  # a compatible server that sends one call at a time may leave it out
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct, frozen=True):
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Choice(msgspec.Struct, frozen=True):
    delta: _Delta | None = None


class _Chunk(msgspec.Struct, frozen=True):
    """What we read of a streamed `chat.completion.chunk`, converted from the SDK's parsed JSON
    by msgspec: the SDK's own pydantic models (built field by field in Python) cost more CPU
    per reply than the rest of the stream's handling."""

    choices: list[_Choice] = []


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
