"""Maps a pipeline's `provider:` config to the adapter that runs it, importing lazily.

Config types live in `gateway.pipeline` (they are the schema); the adapter classes live in
`adapters/<provider>.py` and import their vendor SDK at module level, so the registry imports
a module only when a pipeline uses it: start-up stays fast and an SDK that is not installed
only matters to pipelines that need it.
"""

from __future__ import annotations

import importlib
from typing import Any

from adapters.base import LLM, TTS, STTStream
from gateway.pipeline import LLMProvider, STTProvider, TTSProvider

_STT = {"scripted": "adapters.scripted:ScriptedSTTStream"}
_LLM = {"scripted": "adapters.scripted:ScriptedLLMClient"}
_TTS = {"scripted": "adapters.scripted:ScriptedTTSClient"}


def _load(table: dict[str, str], provider: str) -> Any:
    module, _, name = table[provider].partition(":")
    return getattr(importlib.import_module(module), name)


def _provider(config: Any) -> str:
    tag: str = config.__struct_config__.tag
    return tag


def open_stt(config: STTProvider, sample_rate: int) -> STTStream:
    stream: STTStream = _load(_STT, _provider(config))(config, sample_rate)
    return stream


def make_llm(config: LLMProvider) -> LLM:
    llm: LLM = _load(_LLM, _provider(config))(config)
    return llm


def make_tts(config: TTSProvider) -> TTS:
    tts: TTS = _load(_TTS, _provider(config))(config)
    return tts
