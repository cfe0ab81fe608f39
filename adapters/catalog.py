"""Every provider, by stage: the one place a provider is registered.

A provider is one module in this folder: its config block (the keys a pipeline file gives it,
on a stage base from `gateway.config`) and its adapter, which the block opens for a session
(`open()`). Listing the block here makes it a valid `provider:` of its stage everywhere: the
loader and its error messages, the JSON Schema, failover chains. Provider modules import
their SDKs and engines only when a session opens them, so importing this catalog (which
`voxgate validate` does) loads no SDK, model runtime or audio stack.
"""

from __future__ import annotations

from adapters.cartesia import CartesiaTTS
from adapters.deepgram import DeepgramSTT
from adapters.espeak import EspeakTTS
from adapters.llama import LlamaLLM
from adapters.openai_llm import OpenAILLM
from adapters.openai_stt import OpenAISTT
from adapters.openai_tts import OpenAITTS
from adapters.piper import PiperTTS
from adapters.scripted import ScriptedLLM, ScriptedSTT, ScriptedTTS
from adapters.whisper import WhisperSTT
from gateway import config

STTProvider = ScriptedSTT | DeepgramSTT | OpenAISTT | WhisperSTT
LLMProvider = ScriptedLLM | OpenAILLM | LlamaLLM
TTSProvider = ScriptedTTS | CartesiaTTS | OpenAITTS | PiperTTS | EspeakTTS

config.name_stage_providers(STTProvider, LLMProvider, TTSProvider)
