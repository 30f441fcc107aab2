"""The SQLite store: migrations, batched ingest with dedupe and transitions, and the outbox.

Writes go through the `GroupCommitWriter` (a writer process); reads go through aiosqlite's own
thread, so the event loop never touches SQLite. WAL lets readers run beside the writer.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from receiver.durations import now_ms
from receiver.store import deliveries, polling
from receiver.store.base import EventRow, Ingested, OutboxItem, OutboxStats
from receiver.store.batch import plan_batch
from receiver.store.deliveries import ClaimedDelivery, NewDelivery, Outcome
from receiver.store.history import HistoryQueries
from receiver.store.polling import TrackedJob
from receiver.store.retention import Pruned, prune
from receiver.store.schema import MIGRATIONS, Migration
from receiver.store.transitions import Position
from receiver.store.writer import GroupCommitWriter
from receiver.tally import BATCH_SIZE_BUCKETS, COMMIT_SECONDS_BUCKETS, Histogram

log = logging.getLogger("jobhook.store")
T = TypeVar("T")

STALL_MARGIN_SECONDS = 10.0  # a writer silent for database.busy_timeout + this long is stalled: 503s
_ROWS_PER_STATEMENT = 500  # at most 11 parameters each: far under SQLite's 32766-variable limit

_INSERT_EVENTS = """
INSERT INTO events (job_id, last_updated, status, account_id, job_type, created, attempts,
                    error_code, error_message, body, received_at)
VALUES {values} ON CONFLICT DO NOTHING
"""
_NEW_EVENTS_AND_CURRENT_JOBS = """
SELECT (SELECT json_group_array(json_array(id, job_id, last_updated, status)) FROM events WHERE id > ?),
       (SELECT json_group_array(json_array(job_id, last_updated, status)) FROM jobs
        WHERE job_id IN (SELECT value FROM json_each(?)))
"""
_UPSERT_JOBS = """
INSERT INTO jobs (job_id, last_updated, status, account_id, job_type, created, attempts,
                  error_code, error_message, event_id)
VALUES {values}
ON CONFLICT (job_id) DO UPDATE SET
    last_updated = excluded.last_updated, status = excluded.status, account_id = excluded.account_id,
    job_type = excluded.job_type, created = excluded.created, attempts = excluded.attempts,
    error_code = excluded.error_code, error_message = excluded.error_message, event_id = excluded.event_id
"""
_INSERT_OUTBOX = """
INSERT INTO outbox (event_id, job_id, status, previous_status, created_at) VALUES {values}
"""
# Shared with the PostgreSQL store, which numbers the placeholders (`pg_sql.numbered`): EXPORT_COLUMNS to BEAT.
EXPORT_COLUMNS = (
    "job_id, account_id, job_type, status, created, last_updated, attempts, error_code, error_message, received_at"
)
UNPROCESSED_OUTBOX = """
SELECT o.id, o.job_id, o.status, o.previous_status, e.body FROM outbox o JOIN events e ON e.id = o.event_id
WHERE o.processed_at IS NULL ORDER BY o.id LIMIT ?
"""
NEXT_DUE = "SELECT min(next_attempt_at) FROM deliveries WHERE state IN ('pending', 'retrying')"
DELIVERY_STATES = """
SELECT state, count(*) FROM deliveries WHERE state IN ('pending', 'retrying', 'dead') GROUP BY state
"""
BEAT = "INSERT INTO heartbeat (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at"
_OUTBOX_STATS = """
SELECT (SELECT count(*) FROM outbox WHERE processed_at IS NULL),
       (SELECT created_at FROM outbox WHERE processed_at IS NULL ORDER BY id LIMIT 1)
