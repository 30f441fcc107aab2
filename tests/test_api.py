"""The history API (SPEC §3, §7): real app, real SQLite file, real deliveries to a local sink."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from receiver.api import QueryError, encode_cursor, parse_jobs_query, parse_notifications_query, parse_time
from receiver.store.base import EventRow
from receiver.store.history import (
    DELIVERIES_OF_JOB,
    EVENTS_OF_JOB,
    JOB_BY_ID,
    JobFilter,
    NotificationFilter,
    attempts_query,
    jobs_query,
)
from receiver.store.sqlite import apply_migrations
from tests.conftest import AppClient, MakeClient, open_store
from tests.jobs import CURRENT_SHAPE, SEED_EXAMPLE, body, job, new_job_id
from tests.peers import JsonSink, wait_until
from tests.test_admin import TOKEN
from tests.test_intake import assert_envelope, post

pytestmark = pytest.mark.stores("sqlite", "postgres")

NOW = 1_750_000_000_000
HOUR = 3_600_000
JOB_KEYS = {"jobId", "accountId", "jobType", "status", "created", "lastUpdated", "attempts", "error"}
NOTIFICATION_KEYS = {"id", "jobId", "status", "rule", "target", "state", "attempts", "nextAttemptAt"}


async def get(client: AppClient, path: str, **params: Any) -> tuple[int, Any]:
    resp = await client.get(path, params={k: str(v) for k, v in params.items()})
    return resp.status, await resp.json()


async def walk(client: AppClient, path: str, **params: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        status, page = await get(client, path, **params, **({"cursor": cursor} if cursor else {}))
        assert status == 200, page
        assert set(page) == {"items", "next_cursor"}
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def ids(items: list[Any]) -> list[str]:
    return [item["jobId"] for item in items]


# --- query parsing: pure ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1700000000000", 1700000000000),
        ("0", 0),
        ("2024-05-01T12:00:00Z", 1714564800000),
        ("2024-05-01T12:00:00.250+00:00", 1714564800250),
        ("2024-05-01T14:00:00+02:00", 1714564800000),
        ("2024-05-01T12:00:00", 1714564800000),  # no zone: UTC
        ("2024-05-01", 1714521600000),
        ("24h", NOW - 24 * HOUR),
        ("90d", NOW - 90 * 24 * HOUR),
        ("30m", NOW - 30 * 60_000),
        ("10s", NOW - 10_000),
        ("500ms", NOW - 500),
        ("1.5h", NOW - 90 * 60_000),
    ],
)
def test_time_filters_take_epoch_ms_iso_or_a_duration(raw: str, expected: int) -> None:
    assert parse_time("since", raw, NOW) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "yesterday", "-5", "24x", "h", "2024-13-01", "1e12", "12:00", "9" * 20, "9" * 400 + "d", "\u0663"],
)
def test_bad_times_are_refused(raw: str) -> None:
    with pytest.raises(QueryError, match="since must be epoch milliseconds, an ISO 8601 time or a duration"):
        parse_time("since", raw, NOW)


def test_jobs_query_defaults_and_lists() -> None:
    assert parse_jobs_query([], NOW) == JobFilter(limit=50)
    parsed = parse_jobs_query(
        [
            ("status", "Failed,Cancelled"),
            ("status", "Failed"),
            ("jobType", "ProcessVideoJob, CopyFileBatchJob"),
            ("accountId", "A623uY2"),
            ("since", "24h"),
            ("until", "1750000000000"),
            ("limit", "1000"),
        ],
        NOW,
    )
    assert parsed == JobFilter(
        statuses=("Failed", "Cancelled"),
        job_types=("ProcessVideoJob", "CopyFileBatchJob"),
        account_ids=("A623uY2",),
        since=NOW - 24 * HOUR,
        until=NOW,
        limit=1000,
    )
    cursor = encode_cursor("jobs", [1700000000000, "01TEST"])
    assert parse_jobs_query([("cursor", cursor)], NOW).after == (1700000000000, "01TEST")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ([("limit", "0")], "limit must be a whole number from 1 to 1000, not '0'"),
        ([("limit", "1001")], "limit must be a whole number from 1 to 1000, not '1001'"),
        ([("limit", "-1")], "limit must be a whole number from 1 to 1000"),
        ([("limit", "ten")], "limit must be a whole number from 1 to 1000"),
        ([("limit", "\u0663")], "limit must be a whole number from 1 to 1000"),
        ([("limit", "5"), ("limit", "6")], "limit is given more than once"),
        ([("status", "failed")], "status 'failed' is not one of Created, Pending, Running, Rollback, Cancelling, "),
        ([("status", "Failed,,Cancelled")], "status has an empty value"),
        ([("jobType", "")], "jobType has an empty value"),
        ([("sort", "asc")], "unknown query parameter 'sort'; this endpoint takes status, jobType, accountId, since"),
        ([("until", "soon")], "until must be epoch milliseconds, an ISO 8601 time or a duration"),
        ([("since", "1000"), ("until", "999")], r"since \(1000\) is later than until \(999\)"),
        ([("cursor", "not-a-cursor")], "cursor 'not-a-cursor' is not a cursor this endpoint issued"),
        ([("cursor", "%%%")], "is not a cursor this endpoint issued"),
        ([("cursor", encode_cursor("notifications", [5]))], "is not a cursor this endpoint issued"),
        ([("cursor", encode_cursor("jobs", ["x", 5]))], "cursor does not hold a position in the jobs list"),
        ([("accountId", ",".join(f"a{i}" for i in range(101)))], "accountId takes at most 100 values"),
    ],
)
def test_bad_jobs_queries_say_what_is_wrong(query: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_jobs_query(query, NOW)


def test_an_edited_cursor_is_refused() -> None:
    cursor = encode_cursor("jobs", [1700000000000, "01TESTAAAAAAAAAAAAAAAAAAAA"])
    for i in range(len(cursor)):
        flipped = "A" if cursor[i] != "A" else "B"
        edited = cursor[:i] + flipped + cursor[i + 1 :]
        with pytest.raises(QueryError, match="cursor"):
            parse_jobs_query([("cursor", edited)], NOW)


def test_notifications_query() -> None:
    assert parse_notifications_query([]) == NotificationFilter()
    cursor = encode_cursor("notifications", [7])
    assert parse_notifications_query([("state", "dead,retrying"), ("limit", "2"), ("cursor", cursor)]) == (
        NotificationFilter(states=("dead", "retrying"), limit=2, after=7)
    )
    with pytest.raises(QueryError, match="state 'failed' is not one of pending, retrying, sent, dead"):
        parse_notifications_query([("state", "failed")])
    with pytest.raises(QueryError, match="unknown query parameter 'status'"):
        parse_notifications_query([("status", "Failed")])
    with pytest.raises(QueryError, match="cursor does not hold a position in the notifications list"):
        parse_notifications_query([("cursor", encode_cursor("notifications", ["7"]))])


# --- query plans ----------------------------------------------------------------------------------------
def plan(conn: sqlite3.Connection, sql: str, params: Any) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


def test_history_queries_use_indexes() -> None:
    """SPEC §6's two history queries never scan a table or sort a temporary B-tree, whatever the history size."""
    conn = sqlite3.connect(":memory:")
    apply_migrations(conn)
    failed = JobFilter(statuses=("Failed",), limit=50)
    assert plan(conn, *jobs_query(failed)) == ["SEARCH jobs USING INDEX jobs_finished (status=?)"]
    assert plan(conn, *jobs_query(JobFilter(statuses=("Failed",), after=(5, "x")))) == [
        "SEARCH jobs USING INDEX jobs_finished (status=? AND (last_updated,job_id)<(?,?))"
    ]
    assert plan(conn, *jobs_query(JobFilter(after=(5, "x")))) == [
        "SEARCH jobs USING INDEX jobs_recent ((last_updated,job_id)<(?,?))"
    ]
    assert plan(conn, JOB_BY_ID, ("x",)) == ["SEARCH jobs USING PRIMARY KEY (job_id=?)"]
    assert plan(conn, EVENTS_OF_JOB, ("x",)) == ["SEARCH events USING INDEX sqlite_autoindex_events_1 (job_id=?)"]
    of_job = plan(conn, DELIVERIES_OF_JOB, ("x", "x"))  # its own deliveries, and the digests it is in
    assert "SEARCH deliveries USING INDEX deliveries_job (job_id=?)" in of_job
    assert "SEARCH digest_members USING INDEX digest_members_job (job_id=?)" in of_job
    assert not any(step.startswith("SCAN") for step in of_job)
    assert plan(conn, attempts_query([1, 2]), (1, 2))[0] == (
        "SEARCH delivery_attempts USING INDEX delivery_attempts_delivery (delivery_id=?)"
    )
    # Other filters walk the recency index newest first and stop at the limit (no sort): an index per
    # filter would be maintained on every ingested event, which the ingest bench showed is too dear.
    for sql in (jobs_query(JobFilter(account_ids=("A623uY2",)))[0], jobs_query(JobFilter(job_types=("XJob",)))[0]):
        assert plan(conn, sql, ["x", 51]) == ["SCAN jobs USING INDEX jobs_recent"]
    assert plan(conn, *jobs_query(JobFilter(statuses=("Running",)))) == ["SCAN jobs USING INDEX jobs_recent"]


