"""Keeps what any LLM writes speakable: a reply that starts repeating itself is cut, and a
pipeline's `llm.max_sentences` ends it after that many sentences.

Small models loop ("The opposite of heart is the opposite of heart is ...") until
`max_tokens`, and ignore "answer in one or two sentences". The guard sits in the reply path
(`gateway/reply.py`) between the LLM stream and everything downstream (the `llm_token`
messages, the phrase splitter, the TTS), so it works the same for every provider. It releases
text as soon as it is known to be safe: a word is held until the whitespace after it arrives
(a sentence end or a repeated word is only known then), and words that echo earlier words of
the reply are held while the echo lasts, so a repetition is cut before any of it is shown or
spoken. Held text is released the moment the echo breaks ("the" said twice holds one word
for one token). The cut is what the reply is: history and `turn_end` record what was spoken.

What counts as repetition (words compared lower-cased, punctuation ignored):
- the same run of 3 or more words twice in a row ("of heart is the opposite of heart is"),
  cut where the second copy starts;
- a run of 1 or 2 words four times in a row ("very very very very"), cut after the first;
- a sentence of 3 or more words that the reply already said, cut before it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

MIN_UNIT_WORDS = 3
"""Shortest run that may not be said twice in a row; shorter runs may be said 3 times."""
SHORT_UNIT_COPIES = 4
"""Copies in a row of a 1- or 2-word run that count as a loop ("no, no, no" does not)."""
MIN_SENTENCE_WORDS = 3
"""Shortest sentence that may not be said again."""
MAX_DISTANCE = 200
"""Words back that a repetition is looked for (so each word costs at most this much work)."""

_END = re.compile("[.!?\u2026]+[\"'\u201d\u2019)\\]]*$")
_INITIALS = re.compile(r"^(?:[^\W\d_]\.)+$")  # "e.g.", "U.S.": an abbreviation, not an end
_TITLES = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "mt.", "vs.", "jr.", "sr.", "prof."})
_TRAILING_CHUNK = re.compile(r"\S+$")
_CHUNK = re.compile(r"\S+")


class Cut(enum.StrEnum):
    REPETITION = "repetition"
    SENTENCES = "sentences"


@dataclass(frozen=True)
class _Word:
    norm: str  # lower-cased letters and digits only; "" for punctuation alone
    start: int  # where its chunk starts and ends in the reply text
    end: int
    ends_sentence: bool


def _ends_sentence(chunk: str) -> bool:
    return bool(_END.search(chunk)) and not (_INITIALS.match(chunk) or chunk.lower() in _TITLES)


class ReplyGuard:
    """Feed it the LLM's deltas; pass on only what `push` and `flush` return, and stop the LLM
    once `cut` is set."""

    def __init__(self, max_sentences: int | None = None) -> None:
        self.max_sentences = max_sentences
        self.cut: Cut | None = None
        """Why the reply ended early; None while it may go on."""
        self._text = ""
        self._released = 0  # text[:released] has been passed on
        self._scanned = 0  # text[:scanned] is split into `_words`
        self._words: list[_Word] = []  # the reply's words, punctuation-only chunks left out
        self._echo: dict[int, int] = {}
        """For each distance k: how many words up to the last one equal the words k earlier."""
        self._sentences = 0  # sentences ended so far
        self._sentence_start = 0  # index in `_words` of the current sentence's first word
        self._sentence_has_letters = False

    def push(self, delta: str) -> str:
        """Add LLM text; return the text that may now be shown and spoken (possibly "")."""
        if self.cut is not None:
            return ""
        self._text += delta
        end = self._complete_end()
        cut_at = self._scan(end)
        if cut_at is not None:
            return self._release(cut_at)
        return self._release(self._safe_end(end))

    def flush(self) -> str:
        """The LLM is done: the rest of what it wrote, up to a cut at its very end."""
        if self.cut is not None:
            return ""
        cut_at = self._scan(len(self._text))
        return self._release(len(self._text) if cut_at is None else cut_at)

    @property
    def word_ended(self) -> bool:
        """Whitespace follows the released text (it goes out with the next word): punctuation
        at its end already ends a sentence."""
        return self._released < len(self._text) and self._text[self._released].isspace()

    @property
    def text(self) -> str:
        """What was released: the reply as the user gets it."""
        return self._text[: self._released]

    # ---- internals -------------------------------------------------------------------------

    def _complete_end(self) -> int:
        """Where the last whitespace-terminated chunk ends: a chunk still being written (no
        whitespace after it yet) may turn out to end a sentence or repeat a word."""
        writing = _TRAILING_CHUNK.search(self._text, self._scanned)
        return writing.start() if writing else len(self._text)

    def _scan(self, end: int) -> int | None:
        """Split text[scanned:end] into words, checking each; the cut's position, if any."""
        for match in _CHUNK.finditer(self._text, self._scanned, end):
            start = match.start()
            chunk = match.group()
            cut_at = self._add(chunk, start, start + len(chunk))
            if cut_at is not None:
                return cut_at
        self._scanned = end
        return None

    def _add(self, chunk: str, start: int, end: int) -> int | None:
        norm = "".join(c for c in chunk.lower() if c.isalnum())
        word = _Word(norm, start, end, _ends_sentence(chunk))
        if norm:
            self._sentence_has_letters |= any(c.isalpha() for c in norm)
            cut_at = self._repeats(word)
            if cut_at is not None:
                self.cut = Cut.REPETITION
                return cut_at
        elif word.ends_sentence and self._words:  # "word ." : the stop belongs to the word
            last = self._words[-1]
            self._words[-1] = _Word(last.norm, last.start, end, True)
        if word.ends_sentence and self._sentence_has_letters:
            if norm == "" and self._words:
                cut_at = self._repeated_sentence()
                if cut_at is not None:
                    self.cut = Cut.REPETITION
                    return cut_at
            self._sentences += 1
            self._sentence_start = len(self._words)
            self._sentence_has_letters = False
            if self.max_sentences is not None and self._sentences >= self.max_sentences:
                self.cut = Cut.SENTENCES
                return end
        return None

    def _repeats(self, word: _Word) -> int | None:
        """Add `word`; where to cut if it completes a loop."""
        words = self._words
        n = len(words)  # the new word's index
        echo = self._echo
        for k in range(1, min(n, MAX_DISTANCE) + 1):
            echo[k] = echo.get(k, 0) + 1 if words[n - k].norm == word.norm else 0
        words.append(word)
        for k in range(1, min((n + 1) // 2, MAX_DISTANCE) + 1):
            copies = SHORT_UNIT_COPIES if k < MIN_UNIT_WORDS else 2
            if echo.get(k, 0) >= (copies - 1) * k:
                return words[n + 1 - (copies - 1) * k].start  # keep the first copy
        if word.ends_sentence:
            return self._repeated_sentence()
        return None

    def _repeated_sentence(self) -> int | None:
        """The sentence that just ended, if the reply already said it: where it starts."""
        words = self._words
        first, last = self._sentence_start, len(words) - 1
        length = last - first + 1
        if length < MIN_SENTENCE_WORDS:
            return None
        for k, run in self._echo.items():
            earlier = first - k
            if (
                run >= length
                and earlier >= 0
                and words[last - k].ends_sentence
                and (earlier == 0 or words[earlier - 1].ends_sentence)
            ):
                return words[first].start
        return None

    def _safe_end(self, complete_end: int) -> int:
        """How far the text may be released: up to the last complete chunk, and before the
        words that echo earlier ones (they may be the start of a loop)."""
        held = max(self._echo.values(), default=0)
        if held and self._words:
            first_held = self._words[len(self._words) - held]
            return min(complete_end, first_held.start)
        return complete_end

    def _release(self, end: int) -> str:
        """Pass on text up to `end`, less trailing whitespace: the space before the next word
        goes out with that word, so tokens keep their leading spaces."""
        end = max(end, self._released)
        while end > self._released and self._text[end - 1].isspace():
            end -= 1
        piece = self._text[self._released : end]
        self._released = end
        return piece
