"""Cuts the LLM's streaming text into speakable phrases for TTS.

TTS needs whole phrases to sound natural, but waiting for the whole reply would add the LLM's
full generation time to the user's wait. So text is cut at sentence ends, or at clause ends
once a phrase is long enough to be worth a TTS request; punctuation only counts when followed
by whitespace, so "3.5" and "e.g." inside a phrase do not cut it.
"""

from __future__ import annotations

import re

# Not after "x." (the last dot of "e.g.", "i.e.", "U.S."): an abbreviation, not a sentence end.
_SENTENCE_END = re.compile(r"(?<!\.[^\W\d_])[.!?…]+[\"')\]]*\s")
_CLAUSE_END = re.compile("[,;:\u2014\u2013]\\s")


class PhraseSplitter:
    def __init__(self, min_sentence_chars: int = 8, min_clause_chars: int = 40) -> None:
        self._min_sentence = min_sentence_chars
        self._min_clause = min_clause_chars
        self._buffer = ""

    def push(self, delta: str, word_ended: bool = False) -> list[str]:
        """Add LLM text; return the phrases it completed (possibly none). `word_ended`: the
        text is known to be followed by whitespace not yet given (`ReplyGuard` passes a
        word's space on with the next word), so punctuation at its very end counts."""
        self._buffer += delta
        phrases: list[str] = []
        while cut := self._next_cut(word_ended):
            phrase, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            phrases.append(phrase)
        return phrases

    def flush(self) -> str | None:
        """The rest of the text once the LLM is done."""
        phrase, self._buffer = self._buffer.strip(), ""
        return phrase or None

    def _next_cut(self, word_ended: bool = False) -> int:
        """The earliest valid cut, so a cut never depends on text after it: streamed deltas
        then give the same phrases as one push of the whole text."""
        text = self._buffer + " " if word_ended else self._buffer
        cuts = [
            next((m.end() for m in pattern.finditer(text) if m.end() >= minimum), 0)
            for pattern, minimum in (
                (_SENTENCE_END, self._min_sentence),
                (_CLAUSE_END, self._min_clause),
            )
        ]
        return min(min((cut for cut in cuts if cut), default=0), len(self._buffer))
