"""Ingest on PostgreSQL: one batch of events in one transaction, race-free across replicas, group-committed.

Across processes nothing in memory can be trusted, so the database decides:

1. the batch takes a transaction-scoped advisory lock per job (sorted, so two batches never wait on each
   other in a cycle): two replicas touching the same job serialise, others run side by side;
2. events go in with `INSERT ... ON CONFLICT DO NOTHING RETURNING`: the unique key dedupes, and exactly
   one of several concurrent identical posts gets its row back;
3. the jobs' current state is read *after* the locks, so it includes every batch committed before, and
   `receiver.store.batch.plan_batch` (the same pure rule as SQLite) decides state and transitions;
4. job upserts and outbox rows are written with `unnest` arrays: four round trips whatever the batch size.

`IngestThread` is the group commit (see its docstring).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import threading
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from receiver.durations import now_ms
from receiver.event_loop import EventLoopSetting, loop_factory
from receiver.store.base import EventRow, Ingested
from receiver.store.batch import plan_batch
from receiver.store.transitions import Position
from receiver.store.writer import StoreUnavailable
from receiver.tally import Histogram

if TYPE_CHECKING:
    from receiver.store.pg_sql import Conn

log = logging.getLogger("jobhook.store")

MAX_BATCH = 2000
ATTEMPTS = 3  # a batch caught in a deadlock or serialisation failure is rolled back and written again
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
RETRIED = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

# BEGIN and the locks in one round trip (the keys are integers we computed, inlined as literals).
_BEGIN_AND_LOCK = "BEGIN; SELECT pg_advisory_xact_lock(k) FROM unnest('{{{keys}}}'::bigint[]) AS k"
# The new events and, in a snapshot taken after the locks, the jobs' current state: one round trip.
_INSERT_EVENTS_READ_JOBS = """
WITH new AS (
    INSERT INTO events (job_id, last_updated, status, account_id, job_type, created, attempts,
                        error_code, error_message, body, received_at)
    SELECT *, $11::bigint FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                                      $7::int[], $8::text[], $9::text[], $10::text[])
    ON CONFLICT DO NOTHING
    RETURNING id, job_id, last_updated, status
)
SELECT id, job_id, last_updated, status FROM new
UNION ALL
SELECT NULL, job_id, last_updated, status FROM jobs WHERE job_id = ANY($1::text[])
"""
# Job state and outbox rows: one round trip.
_UPSERT_JOBS_AND_OUTBOX = """
WITH upsert AS (
    INSERT INTO jobs (job_id, last_updated, status, account_id, job_type, created, attempts,
                      error_code, error_message, event_id)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::int[],
                         $8::text[], $9::text[], $10::bigint[])
    ON CONFLICT (job_id) DO UPDATE SET
        last_updated = excluded.last_updated, status = excluded.status, account_id = excluded.account_id,
        job_type = excluded.job_type, created = excluded.created, attempts = excluded.attempts,
        error_code = excluded.error_code, error_message = excluded.error_message, event_id = excluded.event_id
)
INSERT INTO outbox (event_id, job_id, status, previous_status, created_at)
SELECT * FROM unnest($11::bigint[], $12::text[], $13::text[], $14::text[], $15::bigint[])
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
    """One transaction: dedupe, job state, outbox, for every row (see the module docstring).

    Four round trips whatever the batch size: BEGIN + locks, events + current jobs, jobs + outbox, COMMIT.
    """
    keys = ",".join(str(key) for key in sorted({lock_key(row.job_id) for row in rows}))
    try:
        await conn.execute(_BEGIN_AND_LOCK.format(keys=keys))
        found = await conn.fetch(_INSERT_EVENTS_READ_JOBS, *columns(rows, 10), received_at)
        new_ids = {(r["job_id"], r["last_updated"], r["status"]): r["id"] for r in found if r["id"] is not None}
        if not new_ids:
            await conn.execute("COMMIT")
            return [Ingested.DUPLICATE] * len(rows)
        current = {r["job_id"]: Position(r["last_updated"], r["status"]) for r in found if r["id"] is None}
        plan = plan_batch(rows, new_ids, current, notify_statuses, received_at)
        if plan.job_updates or plan.outbox:
            await conn.execute(_UPSERT_JOBS_AND_OUTBOX, *columns(plan.job_updates, 10), *columns(plan.outbox, 5))
        await conn.execute("COMMIT")
    except BaseException:
        if not conn.is_closed():  # (a ROLLBACK outside a transaction is only a warning)
            await conn.execute("ROLLBACK")
        raise
    return plan.results


def _settle(futures: list[asyncio.Future[Ingested]], outcome: list[Ingested] | BaseException) -> None:
    for i, future in enumerate(futures):
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome[i])


