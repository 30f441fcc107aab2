"""The PostgreSQL store (asyncpg): the store interface for several replicas sharing one database.

Same tables and history queries as SQLite; what differs is how writes stay correct across processes:
ingest locks per job and dedupes by unique key (`receiver.store.pg_ingest`), outbox rows are expanded by
whichever replica's `UPDATE ... WHERE processed_at IS NULL` wins, and deliveries are claimed with
`FOR UPDATE SKIP LOCKED` plus a lease, so a dead replica's claims are taken over once it expires.
Every database error becomes `StoreUnavailable` (intake answers 503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from receiver.durations import now_ms
from receiver.event_loop import EventLoopSetting
from receiver.store import pg_deliveries, pg_flood, pg_retention
from receiver.store.base import EventRow, Ingested, OutboxItem, OutboxStats
from receiver.store.deliveries import ClaimedDelivery, NewDelivery, Outcome
from receiver.store.history import HistoryQueries, Json
from receiver.store.pg_ingest import DB_ERRORS, IngestThread
from receiver.store.pg_leadership import PollingLeadership
from receiver.store.pg_schema import MIGRATIONS
from receiver.store.pg_sql import numbered
from receiver.store.polling import FORGET, OPEN_JOBS, TrackedJob
from receiver.store.retention import Pruned, prune
from receiver.store.schema import Migration
from receiver.store.sqlite import BEAT, DELIVERY_STATES, EXPORT_COLUMNS, NEXT_DUE, UNPROCESSED_OUTBOX
from receiver.store.writer import StoreUnavailable
from receiver.tally import BATCH_SIZE_BUCKETS, COMMIT_SECONDS_BUCKETS, Histogram

if TYPE_CHECKING:
    from receiver.store.pg_sql import Conn

log = logging.getLogger("jobhook.store")
T = TypeVar("T")

MIGRATION_LOCK = 0x6A6F62686F6F6B  # "jobhook": one replica migrates at a time


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def display_url(url: str) -> str:
    """The URL with any password (in the authority or a `password=` parameter) replaced, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    if parts.password is None and query == parts.query:
        return url  # nothing to hide; urlunsplit would also turn `sqlite:///x.db` into `sqlite:/x.db`
    return urlunsplit(parts._replace(query=query))


