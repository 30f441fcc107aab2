"""Retention (SPEC §5 `retention.events`, §7; `jobhook prune`): history older than a cutoff is removed.

The rule, applied in bounded chunks (one writer call each, so ingest keeps flowing between them):

1. finished jobs (Succeeded, Failed, Cancelled) last updated before the cutoff go, with their
   deliveries and delivery attempts and their places in digests (a digest left empty goes too), unless
   a notification of theirs is still waiting (an unprocessed outbox row, or a delivery or digest
   pending or retrying);
2. processed outbox rows whose job is gone go too;
3. events older than the cutoff go, except the current event of any job still stored (so a job in
   flight always keeps its current state) and events an unprocessed outbox row still needs;
4. poll_jobs rows finished before the cutoff go.

Events and outbox rows are walked by id range (the rowid), so no chunk scans more than `chunk` rows
and no index on `events.last_updated` (which would cost every ingest) is needed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

from receiver.store.history import FINISHED_CONDITION

CHUNK = 5000
T = TypeVar("T")
Call = Callable[..., Awaitable[T]]


class Pruned(NamedTuple):
    events: int
    jobs: int


OLD_FINISHED_JOBS = f"""
SELECT job_id FROM jobs
WHERE {FINISHED_CONDITION} AND last_updated < ?
  AND job_id NOT IN (SELECT job_id FROM outbox WHERE processed_at IS NULL)
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = jobs.job_id AND d.state IN ('pending', 'retrying'))
  AND NOT EXISTS (SELECT 1 FROM digest_members m JOIN deliveries d ON d.id = m.digest_id
                  WHERE m.job_id = jobs.job_id AND d.state IN ('pending', 'retrying'))
LIMIT ?
"""
_IDS = "SELECT value FROM json_each(?)"
# Shared with the PostgreSQL store (receiver.store.pg_retention), which numbers the placeholders.
PRUNE_OUTBOX_RANGE = """DELETE FROM outbox WHERE id > ? AND id <= ? AND processed_at IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = outbox.job_id)"""
PRUNE_EVENTS_RANGE = """DELETE FROM events WHERE id > ? AND id <= ? AND last_updated < ?
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = events.job_id AND j.event_id = events.id)
    AND id NOT IN (SELECT event_id FROM outbox WHERE processed_at IS NULL)"""
PRUNE_POLL_JOBS = "DELETE FROM poll_jobs WHERE done_at IS NOT NULL AND coalesce(last_updated, done_at) < ?"


def prune_jobs_chunk(conn: sqlite3.Connection, cutoff: int, limit: int) -> int:
    """Up to `limit` old finished jobs with their deliveries and attempts; how many jobs went."""
    job_ids = [job_id for (job_id,) in conn.execute(OLD_FINISHED_JOBS, (cutoff, limit))]
    if not job_ids:
        return 0
    ids = json.dumps(job_ids)
    conn.execute(
        f"DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE job_id IN ({_IDS}))",
        (ids,),
    )
    conn.execute(f"DELETE FROM deliveries WHERE job_id IN ({_IDS})", (ids,))
    prune_digests(conn, ids)
    return conn.execute(f"DELETE FROM jobs WHERE job_id IN ({_IDS})", (ids,)).rowcount


def prune_digests(conn: sqlite3.Connection, job_ids_json: str) -> None:
    """The pruned jobs leave their digests; a digest left with no member goes, with its attempts."""
    digests = f"SELECT DISTINCT digest_id FROM digest_members WHERE job_id IN ({_IDS})"
    emptied = [
        digest_id
        for (digest_id,) in conn.execute(digests, (job_ids_json,)).fetchall()
        if conn.execute(
            f"SELECT 1 FROM digest_members WHERE digest_id = ? AND job_id NOT IN ({_IDS}) LIMIT 1",
            (digest_id, job_ids_json),
        ).fetchone()
        is None
    ]
    conn.execute(f"DELETE FROM digest_members WHERE job_id IN ({_IDS})", (job_ids_json,))
    conn.executemany("DELETE FROM delivery_attempts WHERE delivery_id = ?", [(i,) for i in emptied])
    conn.executemany("DELETE FROM deliveries WHERE id = ?", [(i,) for i in emptied])


def prune_outbox_range(conn: sqlite3.Connection, cutoff: int, low: int, high: int) -> int:
    """Processed outbox rows with `low < id <= high` whose job is gone (pruned: finished before the cutoff)."""
    del cutoff  # implied: only jobs finished before the cutoff were removed
    return conn.execute(PRUNE_OUTBOX_RANGE, (low, high)).rowcount


def prune_events_range(conn: sqlite3.Connection, cutoff: int, low: int, high: int) -> int:
    """Events with `low < id <= high` older than the cutoff, except any job's current event and what the
    outbox still needs."""
    return conn.execute(PRUNE_EVENTS_RANGE, (low, high, cutoff)).rowcount


def prune_poll_jobs(conn: sqlite3.Connection, cutoff: int) -> int:
    return conn.execute(PRUNE_POLL_JOBS, (cutoff,)).rowcount


def _id_bounds(conn: sqlite3.Connection, table: str) -> tuple[int, int]:
    low, high = conn.execute(f"SELECT coalesce(min(id), 1) - 1, coalesce(max(id), 0) FROM {table}").fetchone()
    return int(low), int(high)


class PruneSteps(NamedTuple):
    """One store's statements of the rule; `prune` runs each through the store's `call(fn, *args)`."""

    jobs_chunk: Callable[..., Any]  # (conn, cutoff, limit) -> jobs removed
    id_bounds: Callable[..., Any]  # (conn, table) -> (low, high)
    outbox_range: Callable[..., Any]  # (conn, cutoff, low, high) -> rows removed
    events_range: Callable[..., Any]  # (conn, cutoff, low, high) -> events removed
    poll_jobs: Callable[..., Any]  # (conn, cutoff) -> rows removed


SQLITE_STEPS = PruneSteps(prune_jobs_chunk, _id_bounds, prune_outbox_range, prune_events_range, prune_poll_jobs)


async def prune(call: Call[Any], cutoff: int, steps: PruneSteps = SQLITE_STEPS, chunk: int = CHUNK) -> Pruned:
    """Apply the rule through `call` (the store's `call`), one bounded chunk per call."""
    jobs = 0
    while True:
        removed: int = await call(steps.jobs_chunk, cutoff, chunk)
        jobs += removed
        if removed < chunk:
            break
    events = 0
    for table, step in (("outbox", steps.outbox_range), ("events", steps.events_range)):
        low, high = await call(steps.id_bounds, table)
        while low < high:
            top = min(low + chunk, high)
            count: int = await call(step, cutoff, low, top)
            if table == "events":
                events += count
            low = top
    await call(steps.poll_jobs, cutoff)
    return Pruned(events, jobs)
