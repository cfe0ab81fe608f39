"""PhraseSplitter: where the LLM's streaming text is cut into TTS phrases."""

from __future__ import annotations

import pytest

from gateway.phrases import PhraseSplitter


def split_all(text: str, splitter: PhraseSplitter | None = None) -> list[str]:
    """Every phrase of `text` pushed at once, then flushed."""
    splitter = splitter or PhraseSplitter()
    phrases = splitter.push(text)
    rest = splitter.flush()
    return [*phrases, rest] if rest is not None else phrases


def split_streamed(deltas: list[str]) -> list[str]:
    splitter = PhraseSplitter()
    phrases = [phrase for delta in deltas for phrase in splitter.push(delta)]
    rest = splitter.flush()
    return [*phrases, rest] if rest is not None else phrases


def normalised(text: str) -> str:
    return " ".join(text.split())


def test_sentence_end_followed_by_space_cuts() -> None:
    splitter = PhraseSplitter()
    assert splitter.push("Paris is the capital. It is ") == ["Paris is the capital."]
    assert splitter.flush() == "It is"


def test_sentence_end_without_following_whitespace_waits() -> None:
    splitter = PhraseSplitter()
    assert splitter.push("Paris is the capital.") == []
    assert splitter.push(" ") == ["Paris is the capital."]


def test_decimal_number_does_not_cut() -> None:
    assert split_all("Version 3.5 is faster than 3.4 was. Upgrade now.") == [
        "Version 3.5 is faster than 3.4 was.",
        "Upgrade now.",
    ]


@pytest.mark.parametrize("abbreviation", ["e.g.", "i.e.", "U.S."])
def test_dotted_abbreviation_mid_phrase_does_not_cut(abbreviation: str) -> None:
    text = f"Bring some fruit, {abbreviation} apples and pears. Then leave."
    assert split_all(text) == [f"Bring some fruit, {abbreviation} apples and pears.", "Then leave."]


@pytest.mark.parametrize("end", ["!", "?", "...", "…", "?!", '."', ".)"])
def test_other_sentence_ends_cut_with_their_trailing_quote_or_bracket(end: str) -> None:
    assert split_all(f"That is a surprise{end} Next one.") == [
        f"That is a surprise{end}",
        "Next one.",
    ]


def test_newline_counts_as_whitespace_after_sentence_end() -> None:
    assert split_all("First line here.\nSecond line.") == ["First line here.", "Second line."]


def test_sentence_end_waits_for_min_length() -> None:
    splitter = PhraseSplitter(min_sentence_chars=8)
    assert splitter.push("Hi. ") == []
    assert splitter.push("I am Bob. ") == ["Hi. I am Bob."]


def test_clause_end_waits_for_min_length() -> None:
    splitter = PhraseSplitter(min_clause_chars=40)
    assert splitter.push("Well, ") == []
    assert splitter.push("I think the answer depends on things, mostly") == [
        "Well, I think the answer depends on things,"
    ]
    assert splitter.flush() == "mostly"


@pytest.mark.parametrize("mark", [",", ";", ":", "\u2014", "\u2013"])
def test_clause_marks_cut_past_min_length(mark: str) -> None:
    splitter = PhraseSplitter(min_clause_chars=10)
    assert splitter.push(f"A long enough clause{mark} and more") == [f"A long enough clause{mark}"]


def test_clause_mark_without_following_space_does_not_cut() -> None:
    splitter = PhraseSplitter(min_clause_chars=5)
    assert splitter.push("The sum is 1,000,000 dollars and") == []


def test_earlier_clause_cut_wins_over_later_sentence_end() -> None:
    text = "Well, I think the answer depends on several things, and mostly on the weather. Go."
    assert split_all(text) == [
        "Well, I think the answer depends on several things,",
        "and mostly on the weather.",
        "Go.",
    ]


def test_one_push_can_complete_several_phrases() -> None:
    splitter = PhraseSplitter()
    assert splitter.push("One sentence. Another sentence. And a third. Tail") == [
        "One sentence.",
        "Another sentence.",
        "And a third.",
    ]


def test_flush_returns_rest_then_nothing() -> None:
    splitter = PhraseSplitter()
    splitter.push("No end in sight  ")
    assert splitter.flush() == "No end in sight"
    assert splitter.flush() is None


def test_flush_of_whitespace_only_is_none() -> None:
    splitter = PhraseSplitter()
    assert splitter.push("Done here. \n ") == ["Done here."]
    assert splitter.flush() is None


def test_flush_of_fresh_splitter_is_none() -> None:
    assert PhraseSplitter().flush() is None


def test_splitter_is_reusable_after_flush() -> None:
    splitter = PhraseSplitter()
    splitter.push("First reply")
    splitter.flush()
    assert splitter.push("Second reply here. ") == ["Second reply here."]


LONG_TEXT = (
    'Sure! Version 3.5, released in 2024, is faster: about 20% (e.g. on "big" inputs). '
    "However, if you rely on the old API \u2014 i.e. the v2 endpoints \u2014 you should wait; "
    "the migration guide is not finished yet...  Any other questions?\nI can help!"
)

TEXTS = [
    LONG_TEXT,
    "Paris is the capital of France.",
    "Hi. Ok. Yes! No? Fine...",
    "no punctuation at all but quite a long run of words that goes on and on and on",
    "  leading and trailing whitespace.   Lots   of   spaces.  ",
    "Numbers like 1,000,000 and 3.14159 and 2.0. Done.",
    "Short, clauses, everywhere, that, never, reach, the, minimum, length, at, all, really.",
]


@pytest.mark.parametrize("text", TEXTS)
def test_phrases_concatenate_to_the_input_text(text: str) -> None:
    phrases = split_all(text)
    assert all(phrase and phrase == phrase.strip() for phrase in phrases)
    assert normalised(" ".join(phrases)) == normalised(text)


@pytest.mark.parametrize("text", TEXTS)
def test_one_character_deltas_give_the_same_phrases_as_one_push(text: str) -> None:
    assert split_streamed(list(text)) == split_all(text)


def test_every_split_point_gives_the_same_phrases_as_one_push() -> None:
    expected = split_all(LONG_TEXT)
    assert len(expected) > 4  # the text exercises sentence and clause cuts
    for i in range(len(LONG_TEXT) + 1):
        assert split_streamed([LONG_TEXT[:i], LONG_TEXT[i:]]) == expected, f"split at {i}"


def test_deltas_split_mid_punctuation_run_give_same_phrases() -> None:
    text = 'He said "wait..." and left. Then silence?! Yes.'
    expected = split_all(text)
    for i in range(len(text)):
        for j in range(i, len(text)):
            assert split_streamed([text[:i], text[i:j], text[j:]]) == expected
