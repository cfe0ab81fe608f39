"""Maps a pipeline's `provider:` config to the adapter that runs it, importing lazily.

Config types live in `gateway.pipeline` (they are the schema); the adapter classes live in
`adapters/<provider>.py` and import their vendor SDK at module level, so the registry imports
a module only when a pipeline uses it: start-up stays fast and an SDK that is not installed
only matters to pipelines that need it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from adapters.base import LLM, TTS, STTStream
from gateway.pipeline import LLMProvider, Pipeline, STTProvider, TTSProvider, chain

_STT = {
    "scripted": "adapters.scripted:ScriptedSTTStream",
    "deepgram": "adapters.deepgram:DeepgramSTT",
    "openai": "adapters.openai_stt:OpenAISTT",
    "whisper": "adapters.whisper:WhisperSTT",
}
_LLM = {
    "scripted": "adapters.scripted:ScriptedLLMClient",
    "openai": "adapters.openai_llm:OpenAILLM",
    "llama": "adapters.llama:LlamaLLM",
}
_TTS = {
    "scripted": "adapters.scripted:ScriptedTTSClient",
    "cartesia": "adapters.cartesia:CartesiaTTS",
    "openai": "adapters.openai_tts:OpenAITTS",
    "piper": "adapters.piper:PiperTTS",
    "espeak": "adapters.espeak:EspeakTTS",
}


def _load(table: dict[str, str], provider: str) -> Any:
    module, _, name = table[provider].partition(":")
    return getattr(importlib.import_module(module), name)


def provider_name(config: Any) -> str:
    """The block's `provider:` value."""
    tag: str = config.__struct_config__.tag
    return tag


def preload(pipeline: Pipeline) -> None:
    """Load what a pipeline's adapters keep per process (embedded models) before serving.

    An adapter module opts in with a module-level `preload(config)`; this runs in the
    server's start-up, so the first session does not pay for loading a model.
    """
    stages = [(_STT, pipeline.stt), (_LLM, pipeline.llm), (_TTS, pipeline.tts)]
    for table, config in stages:
        for block in chain(config):
            module = importlib.import_module(table[provider_name(block)].partition(":")[0])
            if hasattr(module, "preload"):
                module.preload(block)


def make_stt(config: STTProvider, sample_rate: int) -> STTStream:
    stream: STTStream = _load(_STT, provider_name(config))(config, sample_rate)
    return stream


def make_llm(config: LLMProvider) -> LLM:
    llm: LLM = _load(_LLM, provider_name(config))(config)
    return llm


def make_tts(config: TTSProvider) -> TTS:
    tts: TTS = _load(_TTS, provider_name(config))(config)
    return tts


async def close_shared() -> None:
    """Close the provider clients this event loop's sessions shared (at the app's shutdown).
    Only modules already imported can hold any: nothing is imported to close nothing."""
    for name, module in list(sys.modules.items()):
        if name.startswith("adapters.") and hasattr(module, "close_shared_clients"):
            await module.close_shared_clients()