class IngestThread:
    """Group commit on a thread of its own: its event loop, its connections, `flushers` flush tasks.

    On the app's loop, every round trip of a batch would wait behind the HTTP requests being parsed; here
    a batch's four round trips run back to back. Requests queue rows with `submit` and await a future on the
    app's loop; each flush task takes everything queued, writes it in one transaction (with more than one
    flusher, a batch is written while the previous one waits for its commit), and answers the whole batch
    with one `call_soon_threadsafe` after COMMIT.
    """

    def __init__(
        self,
        url: str,
        *,
        notify_statuses: Collection[str],
        flushers: int,
        command_timeout: float,
        server_settings: dict[str, str],
        event_loop: EventLoopSetting,
        batch_sizes: Histogram,
        commit_seconds: Histogram,
    ) -> None:
        self._url = url
        self._notify_statuses = notify_statuses
        self._flushers = flushers
        self._command_timeout = command_timeout
        self._server_settings = server_settings
        self.batch_sizes = batch_sizes
        self.commit_seconds = commit_seconds
        self.healthy = True
        self._inbox: collections.deque[tuple[EventRow, asyncio.Future[Ingested]]] = collections.deque()
        self._wake_scheduled = False
        self._closing = False
        self._app_loop: asyncio.AbstractEventLoop | None = None
        self._loop = (loop_factory(event_loop) or asyncio.new_event_loop)()  # asyncpg is written for uvloop
        self._thread = threading.Thread(target=self._loop.run_forever, name="jobhook-pg-ingest", daemon=True)
        self._has_work: asyncio.Event | None = None
        self._pool: asyncpg.Pool | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- the app's loop ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._app_loop = asyncio.get_running_loop()
        self._thread.start()
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._open(), self._loop))
        except BaseException:
            await self._end_thread()
            raise

    def submit(self, row: EventRow) -> asyncio.Future[Ingested]:
        assert self._app_loop is not None and self._has_work is not None
        future: asyncio.Future[Ingested] = self._app_loop.create_future()
        if self._closing:
            future.set_exception(StoreUnavailable("the store is closing"))
            return future
        self._inbox.append((row, future))
        if not self._wake_scheduled:  # one wake-up per batch, not per row
            self._wake_scheduled = True
            self._loop.call_soon_threadsafe(self._has_work.set)
        return future

    async def stop(self) -> None:
        """Write what is queued, then close the connections and end the thread."""
        self._closing = True
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._close(), self._loop))
        await self._end_thread()

    async def _end_thread(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)
        self._loop.close()

    # --- the ingest thread's loop ---------------------------------------------------------------------
    async def _open(self) -> None:
        self._has_work = asyncio.Event()
        self._pool = await asyncpg.create_pool(
            self._url,
            min_size=self._flushers,
            max_size=self._flushers,
            command_timeout=self._command_timeout,
            server_settings=self._server_settings,
        )
        self._tasks = [asyncio.create_task(self._flush(), name=f"pg-flush-{i}") for i in range(self._flushers)]

    async def _close(self) -> None:
        assert self._has_work is not None
        self._has_work.set()
        await asyncio.gather(*self._tasks)
        if self._pool is not None:
            await self._pool.close()

    def _take(self) -> list[tuple[EventRow, asyncio.Future[Ingested]]]:
        self._wake_scheduled = False  # before draining: a row queued from now on schedules a new wake-up
        batch: list[tuple[EventRow, asyncio.Future[Ingested]]] = []
        while self._inbox and len(batch) < MAX_BATCH:
            batch.append(self._inbox.popleft())
        return batch

    async def _flush(self) -> None:
        assert self._has_work is not None and self._app_loop is not None
        while True:
            batch = self._take()
            if not batch:
                if self._closing:
                    return
                self._has_work.clear()
                await self._has_work.wait()
                continue
            try:
                outcome: list[Ingested] | BaseException = await self._write([row for row, _ in batch])
            except StoreUnavailable as exc:
                outcome = exc
            except Exception as exc:  # a bug in the batch code: fail this batch (503), keep flushing
                log.exception("writing a batch failed")
                outcome = StoreUnavailable(f"{type(exc).__name__} while writing")
            self._app_loop.call_soon_threadsafe(_settle, [future for _, future in batch], outcome)

    async def _write(self, rows: list[EventRow]) -> list[Ingested]:
        """One transaction; a deadlock or serialisation failure is rolled back and written again."""
        assert self._pool is not None
        for attempt in range(1, ATTEMPTS + 1):
            started = time.perf_counter()
            try:
                async with self._pool.acquire() as conn:
                    results = await write_batch(conn, rows, self._notify_statuses, now_ms())
            except DB_ERRORS as exc:
                if isinstance(exc, RETRIED) and attempt < ATTEMPTS:
                    continue
                reason = str(exc) or type(exc).__name__
                if self.healthy:
                    log.error("store cannot commit: %s", reason)
                self.healthy = False
                raise StoreUnavailable(reason) from exc
            self.commit_seconds.observe(time.perf_counter() - started)
            self.batch_sizes.observe(len(rows))
            self.healthy = True
            return results
        raise AssertionError("unreachable")