"""


@functools.cache
def _multi_row(statement: str, rows: int, columns: int) -> str:
    row = "(" + ",".join("?" * columns) + ")"
    return statement.format(values=",".join([row] * rows))


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _ROWS_PER_STATEMENT):
        yield items[start : start + _ROWS_PER_STATEMENT]


def sqlite_path(url: str) -> Path:
    """`sqlite:///rel.db` is relative to the working directory, `sqlite:////abs.db` absolute."""
    if not url.startswith("sqlite:///"):
        raise ValueError("a SQLite URL starts with sqlite:/// (relative) or sqlite://// (absolute)")
    rest = url[len("sqlite:///") :]
    if not rest or rest == "/":
        raise ValueError("the SQLite URL names no file")
    return Path(rest)


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
    """Apply every migration not yet recorded, in order, each in one transaction with its record."""
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)")
    done = {name for (name,) in conn.execute("SELECT name FROM _migrations")}
    applied = []
    for migration in migrations:
        if migration.name in done:
            continue
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{migration.sql}\n"
                f"INSERT INTO _migrations (name, applied_at) VALUES ('{migration.name}', {now_ms()});\n"
                "COMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(migration.name)
    return applied


def write_events(conn: sqlite3.Connection, rows: Sequence[EventRow], notify_statuses: frozenset[str]) -> list[Ingested]:
    """One batch, inside the writer's transaction: dedupe, job state, outbox.

    A handful of statements per batch whatever its size: every SQLite call lets the GIL go and
    must win it back from a busy event loop, so the batch is written in bulk, not row by row.
    """
    received_at = now_ms()
    (before,) = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
    for chunk in _chunks(rows):
        conn.execute(_multi_row(_INSERT_EVENTS, len(chunk), 11), [v for r in chunk for v in (*r, received_at)])
    job_ids = json.dumps(list({row.job_id for row in rows}))
    new_json, current_json = conn.execute(_NEW_EVENTS_AND_CURRENT_JOBS, (before, job_ids)).fetchone()
    new_ids = {(job_id, at, status): event_id for event_id, job_id, at, status in json.loads(new_json)}
    if not new_ids:
        return [Ingested.DUPLICATE] * len(rows)
    current = {job_id: Position(at, status) for job_id, at, status in json.loads(current_json)}

    results, job_updates, outbox = plan_batch(rows, new_ids, current, notify_statuses, received_at)
    for updates in _chunks(job_updates):
        conn.execute(_multi_row(_UPSERT_JOBS, len(updates), 10), [v for job in updates for v in job])
    for items in _chunks(outbox):
        conn.execute(_multi_row(_INSERT_OUTBOX, len(items), 5), [v for item in items for v in item])
    return results


def connect_writer(path: Path, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """The writer's connection, opened in the writer process at its first round and again after a failure
    closed it (an I/O error leaves a connection in an unknown state). It brings the schema up to date, so
    a database that could not be written at startup gets its migrations once it can."""
    return _connect_and_migrate(path, synchronous, busy_timeout_ms)[0]


def _migrate(path: Path, synchronous: str, busy_timeout_ms: int) -> list[str]:
    """At startup, on the loop's behalf: apply migrations and report which were new."""
    conn, applied = _connect_and_migrate(path, synchronous, busy_timeout_ms)
    conn.close()
    return applied


def _connect_and_migrate(path: Path, synchronous: str, busy_timeout_ms: int) -> tuple[sqlite3.Connection, list[str]]:
    conn = sqlite3.connect(path, isolation_level=None, cached_statements=512)
    try:
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: every commit syncs the WAL, so an acknowledged event survives power loss.
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        applied = apply_migrations(conn)
        if synchronous == "FULL":  # the WAL file exists now: make its directory entry durable too
            _fsync_path(path.parent)
    except BaseException:
        conn.close()
        raise
    return conn, applied


