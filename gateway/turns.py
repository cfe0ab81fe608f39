"""The turn engine: when the user's turn ends, and what their speech does to the assistant's.

Every rule of end of turn and barge-in lives here, as one sans-I/O state machine in the
manner of python-websockets' `Protocol`: the session feeds it values (a VAD probability per
frame, an end-of-turn score, STT partials and finals, client messages, clock ticks) and
performs the decisions it returns (`Decision` subclasses below). It does no I/O, reads no
clock and starts no task, so it is tested with lists of events and times (tests/test_turns.py).

End of turn. Silence is measured in input-audio time (the VAD's frames), so a client that
streams faster than real time still gets the same turns. When the user has been quiet for
`turns.min_wait_ms`, the engine asks for the STT's final and, with the `smart_turn` detector,
for the end-of-turn model's score of the last 8 s of audio. A turn is *complete* when the
score reaches `turns.threshold` and the transcript does not stop mid-phrase ("... to", "... with
the"): it ends as soon as both are known. Otherwise it ends after `turns.max_wait_ms` of
silence, or goes on if the user speaks again. The `silence` detector ends a turn after
`vad.min_silence_ms`, as a plain VAD does. `audio_end` ends it at once; with
`turns.end_of_turn: stt` only the STT's own endpoint does.

Barge-in. Speech that starts while a reply is active is a *candidate*: after
`turns.min_barge_in_ms` of it the reply is paused (the user stops hearing it at once, nothing
is lost). Words that are not a backchannel, or speech longer than `turns.backchannel_max_ms`,
interrupt the reply and become the user's turn; a backchannel ("mm hmm", "yeah") or no words
at all (a cough) resumes the reply and is not a turn; a pause unresolved for 2 s interrupts
(PROTOCOL.md 1.1).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import msgspec

from gateway.config import VAD, EndOfTurn, TurnDetector, Turns

PAUSE_LIMIT_S = 2.0
"""A paused reply is resumed or interrupted within this (PROTOCOL.md "Version 1.1")."""
UNSURE = 0.3
"""Below `threshold * UNSURE` the model is taken at its word that the user has not finished,
even when the words sound finished; between that and `threshold` it is merely unsure."""
AUDIO_STALL_MS = 500.0
"""Wall time, beyond a silence's limit in audio time, after which a silence whose audio
stopped arriving ends the turn all the same."""

# A transcript that ends on one of these stops mid-phrase: "send a package to", "with the".
# fmt: off
_UNFINISHED_WORDS = frozenset((
    "a", "an", "the", "to", "of", "in", "on", "at", "by", "for", "from", "with", "about", "into",
    "onto", "over", "under", "after", "before", "and", "or", "but", "because", "so", "if",
    "that", "which", "who", "whose", "where", "when", "than", "as", "like", "is", "are", "was",
    "were", "be", "been", "am", "will", "would", "can", "could", "should", "shall", "may",
    "might", "must", "do", "does", "did", "have", "has", "had", "my", "your", "our", "their",
    "his", "her", "its", "this", "these", "those", "some", "any", "every", "each", "no", "not",
    "very", "really", "um", "uh", "er", "erm",
))
# fmt: on
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("-", " "))


def unfinished(text: str) -> bool:
    """The transcript stops mid-phrase: trailing function word, comma or ellipsis."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith((",", "...", "…", "-", ";", ":")):
        return True
    if stripped.endswith(("?", "!")):
        return False  # "What are you working on?": the recogniser heard a question end
    found = words(stripped)
    return bool(found) and found[-1] in _UNFINISHED_WORDS


class Backchannels:
    """Short acknowledgements that neither interrupt a reply nor make a turn."""

    def __init__(self, phrases: list[str]) -> None:
        self._phrases = {tuple(words(p)) for p in phrases if words(p)}
        self._prefixes = {p[:n] for p in self._phrases for n in range(1, len(p))}

    def only(self, text: str) -> bool:
        """Every word belongs to backchannels ("yeah okay", "mm hmm"), or there is none."""
        found = words(text)
        i = 0
        while i < len(found):
            match = next(
                (
                    n
                    for n in range(len(found) - i, 0, -1)
                    if tuple(found[i : i + n]) in self._phrases
                ),
                0,
            )
            if not match:
                return False
            i += match
        return True

    def may_become(self, text: str) -> bool:
        """A partial that could still turn out a backchannel ("mm" before "mm hmm")."""
        found = tuple(words(text))
        return (
            not found or self.only(text) or found[-1:] in self._prefixes or found in self._prefixes
        )


