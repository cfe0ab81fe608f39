"""PlaybackClock: the server's view of how much of a turn's audio the client has played."""

from __future__ import annotations

import pytest

from gateway.playback import PlaybackClock

T0 = 1000.0  # an arbitrary loop-clock origin, in seconds


def test_fresh_clock_has_played_nothing_and_is_silent() -> None:
    clock = PlaybackClock()
    assert not clock.started
    assert clock.played_ms(T0) == 0.0
    assert not clock.playing(T0)
    assert clock.ahead_ms(T0) == 0.0


def test_sent_ms_counts_payload_duration() -> None:
    clock = PlaybackClock()
    clock.on_sent(300, T0)
    clock.on_sent(200, T0)
    assert clock.sent_ms == pytest.approx(500.0)
    assert clock.started


def test_estimate_grows_with_wall_time_from_first_send() -> None:
    clock = PlaybackClock()
    clock.on_sent(1000, T0)
    assert clock.played_ms(T0) == pytest.approx(0.0)
    assert clock.played_ms(T0 + 0.25) == pytest.approx(250.0)
    assert clock.played_ms(T0 + 0.6) == pytest.approx(600.0)
    assert clock.playing(T0 + 0.6)


def test_estimate_never_exceeds_sent() -> None:
    clock = PlaybackClock()
    clock.on_sent(400, T0)
    assert clock.played_ms(T0 + 0.4) == pytest.approx(400.0)
    assert clock.played_ms(T0 + 10.0) == pytest.approx(400.0)
    assert not clock.playing(T0 + 0.401)
    assert not clock.playing(T0 + 10.0)


def test_chunks_sent_faster_than_real_time_queue_behind_each_other() -> None:
    clock = PlaybackClock()
    for _ in range(5):
        clock.on_sent(200, T0)  # a burst: 1 s of audio at once
    assert clock.played_ms(T0 + 0.5) == pytest.approx(500.0)
    assert clock.playing(T0 + 0.9)
    assert not clock.playing(T0 + 1.001)


def test_underrun_restarts_the_clock_instead_of_running_ahead() -> None:
    clock = PlaybackClock()
    clock.on_sent(200, T0)  # plays out by T0 + 0.2
    clock.on_sent(200, T0 + 1.0)  # TTS was slow: 800 ms of silence on the client
    assert clock.played_ms(T0 + 1.0) == pytest.approx(200.0)
    assert clock.played_ms(T0 + 1.1) == pytest.approx(300.0)
    assert clock.playing(T0 + 1.1)
    assert clock.played_ms(T0 + 1.2) == pytest.approx(400.0)


def test_chunk_sent_while_previous_still_plays_does_not_restart_the_clock() -> None:
    clock = PlaybackClock()
    clock.on_sent(200, T0)
    clock.on_sent(200, T0 + 0.1)  # queued behind the first: ends at T0 + 0.4
    assert clock.played_ms(T0 + 0.3) == pytest.approx(300.0)
    assert not clock.playing(T0 + 0.401)


def test_report_re_anchors_a_client_that_plays_behind_the_estimate() -> None:
    clock = PlaybackClock()
    clock.on_sent(1000, T0)
    clock.on_report(played_ms=100, finished=False, now=T0 + 0.5)  # client started late
    assert clock.played_ms(T0 + 0.5) == pytest.approx(100.0)
    assert clock.played_ms(T0 + 0.7) == pytest.approx(300.0)
    assert clock.playing(T0 + 1.3)
    assert not clock.playing(T0 + 1.401)


def test_report_re_anchors_a_client_ahead_of_the_estimate() -> None:
    clock = PlaybackClock()
    clock.on_sent(1000, T0)
    clock.on_report(played_ms=800, finished=False, now=T0 + 0.5)
    assert clock.played_ms(T0 + 0.5) == pytest.approx(800.0)
    assert clock.played_ms(T0 + 0.6) == pytest.approx(900.0)
    assert not clock.playing(T0 + 0.7)


def test_report_of_more_than_sent_is_capped_at_sent() -> None:
    clock = PlaybackClock()
    clock.on_sent(500, T0)
    clock.on_report(played_ms=900, finished=False, now=T0 + 0.1)
    assert clock.played_ms(T0 + 0.1) == pytest.approx(500.0)
    assert clock.ahead_ms(T0 + 0.1) == pytest.approx(0.0)


def test_finished_report_means_everything_sent_was_played() -> None:
    clock = PlaybackClock()
    clock.on_sent(1000, T0)
    clock.on_report(played_ms=700, finished=True, now=T0 + 0.2)
    assert clock.played_ms(T0 + 0.2) == pytest.approx(1000.0)
    assert clock.ahead_ms(T0 + 0.2) == pytest.approx(0.0)
    assert not clock.playing(T0 + 0.2)


def test_audio_sent_after_finished_plays_again() -> None:
    clock = PlaybackClock()
    clock.on_sent(200, T0)
    clock.on_report(played_ms=200, finished=True, now=T0 + 0.3)
    clock.on_sent(200, T0 + 0.5)
    assert clock.playing(T0 + 0.6)
    assert clock.played_ms(T0 + 0.6) == pytest.approx(300.0)


def test_report_before_any_audio_sent_starts_nothing_audible() -> None:
    clock = PlaybackClock()
    clock.on_report(played_ms=0, finished=False, now=T0)
    assert clock.played_ms(T0 + 1.0) == 0.0
    assert not clock.playing(T0 + 1.001)


def test_ahead_ms_is_sent_minus_played() -> None:
    clock = PlaybackClock()
    clock.on_sent(1500, T0)
    assert clock.ahead_ms(T0) == pytest.approx(1500.0)
    assert clock.ahead_ms(T0 + 0.4) == pytest.approx(1100.0)
    assert clock.ahead_ms(T0 + 2.0) == pytest.approx(0.0)


def test_clock_works_from_a_zero_time_origin() -> None:
    clock = PlaybackClock()
    clock.on_sent(100, 0.0)
    clock.on_sent(100, 0.0)
    assert clock.played_ms(0.05) == pytest.approx(50.0)
    assert clock.playing(0.15)


def test_a_paused_clock_stands_still_and_still_counts_as_playing() -> None:
    clock = PlaybackClock()
    clock.on_sent(2000, now=0.0)
    clock.pause(now=0.5)
    assert clock.played_ms(now=3.0) == 500 and clock.playing(now=3.0)
    clock.on_sent(1000, now=1.0)  # queued while paused
    assert clock.ahead_ms(now=3.0) == 2500


def test_resume_continues_from_the_paused_position() -> None:
    clock = PlaybackClock()
    clock.on_sent(2000, now=0.0)
    clock.pause(now=0.5)
    clock.resume(now=10.0)
    assert clock.played_ms(now=10.5) == 1000
    assert clock.playing(now=11.4) and not clock.playing(now=11.6)
