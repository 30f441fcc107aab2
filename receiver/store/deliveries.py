"""Deliveries: the outbox expanded into one row per rule x target, claimed with leases, retried, recorded.

Plain functions over a sqlite3 connection, run inside the writer thread's transaction (see
`GroupCommitWriter.call`), so each step is atomic and no SQLite call touches the event loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import NamedTuple

from receiver.models import NotificationState

PENDING, RETRYING, SENT, DEAD = (s.value for s in NotificationState)


class NewDelivery(NamedTuple):
    """What the worker decided for one transition: the message to send to one target for one rule."""

    outbox_id: int
    job_id: str
    status: str
    rule: str
    target: str
    title: str
    body: str
    notify_type: str


class ClaimedDelivery(NamedTuple):
    id: int
    target: str
    title: str
    body: str
    notify_type: str
    attempts: int


class Outcome(NamedTuple):
    """One send's result, and what happens next: sent, retry at `next_attempt_at`, or dead."""

    delivery_id: int
    ok: bool
    error: str | None
    next_attempt_at: int | None  # None with ok=False: dead


def expand(conn: sqlite3.Connection, outbox_ids: Sequence[int], deliveries: Sequence[NewDelivery], now: int) -> int:
    """Mark the outbox rows processed and create their deliveries, once: a row already processed adds nothing."""
    fresh = set()
    for outbox_id in outbox_ids:
        cursor = conn.execute(
            "UPDATE outbox SET processed_at = ? WHERE id = ? AND processed_at IS NULL", (now, outbox_id)
        )
        if cursor.rowcount:
            fresh.add(outbox_id)
    rows = [(*d, PENDING, now, now) for d in deliveries if d.outbox_id in fresh]
    conn.executemany(
        """INSERT INTO deliveries (outbox_id, job_id, status, rule, target, title, body, notify_type,
                                   state, next_attempt_at, created_at)
           VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING""",
        rows,
    )
    return len(rows)


def claim_due(conn: sqlite3.Connection, now: int, lease_ms: int, limit: int) -> list[ClaimedDelivery]:
    """Take up to `limit` due deliveries whose lease is free or expired (a crashed claimant's rows return)."""
    # The states are literals, not parameters: only then can SQLite use the partial index deliveries_due
    # instead of scanning every delivery ever sent.
    rows = conn.execute(
        """SELECT id, target, title, body, notify_type, attempts FROM deliveries
           WHERE state IN ('pending', 'retrying') AND next_attempt_at <= ?
             AND (lease_until IS NULL OR lease_until <= ?)
           ORDER BY next_attempt_at LIMIT ?""",
        (now, now, limit),
    ).fetchall()
    conn.executemany("UPDATE deliveries SET lease_until = ? WHERE id = ?", [(now + lease_ms, row[0]) for row in rows])
    return [ClaimedDelivery(*row) for row in rows]


def record(conn: sqlite3.Connection, outcomes: Sequence[Outcome], now: int) -> None:
    """Record each attempt and move the delivery on; a delivery already sent is never changed again."""
    for outcome in outcomes:
        conn.execute(
            "INSERT INTO delivery_attempts (delivery_id, at, ok, error) VALUES (?, ?, ?, ?)",
            (outcome.delivery_id, now, int(outcome.ok), outcome.error),
        )
        if outcome.ok:
            state, next_at, sent_at = SENT, None, now
        elif outcome.next_attempt_at is None:
            state, next_at, sent_at = DEAD, None, None
        else:
            state, next_at, sent_at = RETRYING, outcome.next_attempt_at, None
        conn.execute(
            """UPDATE deliveries SET state = ?, next_attempt_at = ?, sent_at = ?, lease_until = NULL,
                                     attempts = attempts + 1
               WHERE id = ? AND state != ?""",
            (state, next_at, sent_at, outcome.delivery_id, SENT),
        )


def release(conn: sqlite3.Connection, delivery_ids: Sequence[int]) -> None:
    """Give back claims that were never sent (shutdown before their turn): due again at once."""
    conn.executemany("UPDATE deliveries SET lease_until = NULL WHERE id = ?", [(i,) for i in delivery_ids])


def redeliver(conn: sqlite3.Connection, delivery_ids: Sequence[int], now: int) -> int:
    """Put deliveries back to pending, due now, keeping their attempt history."""
    changed = 0
    for delivery_id in delivery_ids:
        cursor = conn.execute(
            "UPDATE deliveries SET state = ?, next_attempt_at = ?, lease_until = NULL WHERE id = ?",
            (PENDING, now, delivery_id),
        )
        changed += cursor.rowcount
    return changed


def redeliver_dead(conn: sqlite3.Connection, now: int) -> int:
    """Every dead delivery back to pending, due now, keeping its attempt history."""
    return conn.execute(
        "UPDATE deliveries SET state = ?, next_attempt_at = ?, lease_until = NULL WHERE state = ?", (PENDING, now, DEAD)
    ).rowcount
