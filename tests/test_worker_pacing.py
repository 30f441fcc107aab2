"""The delivery worker's pacing between passes (pure): how soon it looks again when nothing wakes it."""

from __future__ import annotations

from notifiers.worker import HELD_POLL_SECONDS, IDLE_POLL_SECONDS, LOAD_SAMPLE_SECONDS, pass_wait


def test_busy_intake_with_transitions_waiting_looks_again_within_a_load_sample() -> None:
    # The storm's callbacks are not transitions: nothing wakes the worker when it ends, so a full idle
    # poll here delayed the backlog's full-speed drain by up to a second after intake calmed down.
    wait = pass_wait(IDLE_POLL_SECONDS, claimed=0, in_flight=0, intake_busy=True, outbox_pending=True)
    assert wait == LOAD_SAMPLE_SECONDS < IDLE_POLL_SECONDS


def test_busy_intake_with_nothing_left_to_plan_sleeps_a_whole_poll() -> None:
    wait = pass_wait(IDLE_POLL_SECONDS, claimed=0, in_flight=0, intake_busy=True, outbox_pending=False)
    assert wait == IDLE_POLL_SECONDS


def test_calm_intake_keeps_the_due_time() -> None:
    assert pass_wait(0.3, claimed=0, in_flight=0, intake_busy=False, outbox_pending=True) == 0.3
    wait = pass_wait(IDLE_POLL_SECONDS, claimed=2, in_flight=2, intake_busy=False, outbox_pending=False)
    assert wait == IDLE_POLL_SECONDS


def test_due_but_held_back_does_not_spin() -> None:
    assert pass_wait(0.0, claimed=0, in_flight=0, intake_busy=False, outbox_pending=False) == HELD_POLL_SECONDS
    assert pass_wait(0.0, claimed=1, in_flight=1, intake_busy=False, outbox_pending=False) == 0.0
