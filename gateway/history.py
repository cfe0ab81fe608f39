"""The conversation as the LLM sees it: what the user said and what they actually heard.

A reply cut by a barge-in is remembered only up to what was played, as OpenAI's
`conversation.item.truncate` does, so the model does not believe it said what the user never
heard; a reply that produced no audio at all leaves no assistant message.
"""

from __future__ import annotations

from adapters.base import ChatMessage
from gateway.config import LLMBlock


class History:
    """Keeps at most `keep` messages: older ones can never reach the LLM again, and a long
    call must not grow the session's memory turn after turn (the soak benchmark saw it)."""

    def __init__(self, keep: int) -> None:
        self._messages: list[ChatMessage] = []
        self._keep = max(keep, 2)

    @property
    def messages(self) -> list[ChatMessage]:
        return list(self._messages)

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


def _whole_from(messages: list[ChatMessage]) -> int:
    """Where a window of the conversation may start: not on a tool result or a round of
    calls, whose other half the window left out (chat APIs reject a result without its
    call)."""
    start = 0
    while start < len(messages) and (messages[start].role == "tool" or messages[start].tool_calls):
        start += 1
    return start
