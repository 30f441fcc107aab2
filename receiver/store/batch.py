"""What one batch of new events does to job state and the outbox: a pure function both stores share.

The store inserts the batch's events (dedupe by the unique key), reads the current state of the jobs
they touch, and hands both here; the answer says what to upsert, what to queue, and what to reply.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

from receiver.store.base import EventRow, Ingested
from receiver.store.transitions import Position, decide

EventKey = tuple[str, int, str]  # (job_id, last_updated, status): the dedupe key
JOB_FIELDS = 9  # EventRow's leading fields that make up a job's current state


class BatchPlan(NamedTuple):
    results: list[Ingested]  # one per row, in order
    job_updates: list[tuple[Any, ...]]  # (*row[:JOB_FIELDS], event_id) per job whose current state changes
    outbox: list[tuple[Any, ...]]  # (event_id, job_id, status, previous_status, created_at) per transition


def plan_batch(
    rows: Sequence[EventRow],
    new_ids: Mapping[EventKey, int],
    current: Mapping[str, Position],
    notify_statuses: Collection[str],
    received_at: int,
) -> BatchPlan:
    """`new_ids`: the event id of each key this batch inserted; `current`: the jobs' state before it.

    A later identical row in the same batch finds its key taken by the first: a duplicate.
    """
    unclaimed = dict(new_ids)
    state = dict(current)
    job_updates: dict[str, tuple[Any, ...]] = {}
    outbox: list[tuple[Any, ...]] = []
    results: list[Ingested] = []
    for row in rows:
        event_id = unclaimed.pop((row.job_id, row.last_updated, row.status), None)
        if event_id is None:
            results.append(Ingested.DUPLICATE)
            continue
        previous = state.get(row.job_id)
        position = Position(row.last_updated, row.status)
        decision = decide(previous, position)
        if decision.becomes_current:
            state[row.job_id] = position
            job_updates[row.job_id] = (*row[:JOB_FIELDS], event_id)
        if decision.is_transition and row.status in notify_statuses:
            outbox.append((event_id, row.job_id, row.status, previous.status if previous else None, received_at))
            results.append(Ingested.TRANSITION)
        else:
            results.append(Ingested.STORED)
    return BatchPlan(results, list(job_updates.values()), outbox)
