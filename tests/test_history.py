"""The conversation history: what the user heard, and never more than the LLM can use."""

from __future__ import annotations

from adapters.base import ChatMessage
from adapters.scripted import ScriptedLLM
from gateway.history import History


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