# --- the endpoints --------------------------------------------------------------------------------------
async def test_jobs_have_the_spec_shape_newest_first(client: AppClient) -> None:
    assert await get(client, "/api/jobs") == (200, {"items": [], "next_cursor": None})
    assert (await post(client, SEED_EXAMPLE))[0] == 202
    assert (await post(client, CURRENT_SHAPE))[0] == 202
    status, page = await get(client, "/api/jobs")
    assert status == 200
    assert page == {
        "items": [
            {
                "jobId": "01HGB4G3R466T9EBDVK015JMXS",
                "accountId": "W142hJk",
                "jobType": "ProcessVideoJob",
                "status": "Failed",
                "created": 1706000000000,
                "lastUpdated": 1706000000572,
                "attempts": None,
                "error": {"code": "file_not_found", "message": "File not found."},
            },
            {
                "jobId": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
                "accountId": "A623uY2",
                "jobType": "DeleteFileBatchJob",
                "status": "Cancelled",
                "created": 1615680311115,
                "lastUpdated": 1615680311115,
                "attempts": 2,
                "error": {"code": "error_code", "message": "Error message."},
            },
        ],
        "next_cursor": None,
    }


async def test_job_detail_has_every_event_oldest_first_and_its_notifications(make_client: MakeClient) -> None:
    async with JsonSink() as sink:
        client = await make_client(
            targets={"hook": sink.url()}, rules=[{"name": "failures", "match": {"status": "Failed"}, "notify": "hook"}]
        )
        job_id = new_job_id()
        error = {"code": "quota_exceeded", "message": "Quota exceeded."}
        arrivals = [  # out of order; Running and Pending share a millisecond; two terminals share another
            job(jobId=job_id, status="Running", lastUpdated=1700000000200),
            job(jobId=job_id, status="Created", lastUpdated=1700000000000),
            job(jobId=job_id, status="Pending", lastUpdated=1700000000200),
            job(jobId=job_id, status="Failed", lastUpdated=1700000000900, error=error, attempts=1),
            job(jobId=job_id, status="Succeeded", lastUpdated=1700000000900, attempts=1),
        ]
        before = int(time.time() * 1000)
        for payload in arrivals:
            assert (await post(client, payload))[0] == 202
        await wait_until(lambda: len(sink.requests) == 1)
        await asyncio.sleep(0.1)

        status, detail = await get(client, f"/api/jobs/{job_id}")
        assert status == 200
        assert set(detail) == {"job", "events", "notifications"}
        assert detail["job"] == {
            "jobId": job_id,
            "accountId": "A623uY2",
            "jobType": "CopyFileBatchJob",
            "status": "Failed",  # the first terminal to arrive at 900 stays current
            "created": 1700000000000,
            "lastUpdated": 1700000000900,
            "attempts": 1,
            "error": error,
        }
        events = detail["events"]
        assert [(e["status"], e["lastUpdated"]) for e in events] == [
            ("Created", 1700000000000),
            ("Pending", 1700000000200),
            ("Running", 1700000000200),
            ("Failed", 1700000000900),
            ("Succeeded", 1700000000900),
        ]
        for event in events:
            assert set(event) == {"status", "lastUpdated", "receivedAt", "body"}
            assert before <= event["receivedAt"] <= int(time.time() * 1000)
        assert events[0]["body"] == arrivals[1]  # the object as received
        [notification] = detail["notifications"]
        assert set(notification) == NOTIFICATION_KEYS
        assert notification["jobId"] == job_id
        assert (notification["status"], notification["rule"], notification["target"]) == ("Failed", "failures", "hook")
        assert notification["state"] == "sent" and notification["nextAttemptAt"] is None
        [attempt] = notification["attempts"]
        assert attempt["ok"] is True and attempt["error"] is None and before <= attempt["at"]

        status, answer = await get(client, "/api/jobs/01UNKNOWNUNKNOWNUNKNOWN000")
        assert status == 404
        assert_envelope(answer, "not_found")
        assert "01UNKNOWNUNKNOWNUNKNOWN000" in answer["error"]["message"]