# ---- decisions (what the session must do) --------------------------------------------------


class Decision(msgspec.Struct, frozen=True):
    """Base of everything the engine asks of the session."""


class SpeechBegan(Decision, frozen=True):
    t_ms: int


class SpeechEnded(Decision, frozen=True):
    t_ms: int


class ShowPartial(Decision, frozen=True):
    text: str


class Finalize(Decision, frozen=True):
    """Ask the STT for the final text of what it heard so far (one `stt_final` answers).
    `continues`: the turn already has words from an earlier final (see STTStream.finalize)."""

    continues: bool = False


class Score(Decision, frozen=True):
    """Run the end-of-turn model on the audio heard so far; answer with `end_of_turn_score`."""

    request: int


class HoldReply(Decision, frozen=True):
    """Prepare the answer to `text` now, send nothing until `EndTurn(held=True)`."""

    text: str
    paused_at: float


class DiscardReply(Decision, frozen=True):
    """The user spoke on: the held reply will never be heard."""


class EndTurn(Decision, frozen=True):
    """The user's turn is over: `text` is what they said (answer it, or release the held
    reply when `held`). `speech_end` is when the engine saw their silence begin to count."""

    text: str
    speech_end: float
    held: bool
    score: float | None
    wait_ms: float
    """Silence the engine waited, after the user stopped, before it ended the turn."""
    reason: str
    """`complete` (the model and the words agreed), `timeout` (max_wait_ms of silence),
    `silence` (the silence detector), `stt` (the STT's endpoint), `audio_end`."""


class NothingHeard(Decision, frozen=True):
    """The client's `audio_end` closed a turn with no words, and no turn ended since its last
    `audio_end`: a push-to-talk press with nothing in it. Nothing will answer it."""


class PauseReply(Decision, frozen=True):
    """The user may be interrupting: stop the sound now, keep the reply."""


class ResumeReply(Decision, frozen=True):
    """It was a backchannel or noise: play on from where it paused."""

    heard: str
    """What the user said (a backchannel) or "" (noise)."""


class InterruptReply(Decision, frozen=True):
    """The user is taking the floor: cut the reply (history keeps what was heard)."""


class IgnoreUtterance(Decision, frozen=True):
    """A backchannel while the assistant speaks: not a turn, no reply."""

    text: str


# ---- the engine ----------------------------------------------------------------------------


class _Vad(enum.Enum):
    QUIET = 0
    STARTING = 1
    SPEAKING = 2
    STOPPING = 3


@dataclass
class _Barge:
    """Speech that began while a reply was active: an interruption, or not."""

    paused_at: float | None = None
    """Wall time the reply was paused (None: not yet, the speech is still short)."""
    text: str = ""
    """Words the STT gave for it so far (final segments)."""
    partial: str = ""
    """The STT's latest interim words for it."""


@dataclass
class _Silence:
    """The user's current silence inside a turn, and what was asked about it."""

    since_ms: float
    began_at: float
    asked: bool = False
    finalized: bool = False
    """A final was asked for at this silence (its answer may still be on its way)."""
    request: int = 0
    score: float | None = None
    failed: bool = False


