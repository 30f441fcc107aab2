"""Ingest on PostgreSQL: one batch of events in one transaction, race-free across replicas, group-committed.

Across processes nothing in memory can be trusted, so the database decides:

1. the batch takes a transaction-scoped advisory lock per job (sorted, so two batches never wait on each
   other in a cycle): two replicas touching the same job serialise, others run side by side;
2. events go in with `INSERT ... ON CONFLICT DO NOTHING RETURNING`: the unique key dedupes, and exactly
   one of several concurrent identical posts gets its row back;
3. the jobs' current state is read *after* the locks, so it includes every batch committed before, and
   `receiver.store.batch.plan_batch` (the same pure rule as SQLite) decides state and transitions;
4. job upserts and outbox rows are written with `unnest` arrays: four round trips whatever the batch size.

`serve_ingest` is the group commit, in a process of its own (see `_Ingest`).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import hashlib
import os
import signal
import socket
import time
from collections.abc import Collection, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import asyncpg

from receiver.durations import now_ms
from receiver.event_loop import EventLoopSetting, loop_factory
from receiver.store.base import EventRow, Ingested
from receiver.store.batch import plan_batch
from receiver.store.transitions import Position
from receiver.store.writer import (
    STOP,
    CallFailed,
    Op,
    RoundAnswer,
    StoreUnavailable,
    dump_answer,
    frame_bytes,
    read_ops,
    whole_frames,
)

if TYPE_CHECKING:
    from receiver.store.pg_sql import Conn

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


class IngestOptions(NamedTuple):
    """What the ingest process needs to connect and decide (pickled to it: plain data)."""

    url: str
    notify_statuses: Collection[str]
    flushers: int  # batches written at once, each on its own connection
    command_timeout: float
    server_settings: dict[str, str]
    event_loop: EventLoopSetting  # asyncpg on uvloop, where the server runs on it


def serve_ingest(channel: Connection, options: IngestOptions) -> None:
    """The PostgreSQL ingest process: the body `GroupCommitWriter` runs for this store (see `_Ingest`).

    Like the SQLite writer it ignores SIGINT (the server stops it with a stop frame) and ends when the
    server's end of the socket closes.
    """
    gc.freeze()  # see receiver.store.writer.serve_writer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=os.dup(channel.fileno()))
    channel.close()
    with asyncio.Runner(loop_factory=loop_factory(options.event_loop)) as runner:
        runner.run(_Ingest(options).serve(sock))


class _Ingest(asyncio.Protocol):
    """Group commit in a process of its own: its event loop, its connections, `flushers` flush tasks.

    In the server's process, each of a batch's four round trips waited for the GIL behind the HTTP requests
    being parsed. Here frames of rows arrive off the socket; each flush task takes every waiting frame (up to
    MAX_BATCH rows), writes them in one transaction (with more than one flusher, a batch is written while the
    previous one waits for its commit), and the answer goes back as one frame per batch. Answers leave in the
    order their frames came, as the server's side expects, even when a later batch commits first.
    """

    def __init__(self, options: IngestOptions) -> None:
        self._options = options
        self._buffer = bytearray()
        self._waiting: collections.deque[list[Op] | None] = collections.deque()  # frames not yet taken
        self._taken = 0  # frames taken by flush tasks so far
        self._sent = 0  # frames answered so far
        self._ready: dict[int, tuple[int, RoundAnswer]] = {}  # first frame -> (frames, answer) of a batch
        self._has_work = asyncio.Event()
        self._closing = False
        self._transport: asyncio.Transport | None = None
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: self, sock)
        try:
            await asyncio.gather(*(self._flush() for _ in range(self._options.flushers)))
        finally:
            if self._pool is not None:
                await self._pool.close()
            if self._transport is not None:
                self._transport.close()

    # --- the channel -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's transports do not subclass asyncio's)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        for frame in whole_frames(self._buffer):
            ops = read_ops(frame)
            if ops == STOP:
                self._closing = True  # the flush tasks write what is waiting, then end
            else:
                self._waiting.append(ops)
        self._has_work.set()

    def connection_lost(self, exc: Exception | None) -> None:
        """The server is gone: nobody is left to answer, so nothing more is written."""
        self._waiting.clear()
        self._closing = True
        self._has_work.set()

    def _answer(self, first: int, frames: int, answer: RoundAnswer) -> None:
        """Send every batch whose turn has come: answers go out in the order of their frames."""
        self._ready[first] = (frames, answer)
        while self._sent in self._ready:
            frames, answer = self._ready.pop(self._sent)
            self._sent += frames
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(frame_bytes(dump_answer(answer)))

    # --- writing -----------------------------------------------------------------------------------
    async def _flush(self) -> None:
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._has_work.clear()
                await self._has_work.wait()
                continue
            first, work = self._taken, self._take()
            self._taken += len(work)
            rows = [row for ops in work if ops is not None for op in ops for row in op[1]]
            answer = await self._round(work, rows)
            self._answer(first, len(work), answer)

    def _take(self) -> list[list[Op] | None]:
        """Whole frames, up to MAX_BATCH rows (at least one frame)."""
        work = [self._waiting.popleft()]
        rows = _rows_in(work[0])
        while self._waiting and rows + _rows_in(self._waiting[0]) <= MAX_BATCH:
            rows += _rows_in(self._waiting[0])
            work.append(self._waiting.popleft())
        return work

    async def _round(self, work: list[list[Op] | None], rows: list[EventRow]) -> RoundAnswer:
        if any(op[0] != "rows" for ops in work if ops is not None for op in ops):
            error = CallFailed("the PostgreSQL ingest process only stores rows")
            return [None if ops is None else [("error", error)] * len(ops) for ops in work], 0, 0.0
        started = time.perf_counter()
        try:
            results = iter(await self._write(rows)) if rows else iter(())
        except StoreUnavailable as exc:
            return [None if ops is None else [("error", exc)] * len(ops) for ops in work], 0, 0.0
        answers = [None if ops is None else [("ok", [next(results) for _ in op[1]]) for op in ops] for ops in work]
        return answers, len(rows), time.perf_counter() - started

    async def _write(self, rows: list[EventRow]) -> list[Ingested]:
        """One transaction; a deadlock or serialisation failure is rolled back and written again."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                pool = await self._open()
                async with pool.acquire() as conn:
                    return await write_batch(conn, rows, self._options.notify_statuses, now_ms())
            except DB_ERRORS as exc:
                if isinstance(exc, RETRIED) and attempt < ATTEMPTS:
                    continue
                raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
            except Exception as exc:  # a bug in the batch code: fail this batch (503), keep the process
                raise StoreUnavailable(f"{type(exc).__name__} while writing: {exc}") from exc
        raise AssertionError("unreachable")

    async def _open(self) -> asyncpg.Pool:
        """The pool, created at the first batch and again after creating it failed."""
        options = self._options
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    options.url,
                    min_size=options.flushers,
                    max_size=options.flushers,
                    command_timeout=options.command_timeout,
                    server_settings=options.server_settings,
                )
            return self._pool


def _rows_in(ops: list[Op] | None) -> int:
    return 0 if ops is None else sum(len(op[1]) for op in ops if op[0] == "rows")
