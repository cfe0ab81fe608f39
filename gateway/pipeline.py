"""A pipeline file as a whole: one product's route, audio, turn-taking and three provider
stages, as one msgspec Struct, plus what the server asks of a loaded pipeline (its chains of
providers, the keys it lacks).

The blocks come from below: `gateway.config` (every key but the providers'), and the
providers' own blocks through `adapters.catalog`. So the JSON Schema (`voxgate schema`), the
loader's validation and the session's settings all come from the same types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta

from adapters.catalog import LLMProvider, STTProvider, TTSProvider
from gateway.config import (
    VAD,
    Auth,
    Config,
    Dialect,
    Input,
    Limits,
    Output,
    Tool,
    ToolUse,
    Turns,
    TwilioOptions,
)
from gateway.store.config import MemoryStoreConfig, StoreConfig


class Pipeline(Config, kw_only=True, frozen=True):
    """One product: its route, audio formats, turn-taking and the three provider stages."""

    version: Annotated[int, Meta(description="Format version; only 1 exists.")] = 1
    name: Annotated[str, Meta(description="Defaults to the file's name without `.yaml`.")] = ""
    route: Annotated[str, Meta(description="WebSocket path; defaults to `/ws/<name>`.")] = ""
    extends: Annotated[
        str | None,
        Meta(description="A file (relative to this one) to start from; lists are replaced."),
    ] = None
    dialects: Annotated[
        list[Dialect],
        Meta(
            min_length=1,
            description=(
                "Wire protocols served: `voxgate` (protocol v1.1 at `route`), `twilio` (Twilio "
                "Media Streams at `route` + `/twilio`), `openai-realtime` (the OpenAI Realtime "
                "API at `/v1/realtime?model=<name>`). Default: `[voxgate]`."
            ),
        ),
    ] = msgspec.field(default_factory=lambda: [Dialect.VOXGATE])
    twilio: Annotated[
        TwilioOptions, Meta(description="Phone calls through the `twilio` dialect.")
    ] = TwilioOptions()
    auth: Annotated[Auth, Meta(description="Who may open a session.")] = Auth()
    input: Annotated[Input, Meta(description="What clients may send.")] = Input()
    output: Annotated[Output, Meta(description="What clients receive.")] = Output()
    vad: Annotated[VAD, Meta(description="Voice activity detection.")] = VAD()
    turns: Annotated[Turns, Meta(description="Turn-taking and barge-in.")] = Turns()
    stt: Annotated[STTProvider, Meta(description="Speech to text: a provider block (below).")]
    llm: Annotated[LLMProvider, Meta(description="The language model: a provider block (below).")]
    tts: Annotated[TTSProvider, Meta(description="Text to speech: a provider block (below).")]
    tools: Annotated[
        list[Tool],
        Meta(description="What the LLM may call mid-reply: web APIs, MCP servers, client tools."),
    ] = msgspec.field(default_factory=list)
    tool_use: Annotated[ToolUse, Meta(description="How replies use `tools`.")] = ToolUse()
    limits: Annotated[Limits, Meta(description="Per-route limits.")] = Limits()
    store: Annotated[
        StoreConfig,
        Meta(
            description=(
                "Where conversations live between sockets, so a client that reconnects (a "
                "dropped network, a deploy's drain, another machine) continues its conversation "
                "(`session_start.resume`): `memory` (this process; the default) or `redis` "
                "(shared by every gateway process)."
            )
        ),
    ] = MemoryStoreConfig()
    log_transcripts: Annotated[
        bool,
        Meta(description="Put what the user said and the assistant answered in the turn log."),
    ] = False


Block = STTProvider | LLMProvider | TTSProvider
B = TypeVar("B", STTProvider, LLMProvider, TTSProvider)


def chain(block: B) -> list[B]:
    """The block and its fallbacks, depth first: a fallback's own fallbacks follow it."""
    blocks: list[B] = [block]
    for fallback in block.fallback:
        blocks.extend(chain(fallback))
    return blocks


def chains(p: Pipeline) -> dict[str, Sequence[Block]]:
    """Each stage's chain of providers, by stage key."""
    return {"stt": chain(p.stt), "llm": chain(p.llm), "tts": chain(p.tts)}


def missing_keys(p: Pipeline, env: Mapping[str, str]) -> list[str]:
    """Every key variable `p` (its auth, its providers and their fallbacks) needs and `env`
    lacks, once each, in the file's order."""
    providers = (b.missing_key(env) for blocks in chains(p).values() for b in blocks)
    return list(dict.fromkeys(name for name in (p.auth.missing_key(env), *providers) if name))


def unusable(p: Pipeline, env: Mapping[str, str]) -> list[str]:
    """The parts of `p` that cannot work without keys `env` lacks (`auth`, or a stage none of
    whose providers has its key): while any is listed the route refuses every session."""
    parts = ["auth"] if p.auth.missing_key(env) else []
    return parts + [
        stage for stage, blocks in chains(p).items() if all(b.missing_key(env) for b in blocks)
    ]
