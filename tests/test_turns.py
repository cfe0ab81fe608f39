"""The turn engine as a pure state machine: frames, scores, transcripts and ticks in,
decisions out; no socket, no event loop, no clock but the one these tests advance."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.config import VAD, Turns
from gateway.turns import (
    Backchannels,
    Decision,
    DiscardReply,
    EndTurn,
    Finalize,
    HoldReply,
    IgnoreUtterance,
    InterruptReply,
    PauseReply,
    ResumeReply,
    Score,
    ShowPartial,
    SpeechBegan,
    SpeechEnded,
    TurnEngine,
    unfinished,
)

FRAME_MS = 32.0
SPEECH, QUIET = 0.95, 0.02


class Talk:
    """One conversation with the engine on a simulated clock (audio at real-time pace)."""

    def __init__(self, vad: dict[str, Any] | None = None, **turns: Any) -> None:
        self.engine = TurnEngine(
            msgspec.convert({"min_speech_ms": 96, **(vad or {})}, VAD),
            msgspec.convert(turns, Turns),
            FRAME_MS,
        )
        self.now = 0.0
        self.log: list[Decision] = []

    def _frames(self, ms: float, probability: float, replying: bool) -> list[Decision]:
        out: list[Decision] = []
        for _ in range(round(ms / FRAME_MS)):
            self.now += FRAME_MS / 1000
            out += self.engine.frame(self.now, probability, replying)
        self.log += out
        return out

    def speak(self, ms: float, replying: bool = False) -> list[Decision]:
        return self._frames(ms, SPEECH, replying)

    def quiet(self, ms: float, replying: bool = False) -> list[Decision]:
        return self._frames(ms, QUIET, replying)

    def final(self, text: str, endpoint: bool = True, replying: bool = False) -> list[Decision]:
        out = self.engine.stt_final(self.now, text, endpoint, replying)
        self.log += out
        return out

    def score(self, value: float | None) -> list[Decision]:
        (request,) = [d.request for d in self.log if isinstance(d, Score)][-1:]
        out = self.engine.end_of_turn_score(self.now, request, value)
        self.log += out
        return out

    def partial(self, text: str, replying: bool = False) -> list[Decision]:
        out = self.engine.stt_partial(text, replying)
        self.log += out
        return out

    def ended(self) -> list[EndTurn]:
        return [d for d in self.log if isinstance(d, EndTurn)]


def kinds(decisions: list[Decision]) -> list[str]:
    return [type(d).__name__ for d in decisions]


# ---- end of turn -------------------------------------------------------------------------


def test_a_complete_request_ends_as_soon_as_the_score_and_the_words_are_in() -> None:
    talk = Talk()
    assert kinds(talk.speak(1500)) == ["SpeechBegan"]
    asked = talk.quiet(224)
    assert kinds(asked) == ["Finalize", "Score"], "both asked at min_wait_ms of silence"
    assert talk.final("What is the weather in Paris?") == [], "the score is not in yet"
    decided = talk.score(0.93)
    assert kinds(decided) == ["SpeechEnded", "EndTurn"]
    (end,) = talk.ended()
    assert (end.text, end.reason, end.score, end.held) == (
        "What is the weather in Paris?",
        "complete",
        0.93,
        False,
    )
    assert end.wait_ms < 300, "no silence timer beyond the judgement"


def test_words_that_stop_mid_phrase_keep_the_turn_open_despite_the_model() -> None:
    talk = Talk()
    talk.speak(1500)
    talk.quiet(224)
    talk.final("I want to send a package to")
    assert talk.score(0.97) == [], "'... to' is not the end of a request"
    talk.quiet(1500)
    assert talk.ended() == []
    talk.speak(900)  # "my sister in Denver"
    talk.quiet(224)
    talk.final("my sister in Denver.")
    talk.score(0.9)
    (end,) = talk.ended()
    assert end.text == "I want to send a package to my sister in Denver."


def test_unfinished_words_wait_up_to_max_wait_ms_then_end() -> None:
    talk = Talk(max_wait_ms=1200)
    talk.speak(1000)
    talk.quiet(224)
    talk.final("Tell me about the weather in")
    assert talk.score(0.2) == []
    talk.quiet(800)
    assert talk.ended() == []
    talk.quiet(300)
    (end,) = talk.ended()
    assert end.reason == "timeout" and 1150 <= end.wait_ms <= 1300


def test_finished_words_the_model_is_unsure_of_end_after_the_silence_window() -> None:
    """The model is unsure of voices it was not trained on: finished words are not kept
    waiting for max_wait_ms, only for the plain silence window."""
    talk = Talk(vad={"min_silence_ms": 600}, max_wait_ms=2500)
    talk.speak(1000)
    talk.quiet(224)
    talk.final("Tell me about the weather.")
    assert talk.score(0.3) == []
    talk.quiet(416)
    (end,) = talk.ended()
    assert end.reason == "silence" and 590 <= end.wait_ms <= 650


def test_a_client_that_stops_sending_audio_still_gets_its_turn_ended() -> None:
    talk = Talk(vad={"min_silence_ms": 600})
    talk.speak(1000)
    talk.quiet(224)  # then the audio stops coming altogether
    talk.final("Tell me about the weather.")
    talk.score(0.3)
    deadline = talk.engine.deadline()
    assert deadline is not None
    assert talk.engine.tick(deadline - 0.01) == []
    assert "EndTurn" in kinds(talk.engine.tick(deadline))


def test_a_late_score_does_not_end_the_turn_once_the_user_goes_on() -> None:
    """Under load the score and the words can come after the user has started again: speech
    the VAD has not yet confirmed still holds the decision back."""
    talk = Talk()
    talk.speak(1000)  # "what is the capital"
    talk.quiet(224)
    talk.speak(64)  # "of France": two voiced frames, below min_speech_ms
    assert talk.final("What is the capital of France?") == []
    assert talk.score(0.95) == [], "the user is talking again"
    talk.speak(900)  # "and of Spain?"
    assert talk.ended() == [], "it was speech: the pause's judgement is void"
    talk.quiet(224)
    talk.final("And of Spain?")
    talk.score(0.95)
    (end,) = talk.ended()
    assert (end.text, end.reason) == ("What is the capital of France? And of Spain?", "complete")


def test_a_decision_held_back_by_a_blip_comes_when_the_blip_ends() -> None:
    talk = Talk()
    talk.speak(1000)
    talk.quiet(224)
    talk.speak(32)  # a cough
    talk.final("What is the capital of France?")
    assert talk.score(0.95) == []
    decided = talk.quiet(32)
    assert kinds(decided) == ["SpeechEnded", "EndTurn"]
    (end,) = talk.ended()
    assert end.reason == "complete"


def test_a_stale_score_after_the_user_spoke_again_is_ignored() -> None:
    talk = Talk()
    talk.speak(800)
    talk.quiet(224)
    request = next(d.request for d in talk.log if isinstance(d, Score))
    talk.speak(500)
    assert talk.engine.end_of_turn_score(talk.now, request, 0.99) == []


def test_a_score_is_wanted_only_while_its_silence_can_still_end_the_turn() -> None:
    talk = Talk()
    talk.speak(800)
    talk.quiet(224)
    first = next(d.request for d in talk.log if isinstance(d, Score))
    assert talk.engine.wants_score(first), "the silence goes on: the model may end the turn"
    talk.speak(500)
    assert not talk.engine.wants_score(first), "the user spoke again"
    talk.quiet(224)
    second = [d.request for d in talk.log if isinstance(d, Score)][-1]
    assert talk.engine.wants_score(second)
    talk.engine.audio_end(talk.now)
    assert not talk.engine.wants_score(second), "the client closed the turn itself"


def test_a_model_that_fails_falls_back_to_the_silence_window() -> None:
    talk = Talk(vad={"min_silence_ms": 600})
    talk.speak(800)
    talk.quiet(224)
    talk.final("What time is it?")
    assert talk.score(None) == []
    talk.quiet(400)
    (end,) = talk.ended()
    assert end.reason == "silence"


def test_the_silence_detector_ends_turns_after_min_silence_ms_once_the_words_are_in() -> None:
    talk = Talk(detector="silence", vad={"min_silence_ms": 600})
    talk.speak(800)
    assert kinds(talk.quiet(224)) == ["Finalize"], "no model without smart_turn"
    talk.quiet(448)
    assert talk.ended() == [], "the final is still on its way: the turn waits for it"
    talk.final("What time is it?")
    (end,) = talk.ended()
    assert end.reason == "silence" and end.text == "What time is it?"


def test_a_noise_with_no_words_ends_no_turn() -> None:
    talk = Talk(detector="silence")
    talk.speak(300)
    talk.quiet(700)
    talk.final("")
    assert talk.ended() == [] and "SpeechEnded" in kinds(talk.log)


def test_preemption_holds_a_reply_and_releases_it_when_the_turn_ends() -> None:
    talk = Talk(preemptive_ms=160)
    talk.speak(1000)
    talk.quiet(192)
    held = talk.final("What is the capital of France?")
    assert kinds(held) == ["HoldReply"]
    talk.score(0.95)
    (end,) = talk.ended()
    assert end.held, "the held reply is the answer"


def test_speaking_on_discards_the_held_reply_and_keeps_both_parts() -> None:
    talk = Talk(preemptive_ms=160)
    talk.speak(1000)
    talk.quiet(192)
    talk.final("What is the capital")
    talk.score(0.3)
    assert kinds(talk.speak(200)) == ["DiscardReply"]
    talk.quiet(192)
    talk.final("of France?")
    talk.score(0.9)
    (end,) = talk.ended()
    assert end.text == "What is the capital of France?" and end.held
    assert kinds(talk.log).count("HoldReply") == 2


def test_a_blip_in_the_silence_does_not_resume_the_turn() -> None:
    talk = Talk(preemptive_ms=160, vad={"min_speech_ms": 96})
    talk.speak(1000)
    talk.quiet(192)
    talk.final("What is the capital of France?")
    talk.score(0.3)
    assert talk.speak(64) == [], "64 ms of noise is not speech again"
    assert "DiscardReply" not in kinds(talk.log)


def test_audio_end_ends_the_turn_when_the_final_comes() -> None:
    talk = Talk()
    talk.speak(800)
    assert kinds(talk.engine.audio_end(talk.now)) == ["Finalize"]
    talk.final("Stop here")
    (end,) = talk.ended()
    assert end.reason == "audio_end" and end.text == "Stop here"


def test_audio_end_after_the_silences_final_came_ends_the_turn_without_asking_again() -> None:
    talk = Talk()
    talk.speak(800)
    assert kinds(talk.quiet(224)) == ["Finalize", "Score"]
    talk.final("What time is it?")
    decided = talk.engine.audio_end(talk.now)
    assert kinds(decided) == ["SpeechEnded", "EndTurn"], "no second final to wait for"
    end = decided[-1]
    assert isinstance(end, EndTurn) and (end.text, end.reason) == ("What time is it?", "audio_end")


def test_audio_end_with_no_words_since_the_last_audio_end_is_nothing_heard() -> None:
    talk = Talk()
    talk.quiet(500)  # a push-to-talk press with nothing said
    assert kinds(talk.engine.audio_end(talk.now)) == ["Finalize"]
    assert kinds(talk.final("")) == ["NothingHeard"]
    talk.speak(400)  # a cough on the next press: speech the STT finds no words in
    talk.engine.audio_end(talk.now)
    assert kinds(talk.final("")) == ["SpeechEnded", "NothingHeard"]
    assert talk.ended() == []


def test_audio_end_after_the_silence_ended_the_turn_is_not_nothing_heard() -> None:
    # The user paused before letting go: the silence detector ended their turn, and the
    # audio_end that follows finds no new words, yet this press was answered.
    talk = Talk(detector="silence")
    talk.speak(800)
    talk.quiet(224)
    talk.final("What time is it?")
    talk.quiet(700)
    assert [end.reason for end in talk.ended()] == ["silence"]
    talk.engine.audio_end(talk.now)
    assert "NothingHeard" not in kinds(talk.final(""))
    # ...and the press after that, with nothing in it, is.
    talk.quiet(500)
    talk.engine.audio_end(talk.now)
    assert kinds(talk.final("")) == ["NothingHeard"]


def two_sentences_before_the_first_final() -> Talk:
    """A recording sent at once: the first pause's Finalize is still unanswered when the user
    has spoken again and paused again."""
    talk = Talk()
    talk.speak(800)
    assert kinds(talk.quiet(224)) == ["Finalize", "Score"]
    talk.speak(600)
    assert "Finalize" not in kinds(talk.quiet(224)), "one final on its way at a time"
    return talk


def test_words_spoken_while_a_final_was_on_its_way_are_asked_for_before_audio_end_ends() -> None:
    talk = two_sentences_before_the_first_final()
    assert talk.engine.audio_end(talk.now) == []
    assert kinds(talk.final("Send it to")) == ["Finalize"], "its answer has the first words"
    talk.final("my sister")
    (end,) = talk.ended()
    assert (end.text, end.reason) == ("Send it to my sister", "audio_end")


def test_a_pause_that_could_not_ask_for_its_final_asks_once_the_one_before_is_answered() -> None:
    talk = two_sentences_before_the_first_final()
    assert kinds(talk.final("Send it to")) == ["Finalize"]
    assert talk.score(0.95) == [], "the words after the first pause are not in yet"
    talk.final("my sister")
    (end,) = talk.ended()
    assert (end.text, end.reason) == ("Send it to my sister", "complete")


def test_an_stt_turn_is_not_finalized_by_the_answer_to_a_barge_in_before_it() -> None:
    talk = Talk(end_of_turn="stt")
    talk.speak(800, replying=True)
    assert kinds(talk.quiet(224, replying=True)) == ["Finalize"], "the candidate's words"
    assert kinds(talk.speak(600, replying=True)) == ["InterruptReply"]
    talk.quiet(224, replying=True)
    assert talk.final("Wait, actually", replying=True) == [], "the STT's endpoint decides"


def test_speech_after_the_final_came_needs_no_second_final_when_it_was_asked_after() -> None:
    talk = Talk()
    talk.speak(800)
    talk.quiet(224)
    talk.speak(600)
    assert talk.final("Send it to") == [], "the user is still speaking: their pause will ask"
    assert kinds(talk.quiet(224)) == ["Finalize", "Score"]


def test_audio_end_asks_for_the_final_when_the_stt_owes_one_or_none_was_asked() -> None:
    owed = Talk()
    owed.speak(800)
    owed.quiet(224)  # Finalize asked, not answered yet
    assert owed.engine.audio_end(owed.now) == [], "the final on its way ends the turn"
    stt_turns = Talk(end_of_turn="stt")
    stt_turns.speak(800)
    stt_turns.quiet(224)  # the STT's endpoint decides: no Finalize was asked
    assert kinds(stt_turns.engine.audio_end(stt_turns.now)) == ["Finalize"]
    spoke_again = Talk()
    spoke_again.speak(800)
    spoke_again.quiet(224)
    spoke_again.final("Remind me to")
    spoke_again.speak(300)
    assert kinds(spoke_again.engine.audio_end(spoke_again.now)) == ["Finalize"]


def test_with_end_of_turn_stt_only_the_stts_own_endpoint_ends_a_turn() -> None:
    talk = Talk(end_of_turn="stt")
    talk.speak(800)
    talk.quiet(3000)
    assert talk.ended() == [] and "Finalize" not in kinds(talk.log)
    talk.final("Hello there", endpoint=True)
    (end,) = talk.ended()
    assert end.reason == "stt"


def test_stt_segments_add_up_and_partials_show_the_whole_turn() -> None:
    talk = Talk()
    talk.speak(800)
    talk.final("I would like", endpoint=False)
    shown = talk.partial("a table")
    assert shown == [ShowPartial("I would like a table")]


# ---- barge-in ----------------------------------------------------------------------------


def test_speech_over_a_reply_pauses_it_after_min_barge_in_ms() -> None:
    talk = Talk(min_barge_in_ms=300)
    out = talk.speak(256, replying=True)
    assert "PauseReply" not in kinds(out)
    assert kinds(talk.speak(96, replying=True)) == ["PauseReply"]


def test_a_backchannel_resumes_the_reply_and_is_no_turn() -> None:
    talk = Talk()
    talk.speak(500, replying=True)  # "mm hmm"
    talk.quiet(224, replying=True)
    settled = talk.final("Mm-hmm.")
    assert kinds(settled) == ["SpeechEnded", "ResumeReply", "IgnoreUtterance"]
    assert settled[1] == ResumeReply("Mm-hmm.")
    talk.quiet(3000, replying=True)
    assert talk.ended() == [] and "Score" not in kinds(talk.log)


def test_noise_over_a_reply_resumes_it() -> None:
    talk = Talk()
    talk.speak(400, replying=True)  # a cough
    talk.quiet(224, replying=True)
    assert kinds(talk.final("")) == ["SpeechEnded", "ResumeReply"]


def test_words_over_a_reply_interrupt_it_and_become_the_turn() -> None:
    talk = Talk()
    talk.speak(700, replying=True)  # "wait, stop"
    talk.quiet(224, replying=True)
    settled = talk.final("Wait, stop.")
    assert kinds(settled) == ["InterruptReply", "Score"], "the turn is judged like any other"
    talk.score(0.9)
    (end,) = talk.ended()
    assert end.text == "Wait, stop."


def test_a_partial_that_cannot_be_a_backchannel_interrupts_at_once() -> None:
    talk = Talk()
    talk.speak(400, replying=True)
    assert talk.partial("mm") == [], "could still be 'mm hmm'"
    out = talk.partial("what about Lyon")
    assert kinds(out) == ["InterruptReply", "ShowPartial"]


def test_long_speech_over_a_reply_interrupts_it_whatever_it_says() -> None:
    talk = Talk(backchannel_max_ms=1000)
    out = talk.speak(1100, replying=True)
    assert kinds(out) == ["SpeechBegan", "PauseReply", "InterruptReply"]


def test_a_pause_left_unresolved_for_two_seconds_is_an_interruption() -> None:
    talk = Talk()
    talk.speak(400, replying=True)
    paused_at = talk.now
    assert talk.engine.deadline() is not None
    assert talk.engine.tick(paused_at + 1.9) == []
    assert talk.engine.tick(paused_at + 2.1) == [InterruptReply()]
    assert talk.engine.deadline() is None


def test_a_short_backchannel_pauses_the_reply_at_min_barge_in_ms_then_resumes_it() -> None:
    talk = Talk(min_barge_in_ms=300)
    talk.speak(192, replying=True)  # "mm"
    talk.quiet(224, replying=True)
    assert kinds(talk.log) == ["SpeechBegan", "PauseReply", "Finalize"]
    assert kinds(talk.final("Mm.")) == ["SpeechEnded", "ResumeReply", "IgnoreUtterance"]


def test_without_barge_in_speech_over_a_reply_is_a_turn_answered_after() -> None:
    talk = Talk(barge_in=False)
    talk.speak(800, replying=True)
    talk.quiet(224, replying=True)
    talk.final("Thanks.")
    talk.score(0.9)
    assert "PauseReply" not in kinds(talk.log)
    (end,) = talk.ended()
    assert end.text == "Thanks."


def test_the_tail_of_a_turn_the_client_ended_cannot_barge_into_its_answer() -> None:
    talk = Talk()
    talk.speak(800)
    talk.engine.audio_end(talk.now)
    talk.final("Hello")
    talk.speak(600, replying=True)  # the VAD still hears the end of it
    assert "PauseReply" not in kinds(talk.log)


def test_when_the_reply_ends_during_a_candidate_it_simply_becomes_a_turn() -> None:
    talk = Talk()
    talk.speak(200, replying=True)
    talk.speak(200, replying=False)
    talk.quiet(224)
    talk.final("What else?")
    talk.score(0.9)
    (end,) = talk.ended()
    assert end.text == "What else?"


# ---- words -------------------------------------------------------------------------------


def test_unfinished_phrases() -> None:
    for text in ("I want to send a package to", "with the", "my flight leaves at", "um,", "and"):
        assert unfinished(text), text
    for text in ("What time is it?", "What are you working on?", "Tell me a joke.", "Paris", ""):
        assert not unfinished(text), text


def test_backchannels_match_whole_phrases_only() -> None:
    b = Backchannels(["mm hmm", "uh huh", "yeah", "okay", "right"])
    for text in ("Mm-hmm.", "mm hmm", "Yeah.", "Okay, okay.", "Uh huh, right.", ""):
        assert b.only(text), text
    for text in ("yeah but what about Lyon", "hmm", "right now", "okay stop"):
        assert not b.only(text), text
    assert b.may_become("mm") and b.may_become("uh") and not b.may_become("what")


def test_held_and_discarded_and_ignored_are_distinct_decisions() -> None:
    assert HoldReply("x", 1.0) != DiscardReply()
    assert IgnoreUtterance("yeah") == IgnoreUtterance("yeah")
    assert Finalize() == Finalize() and SpeechBegan(0) != SpeechEnded(0)
    assert PauseReply() != InterruptReply()


def test_words_heard_over_a_reply_before_the_vad_are_a_candidate_too() -> None:
    talk = Talk()
    assert talk.partial("mm", replying=True) == [], "no turn opens on a maybe-backchannel"
    talk.speak(400, replying=True)
    assert "PauseReply" in kinds(talk.log)
    talk.quiet(224, replying=True)
    assert "ResumeReply" in kinds(talk.final("mm hmm"))


# ---- hysteresis ----------------------------------------------------------------------------


def test_speech_shorter_than_min_speech_never_starts() -> None:
    talk = Talk(vad={"min_speech_ms": 160})
    talk.speak(128)
    talk.quiet(500)
    assert talk.log == []


def test_a_start_needs_consecutive_voiced_frames() -> None:
    talk = Talk(vad={"min_speech_ms": 96})
    for _ in range(5):
        talk.speak(64)
        talk.quiet(32)
    assert "SpeechBegan" not in kinds(talk.log)


def test_a_probability_equal_to_the_threshold_counts_as_speech() -> None:
    talk = Talk(vad={"threshold": 0.5, "min_speech_ms": 64})
    talk.engine.frame(0.0, 0.5, False)
    assert kinds(talk.engine.frame(0.0, 0.5, False)) == ["SpeechBegan"]
    talk = Talk(vad={"threshold": 0.5, "min_speech_ms": 64})
    talk.engine.frame(0.0, 0.499, False)
    assert talk.engine.frame(0.0, 0.499, False) == []


def test_speech_times_are_audio_time_with_the_pad_subtracted_and_added() -> None:
    talk = Talk(detector="silence", vad={"speech_pad_ms": 100, "min_silence_ms": 320})
    talk.quiet(960)
    (began,) = talk.speak(640)
    assert began == SpeechBegan(t_ms=960 - 100)
    talk.quiet(352)
    talk.final("hello")
    (ended,) = [d for d in talk.log if isinstance(d, SpeechEnded)]
    assert ended.t_ms == 960 + 640 + 100
    early = Talk(vad={"speech_pad_ms": 500})
    assert early.speak(200) == [SpeechBegan(t_ms=0)], "clamped at zero"


def test_a_final_that_revises_replaces_the_turns_last_words() -> None:
    """An utterance STT re-hears a turn resumed after a pause: its final covers both parts."""
    talk = Talk()
    talk.speak(1000)
    talk.quiet(224)
    talk.final("What is the weather like,")
    talk.score(0.2)
    talk.speak(400)
    (finalize,) = [d for d in talk.quiet(224) if isinstance(d, Finalize)]
    assert finalize.continues, "the STT is told the turn goes on"
    talk.engine.stt_final(talk.now, "What is the weather like today?", True, False, revises=True)
    talk.score(0.95)
    (end,) = talk.ended()
    assert end.text == "What is the weather like today?"


def test_a_one_word_start_pauses_the_reply_even_if_a_silence_follows() -> None:
    """ "Wait, ..." is one word and a comma: the user stops hearing the reply all the same."""
    talk = Talk(min_barge_in_ms=300, vad={"min_speech_ms": 96})
    talk.speak(224, replying=True)  # "Wait,"
    assert "PauseReply" not in kinds(talk.log)
    assert kinds(talk.quiet(128, replying=True)) == ["PauseReply"]


def test_finished_words_the_model_calls_unfinished_wait_for_more() -> None:
    """ "Remind me to buy." reads as a sentence; the voice, cut mid-phrase, says otherwise."""
    talk = Talk(vad={"min_silence_ms": 600}, max_wait_ms=2500)
    talk.speak(1000)
    talk.quiet(224)
    talk.final("Remind me to buy.")
    talk.score(0.02)
    talk.quiet(1500)
    assert talk.ended() == []


def test_a_number_is_a_finished_word() -> None:
    assert not unfinished("Remind me to call my mother at 6.")