async def test_filters_take_several_values_and_every_time_format(client: AppClient) -> None:
    now = int(time.time() * 1000)
    jobs = {
        "old-failed": job(status="Failed", lastUpdated=1714564800000, jobType="ProcessVideoJob"),
        "old-cancelled": job(status="Cancelled", lastUpdated=1714564800001, accountId="W142hJk"),
        "recent-running": job(status="Running", lastUpdated=now - 2 * HOUR),
        "fresh-failed": job(status="Failed", lastUpdated=now - 60_000, accountId="W142hJk"),
    }
    for payload in jobs.values():
        assert (await post(client, payload))[0] == 202
    name = {payload["jobId"]: key for key, payload in jobs.items()}

    async def names(**params: Any) -> list[str]:
        status, page = await get(client, "/api/jobs", **params)
        assert status == 200, page
        return [name[item["jobId"]] for item in page["items"]]

    assert await names() == ["fresh-failed", "recent-running", "old-cancelled", "old-failed"]
    assert await names(status="Failed") == ["fresh-failed", "old-failed"]
    assert await names(status="Failed,Cancelled") == ["fresh-failed", "old-cancelled", "old-failed"]
    assert await names(status="Running,Created") == ["recent-running"]
    assert await names(jobType="ProcessVideoJob") == ["old-failed"]
    assert await names(jobType="ProcessVideoJob,CopyFileBatchJob") == await names()
    assert await names(accountId="W142hJk") == ["fresh-failed", "old-cancelled"]
    assert await names(accountId="W142hJk,A623uY2", status="Failed") == ["fresh-failed", "old-failed"]
    assert await names(since="1h") == ["fresh-failed"]
    assert await names(since="3h", until="30m") == ["recent-running"]
    assert await names(until="1714564800000") == ["old-failed"]  # inclusive
    assert await names(since="1714564800001", until="2024-05-02") == ["old-cancelled"]
    assert await names(since="2024-05-01T12:00:00Z", until="2024-05-01T14:00:00.001+02:00") == [
        "old-cancelled",
        "old-failed",
    ]
    assert await names(since="90d") == ["fresh-failed", "recent-running"]
    assert await names(status="Succeeded") == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit must be a whole number from 1 to 1000, not '0'"),
        ("limit=5000", "limit must be a whole number from 1 to 1000, not '5000'"),
        ("status=Done", "status 'Done' is not one of Created, Pending, Running, Rollback, Cancelling, Succeeded, "),
        ("since=tomorrow", "since must be epoch milliseconds, an ISO 8601 time or a duration back from now"),
        ("cursor=abc", "cursor 'abc' is not a cursor this endpoint issued; start again without one"),
        ("colour=red", "unknown query parameter 'colour'"),
    ],
)
async def test_bad_queries_are_400_invalid_query(client: AppClient, query: str, message: str) -> None:
    resp = await client.get(f"/api/jobs?{query}")
    assert resp.status == 400
    answer = await resp.json()
    assert_envelope(answer, "invalid_query")
    assert answer["error"]["message"].startswith(message)


