"""Outbox, deliveries and poll state on PostgreSQL: module-level `fn(conn, *args)`, each run in a transaction.

The PostgreSQL twin of `receiver.store.deliveries` and `receiver.store.polling`; what changes is what
several replicas need:

- expand: only the transaction whose `UPDATE ... WHERE processed_at IS NULL` marks an outbox row creates
  its deliveries (a second replica's UPDATE waits for the first, then finds the row processed);
- claim (`receiver.store.pg_flood`): `FOR UPDATE SKIP LOCKED` plus a lease, so replicas claim disjoint
  rows and a dead replica's claims come back once `lease_until` has passed; digests and rate limits too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from receiver.store.deliveries import DEAD, PENDING, SENT, NewDelivery, Outcome, next_state
from receiver.store.history import DELIVERY_BY_ID, Json, attempts_query, members_query, notifications_json
from receiver.store.pg_flood import join_group
from receiver.store.pg_ingest import columns
from receiver.store.pg_sql import affected, numbered
from receiver.store.polling import OBSERVE, WATCH, TrackedJob

if TYPE_CHECKING:
    from receiver.store.pg_sql import Conn

_EXPAND = "UPDATE outbox SET processed_at = $1 WHERE id = ANY($2::bigint[]) AND processed_at IS NULL RETURNING id"
_INSERT_DELIVERIES = """
INSERT INTO deliveries (outbox_id, job_id, status, rule, target, title, body, notify_type,
                        state, next_attempt_at, created_at)
SELECT *, $9, $10::bigint, $10::bigint FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                                   $6::text[], $7::text[], $8::text[])
ON CONFLICT DO NOTHING
"""
_RECORD_ATTEMPTS = """
INSERT INTO delivery_attempts (delivery_id, at, ok, error)
SELECT d, $4::bigint, o, e FROM unnest($1::bigint[], $2::int[], $3::text[]) AS u(d, o, e)
"""
_RECORD_STATES = """
UPDATE deliveries d SET state = u.state, next_attempt_at = u.next_at, sent_at = u.sent_at, lease_until = NULL,
                        attempts = d.attempts + 1
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) AS u(id, state, next_at, sent_at)
WHERE d.id = u.id AND d.state != $5
"""
_REDELIVER = "UPDATE deliveries SET state = $1, next_attempt_at = $2, lease_until = NULL WHERE id = ANY($3::bigint[])"
_REDELIVER_DEAD = "UPDATE deliveries SET state = $1, next_attempt_at = $2, lease_until = NULL WHERE state = $3"


async def fetch(conn: Conn, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in await conn.fetch(sql, *args)]


async def execute(conn: Conn, sql: str, *args: Any) -> int:
    """Run one statement; the number of rows it changed."""
    return affected(await conn.execute(sql, *args))


async def expand(conn: Conn, outbox_ids: Sequence[int], planned: Sequence[NewDelivery], now: int) -> int:
    fresh = {row["id"] for row in await conn.fetch(_EXPAND, now, list(outbox_ids))}
    rows = [d for d in planned if d.outbox_id in fresh]
    singles = [d[:8] for d in rows if d.group is None]
    if singles:
        await conn.execute(_INSERT_DELIVERIES, *columns(singles, 8), PENDING, now)
    for delivery in rows:
        if delivery.group is not None:
            await join_group(conn, delivery, delivery.group, now)
    return len(rows)


async def record(conn: Conn, outcomes: Sequence[Outcome], now: int) -> None:
    """Each attempt, and the delivery moved on; a delivery already sent is never changed again."""
    states = [(outcome.delivery_id, *next_state(outcome, now)) for outcome in outcomes]
    attempts = [(o.delivery_id, int(o.ok), o.error) for o in outcomes]
    await conn.execute(_RECORD_ATTEMPTS, *columns(attempts, 3), now)
    await conn.execute(_RECORD_STATES, *columns(states, 4), SENT)


async def redeliver(conn: Conn, delivery_ids: Sequence[int], now: int) -> int:
    return affected(await conn.execute(_REDELIVER, PENDING, now, list(delivery_ids)))


async def redeliver_dead(conn: Conn, now: int) -> int:
    return affected(await conn.execute(_REDELIVER_DEAD, PENDING, now, DEAD))


async def redeliver_one(conn: Conn, delivery_id: int, now: int) -> Json | None:
    """Back to pending, due now, history kept; the NOTIFICATION as committed, or None."""
    if not await redeliver(conn, [delivery_id], now):
        return None
    rows = await fetch(conn, numbered(DELIVERY_BY_ID), delivery_id)
    attempt_rows = await fetch(conn, numbered(attempts_query([delivery_id])), delivery_id)
    digests = [row[0] for row in rows if row[1] is None]
    member_rows = await fetch(conn, numbered(members_query(digests)), *digests) if digests else []
    return notifications_json(rows, attempt_rows, member_rows)[0]


async def observe(conn: Conn, jobs: Sequence[TrackedJob], now: int) -> None:
    rows = [(j.account_id, j.job_id, j.job_type, j.last_seen_status, j.last_updated, j.done_at, now) for j in jobs]
    await conn.executemany(numbered(OBSERVE), rows)


async def watch(conn: Conn, account_id: str, job_type: str, job_id: str, now: int) -> bool:
    return affected(await conn.execute(numbered(WATCH), account_id, job_id, job_type, now)) == 1
