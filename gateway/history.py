"""The conversation as the LLM sees it: what the user said and what they actually heard.

A reply cut by a barge-in is remembered only up to what was played, as OpenAI's
`conversation.item.truncate` does, so the model does not believe it said what the user never
heard; a reply that produced no audio at all leaves no assistant message. A resumed
conversation (PROTOCOL.md 1.1 `session_start.resume`) starts from the messages the
conversation store kept (`load`, `to_record`, `from_record`).
"""

from __future__ import annotations

from collections.abc import Iterable

from adapters.base import ChatMessage, ToolCall
from gateway.config import LLMBlock
from gateway.store import record


class History:
    """Keeps at most `keep` messages: older ones can never reach the LLM again, and a long
    call must not grow the session's memory turn after turn (the soak benchmark saw it)."""

    def __init__(self, keep: int) -> None:
        self._messages: list[ChatMessage] = []
        self._keep = max(keep, 2)

    @property
    def messages(self) -> list[ChatMessage]:
        return list(self._messages)

    def load(self, messages: Iterable[ChatMessage]) -> None:
        """Go on from an earlier session's messages (a resumed conversation): the last ones
        that fit, never starting on half a round of tool calls."""
        self._messages = list(messages)[-self._keep :]
        del self._messages[: _whole_from(self._messages)]

    def said(self, text: str) -> None:
        self._add(ChatMessage("user", text))

    def answered(self, heard: str) -> None:
        if heard:
            self._add(ChatMessage("assistant", heard))

    def used_tools(self, messages: list[ChatMessage]) -> None:
        """Rounds of tool calls a reply made, each call followed by its result."""
        for message in messages:
            self._add(message)

    def _add(self, message: ChatMessage) -> None:
        self._messages.append(message)
        del self._messages[: -self._keep]
        del self._messages[: _whole_from(self._messages)]

    def cut_last_answer(self, heard: str) -> None:
        """The reply already remembered in full was cut while still playing."""
        if self._messages and self._messages[-1].role == "assistant":
            self._messages.pop()
        self.answered(heard)

    def context(self, llm: LLMBlock, question: str | None = None) -> list[ChatMessage]:
        """The system prompt and the last `history_turns` exchanges and the new question:
        the last one said, or `question` when it is not said yet (a preemptive reply)."""
        turns = 2 * llm.history_turns + 1 if llm.history_turns else 1
        system = [ChatMessage("system", llm.system_prompt)] if llm.system_prompt else []
        asked = [ChatMessage("user", question)] if question is not None else []
        recent = (self._messages + asked)[-turns:]
        return system + recent[_whole_from(recent) :]


def to_record(messages: Iterable[ChatMessage]) -> list[record.Message]:
    """The messages as the conversation store keeps them."""
    return [
        record.Message(
            m.role,
            m.content,
            tuple(record.ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls),
            m.tool_call_id,
        )
        for m in messages
    ]


def from_record(messages: Iterable[record.Message]) -> list[ChatMessage]:
    return [
        ChatMessage(
            m.role,
            m.content,
            tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls),
            m.tool_call_id,
        )
        for m in messages
    ]


def _whole_from(messages: list[ChatMessage]) -> int:
    """Where a window of the conversation may start: not on a tool result or a round of
    calls, whose other half the window left out (chat APIs reject a result without its
    call)."""
    start = 0
    while start < len(messages) and (messages[start].role == "tool" or messages[start].tool_calls):
        start += 1
    return start
