"""The reply guard (gateway/guard.py): a looping reply is cut as soon as the loop shows, and a
reply ends at the pipeline's `llm.max_sentences`, for any LLM, in the reply path.

Pure tests feed the guard deltas as an LLM streams them; the end-to-end tests run a scripted
LLM that loops through a real gateway, and a reply with a sentence limit through `Reply`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import numpy as np
import pytest

from adapters.base import ChatMessage, ToolSpec
from gateway import protocol
from gateway.audio.codecs import open_encoder
from gateway.client import AudioChunk, VoiceClient
from gateway.guard import Cut, ReplyGuard
from gateway.outbound import AudioOut, Outbound
from gateway.phrases import PhraseSplitter
from gateway.protocol import OutputCodec
from gateway.reply import Reply, Voice
from tests.conftest import make_pipeline, running_gateway, wait_sessions_closed

LOOP = "The opposite of heart is the opposite of heart is the opposite of heart is the opposite"


def tokens(text: str) -> list[str]:
    """`text` as an LLM streams it: one word a token, with its leading space."""
    words = text.split(" ")
    return [words[0], *(" " + w for w in words[1:])]


def guarded(
    deltas: Sequence[str], max_sentences: int | None = None
) -> tuple[list[str], Cut | None]:
    """What the guard passes on, piece by piece, and why it cut (None: it did not)."""
    guard = ReplyGuard(max_sentences)
    out = []
    for delta in deltas:
        if piece := guard.push(delta):
            out.append(piece)
        if guard.cut is not None:
            break
    if piece := guard.flush():
        out.append(piece)
    return out, guard.cut


def said(deltas: Sequence[str], max_sentences: int | None = None) -> str:
    return "".join(guarded(deltas, max_sentences)[0])


# ---- repetition ---------------------------------------------------------------------------


def test_a_reply_looping_on_a_phrase_is_cut_where_the_second_copy_starts() -> None:
    out, cut = guarded(tokens(LOOP))
    assert cut is Cut.REPETITION
    assert "".join(out) == "The opposite of heart is"


def test_nothing_of_the_repeated_copy_is_passed_on_before_the_cut() -> None:
    guard = ReplyGuard()
    passed = ""
    for delta in tokens(LOOP):
        passed += guard.push(delta)
        if guard.cut:
            break
        assert passed.lower().count("opposite") <= 1, passed
    assert guard.cut is Cut.REPETITION and guard.text == "The opposite of heart is"


def test_the_loop_is_cut_as_soon_as_the_second_copy_is_complete() -> None:
    deltas = tokens(LOOP)
    guard = ReplyGuard()
    for i, delta in enumerate(deltas):
        guard.push(delta)
        if guard.cut:
            # Ten words make two copies; the tenth is complete when the eleventh token starts.
            assert i == 10
            return
    raise AssertionError("not cut")


def test_a_sentence_said_again_later_is_cut_before_it() -> None:
    text = "A spider has eight legs. It is small. A spider has eight legs. It is small."
    assert said(tokens(text)) == "A spider has eight legs. It is small."


def test_sentences_looping_in_turn_are_cut_after_the_first_round() -> None:
    text = "Bees make honey. They also make wax. Bees make honey. They also make wax. Bees"
    assert said(tokens(text)) == "Bees make honey. They also make wax."


def test_one_or_two_words_said_four_times_are_cut_to_one() -> None:
    assert said(tokens("It is very very very very very big.")) == "It is very"
    assert said(tokens("Ha ha ha ha ha ha ha.")) == "Ha"


@pytest.mark.parametrize(
    "reply",
    [
        "The capital of France is Paris, and the capital of Spain is Madrid.",
        "No, no, no. I think it is blue.",
        "Knock knock. Who is there? Boo. Boo who? Do not cry, it is only a joke.",
        "A week has seven days, and a day has twenty four hours, and an hour has sixty minutes.",
        "Boil the egg for seven minutes, then cool the egg in cold water for a minute or two.",
        "The sky is blue. The sea is blue too.",
        "One, two, three, four, five.",
        "It is a very, very big animal.",
    ],
)
def test_replies_that_do_not_loop_pass_whole_and_unchanged(reply: str) -> None:
    out, cut = guarded(tokens(reply))
    assert cut is None and "".join(out) == reply


def test_the_providers_tokens_pass_as_they_came() -> None:
    assert guarded(["Paris,", " of", " course."]) == (["Paris,", " of", " course."], None)
    # A word still being written waits for the space after it (it may end a sentence).
    guard = ReplyGuard()
    assert guard.push("Hel") == "" and not guard.word_ended
    assert [guard.push(d) for d in ["lo", " there", "."]] == ["", "Hello", ""]
    assert guard.push(" How") == " there." and guard.word_ended
    assert guard.flush() == " How"


def test_words_echoing_earlier_ones_wait_until_the_echo_breaks() -> None:
    guard = ReplyGuard()
    out = [guard.push(d) for d in tokens("Paris is the capital of France and the capital of")]
    # "the capital of" echoes the first "the capital of": held, not yet passed on.
    assert "".join(out) == "Paris is the capital of France and"
    assert guard.push(" Italy") == ""
    assert guard.push(" is") == " the capital of Italy"
    assert guard.flush() == " is"


def test_a_loop_finished_by_the_last_token_is_cut_at_the_end() -> None:
    assert said(tokens("The sky is blue the sky is blue")) == "The sky is blue"


def test_after_a_cut_nothing_more_passes() -> None:
    guard = ReplyGuard(max_sentences=1)
    guard.push("Yes. ")
    assert guard.cut is Cut.SENTENCES
    assert guard.push("More text. ") == "" and guard.flush() == ""


# ---- sentence limit -----------------------------------------------------------------------


def test_a_reply_ends_after_max_sentences() -> None:
    text = "Paris is the capital of France. It is on the Seine. It has the Eiffel Tower."
    out, cut = guarded(tokens(text), max_sentences=2)
    assert cut is Cut.SENTENCES
    assert "".join(out) == "Paris is the capital of France. It is on the Seine."
    assert said(tokens(text)) == text, "no limit unless the pipeline sets one"


def test_the_limit_is_known_at_the_first_token_after_the_sentence_end() -> None:
    guard = ReplyGuard(max_sentences=1)
    assert guard.push("A spider has eight legs") == "A spider has eight"
    assert guard.push(".") == "" and guard.cut is None
    assert guard.push(" Spiders") == " legs." and guard.cut is Cut.SENTENCES


@pytest.mark.parametrize(
    ("reply", "first_two"),
    [
        ("Sure! Mr. Smith lives at 3.5 Main St. in the U.S. today. Bye now.", None),
        ("1. Boil water. 2. Add the egg. 3. Wait.", "1. Boil water. 2. Add the egg."),
        ("Is it blue? Yes!! It is. Really.", "Is it blue? Yes!!"),
        ('He said "hello." Then he left. The end.', 'He said "hello." Then he left.'),
        ("It costs $3. That is cheap… Or not.", "It costs $3. That is cheap…"),
    ],
)
def test_sentences_are_counted_as_a_listener_hears_them(reply: str, first_two: str | None) -> None:
    expected = first_two or "Sure! Mr. Smith lives at 3.5 Main St. in the U.S. today."
    assert said(tokens(reply), max_sentences=2) == expected


def test_a_sentence_end_without_a_space_is_not_an_end() -> None:
    assert said(["It is 3.", "5 metres. Yes. No."], max_sentences=2) == "It is 3.5 metres. Yes."


# ---- the phrase splitter with the guard --------------------------------------------------


def test_the_splitter_ends_a_sentence_when_told_a_space_follows() -> None:
    splitter = PhraseSplitter()
    assert splitter.push("Paris is the capital of France.") == []
    assert splitter.push("", word_ended=True) == ["Paris is the capital of France."]
    assert splitter.push(" It is big.", word_ended=False) == []
    assert splitter.flush() == "It is big."


# ---- through the reply path ---------------------------------------------------------------


async def test_a_looping_llm_is_cut_for_the_listener_and_the_history() -> None:
    looping = make_pipeline(llm={"reply": LOOP + " " + LOOP, "token_ms": 5})
    async with running_gateway(looping) as gw:
        async with VoiceClient.connect(gw.url()) as client:
            await client.start()
            await client.send(protocol.Text(text="what is the opposite of hard"))
            events, end = await client.collect_until(protocol.TurnEnd)
            (session,) = gw.table.sessions
            history = session.history
        await wait_sessions_closed(gw)
    shown = "".join(e.text for e in events if isinstance(e, protocol.LLMToken))
    assert shown == "The opposite of heart is"
    assert end.reason == "completed"
    assert history[-1].role == "assistant" and history[-1].content == "The opposite of heart is"
    # Scripted TTS speaks 180 words a minute: 5 words, not the 30 the LLM had in store.
    audio = sum(len(e.payload) for e in events if isinstance(e, AudioChunk)) / 2 / 24000
    assert 1.3 < audio < 2.5


class _LLM:
    """Streams `reply` word by word; records whether it was stopped early."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.sent = 0
        self.closed_early = False

    async def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncGenerator[str, None]:
        try:
            for token in tokens(self.reply):
                await asyncio.sleep(0)
                self.sent += 1
                yield token
        except GeneratorExit:
            self.closed_early = True
            raise


