"""The SQLite store: migrations, batched ingest with dedupe and transitions, and the outbox.

Writes go through the `GroupCommitWriter` thread; reads go through aiosqlite's own thread, so the
event loop never touches SQLite. WAL lets readers run beside the writer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from receiver.store.base import EventRow, Ingested, OutboxItem
from receiver.store.schema import MIGRATIONS, Migration
from receiver.store.transitions import Position, decide
from receiver.store.writer import GroupCommitWriter, StoreUnavailable

log = logging.getLogger("jobhook.store")

_EVENT_COLUMNS = "(job_id, last_updated, status, received_at, body)"
_EVENT_PLACEHOLDERS = "(?,?,?,?,?)"
_ROWS_PER_STATEMENT = 500  # 5 parameters each: far under SQLite's 32766-variable limit

_UPSERT_JOB = """
INSERT INTO jobs (job_id, account_id, job_type, status, created, last_updated, attempts,
                  error_code, error_message, event_id)
VALUES (?,?,?,?,?,?,?,?,?,?)
ON CONFLICT (job_id) DO UPDATE SET
    account_id = excluded.account_id, job_type = excluded.job_type, status = excluded.status,
    created = excluded.created, last_updated = excluded.last_updated, attempts = excluded.attempts,
    error_code = excluded.error_code, error_message = excluded.error_message,
    event_id = excluded.event_id
"""
_INSERT_OUTBOX = """
INSERT INTO outbox (event_id, job_id, status, previous_status, created_at) VALUES (?,?,?,?,?)
"""


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
                f"INSERT INTO _migrations (name, applied_at) VALUES ('{migration.name}', {_now_ms()});\n"
                "COMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(migration.name)
    return applied


class SqliteStore:
    """SQLite-backed implementation of the store interface (see `receiver.store.base.Store`)."""

    def __init__(
        self, path: Path, *, synchronous: str = "full", busy_timeout_ms: int = 5000, notify_statuses: frozenset[str]
    ) -> None:
        self.path = path
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._notify_statuses = notify_statuses
        self._writer: GroupCommitWriter[EventRow, Ingested] | None = None
        self._reader: aiosqlite.Connection | None = None

    # --- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(self._connect)
        applied = await asyncio.to_thread(apply_migrations, conn)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        self._writer = GroupCommitWriter(lambda: conn, self._write_events, asyncio.get_running_loop())
        self._writer.start()
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

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, cached_statements=512)
        conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

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

    def _write_events(self, conn: sqlite3.Connection, rows: Sequence[EventRow]) -> list[Ingested]:
        """One batch, inside the writer's transaction: dedupe, job state, outbox."""
        received_at = _now_ms()
        stored: dict[tuple[str, int, str], int] = {}
        for start in range(0, len(rows), _ROWS_PER_STATEMENT):
            chunk = rows[start : start + _ROWS_PER_STATEMENT]
            params: list[Any] = []
            for r in chunk:
                params += (r.job_id, r.last_updated, r.status, received_at, r.body)
            sql = (
                f"INSERT INTO events {_EVENT_COLUMNS} VALUES "
                + ",".join([_EVENT_PLACEHOLDERS] * len(chunk))
                + " ON CONFLICT DO NOTHING RETURNING id, job_id, last_updated, status"
            )
            for event_id, job_id, last_updated, status in conn.execute(sql, params):
                stored[(job_id, last_updated, status)] = event_id
        if not stored:
            return [Ingested.DUPLICATE] * len(rows)

        new_rows = []
        for row in rows:
            event_id = stored.pop((row.job_id, row.last_updated, row.status), None)
            new_rows.append(event_id)  # a later identical row in this batch finds None: duplicate
        current = self._current_positions(conn, {r.job_id for r, eid in zip(rows, new_rows, strict=True) if eid})

        job_updates: dict[str, tuple[Any, ...]] = {}
        outbox: list[tuple[Any, ...]] = []
        results: list[Ingested] = []
        for row, event_id in zip(rows, new_rows, strict=True):
            if event_id is None:
                results.append(Ingested.DUPLICATE)
                continue
            previous = current.get(row.job_id)
            decision = decide(previous, Position(row.last_updated, row.status))
            if decision.becomes_current:
                current[row.job_id] = Position(row.last_updated, row.status)
                job_updates[row.job_id] = (
                    row.job_id,
                    row.account_id,
                    row.job_type,
                    row.status,
                    row.created,
                    row.last_updated,
                    row.attempts,
                    row.error_code,
                    row.error_message,
                    event_id,
                )
            if decision.is_transition and row.status in self._notify_statuses:
                outbox.append((event_id, row.job_id, row.status, previous.status if previous else None, received_at))
                results.append(Ingested.TRANSITION)
            else:
                results.append(Ingested.STORED)
        if job_updates:
            conn.executemany(_UPSERT_JOB, job_updates.values())
        if outbox:
            conn.executemany(_INSERT_OUTBOX, outbox)
        return results

    @staticmethod
    def _current_positions(conn: sqlite3.Connection, job_ids: set[str]) -> dict[str, Position]:
        found: dict[str, Position] = {}
        ids = list(job_ids)
        for start in range(0, len(ids), _ROWS_PER_STATEMENT):
            chunk = ids[start : start + _ROWS_PER_STATEMENT]
            sql = "SELECT job_id, last_updated, status FROM jobs WHERE job_id IN (" + ",".join("?" * len(chunk)) + ")"
            for job_id, last_updated, status in conn.execute(sql, chunk):
                found[job_id] = Position(last_updated, status)
        return found

    # --- health ----------------------------------------------------------------------------
    async def check_writable(self) -> None:
        """A real write through the writer; raises StoreUnavailable if it cannot commit."""
        now = _now_ms()
        await self.writer.call(
            lambda conn: conn.execute(
                "INSERT INTO heartbeat (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at", (now,)
            )
        )

    # --- outbox ----------------------------------------------------------------------------
    async def unprocessed_outbox(self, limit: int = 100) -> list[OutboxItem]:
        try:
            cursor = await self.reader.execute(
                """SELECT o.id, o.job_id, o.status, o.previous_status, e.body
                   FROM outbox o JOIN events e ON e.id = o.event_id
                   WHERE o.processed_at IS NULL ORDER BY o.id LIMIT ?""",
                (limit,),
            )
            rows = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [OutboxItem(*row) for row in rows]

    async def mark_processed(self, outbox_ids: Sequence[int]) -> None:
        now = _now_ms()
        await self.writer.call(
            lambda conn: conn.executemany(
                "UPDATE outbox SET processed_at = ? WHERE id = ? AND processed_at IS NULL",
                [(now, i) for i in outbox_ids],
            )
        )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
