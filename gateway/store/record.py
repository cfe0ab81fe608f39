"""A conversation as the store keeps it, and its msgpack encoding.

The record holds what a resumed session needs to go on as if the socket had never dropped (the
history the LLM sees and the turn counter) and what binds it to its owner (the pipeline and the
token's `sub`, checked again on every load). It is encoded with msgspec's msgpack: compact, and
decoded straight into these types. Records written by one gateway version are read by the next
during a rolling deploy, so the rules of schema evolution apply: new fields get defaults,
unknown fields are ignored (the record does not forbid them), nothing is renamed or retyped.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta


class ToolCall(msgspec.Struct, frozen=True):
    """A tool the LLM called: `arguments` is the JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str


class Message(msgspec.Struct, frozen=True, omit_defaults=True):
    """One chat message, as adapters/base.py's ChatMessage: an `assistant` message may carry
    `tool_calls`, each answered by a later `tool` message with its `tool_call_id`, so a resumed
    conversation hands the LLM the same call/result pairs it saw (chat APIs reject a result
    without its call). The role is checked on decode: a record never feeds the LLM a role the
    chat APIs do not know."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a session needs to continue a conversation on another socket or machine."""

    pipeline: Annotated[str, Meta(description="The pipeline it belongs to (`name`).")]
    sub: Annotated[
        str | None, Meta(description="The `sub` of the token that opened it; None without auth.")
    ]
    turns: Annotated[int, Meta(ge=0, description="Turns taken so far (the turn counter).")]
    history: Annotated[list[Message], Meta(description="What the LLM sees, oldest first.")]
    expires_at: Annotated[
        float,
        Meta(
            description=(
                "Unix time after which it cannot be resumed; set by `ConversationStore.save`, "
                "any value given to it is replaced."
            )
        ),
    ] = 0.0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Conversation)


def encode(conversation: Conversation) -> bytes:
    return _encoder.encode(conversation)


def decode(record: bytes) -> Conversation:
    """Raises msgspec.DecodeError (or its ValidationError) on a record that is not one."""
    return _decoder.decode(record)
