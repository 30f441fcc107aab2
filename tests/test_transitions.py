"""The transition rule (SPEC §2): the pure function by a table of cases, then the store applying it."""

from __future__ import annotations

from typing import Any

import pytest

from receiver.store.transitions import Decision, Position, decide
from tests.conftest import AppClient
from tests.jobs import job, new_job_id
from tests.test_intake import post

pytestmark = pytest.mark.stores("sqlite", "postgres")


@pytest.mark.parametrize(
    ("current", "event", "expected"),
    [
        (None, Position(1, "Created"), Decision(True, True)),  # a new job is a transition
        (None, Position(1, "Failed"), Decision(True, True)),
        (Position(1, "Created"), Position(2, "Pending"), Decision(True, True)),
        (Position(1, "Running"), Position(2, "Running"), Decision(True, False)),  # newer, same status
        (Position(5, "Running"), Position(3, "Succeeded"), Decision(False, False)),  # older arrives late
        (Position(5, "Succeeded"), Position(4, "Running"), Decision(False, False)),
        # equal lastUpdated: terminal outranks in-flight (real data: Pending and Succeeded share a ms)
        (Position(5, "Pending"), Position(5, "Succeeded"), Decision(True, True)),
        (Position(5, "Succeeded"), Position(5, "Pending"), Decision(False, False)),
        # equal lastUpdated, in-flight order Created < Pending < Running < Rollback < Cancelling
        (Position(5, "Created"), Position(5, "Pending"), Decision(True, True)),
        (Position(5, "Running"), Position(5, "Pending"), Decision(False, False)),
        (Position(5, "Running"), Position(5, "Rollback"), Decision(True, True)),
        (Position(5, "Rollback"), Position(5, "Cancelling"), Decision(True, True)),
        (Position(5, "Cancelling"), Position(5, "Cancelled"), Decision(True, True)),
        # two terminal statuses at the same millisecond: the first to arrive stays current
        (Position(5, "Failed"), Position(5, "Succeeded"), Decision(False, False)),
        (Position(5, "Succeeded"), Position(5, "Cancelled"), Decision(False, False)),
        # a later terminal after a terminal is still a transition if the status differs
        (Position(5, "Failed"), Position(6, "Succeeded"), Decision(True, True)),
        (Position(5, "Failed"), Position(6, "Failed"), Decision(True, False)),
    ],
)
def test_decide(current: Position | None, event: Position, expected: Decision) -> None:
    assert decide(current, event) == expected


async def test_out_of_order_arrival_keeps_newest_state(client: AppClient, db: Any) -> None:
    job_id = new_job_id()
    timeline = [("Created", 100), ("Pending", 200), ("Running", 300), ("Failed", 400)]
    for status, at in reversed(timeline):  # worst case: newest first
        payload = job(jobId=job_id, status=status, lastUpdated=at, error={"code": "e", "message": "m"})
        assert (await post(client, payload))[0] == 202
    assert db("SELECT status, last_updated FROM jobs WHERE job_id = ?", job_id) == [("Failed", 400)]
    assert db("SELECT count(*) FROM events WHERE job_id = ?", job_id) == [(4,)]
    # only the first (Failed, new job) was a transition; the late ones are history only
    assert db("SELECT status, previous_status FROM outbox WHERE job_id = ?", job_id) == [("Failed", None)]


async def test_in_order_lifecycle_records_terminal_transition_once(client: AppClient, db: Any) -> None:
    job_id = new_job_id()
    for status, at in [("Created", 1), ("Pending", 2), ("Running", 3), ("Succeeded", 4)]:
        assert (await post(client, job(jobId=job_id, status=status, lastUpdated=at)))[0] == 202
    assert (await post(client, job(jobId=job_id, status="Succeeded", lastUpdated=4)))[0] == 200
    assert db("SELECT status, previous_status FROM outbox WHERE job_id = ?", job_id) == [("Succeeded", "Running")]


async def test_same_millisecond_pending_and_succeeded_are_both_kept(client: AppClient, db: Any) -> None:
    job_id = new_job_id()
    assert (await post(client, job(jobId=job_id, status="Succeeded", lastUpdated=7)))[0] == 202
    assert (await post(client, job(jobId=job_id, status="Pending", lastUpdated=7)))[0] == 202  # not a duplicate
    assert db("SELECT status FROM jobs WHERE job_id = ?", job_id) == [("Succeeded",)]
    assert db("SELECT count(*) FROM events WHERE job_id = ?", job_id) == [(2,)]


async def test_attempt_change_with_same_status_is_stored_without_transition(client: AppClient, db: Any) -> None:
    job_id = new_job_id()
    await post(
        client, job(jobId=job_id, status="Failed", lastUpdated=1, attempts=1, error={"code": "a", "message": "m"})
    )
    await post(
        client, job(jobId=job_id, status="Failed", lastUpdated=2, attempts=2, error={"code": "b", "message": "m"})
    )
    assert db("SELECT attempts, error_code FROM jobs WHERE job_id = ?", job_id) == [(2, "b")]
    assert db("SELECT count(*) FROM outbox WHERE job_id = ?", job_id) == [(1,)]