async def apply_migrations(conn: Conn, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
    """Apply every migration not yet recorded, in order, each in one transaction with its record.

    A session advisory lock makes replicas starting together take turns; the later ones find all done.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        done = {row["name"] for row in await conn.fetch("SELECT name FROM _migrations")}
        applied = []
        for migration in migrations:
            if migration.name in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute("INSERT INTO _migrations VALUES ($1, $2)", migration.name, now_ms())
            applied.append(migration.name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


_OUTBOX_STATS = "SELECT count(*), min(created_at) FROM outbox WHERE processed_at IS NULL"


async def _in_transaction(pool: asyncpg.Pool, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    async with pool.acquire() as conn, conn.transaction():
        return await fn(conn, *args)


async def _outbox_stats(conn: Conn) -> OutboxStats:
    depth, oldest = tuple(await conn.fetchrow(_OUTBOX_STATS) or (0, None))
    states = {state: count for state, count in await conn.fetch(DELIVERY_STATES)}
    return OutboxStats(depth, oldest, states)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """A call whose caller was cancelled still ran to its end; its outcome is not an error worth a warning."""
    if not task.cancelled():
        task.exception()


class PostgresStore(HistoryQueries):
    """PostgreSQL-backed implementation of the store interface (see `receiver.store.base.Store`)."""

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "full",
        command_timeout: float = 5.0,
        notify_statuses: frozenset[str],
        pool_size: int = 8,
        flushers: int = 2,
        event_loop: EventLoopSetting = "auto",
    ) -> None:
        self.url = url
        self._event_loop: EventLoopSetting = event_loop  # the ingest thread's, as the server's
        # normal: a commit returns before its WAL reaches disk (survives a jobhook crash, not a server crash).
        self._server_settings = {
            "synchronous_commit": "on" if synchronous == "full" else "off",
            # asyncpg prepares every statement; after five runs PostgreSQL may switch to a generic plan that
            # cannot see how small `job_id = ANY($1)` is and scans the table: measured 20x slower ingest
            # at 100k rows. A custom plan per execution costs microseconds.
            "plan_cache_mode": "force_custom_plan",
        }
        self._command_timeout = command_timeout
        self._notify_statuses = notify_statuses
        self._pool_size = pool_size
        self._flushers = flushers
        self._pool: asyncpg.Pool | None = None
        self._ingest: IngestThread | None = None
        self._leadership = PollingLeadership(url, command_timeout)
        self.batch_sizes = Histogram(BATCH_SIZE_BUCKETS)
        self.commit_seconds = Histogram(COMMIT_SECONDS_BUCKETS)

    # --- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                command_timeout=self._command_timeout,
                server_settings=self._server_settings,
            )
            async with self._pool.acquire() as conn:
                applied = await apply_migrations(conn)
        except DB_ERRORS as exc:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None
            raise StoreUnavailable(f"cannot open {display_url(self.url)}: {exc}") from exc
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        ingest = IngestThread(
            self.url,
            notify_statuses=self._notify_statuses,
            flushers=self._flushers,
            command_timeout=self._command_timeout,
            server_settings=self._server_settings,
            event_loop=self._event_loop,
            batch_sizes=self.batch_sizes,
            commit_seconds=self.commit_seconds,
        )
        try:
            await ingest.start()
        except DB_ERRORS as exc:
            await self.close()
            raise StoreUnavailable(f"cannot open {display_url(self.url)}: {exc}") from exc
        self._ingest = ingest

    async def close(self) -> None:
        await self._leadership.close()  # another replica takes over polling at its next round
        if self._ingest is not None:
            await self._ingest.stop()
            self._ingest = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def healthy(self) -> bool:
        return self._ingest is not None and self._ingest.healthy

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)` in one transaction on a pooled connection (the twin of the SQLite writer's call).

        Shielded: a caller cancelled mid-statement (shutdown) leaves the statement to finish and the connection
        to return to the pool cleanly, instead of interrupting asyncpg mid-protocol. Database failures surface
        as StoreUnavailable.
        """
        if self._pool is None:
            raise RuntimeError("store is not open")
        task = asyncio.ensure_future(_in_transaction(self._pool, fn, args))
        task.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(task)
        except DB_ERRORS as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc

    # --- intake ----------------------------------------------------------------------------
    def ingest(self, row: EventRow) -> asyncio.Future[Ingested]:
        """Store one event durably; resolves once its batch committed (StoreUnavailable if it cannot be)."""
        if self._ingest is None:
            raise RuntimeError("store is not open")
        return self._ingest.submit(row)

    async def check_writable(self) -> None:
        await self.call(pg_deliveries.execute, numbered(BEAT), now_ms())

    # --- outbox and deliveries (receiver.store.pg_deliveries) -----------------------------------
    async def unprocessed_outbox(self, limit: int = 100) -> list[OutboxItem]:
        return [OutboxItem(*row) for row in await self._rows(UNPROCESSED_OUTBOX, (limit,))]

    async def outbox_stats(self) -> OutboxStats:
        return await self.call(_outbox_stats)

    async def expand_outbox(self, outbox_ids: Sequence[int], planned: Sequence[NewDelivery], now: int) -> int:
        return await self.call(pg_deliveries.expand, outbox_ids, planned, now)

    async def claim_due(
        self,
        now: int,
        lease_ms: int,
        limit: int,
        caps: Mapping[str, int] | None = None,
        rate_limits: Mapping[str, int] | None = None,
    ) -> list[ClaimedDelivery]:
        return await self.call(pg_flood.claim_due, now, lease_ms, limit, caps, rate_limits)

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: int) -> None:
        await self.call(pg_deliveries.record, outcomes, now)

    async def redeliver(self, delivery_ids: Sequence[int], now: int) -> int:
        return await self.call(pg_deliveries.redeliver, delivery_ids, now)

    async def redeliver_dead(self, now: int) -> int:
        return await self.call(pg_deliveries.redeliver_dead, now)

    async def next_due(self) -> int | None:
        [(due,)] = await self._rows(NEXT_DUE, ())
        return int(due) if due is not None else None

    # --- history (queries shared with SQLite, see receiver.store.history) ---------------------
    async def _rows(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        return list(await self.call(pg_deliveries.fetch, numbered(sql), *params))

    async def redeliver_notification(self, delivery_id: int, now: int) -> Json | None:
        return await self.call(pg_deliveries.redeliver_one, delivery_id, now)

    async def prune_history(self, cutoff: int) -> Pruned:
        """Remove history older than `cutoff` by the rule of `receiver.store.retention`, in bounded chunks."""
        return await prune(self.call, cutoff, pg_retention.POSTGRES_STEPS)

    async def export_events(self, since: int | None = None, chunk: int = 5000) -> AsyncIterator[list[Sequence[Any]]]:
        """Every stored event in id order, `chunk` rows at a time, from one consistent snapshot."""
        condition = "" if since is None else " WHERE last_updated >= $1"
        sql = f"SELECT {EXPORT_COLUMNS} FROM events{condition} ORDER BY id"
        args = () if since is None else (since,)
        if self._pool is None:
            raise RuntimeError("store is not open")
        try:
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                cursor = await conn.cursor(sql, *args)
                while rows := await cursor.fetch(chunk):
                    yield [tuple(row) for row in rows]
        except DB_ERRORS as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc

    # --- poll state (the Bytescale poller) --------------------------------------------------------
    async def observe_polled(self, jobs: Sequence[TrackedJob]) -> None:
        if jobs:
            await self.call(pg_deliveries.observe, jobs, now_ms())

    async def watch_job(self, account_id: str, job_type: str, job_id: str) -> bool:
        return await self.call(pg_deliveries.watch, account_id, job_type, job_id, now_ms())

    async def forget_job(self, account_id: str, job_id: str) -> bool:
        return await self.call(pg_deliveries.execute, numbered(FORGET), account_id, job_id) == 1

    async def tracked_jobs(self, account_id: str) -> list[TrackedJob]:
        return [TrackedJob(*row) for row in await self._rows(OPEN_JOBS, (account_id,))]

    async def lead_polling(self, account_id: str) -> bool:
        """One replica polls each account (`receiver.store.pg_leadership`)."""
        return await self._leadership.leads(account_id)