class SqliteStore(HistoryQueries):
    """SQLite-backed implementation of the store interface (see `receiver.store.base.Store`); history reads in
    `receiver.store.history`."""

    def __init__(
        self, path: Path, *, synchronous: str = "full", busy_timeout_ms: int = 5000, notify_statuses: frozenset[str]
    ) -> None:
        self.path = path
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._notify_statuses = notify_statuses
        self._writer: GroupCommitWriter[EventRow, Ingested] | None = None
        self._reader: aiosqlite.Connection | None = None
        # One observation per committed round of the writer; read by /metrics.
        self.batch_sizes = Histogram(BATCH_SIZE_BUCKETS)
        self.commit_seconds = Histogram(COMMIT_SECONDS_BUCKETS)

    # --- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store. A database that cannot be written now (read-only, disk full, locked) does not stop
        the server: intake answers 503 and the writer connects again on each round until it can."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            applied = await asyncio.to_thread(_migrate, self.path, self._synchronous, self._busy_timeout_ms)
        except sqlite3.OperationalError as exc:
            log.error("the store cannot be written now (%s); intake answers 503 until it can", exc)
        else:
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        self._writer = GroupCommitWriter(
            functools.partial(connect_writer, self.path, self._synchronous, self._busy_timeout_ms),
            functools.partial(write_events, notify_statuses=self._notify_statuses),
            asyncio.get_running_loop(),
            # A round may wait busy_timeout for a lock held elsewhere (then answers 503 itself): allow that and more.
            stall_seconds=self._busy_timeout_ms / 1000 + STALL_MARGIN_SECONDS,
            batch_sizes=self.batch_sizes,
            commit_seconds=self.commit_seconds,
        )
        await self._writer.start()
        self._reader = await aiosqlite.connect(self.path)
        await self._reader.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        await self._reader.execute("PRAGMA query_only = ON")

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    @property
    def writer(self) -> GroupCommitWriter[EventRow, Ingested]:
        if self._writer is None:
            raise RuntimeError("store is not open")
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("store is not open")
        return self._reader

    @property
    def healthy(self) -> bool:
        return self._writer is not None and self._writer.healthy

    # --- intake ----------------------------------------------------------------------------
    def ingest(self, row: EventRow) -> asyncio.Future[Ingested]:
        """Store one event durably; resolves once committed (StoreUnavailable if it cannot be)."""
        return self.writer.submit(row)

    # --- health ----------------------------------------------------------------------------
    async def check_writable(self) -> None:
        """A real write through the writer; raises StoreUnavailable if it cannot commit."""
        now = now_ms()
        await self.writer.call(_beat, now)

    # --- outbox ----------------------------------------------------------------------------
    async def unprocessed_outbox(self, limit: int = 100) -> list[OutboxItem]:
        return [OutboxItem(*row) for row in await self._rows(UNPROCESSED_OUTBOX, (limit,))]

    async def outbox_stats(self) -> OutboxStats:
        """Unprocessed outbox rows, when the oldest was queued, and deliveries pending/retrying/dead (for /metrics).

        Index-only but for one row: the count walks the partial index `outbox_unprocessed`, the oldest is its
        first entry (ids grow in commit order), and the delivery states count `deliveries_state`.
        """
        [(depth, oldest)] = await self._rows(_OUTBOX_STATS, ())
        states = {state: count for state, count in await self._rows(DELIVERY_STATES, ())}
        return OutboxStats(depth, oldest, states)

    async def expand_outbox(self, outbox_ids: Sequence[int], planned: Sequence[NewDelivery], now: int) -> int:
        return await self.writer.call(deliveries.expand, outbox_ids, planned, now)

    async def claim_due(
        self,
        now: int,
        lease_ms: int,
        limit: int,
        caps: Mapping[str, int] | None = None,
        rate_limits: Mapping[str, int] | None = None,
    ) -> list[ClaimedDelivery]:
        # Plain dicts: they are pickled to the writer process.
        return await self.writer.call(
            deliveries.claim_due, now, lease_ms, limit, dict(caps or {}), dict(rate_limits or {})
        )

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: int) -> None:
        await self.writer.call(deliveries.record, outcomes, now)

    async def redeliver(self, delivery_ids: Sequence[int], now: int) -> int:
        return await self.writer.call(deliveries.redeliver, delivery_ids, now)

    async def redeliver_dead(self, now: int) -> int:
        return await self.writer.call(deliveries.redeliver_dead, now)

    async def next_due(self) -> int | None:
        [(due,)] = await self._rows(NEXT_DUE, ())
        return int(due) if due is not None else None

    # --- retention and export -----------------------------------------------------------------------
    async def prune_history(self, cutoff: int) -> Pruned:
        """Remove history older than `cutoff` (epoch ms) by the rule of `receiver.store.retention`."""
        return await prune(self.writer.call, cutoff)

    async def export_events(self, since: int | None = None, chunk: int = 5000) -> AsyncIterator[list[Sequence[Any]]]:
        """Every stored event in arrival order, `chunk` rows at a time (a keyset walk by id)."""
        after = 0
        condition = "" if since is None else " AND last_updated >= ?"
        sql = f"SELECT {EXPORT_COLUMNS}, id FROM events WHERE id > ?{condition} ORDER BY id LIMIT ?"
        while True:
            params = (after, chunk) if since is None else (after, since, chunk)
            rows = await self._rows(sql, params)
            if not rows:
                return
            after = rows[-1][-1]
            yield [row[:-1] for row in rows]
            if len(rows) < chunk:
                return

    # --- poll state (the Bytescale poller) --------------------------------------------------------
    async def observe_polled(self, jobs: Sequence[TrackedJob]) -> None:
        """Record the poller's latest view of these jobs (a job with `done_at` set is no longer fetched)."""
        if jobs:
            now = now_ms()
            await self.writer.call(polling.observe, jobs, now)

    async def watch_job(self, account_id: str, job_type: str, job_id: str) -> bool:
        """Follow this job until terminal; False when it was already known."""
        now = now_ms()
        return await self.writer.call(polling.watch, account_id, job_type, job_id, now)

    async def forget_job(self, account_id: str, job_id: str) -> bool:
        return await self.writer.call(polling.forget, account_id, job_id)

    async def tracked_jobs(self, account_id: str) -> list[TrackedJob]:
        """The jobs of this account followed and not yet seen terminal, oldest registration first."""
        return [TrackedJob(*row) for row in await self._rows(polling.OPEN_JOBS, (account_id,))]

    async def lead_polling(self, account_id: str) -> bool:
        """Always: one server owns a SQLite file, so it polls every account it is configured with."""
        return True


def _beat(conn: sqlite3.Connection, now: int) -> None:
    conn.execute(BEAT, (now,))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
