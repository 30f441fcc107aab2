"""History reads for the API (SPEC §3, §7): jobs newest first, one job's events and notifications, redeliver.

Keyset paging: a page is asked for "after" the key of the last row of the previous one, so a walk has
no gaps or repeats while new jobs arrive (they sort before the walk's position). Every query is served
by an index (migration 0004_history_indexes); `tests/test_api.py` checks the plans.

`HistoryQueries` is mixed into `SqliteStore`: it reads through aiosqlite (`reader`) and redelivers through
the writer process, so the event loop never touches SQLite. `PostgresStore` mixes it in too, replacing
`_rows` and `redeliver_notification` with its own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiosqlite

from receiver.store.deliveries import PENDING, RETRYING, redeliver
from receiver.store.transitions import RANK
from receiver.store.writer import GroupCommitWriter, StoreUnavailable

JobKey = tuple[int, str]  # (last_updated, job_id): a job's place in the newest-first order
Json = dict[str, Any]


@dataclass(frozen=True)
class JobFilter:
    """`GET /api/jobs`: every given filter must hold; a tuple of values matches any of them."""

    statuses: tuple[str, ...] = ()
    job_types: tuple[str, ...] = ()
    account_ids: tuple[str, ...] = ()
    since: int | None = None  # lastUpdated >= since
    until: int | None = None  # lastUpdated <= until
    limit: int = 50
    after: JobKey | None = None


@dataclass(frozen=True)
class NotificationFilter:
    states: tuple[str, ...] = ()
    limit: int = 50
    after: int | None = None  # the id of the last notification already seen


class Page(NamedTuple):
    items: list[Json]
    next_key: Any  # JobKey or notification id of the last item when more follow, else None


_JOB_COLUMNS = "job_id, account_id, job_type, status, created, last_updated, attempts, error_code, error_message"
_DELIVERY_COLUMNS = "id, job_id, status, rule, target, state, next_attempt_at"


def _placeholders(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


FINISHED_CONDITION = "status IN ('Succeeded', 'Failed', 'Cancelled')"  # as in migration 0004's jobs_finished
_FINISHED = frozenset({"Succeeded", "Failed", "Cancelled"})


def jobs_query(query: JobFilter) -> tuple[str, list[Any]]:
    """The SQL for one page (one row more than `limit`, to know whether another page follows)."""
    where: list[str] = []
    params: list[Any] = []
    lists = (("status", query.statuses), ("job_type", query.job_types), ("account_id", query.account_ids))
    for column, values in lists:
        if values:
            where.append(f"{column} IN ({_placeholders(values)})")
            params.extend(values)
    if query.statuses and set(query.statuses) <= _FINISHED:
        # Repeat the partial index's own condition, verbatim: only then may SQLite use jobs_finished
        # (kept small and off the ingest path for in-flight jobs, which are most upserts).
        where.append(FINISHED_CONDITION)
    if query.since is not None:
        where.append("last_updated >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append("last_updated <= ?")
        params.append(query.until)
    if query.after is not None:
        where.append("(last_updated, job_id) < (?, ?)")
        params.extend(query.after)
    return _page_sql(f"SELECT {_JOB_COLUMNS} FROM jobs", where, "last_updated DESC, job_id DESC", params, query.limit)


def notifications_query(query: NotificationFilter) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if query.states:
        where.append(f"state IN ({_placeholders(query.states)})")
        params.extend(query.states)
    if query.after is not None:
        where.append("id < ?")
        params.append(query.after)
    return _page_sql(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries", where, "id DESC", params, query.limit)


def _page_sql(select: str, where: list[str], order: str, params: list[Any], limit: int) -> tuple[str, list[Any]]:
    """One page, fetching one row more than `limit` to know whether another page follows."""
    sql = select + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order} LIMIT ?"
    return sql, [*params, limit + 1]


JOB_BY_ID = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?"
EVENTS_OF_JOB = "SELECT status, last_updated, received_at, body, id FROM events WHERE job_id = ?"  # see events_json
# A job's own deliveries and the digests it is a member of (their job_id is NULL): takes the job id twice.
DELIVERIES_OF_JOB = (
    f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE job_id = ?"
    " OR id IN (SELECT digest_id FROM digest_members WHERE job_id = ?) ORDER BY id"
)
DELIVERY_BY_ID = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id = ?"


def attempts_query(delivery_ids: Sequence[int]) -> str:
    return (
        f"SELECT delivery_id, at, ok, error FROM delivery_attempts WHERE delivery_id IN ({_placeholders(delivery_ids)})"
        " ORDER BY id"
    )


def members_query(digest_ids: Sequence[int]) -> str:
    return (
        f"SELECT digest_id, job_id FROM digest_members WHERE digest_id IN ({_placeholders(digest_ids)})"
        " ORDER BY digest_id, outbox_id"
    )


# --- rows -> the JSON shapes of SPEC §3 ---------------------------------------------------------------
def job_json(row: Sequence[Any]) -> Json:
    job_id, account_id, job_type, status, created, last_updated, attempts, error_code, error_message = row
    error = None if error_code is None else {"code": error_code, "message": error_message}
    return {
        "jobId": job_id,
        "accountId": account_id,
        "jobType": job_type,
        "status": status,
        "created": created,
        "lastUpdated": last_updated,
        "attempts": attempts,
        "error": error,
    }


def events_json(rows: Iterable[Sequence[Any]]) -> list[Json]:
    """Oldest first by lastUpdated, then status rank, then arrival."""
    ordered = sorted(rows, key=lambda r: (r[1], RANK.get(r[0], len(RANK)), r[4]))
    return [
        {"status": status, "lastUpdated": last_updated, "receivedAt": received_at, "body": json.loads(body)}
        for status, last_updated, received_at, body, _ in ordered
    ]


def notifications_json(
    rows: Sequence[Sequence[Any]], attempt_rows: Iterable[Sequence[Any]], member_rows: Iterable[Sequence[Any]] = ()
) -> list[Json]:
    """NOTIFICATIONs; a digest (no single job) has `"jobId": null` and `"jobIds"`, all its members (SPEC §7)."""
    attempts: dict[int, list[Json]] = {}
    for delivery_id, at, ok, error in attempt_rows:
        attempts.setdefault(delivery_id, []).append({"at": at, "ok": bool(ok), "error": error})
    members: dict[int, list[str]] = {}
    for digest_id, job_id in member_rows:
        members.setdefault(digest_id, []).append(job_id)
    items = []
    for delivery_id, job_id, status, rule, target, state, next_attempt_at in rows:
        waiting = state in (PENDING, RETRYING)
        item: Json = {
            "id": delivery_id,
            "jobId": job_id,
            "status": status,
            "rule": rule,
            "target": target,
            "state": state,
            "attempts": attempts.get(delivery_id, []),
            "nextAttemptAt": next_attempt_at if waiting else None,
        }
        if job_id is None:
            item["jobIds"] = members.get(delivery_id, [])
        items.append(item)
    return items


def _digest_ids(rows: Sequence[Sequence[Any]]) -> list[int]:
    return [row[0] for row in rows if row[1] is None]


def redeliver_one(conn: sqlite3.Connection, delivery_id: int, now: int) -> Json | None:
    """In the writer process: back to pending, due now, history kept; the NOTIFICATION as committed, or None."""
    if not redeliver(conn, [delivery_id], now):
        return None
    rows = conn.execute(DELIVERY_BY_ID, (delivery_id,)).fetchall()
    attempt_rows = conn.execute(attempts_query([delivery_id]), (delivery_id,)).fetchall()
    digests = _digest_ids(rows)
    member_rows = conn.execute(members_query(digests), digests).fetchall() if digests else []
    return notifications_json(rows, attempt_rows, member_rows)[0]


class HistoryQueries:
    """The history half of `SqliteStore` (which provides `reader` and `writer`) and `PostgresStore`."""

    @property
    def reader(self) -> aiosqlite.Connection:
        raise NotImplementedError

    @property
    def writer(self) -> GroupCommitWriter[Any, Any]:
        raise NotImplementedError

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        try:
            cursor = await self.reader.execute(sql, params)
            rows = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc
        return list(rows)

    async def _notifications(self, rows: Sequence[Sequence[Any]]) -> list[Json]:
        ids = [row[0] for row in rows]
        attempt_rows = await self._rows(attempts_query(ids), ids) if ids else []
        digests = _digest_ids(rows)
        member_rows = await self._rows(members_query(digests), digests) if digests else []
        return notifications_json(rows, attempt_rows, member_rows)

    async def list_jobs(self, query: JobFilter) -> Page:
        rows = await self._rows(*jobs_query(query))
        more = len(rows) > query.limit
        items = [job_json(row) for row in rows[: query.limit]]
        last = items[-1] if more else None
        return Page(items, (last["lastUpdated"], last["jobId"]) if last else None)

    async def job_detail(self, job_id: str) -> Json | None:
        jobs = await self._rows(JOB_BY_ID, (job_id,))
        if not jobs:
            return None
        events = await self._rows(EVENTS_OF_JOB, (job_id,))
        notifications = await self._notifications(await self._rows(DELIVERIES_OF_JOB, (job_id, job_id)))
        return {"job": job_json(jobs[0]), "events": events_json(events), "notifications": notifications}

    async def list_notifications(self, query: NotificationFilter) -> Page:
        rows = await self._rows(*notifications_query(query))
        more = len(rows) > query.limit
        items = await self._notifications(rows[: query.limit])
        return Page(items, items[-1]["id"] if more else None)

    async def redeliver_notification(self, delivery_id: int, now: int) -> Json | None:
        return await self.writer.call(redeliver_one, delivery_id, now)
