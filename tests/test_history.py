"""The conversation history: what the user heard, and never more than the LLM can use."""

from __future__ import annotations

import msgspec
import pytest

from adapters.base import ChatMessage, ToolCall
from adapters.scripted import ScriptedLLM
from gateway.history import History, from_record, to_record
from gateway.store import record


def test_a_long_call_keeps_only_what_the_llm_can_still_see() -> None:
    history = History(keep=6)
    for n in range(100):
        history.said(f"question {n}")
        history.answered(f"answer {n}")
    assert len(history.messages) == 6
    assert history.messages[-1] == ChatMessage("assistant", "answer 99")


def test_context_is_the_system_prompt_and_the_last_exchanges() -> None:
    history = History(keep=10)
    for n in range(4):
        history.said(f"q{n}")
        history.answered(f"a{n}")
    history.said("now")
    llm = ScriptedLLM(system_prompt="be brief", history_turns=1)
    assert [m.content for m in history.context(llm)] == ["be brief", "q3", "a3", "now"]


def test_a_cut_answer_replaces_the_full_one_and_nothing_heard_leaves_none() -> None:
    history = History(keep=10)
    history.said("hi")
    history.answered("Hello there, how are you today?")
    history.cut_last_answer("Hello there")
    assert history.messages[-1] == ChatMessage("assistant", "Hello there")
    history.cut_last_answer("")
    assert history.messages == [ChatMessage("user", "hi")]


def tool_round(n: int) -> list[ChatMessage]:
    call = ToolCall(f"call_{n}", "order_status", '{"order": "A17"}')
    return [
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", '{"status": "shipped"}', tool_call_id=call.id),
    ]


def test_a_stored_history_comes_back_with_its_tool_calls_and_results() -> None:
    messages = [ChatMessage("user", "where is A17"), *tool_round(1), ChatMessage("assistant", "ok")]

    stored = record.decode(
        record.encode(
            record.Conversation(pipeline="p", sub=None, turns=1, history=to_record(messages))
        )
    )

    assert from_record(stored.history) == messages


def test_a_loaded_history_never_starts_on_half_a_tool_round() -> None:
    history = History(keep=4)
    messages = [ChatMessage("user", "where is A17"), *tool_round(1), ChatMessage("assistant", "ok")]
    history.load([ChatMessage("user", "hi"), ChatMessage("assistant", "hello"), *messages])
    assert history.messages == messages

    history.load(messages[1:])  # a window that would start on the call: the round goes
    assert history.messages == [ChatMessage("assistant", "ok")]


def test_a_record_with_a_role_no_chat_api_knows_does_not_decode() -> None:
    bad = msgspec.msgpack.encode(
        {"pipeline": "p", "sub": None, "turns": 1, "history": [{"role": "root", "content": "x"}]}
    )
    with pytest.raises(msgspec.ValidationError):
        record.decode(bad)
