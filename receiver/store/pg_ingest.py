"""Ingest on PostgreSQL: one batch of events in one transaction, race-free across replicas, group-committed.

Across processes nothing in memory can be trusted, so the database decides:

1. the batch takes a transaction-scoped advisory lock per job (sorted, so two batches never wait on each
   other in a cycle): two replicas touching the same job serialise, others run side by side;
2. events go in with `INSERT ... ON CONFLICT DO NOTHING RETURNING`: the unique key dedupes, and exactly
   one of several concurrent identical posts gets its row back;
3. the jobs' current state is read *after* the locks, so it includes every batch committed before, and
   `receiver.store.batch.plan_batch` (the same pure rule as SQLite) decides state and transitions;
4. job upserts and outbox rows are written with `unnest` arrays: five statements whatever the batch size.

`BatchQueue` is the group commit: requests queue rows and await a future; a few flush tasks each take
everything queued, write it in one transaction, and answer every request of it after COMMIT.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from receiver.store.base import EventRow, Ingested
from receiver.store.batch import plan_batch
from receiver.store.transitions import Position
from receiver.store.writer import StoreUnavailable

if TYPE_CHECKING:
    from receiver.store.pg_sql import Conn

log = logging.getLogger("jobhook.store")

MAX_BATCH = 2000

_LOCK_JOBS = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k"
_INSERT_EVENTS = """
INSERT INTO events (job_id, last_updated, status, account_id, job_type, created, attempts,
                    error_code, error_message, body, received_at)
SELECT *, $11::bigint FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                                  $7::int[], $8::text[], $9::text[], $10::text[])
ON CONFLICT DO NOTHING
RETURNING id, job_id, last_updated, status
"""
_CURRENT_JOBS = "SELECT job_id, last_updated, status FROM jobs WHERE job_id = ANY($1::text[])"
_UPSERT_JOBS = """
INSERT INTO jobs (job_id, last_updated, status, account_id, job_type, created, attempts,
                  error_code, error_message, event_id)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::int[],
                     $8::text[], $9::text[], $10::bigint[])
ON CONFLICT (job_id) DO UPDATE SET
    last_updated = excluded.last_updated, status = excluded.status, account_id = excluded.account_id,
    job_type = excluded.job_type, created = excluded.created, attempts = excluded.attempts,
    error_code = excluded.error_code, error_message = excluded.error_message, event_id = excluded.event_id
"""
_INSERT_OUTBOX = """
INSERT INTO outbox (event_id, job_id, status, previous_status, created_at)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[])
"""


def lock_key(job_id: str) -> int:
    """A stable signed 64-bit advisory-lock key per job (a collision only serialises two jobs)."""
    return int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(), "big", signed=True)


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows to one list per column, for `unnest`."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


async def write_batch(
    conn: Conn, rows: Sequence[EventRow], notify_statuses: Collection[str], received_at: int
) -> list[Ingested]:
    """Inside a transaction: dedupe, job state, outbox, for every row (see the module docstring)."""
    await conn.execute(_LOCK_JOBS, sorted({lock_key(row.job_id) for row in rows}))
    inserted = await conn.fetch(_INSERT_EVENTS, *columns(rows, 10), received_at)
    if not inserted:
        return [Ingested.DUPLICATE] * len(rows)
    new_ids = {(r["job_id"], r["last_updated"], r["status"]): r["id"] for r in inserted}
    touched = list({job_id for job_id, _, _ in new_ids})
    current = {r["job_id"]: Position(r["last_updated"], r["status"]) for r in await conn.fetch(_CURRENT_JOBS, touched)}
    plan = plan_batch(rows, new_ids, current, notify_statuses, received_at)
    if plan.job_updates:
        await conn.execute(_UPSERT_JOBS, *columns(plan.job_updates, 10))
    if plan.outbox:
        await conn.execute(_INSERT_OUTBOX, *columns(plan.outbox, 5))
    return plan.results


class BatchQueue:
    """Group commit on the event loop: `flushers` tasks, each writing whatever is queued as one transaction.

    With more than one flusher, a batch is written while the previous one waits for its commit.
    """

    def __init__(self, write: Callable[[list[EventRow]], Awaitable[list[Ingested]]], flushers: int = 2) -> None:
        self._write = write
        self._pending: list[tuple[EventRow, asyncio.Future[Ingested]]] = []
        self._has_work = asyncio.Event()
        self._closing = False
        self._tasks = [asyncio.create_task(self._flush(), name=f"pg-flush-{i}") for i in range(flushers)]

    def submit(self, row: EventRow) -> asyncio.Future[Ingested]:
        future: asyncio.Future[Ingested] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_exception(StoreUnavailable("the store is closing"))
            return future
        self._pending.append((row, future))
        self._has_work.set()
        return future

    async def stop(self) -> None:
        """Write what is queued, then end the flush tasks."""
        self._closing = True
        self._has_work.set()
        await asyncio.gather(*self._tasks)

    async def _flush(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._has_work.clear()
                await self._has_work.wait()
                continue
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            try:
                results = await self._write([row for row, _ in batch])
            except StoreUnavailable as exc:
                outcome: list[Ingested] | BaseException = exc
            except Exception as exc:  # a bug in the batch code: fail this batch (503), keep flushing
                log.exception("writing a batch failed")
                outcome = StoreUnavailable(f"{type(exc).__name__} while writing")
            else:
                outcome = results
            for i, (_, future) in enumerate(batch):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome[i])