async def test_unknown_routes_and_methods_under_api(client: AppClient) -> None:
    resp = await client.post("/api/jobs")
    assert resp.status == 405 and resp.headers["Allow"] == "GET"
    resp = await client.get("/api/notifications/1/redeliver")
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    resp = await client.get("/api/nothing-here")
    assert resp.status == 404
    assert_envelope(await resp.json(), "not_found")


async def seed(database_url: str, rows: list[EventRow]) -> None:
    """Write history with the store's own writer (fast: group commits), before the app opens the store."""
    store = open_store(database_url)
    await store.open()
    try:
        await asyncio.gather(*(store.ingest(row) for row in rows))
    finally:
        await store.close()


async def test_pagination_walks_10000_jobs_without_gaps_or_repeats_while_jobs_arrive(
    make_client: MakeClient, database_url: str
) -> None:
    base = 1_700_000_000_000
    rows = []
    for i in range(10_000):
        payload = job(lastUpdated=base + i // 3, status="Succeeded" if i % 2 else "Failed")  # ties on lastUpdated
        fields = (payload[key] for key in ("jobId", "lastUpdated", "status", "accountId", "jobType", "created"))
        rows.append(EventRow(*fields, 0, None, None, body(payload).decode()))
    await seed(database_url, rows)
    client = await make_client()
    seeded = {row.job_id for row in rows}

    seen: list[Any] = []
    cursor = None
    pages = 0
    while True:
        status, page = await get(client, "/api/jobs", limit=777, **({"cursor": cursor} if cursor else {}))
        assert status == 200
        assert len(page["items"]) == 777 or page["next_cursor"] is None
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        pages += 1
        if pages in (3, 7):  # new jobs arrive mid-walk; they sort before the walk's position
            for _ in range(25):
                assert (await post(client, job(lastUpdated=base + 20_000 + pages)))[0] == 202
        if cursor is None:
            break
    assert pages == 13
    assert len(seen) == len(set(ids(seen))) == 10_000
    assert set(ids(seen)) == seeded
    keys = [(item["lastUpdated"], item["jobId"]) for item in seen]
    assert keys == sorted(keys, reverse=True)

    failed = await walk(client, "/api/jobs", status="Failed", limit=1000)
    assert len(failed) == len(set(ids(failed))) == 5_000
    assert all(item["status"] == "Failed" for item in failed)
    assert len(await walk(client, "/api/jobs", limit=1000)) == 10_050


async def test_notifications_by_state_and_redeliver_of_a_dead_one(make_client: MakeClient) -> None:
    async with JsonSink(status=500) as sink:
        client = await make_client(
            targets={"hook": sink.url()},
            delivery={"backoff_initial": "50ms", "backoff_factor": 1, "backoff_max": "50ms", "max_attempts": 2},
            rules=[{"name": "failures", "match": {"status": "Failed"}, "notify": "hook"}],
        )
        failed_jobs = [job(status="Failed", error={"code": "boom", "message": "Boom."}) for _ in range(3)]
        for payload in failed_jobs:
            await post(client, payload)

        async def by_state(state: str) -> list[Any]:
            return await walk(client, "/api/notifications", state=state, limit=1)

        async def all_dead() -> bool:
            return len(await by_state("dead")) == 3

        await wait_until(all_dead, within=10, every=0.05)
        dead = await by_state("dead")
        assert [n["id"] for n in dead] == sorted((n["id"] for n in dead), reverse=True)  # newest first
        assert [n["jobId"] for n in dead] == [p["jobId"] for p in reversed(failed_jobs)]
        for notification in dead:
            assert set(notification) == NOTIFICATION_KEYS
            assert notification["nextAttemptAt"] is None
            assert [a["ok"] for a in notification["attempts"]] == [False, False]
            assert "500" in notification["attempts"][0]["error"]
        assert await by_state("sent") == [] and await by_state("pending,retrying") == []
        assert len(await walk(client, "/api/notifications")) == 3

        sink.status = 200
        target = dead[-1]
        before = int(time.time() * 1000)
        resp = await client.post(f"/api/notifications/{target['id']}/redeliver")
        assert resp.status == 202
        answer = await resp.json()
        assert answer == {**target, "state": "pending", "nextAttemptAt": answer["nextAttemptAt"]}
        assert before <= answer["nextAttemptAt"] <= int(time.time() * 1000)

        await wait_until(lambda: len(sink.requests) == 7)

        async def only_target_sent() -> bool:
            return [n["id"] for n in await by_state("sent")] == [target["id"]]

        await wait_until(only_target_sent, every=0.05)
        [sent] = await by_state("sent")
        assert sent["nextAttemptAt"] is None
        assert [a["ok"] for a in sent["attempts"]] == [False, False, True]  # history kept
        assert len(sink.requests) == 7  # 3 x 2 failed, then exactly one redelivery
        status, detail = await get(client, f"/api/jobs/{target['jobId']}")
        assert status == 200 and detail["notifications"] == [sent]

        for path in ("/api/notifications/999999/redeliver", "/api/notifications/abc/redeliver"):
            resp = await client.post(path)
            assert resp.status == 404
            assert_envelope(await resp.json(), "not_found")
        resp = await client.get("/api/notifications?state=gone")
        assert resp.status == 400
        assert_envelope(await resp.json(), "invalid_query")


async def test_the_admin_token_guards_the_history_api(make_client: MakeClient) -> None:
    client = await make_client(admin={"token": TOKEN})
    await post(client, job())
    for method, path in (
        ("GET", "/api/jobs"),
        ("GET", "/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        ("GET", "/api/notifications"),
        ("POST", "/api/notifications/1/redeliver"),
    ):
        resp = await client.request(method, path)
        assert resp.status == 401, path
        assert_envelope(await resp.json(), "unauthorized")
        resp = await client.request(method, path, headers={"Authorization": "Bearer wrong"})
        assert resp.status == 401, path
    resp = await client.get("/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    assert len((await resp.json())["items"]) == 1


def test_naive_and_zoned_times_agree() -> None:
    moment = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_time("until", moment.isoformat(), NOW) == parse_time("until", "2024-05-01T12:00:00", NOW)
