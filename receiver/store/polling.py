"""Poll state of the Bytescale poller: the jobs it follows per account, so a restart resumes where it was.

Every function here runs in the writer process (through `GroupCommitWriter.call`) inside its transaction;
the PostgreSQL store shares the statements (`receiver.store.pg_deliveries`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import NamedTuple


class TrackedJob(NamedTuple):
    """One job the poller follows (or followed: `done_at` is set once it was seen terminal)."""

    account_id: str
    job_id: str
    job_type: str
    last_seen_status: str | None = None
    last_updated: int | None = None
    done_at: int | None = None


# A newer observation replaces an older one; a job seen terminal stays done (its row is never reopened).
OBSERVE = """
INSERT INTO poll_jobs (account_id, job_id, job_type, last_seen_status, last_updated, done_at, added_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (account_id, job_id) DO UPDATE SET
    job_type = excluded.job_type,
    last_seen_status = excluded.last_seen_status,
    last_updated = excluded.last_updated,
    done_at = excluded.done_at
WHERE poll_jobs.done_at IS NULL AND excluded.last_updated >= coalesce(poll_jobs.last_updated, -1)
"""

WATCH = "INSERT INTO poll_jobs (account_id, job_id, job_type, added_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
FORGET = "DELETE FROM poll_jobs WHERE account_id = ? AND job_id = ?"
OPEN_JOBS = """
SELECT account_id, job_id, job_type, last_seen_status, last_updated, done_at
FROM poll_jobs WHERE account_id = ? AND done_at IS NULL ORDER BY added_at, job_id
"""


def observe(conn: sqlite3.Connection, jobs: Sequence[TrackedJob], now: int) -> None:
    """Record what the poller saw; `done_at` of each row says whether it was terminal."""
    conn.executemany(
        OBSERVE,
        [(j.account_id, j.job_id, j.job_type, j.last_seen_status, j.last_updated, j.done_at, now) for j in jobs],
    )


def watch(conn: sqlite3.Connection, account_id: str, job_type: str, job_id: str, now: int) -> bool:
    """Start following a job; False when it is already known (followed, or already done)."""
    return conn.execute(WATCH, (account_id, job_id, job_type, now)).rowcount == 1


def forget(conn: sqlite3.Connection, account_id: str, job_id: str) -> bool:
    return conn.execute(FORGET, (account_id, job_id)).rowcount == 1