class TurnEngine:
    def __init__(self, vad: VAD, turns: Turns, frame_ms: float) -> None:
        self._vad_config = vad
        self._config = turns
        self._frame_ms = frame_ms
        self._backchannels = Backchannels(turns.backchannels)
        self._state = _Vad.QUIET
        self._run_ms = 0.0
        self._audio_ms = 0.0
        self._speech_since_ms = 0.0
        # The user's turn: open from its first speech (or words) until EndTurn.
        self._open = False
        self._announced = False  # speech_started sent for this turn (or candidate)
        self._segments: list[str] = []
        self._pending_finals = 0
        self._spoke_since_finalize = False
        """Speech came after the last `Finalize` went out (before any `audio_end`): the final on
        its way does not hold every word, so it cannot be the turn's last."""
        self._silence: _Silence | None = None
        self._closing = False  # the turn ends at the next final (audio_end, or a timeout)
        self._closing_reason = ""
        self._closed_at: float | None = None
        self._turn_since_audio_end = False
        """A turn ended since the last `audio_end`: an `audio_end` that then finds no words
        came after the words it meant (the silence ended their turn first)."""
        self._ask_ms = turns.min_wait_ms if turns.preemptive_ms is None else turns.preemptive_ms
        self._held: int | None = None  # how many segments the held reply answers
        self._requests = 0
        self._barge: _Barge | None = None

    # ---- state the session reads ---------------------------------------------------------

    @property
    def speaking(self) -> bool:
        return self._state in (_Vad.SPEAKING, _Vad.STOPPING)

    @property
    def in_turn(self) -> bool:
        """The user is mid-turn or mid-utterance (a drain waits for it to end)."""
        return self._open or self.speaking or self._closing or self._barge is not None

    def deadline(self) -> float | None:
        """Wall time by which `tick` must be called, or None: a paused reply's limit, or the
        end of a silence for a client that stopped sending audio altogether (silence is
        otherwise counted in audio, which such a client no longer sends)."""
        if self._barge is not None and self._barge.paused_at is not None:
            return self._barge.paused_at + PAUSE_LIMIT_S
        silence = self._silence
        if silence is not None and self._open and self._state is _Vad.STOPPING:
            return silence.began_at + (self._limit_ms(silence) + AUDIO_STALL_MS) / 1000
        return None

    # ---- inputs --------------------------------------------------------------------------

    def frame(self, now: float, probability: float, replying: bool) -> list[Decision]:
        """One VAD frame at wall time `now`. `replying`: a reply is being made or is audible
        (paused counts as audible)."""
        self._audio_ms += self._frame_ms
        voiced = probability >= self._vad_config.threshold
        out: list[Decision] = []
        if self._barge is not None and not replying:
            self._barge = None  # the reply ended on its own: this speech is simply a turn
            self._open = True
        state = self._state
        if state is _Vad.QUIET and voiced:
            self._state, self._run_ms = _Vad.STARTING, self._frame_ms
        elif state is _Vad.STARTING:
            if not voiced:
                self._state = _Vad.QUIET
            else:
                self._run_ms += self._frame_ms
        elif state is _Vad.SPEAKING and not voiced:
            self._state, self._run_ms = _Vad.STOPPING, 0.0
            self._silence = _Silence(since_ms=self._audio_ms - self._frame_ms, began_at=now)
        elif state is _Vad.STOPPING:
            resuming = self._run_ms > 0
            self._run_ms = self._run_ms + self._frame_ms if voiced else 0.0
            if self._run_ms >= self._vad_config.min_speech_ms:  # speech again, not a blip
                self._state = _Vad.SPEAKING
                self._spoke_again(out)
            elif resuming and not voiced:  # a blip: a decision it held back may be due now
                out.extend(self._decide(now))
        if self._state is _Vad.STARTING and self._run_ms >= self._vad_config.min_speech_ms:
            self._state = _Vad.SPEAKING
            self._speech_since_ms = self._audio_ms - self._run_ms
            self._started(replying, out)
        if self._state is _Vad.SPEAKING:
            self._spoke_since_finalize = self._spoke_since_finalize or not self._closing
            self._speaking(now, out)
        elif self._state is _Vad.STOPPING:
            self._quiet(now, out)
        return out

    def end_of_turn_score(self, now: float, request: int, score: float | None) -> list[Decision]:
        """The model's P(turn complete) for `Score(request)`; None: it failed, and the
        silence detector's `vad.min_silence_ms` decides this turn instead."""
        silence = self._silence
        if silence is None or silence.request != request:
            return []  # the user spoke again since: a stale score
        silence.score = score
        silence.failed = score is None
        return self._decide(now)

    def wants_score(self, request: int) -> bool:
        """`Score(request)` can still change the turn: the silence it was asked for goes on
        and nothing has closed the turn meanwhile (`audio_end`, a timeout). An inference
        that has not started yet is skipped otherwise."""
        silence = self._silence
        return (
            silence is not None
            and silence.request == request
            and silence.score is None
            and not self._closing
        )

    def stt_partial(self, text: str, replying: bool) -> list[Decision]:
        if not text:
            return []
        self._words_over_reply(replying)
        barge = self._barge
        if barge is not None:
            barge.partial = text
            if barge.paused_at is None or self._backchannels.may_become(text):
                return []  # too short to act on, or perhaps a backchannel: show nothing yet
            return [*self._interrupt(), ShowPartial(text)]
        self._open = True
        return [ShowPartial(" ".join([*self._segments, text]))]

    def stt_final(
        self, now: float, text: str, endpoint: bool, replying: bool, revises: bool = False
    ) -> list[Decision]:
        """A final: the answer to a `Finalize` (`endpoint` true), a segment of the utterance
        (false), or the STT's own end of turn (true, unasked). `revises`: it replaces the
        turn's last final, re-heard together with what followed."""
        answered = endpoint and self._pending_finals > 0
        if answered:
            self._pending_finals -= 1
        if text:
            self._words_over_reply(replying)
        barge = self._barge
        if barge is not None:
            barge.text = " ".join(filter(None, [barge.text, text]))
            return self._settle_barge(now) if endpoint else []
        if revises and self._segments:
            self._segments.pop()
        if text:
            self._segments.append(text)
            self._open = True
        if answered and not self._pending_finals and self._spoke_since_finalize:
            # A client faster than real time (a whole recording at once) spoke again, paused
            # and even ended the turn before that answer came: ask for the rest now.
            silence = self._silence
            stt_turns = self._config.end_of_turn is EndOfTurn.STT  # its endpoint decides
            asked = silence is not None and silence.asked and not silence.finalized
            if self._closing or (asked and not stt_turns):
                if silence is not None:
                    silence.finalized = True
                return [self._finalize(continues=True)]
        if self._closing:
            return [] if self._pending_finals else self._end(now, self._closing_reason)
        stt_decides = self._config.end_of_turn is EndOfTurn.STT or (
            self._config.end_of_turn is EndOfTurn.VAD_OR_STT and not self._semantic()
        )
        if endpoint and not answered and stt_decides:  # the STT's own endpoint
            return self._end(now, "stt")
        out: list[Decision] = []
        silence = self._silence
        preemptive = self._config.preemptive_ms is not None
        ready = silence is not None and silence.asked and not self._pending_finals
        if preemptive and ready and self._segments and self._held != len(self._segments):
            assert silence is not None
            self._held = len(self._segments)
            out.append(HoldReply(" ".join(self._segments), silence.began_at))
        return out + self._decide(now)

    def audio_end(self, now: float) -> list[Decision]:
        """The client says the user stopped (push-to-talk, client VAD): end at the final."""
        if self._closing:
            return []
        self._closing, self._closing_reason = True, "audio_end"
        self._closed_at = now
        out: list[Decision] = []
        if self._barge is not None:
            out += self._interrupt()  # the client ended a turn over the reply: it is a turn
        elif self._words_are_in():
            return self._end(now, "audio_end")
        if self._held is not None and self._held == len(self._segments):
            if not self._pending_finals:
                return out + self._end(now, "audio_end")
        elif self._held is not None:
            self._held = None
            out.append(DiscardReply())
        if not self._pending_finals:
            out.append(self._finalize(continues=bool(self._segments)))
        return out

    def _words_are_in(self) -> bool:
        """The user has been quiet since the STT answered the final asked for this silence:
        nothing spoken since can be missing, so another final would only add a round trip
        (and, with Deepgram, an unanswered Finalize's grace)."""
        silence = self._silence
        return (
            silence is not None
            and silence.finalized
            and not self._pending_finals
            and self._state is _Vad.STOPPING
        )

    def typed(self) -> list[Decision]:
        """A `text` turn takes the floor: whatever the user's speech had prepared is void."""
        out: list[Decision] = [DiscardReply()] if self._held is not None else []
        self._reset_turn()
        self._barge = None
        return out

    def client_interrupted(self) -> None:
        """The client cut the reply itself: no candidate is left to decide."""
        if self._barge is not None:
            self._barge = None
            self._open = True

    def tick(self, now: float) -> list[Decision]:
        """Wall-clock rules: a reply paused for PAUSE_LIMIT_S is interrupted; a silence whose
        audio stopped coming ends as if it had come."""
        limit = self.deadline()
        if limit is None or now < limit:
            return []
        if self._barge is not None:
            return self._interrupt()
        assert self._silence is not None
        return self._time_out(now, self._silence)

    def _words_over_reply(self, replying: bool) -> None:
        """Words while the assistant speaks and no turn is open (the STT can hear them before
        the VAD's `min_speech_ms`): a candidate, like speech the VAD hears."""
        idle = self._barge is None and not self._open and not self._closing
        if idle and replying and self._config.barge_in:
            self._barge = _Barge()

    # ---- VAD transitions -----------------------------------------------------------------

    def _started(self, replying: bool, out: list[Decision]) -> None:
        if not self._announced:
            self._announced = True
            t_ms = int(max(0.0, self._speech_since_ms - self._vad_config.speech_pad_ms))
            out.append(SpeechBegan(t_ms))
        # The tail of a turn the client closed (`closing`) cannot barge into its answer.
        may_barge = replying and self._config.barge_in and not self._closing
        if self._barge is None and may_barge and not self._open:
            self._barge = _Barge()
            return
        self._open = True

    def _speaking(self, now: float, out: list[Decision]) -> None:
        if self._barge is None:
            return
        self._pause_if_due(now, out)
        speech_ms = self._audio_ms - self._speech_since_ms
        if self._barge is not None and speech_ms >= self._config.backchannel_max_ms:
            out.extend(self._interrupt())

    def _pause_if_due(self, now: float, out: list[Decision]) -> None:
        """`min_barge_in_ms` after the candidate's speech began, silent since or not ("Wait,
        ..." stops after one word), the user stops hearing the reply."""
        barge = self._barge
        if barge is None or barge.paused_at is not None:
            return
        if self._audio_ms - self._speech_since_ms < self._config.min_barge_in_ms:
            return
        barge.paused_at = now
        out.append(PauseReply())
        if barge.partial and not self._backchannels.may_become(barge.partial):
            out.extend(self._interrupt())  # the words are already in: no need to wait
            out.append(ShowPartial(barge.partial))

    def _spoke_again(self, out: list[Decision]) -> None:
        """Speech after a pause: whatever the silence prepared is void."""
        self._silence = None
        if self._held is not None:
            self._held = None
            out.append(DiscardReply())

    def _quiet(self, now: float, out: list[Decision]) -> None:
        silence = self._silence
        assert silence is not None, "STOPPING always has a silence"
        if not (self._open or self._barge is not None):
            return  # the tail of a turn already closed (audio_end): nothing to decide
        stt_turns = self._config.end_of_turn is EndOfTurn.STT
        quiet_ms = self._audio_ms - silence.since_ms
        if not silence.asked and quiet_ms >= self._ask_ms:
            silence.asked = True
            if not self._pending_finals and (self._barge is not None or not stt_turns):
                silence.finalized = True
                out.append(self._finalize(bool(self._segments) and self._barge is None))
            if self._barge is None:
                out.extend(self._score(silence))
        if self._barge is not None:
            self._pause_if_due(now, out)
            return  # a candidate is settled by its words
        if stt_turns:
            return  # an STT turn by its endpoint
        if quiet_ms >= self._limit_ms(silence):
            out.extend(self._time_out(now, silence))

    def _finalize(self, continues: bool) -> Finalize:
        self._pending_finals += 1
        self._spoke_since_finalize = False
        return Finalize(continues=continues)

    def _limit_ms(self, silence: _Silence) -> float:
        """How much silence ends the turn, given what is known about it so far."""
        if not self._semantic() or silence.failed:
            return self._vad_config.min_silence_ms
        text = " ".join(self._segments)
        if silence.score is None or self._pending_finals or not text or unfinished(text):
            return self._config.max_wait_ms  # still judging, or the words stop mid-phrase
        if silence.score < self._config.threshold * UNSURE:
            return self._config.max_wait_ms  # the voice says unfinished ("remind me to buy")
        # The words sound finished and the model is unsure: a plain silence window decides.
        return self._vad_config.min_silence_ms

    def _time_out(self, now: float, silence: _Silence) -> list[Decision]:
        self._state = _Vad.QUIET
        reason = (
            "silence" if self._limit_ms(silence) == self._vad_config.min_silence_ms else "timeout"
        )
        if self._pending_finals:  # the words are on their way: end when they come
            self._closing, self._closing_reason = True, reason
            return []
        return self._end(now, reason)

    def _score(self, silence: _Silence) -> list[Decision]:
        if not self._semantic() or silence.request:
            return []
        self._requests += 1
        silence.request = self._requests
        return [Score(self._requests)]

    def _semantic(self) -> bool:
        return self._config.detector is TurnDetector.SMART_TURN

    # ---- deciding ------------------------------------------------------------------------

    def _decide(self, now: float) -> list[Decision]:
        """End the turn now if the model and the words agree it is complete."""
        silence = self._silence
        if silence is None or self._barge is not None or self._pending_finals:
            return []
        if self._run_ms > 0:
            # Voiced frames since the pause: the user may be going on. A score or words that
            # come now (late, under load) wait for the VAD to tell speech from a blip.
            return []
        if not self._semantic() or self._config.end_of_turn is EndOfTurn.STT:
            return []
        if silence.score is None or silence.score < self._config.threshold:
            return []
        text = " ".join(self._segments)
        if not text or unfinished(text):
            return []
        return self._end(now, "complete")

    def _end(self, now: float, reason: str) -> list[Decision]:
        text = " ".join(self._segments)
        silence = self._silence
        held = self._held is not None and self._held == len(self._segments) and bool(text)
        if self._closed_at is not None:
            speech_end = self._closed_at
        else:
            speech_end = silence.began_at if silence is not None else now
        end_ms = silence.since_ms if silence is not None else self._audio_ms
        out: list[Decision] = []
        if self._state is _Vad.STOPPING:
            self._state = _Vad.QUIET
        if self._open or text:
            out.append(SpeechEnded(int(end_ms + self._vad_config.speech_pad_ms)))
        if self._held is not None and not held:
            out.append(DiscardReply())
        if text:
            wait_ms = self._audio_ms - silence.since_ms if silence is not None else 0.0
            score = silence.score if silence is not None else None
            out.append(EndTurn(text, speech_end, held, score, wait_ms, reason))
        if reason == "audio_end":
            if not text and not self._turn_since_audio_end:
                out.append(NothingHeard())
            self._turn_since_audio_end = False
        elif text:
            self._turn_since_audio_end = True
        self._reset_turn()
        return out

    def _reset_turn(self) -> None:
        self._open = False
        self._announced = False
        self._segments = []
        self._silence = None
        self._closing = False
        self._closed_at = None
        self._held = None
        self._spoke_since_finalize = False

    # ---- barge-in ------------------------------------------------------------------------

    def _interrupt(self) -> list[Decision]:
        """The candidate is a real interruption: cut the reply; its speech is the user's."""
        barge = self._barge
        if barge is None:
            return []
        self._barge = None
        self._open = True
        if barge.text:
            self._segments.append(barge.text)
        return [InterruptReply(), *self._score_now()]

    def _score_now(self) -> list[Decision]:
        """A candidate became the user's turn while they are already quiet: judge it now."""
        if self._silence is not None and self._silence.asked:
            return self._score(self._silence)
        return []

    def _settle_barge(self, now: float) -> list[Decision]:
        """The candidate's words are in: a backchannel, or nothing, resumes the reply."""
        barge = self._barge
        assert barge is not None
        if not self._backchannels.only(barge.text):
            if barge.paused_at is None:  # too short to cut the reply: a turn all the same
                self._barge = None
                self._open = True
                self._segments.append(barge.text)
                return self._score_now() + self._decide(now)
            return self._interrupt() + self._decide(now)
        if self._state is _Vad.SPEAKING:
            barge.text = ""  # they speak on: what follows decides
            return []
        self._barge = None
        self._announced = self._open  # a turn under way keeps its speech_started
        end_ms = self._silence.since_ms if self._silence is not None else self._audio_ms
        self._silence = None
        if self._state is _Vad.STOPPING:
            self._state = _Vad.QUIET
        out: list[Decision] = [SpeechEnded(int(end_ms + self._vad_config.speech_pad_ms))]
        if barge.paused_at is not None:
            out.append(ResumeReply(barge.text))
        if barge.text:
            out.append(IgnoreUtterance(barge.text))
        return out