class _TTS:
    def __init__(self) -> None:
        self.phrases: list[str] = []

    async def synthesize(
        self, phrases: AsyncIterator[str], sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        async for phrase in phrases:
            self.phrases.append(phrase)
            yield np.zeros(sample_rate // 10, np.int16).tobytes()


async def test_a_reply_with_a_sentence_limit_stops_the_llm_and_says_that_many() -> None:
    sent: list[str] = []

    async def send_text(text: str) -> None:
        sent.append(text)

    async def send_bytes(_: bytes) -> None:
        pass

    outbound = Outbound(send_text, send_bytes, maxsize=1000, stall_timeout_s=5)
    llm = _LLM("One two three. Four five six. Seven eight nine. Ten eleven twelve.")
    tts = _TTS()
    voice = Voice(
        llm=llm,  # type: ignore[arg-type]
        tts=tts,  # type: ignore[arg-type]
        encoder=open_encoder(OutputCodec.PCM16, 24000),
        outbound=outbound,
        sample_rate=24000,
        lead_ms=600_000,
        max_sentences=2,
    )
    reply = Reply(1, voice, "count")
    await reply.run([ChatMessage("user", "count")])
    assert tts.phrases == ["One two three.", "Four five six."]
    assert reply.spoken_text() == "One two three. Four five six."
    assert llm.closed_early and llm.sent == 7, "stopped at the token after the second sentence"
    queued = []
    while outbound.qsize():
        queued.append(outbound._queue.get_nowait())
    shown = "".join(m.text for m in queued if isinstance(m, protocol.LLMToken))
    assert shown == "One two three. Four five six."
    assert isinstance(queued[-1], AudioOut)
