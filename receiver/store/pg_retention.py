"""Retention on PostgreSQL: the rule of `receiver.store.retention`, with its statements, in bounded chunks.

`receiver.store.retention.prune` runs these steps, each chunk one `store.call` (one short transaction), so
ingest on every replica keeps flowing between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from receiver.store.pg_sql import affected, numbered
from receiver.store.retention import (
    OLD_FINISHED_JOBS,
    PRUNE_EVENTS_RANGE,
    PRUNE_OUTBOX_RANGE,
    PRUNE_POLL_JOBS,
    PruneSteps,
)

if TYPE_CHECKING:
    from receiver.store.pg_sql import Conn


async def prune_jobs_chunk(conn: Conn, cutoff: int, limit: int) -> int:
    """Up to `limit` old finished jobs with their deliveries and attempts; how many jobs went."""
    job_ids = [row[0] for row in await conn.fetch(numbered(OLD_FINISHED_JOBS), cutoff, limit)]
    if not job_ids:
        return 0
    await conn.execute(
        "DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE job_id = ANY($1))",
        job_ids,
    )
    await conn.execute("DELETE FROM deliveries WHERE job_id = ANY($1)", job_ids)
    await prune_digests(conn, job_ids)
    return affected(await conn.execute("DELETE FROM jobs WHERE job_id = ANY($1)", job_ids))


async def prune_digests(conn: Conn, job_ids: list[str]) -> None:
    """The pruned jobs leave their digests; a digest left with no member goes, with its attempts."""
    emptied = [
        row[0]
        for row in await conn.fetch(
            """SELECT DISTINCT digest_id FROM digest_members m WHERE job_id = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM digest_members o WHERE o.digest_id = m.digest_id
                               AND NOT (o.job_id = ANY($1)))""",
            job_ids,
        )
    ]
    await conn.execute("DELETE FROM digest_members WHERE job_id = ANY($1)", job_ids)
    await conn.execute("DELETE FROM delivery_attempts WHERE delivery_id = ANY($1::bigint[])", emptied)
    await conn.execute("DELETE FROM deliveries WHERE id = ANY($1::bigint[])", emptied)


async def id_bounds(conn: Conn, table: str) -> tuple[int, int]:
    bounds = await conn.fetchrow(f"SELECT coalesce(min(id), 1) - 1, coalesce(max(id), 0) FROM {table}")
    low, high = tuple(bounds or (0, 0))
    return int(low), int(high)


async def prune_outbox_range(conn: Conn, cutoff: int, low: int, high: int) -> int:
    del cutoff  # implied: only jobs finished before the cutoff were removed
    return affected(await conn.execute(numbered(PRUNE_OUTBOX_RANGE), low, high))


async def prune_events_range(conn: Conn, cutoff: int, low: int, high: int) -> int:
    return affected(await conn.execute(numbered(PRUNE_EVENTS_RANGE), low, high, cutoff))


async def prune_poll_jobs(conn: Conn, cutoff: int) -> int:
    return affected(await conn.execute(numbered(PRUNE_POLL_JOBS), cutoff))


POSTGRES_STEPS = PruneSteps(prune_jobs_chunk, id_bounds, prune_outbox_range, prune_events_range, prune_poll_jobs)
