"""Flood control (issue #9): digests, per-target rate limits, the circuit breaker. Real app, real SQLite, real
apprise to a real local sink; the rate-limit test runs the worker on a fast clock instead of waiting minutes."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from notifiers.breaker import CircuitBreaker, CircuitState
from notifiers.digest import digest_body, digest_title, render_digest
from receiver.durations import now_ms
from receiver.keys import STORE, WORKER
from receiver.settings import ConfigError, parse_settings
from receiver.store import deliveries
from receiver.store.deliveries import Grouping, Member, NewDelivery
from receiver.store.schema import MIGRATIONS
from receiver.store.sqlite import apply_migrations
from tests import serve
from tests.conftest import AppClient, MakeClient
from tests.jobs import job
from tests.peers import JsonSink, Recorded, wait_until
from tests.test_api import walk
from tests.test_cli import jobhook
from tests.test_intake import post

pytestmark = pytest.mark.stores("sqlite", "postgres")

FAST_RETRY = {"backoff_initial": "50ms", "backoff_factor": 1, "backoff_max": "100ms", "timeout": "5s"}
COUNT = re.compile(r"^(\d+) ")


def failed(code: str = "quota_exceeded", **overrides: Any) -> dict[str, Any]:
    return job(status="Failed", error={"code": code, "message": "It broke."}, **overrides)


async def post_all(client: AppClient, payloads: list[dict[str, Any]], concurrency: int = 32) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(payload: dict[str, Any]) -> None:
        async with gate:
            assert (await post(client, payload))[0] == 202

    await asyncio.gather(*(one(p) for p in payloads))


def counted(request: Recorded) -> int:
    """The number a digest's title starts with (a single message counts 1)."""
    match = COUNT.match(request.json()["title"])
    return int(match.group(1)) if match else 1


def listed_ids(request: Recorded) -> set[str]:
    return set(re.findall(r"`(01TEST\d{20})`", request.json()["message"]))


# --- pure parts -----------------------------------------------------------------------------------------
def test_breaker_opens_after_threshold_probes_once_and_closes_on_success() -> None:
    breaker = CircuitBreaker(threshold=3, cooloff_ms=1000)
    assert breaker.cap(0) is None
    for at in (1, 2):
        breaker.record(True, at)
    assert breaker.cap(3) is None  # two failures: still closed
    breaker.record(False, 3)  # a success resets the count
    for at in (4, 5, 6):
        breaker.record(True, at)
    assert (breaker.state, breaker.cap(7), breaker.trips) == (CircuitState.OPEN, 0, 1)
    assert breaker.status(7).open_until == 1006
    assert breaker.cap(1005) == 0
    assert breaker.cap(1006) == 1  # cool-off over: half-open, one probe
    breaker.claimed()
    assert breaker.cap(1007) == 0  # the probe is out: nothing else
    breaker.record(True, 1100)  # the probe failed: open again at once, for a whole cool-off
    assert (breaker.state, breaker.cap(2099), breaker.cap(2100), breaker.trips) == (CircuitState.OPEN, 0, 1, 2)
    breaker.claimed()
    breaker.record(False, 2200)
    assert (breaker.state, breaker.cap(2201), breaker.failures) == (CircuitState.CLOSED, None, 0)


def test_breaker_with_threshold_zero_never_opens() -> None:
    breaker = CircuitBreaker(threshold=0, cooloff_ms=1000)
    for at in range(50):
        breaker.record(True, at)
    assert breaker.cap(100) is None and breaker.state == CircuitState.CLOSED


def member(n: int, code: str | None = "boom", status: str = "Failed", at: int = 0, **fields: str) -> Member:
    values = {"job_type": "DeleteFolderBatchJob", "account_id": "A623uY2", **fields}
    return Member(f"01TEST{n:020d}", status, values["job_type"], values["account_id"], code, at)


def test_digest_message_counts_lists_and_names_what_members_share() -> None:
    members = [member(i, "quota" if i % 3 else None, at=i * 1000) for i in range(37)]
    title = digest_title(members)
    assert title == "37 DeleteFolderBatchJob jobs failed in account A623uY2 within 36 s"
    body = digest_body(members, "failed-jobs", "jobType=DeleteFolderBatchJob")
    assert "- **Errors:** `quota` × 24, `(no error)` × 13" in body
    assert "**Jobs** (first 20 of 37):" in body and "- … and 17 more" in body
    assert re.findall(r"`(01TEST\d{20})`", body) == [m.job_id for m in members[:20]]
    assert "- **Group:** jobType=DeleteFolderBatchJob" in body

    mixed = [member(1, status="Failed"), member(2, status="Cancelled", job_type="CopyFileBatchJob")]
    message = render_digest(mixed, "r", None)
    assert message.title == "2 jobs finished in account A623uY2"
    assert "- **Statuses:** Failed × 1, Cancelled × 1" in message.body and message.notify_type == "failure"
    assert render_digest([member(1, None, status="Succeeded")], "r", None).title == (
        "1 DeleteFolderBatchJob job succeeded in account A623uY2"
    )


def test_flood_control_settings_are_checked_with_key_paths() -> None:
    text = (
        "auth: {mode: none}\n"
        "targets:\n"
        "  ops-slack: {urls: 'json://127.0.0.1:9/x', rate_limit: 0}\n"
        "rules:\n"
        "  - {notify: ops-slack, group_by: [jobType, jobType]}\n"
        "  - {notify: ops-slack, group_by: [color], group_interval: 0s}\n"
        "delivery: {circuit_threshold: -1, circuit_cooloff: 0}\n"
    )
    with pytest.raises(ConfigError) as error:
        parse_settings(text, {})
    fields = {problem["field"] for problem in error.value.problems}
    assert {
        "targets.ops-slack.rate_limit",
        "rules[0].group_by",
        "rules[1].group_by[0]",
        "rules[1].group_interval",
        "delivery.circuit_threshold",
        "delivery.circuit_cooloff",
    } <= fields, fields


def test_migration_keeps_existing_deliveries(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    apply_migrations(conn, MIGRATIONS[:4])
    conn.execute(
        "INSERT INTO events (id, job_id, last_updated, status, account_id, job_type, created, body,"
        " received_at) VALUES (1, 'J', 1, 'Failed', 'A623uY2', 'XJob', 1, '{}', 1)"
    )
    conn.execute("INSERT INTO outbox (id, event_id, job_id, status, created_at) VALUES (1, 1, 'J', 'Failed', 1)")
    conn.execute(
        "INSERT INTO deliveries (id, outbox_id, job_id, status, rule, target, title, body, notify_type, state,"
        " attempts, created_at, sent_at) VALUES (7, 1, 'J', 'Failed', 'r', 't', 'T', 'B', 'failure', 'sent', 1, 1, 2)"
    )
    assert apply_migrations(conn) == ["0005_flood_control"]
    row = conn.execute(
        "SELECT id, job_id, title, state, attempts, sent_at, group_key, sealed FROM deliveries"
    ).fetchall()
    assert row == [(7, "J", "T", "sent", 1, 2, None, 1)]


# --- end to end -----------------------------------------------------------------------------------------
async def test_a_burst_of_300_failed_jobs_arrives_as_a_few_digests_covering_each_once(
    make_client: MakeClient, db: Any
) -> None:
    async with JsonSink() as sink:
        rule = {
            "name": "failed",
            "match": {"status": "Failed"},
            "notify": "hook",
            "group_by": ["jobType", "accountId"],
            "group_wait": "2s",
            "group_interval": "10s",
        }
        client = await make_client(targets={"hook": sink.url()}, rules=[rule])
        kinds = ["DeleteFolderBatchJob", "CopyFolderBatchJob"]
        payloads = [failed(("quota", "not_found")[i % 2], jobType=kinds[i % 2]) for i in range(300)]
        await post_all(client, payloads)

        await wait_until(lambda: sum(counted(r) for r in sink.requests) >= 300, within=60)
        await asyncio.sleep(0.3)
        assert 2 <= len(sink.requests) <= 10  # a handful: at least one per group
        assert sum(counted(r) for r in sink.requests) == 300
        sent = await walk(client, "/api/notifications", limit=1000)
        assert all(n["jobId"] is None and n["state"] == "sent" for n in sent)
        members = [job_id for n in sent for job_id in n["jobIds"]]
        assert sorted(members) == sorted(p["jobId"] for p in payloads)  # every transition in exactly one digest
        for request in sink.requests:
            message = request.json()
            group = "DeleteFolderBatchJob" if "DeleteFolderBatchJob" in message["title"] else "CopyFolderBatchJob"
            assert message["title"].startswith(f"{counted(request)} {group} jobs failed in account A623uY2")
            assert message["type"] == "failure"
            [digest] = [n for n in sent if listed_ids(request) <= set(n["jobIds"])]
            assert counted(request) == len(digest["jobIds"])
            assert len(listed_ids(request)) == min(20, counted(request))
            assert ("`quota` ×" in message["message"]) == (group == kinds[0])

        # A member job's history shows the digest it went out in.
        detail = await (await client.get(f"/api/jobs/{payloads[0]['jobId']}")).json()
        [note] = detail["notifications"]
        assert note["jobId"] is None and payloads[0]["jobId"] in note["jobIds"]
        assert db("SELECT count(*), count(DISTINCT outbox_id) FROM digest_members") == [(300, 300)]


async def test_transitions_after_a_digest_wait_for_the_next_interval(make_client: MakeClient, db: Any) -> None:
    async with JsonSink() as sink:
        rule = {"notify": "hook", "group_by": ["status"], "group_wait": "0s", "group_interval": "2s"}
        client = await make_client(targets={"hook": sink.url()}, rules=[rule])
        first = failed()
        await post(client, first)
        await wait_until(lambda: len(sink.requests) == 1)
        later = [failed() for _ in range(3)]
        await post_all(client, later)
        await wait_until(lambda: len(sink.requests) == 2, within=20)
        assert [counted(r) for r in sink.requests] == [1, 3]
        windows = db("SELECT window_end FROM deliveries ORDER BY id")
        assert windows[1][0] - windows[0][0] == 2000  # the next digest: group_interval after the first


def fast_clock(speed: float) -> tuple[Callable[[], int], Callable[[float], int]]:
    """A clock running `speed` times faster than real time, and the converter of a monotonic instant onto it."""
    base, start = now_ms(), time.monotonic()

    def at(instant: float) -> int:
        return base + int((instant - start) * speed * 1000)

    return (lambda: at(time.monotonic())), at


async def test_rate_limited_target_never_exceeds_its_limit_and_merges_what_piles_up(make_client: MakeClient) -> None:
    speed, limit = 30.0, 3  # a minute passes in 2 s
    clock, on_clock = fast_clock(speed)
    async with JsonSink() as sink:
        client = await make_client(
            targets={"hook": {"urls": sink.url(), "rate_limit": limit}},
            rules=[{"name": "failed", "match": {"status": "Failed"}, "notify": "hook"}],
            delivery={**FAST_RETRY, "lease": "24h"},
            clock=clock,
        )
        payloads = [failed() for _ in range(30)]
        for payload in payloads:  # one every 3 s of the worker's clock, over a minute and a half
            await post(client, payload)
            await asyncio.sleep(0.1)

        await wait_until(lambda: sum(counted(r) for r in sink.requests) >= 30, within=60)
        await asyncio.sleep(0.3)
        arrivals = sorted(on_clock(r.at) for r in sink.requests)
        for i, start in enumerate(arrivals):
            in_window = [t for t in arrivals[i:] if t < start + 60_000]
            assert len(in_window) <= limit, (i, arrivals)
        assert sum(counted(r) for r in sink.requests) == 30
        sent = await walk(client, "/api/notifications", limit=1000)
        covered = [n["jobId"] for n in sent if n["jobId"]] + [
            j for n in sent if n["jobId"] is None for j in n["jobIds"]
        ]
        assert sorted(covered) == sorted(p["jobId"] for p in payloads)  # held, never dropped, none twice
        assert any(n["jobId"] is None for n in sent)  # what piled up went out merged
        assert all(n["state"] == "sent" for n in sent)


async def test_failing_target_trips_its_breaker_and_recovers_after_the_cooloff(
    make_client: MakeClient, db: Any
) -> None:
    async with JsonSink(status=500) as sink:
        client = await make_client(
            targets={"hook": sink.url()},
            rules=[{"match": {"status": "Failed"}, "notify": "hook"}],
            delivery={**FAST_RETRY, "concurrency": 1, "circuit_threshold": 3, "circuit_cooloff": "3s"},
        )
        worker = client.app[WORKER]
        payloads = [failed() for _ in range(20)]
        await post_all(client, payloads)
        await wait_until(lambda: worker.circuits()["hook"].state == 1, within=20)
        metrics = await (await client.get("/metrics")).text()
        assert 'jobhook_target_circuit_state{target="hook"} 1.0' in metrics
        assert 'jobhook_target_circuit_trips_total{target="hook"} 1.0' in metrics
        await asyncio.sleep(0.5)
        assert len(sink.requests) == 3  # open: nothing attempted, though 20 deliveries are due
        assert db("SELECT count(*) FROM delivery_attempts") == [(3,)]

        sink.status = 200
        await wait_until(lambda: db("SELECT count(*) FROM deliveries WHERE state = 'sent'") == [(20,)], within=30)
        assert worker.circuits()["hook"].state == 0
        assert db("SELECT count(*) FROM delivery_attempts WHERE ok = 0") == [(3,)]  # the probe went through
        assert len(sink.requests) == 23
        metrics = await (await client.get("/metrics")).text()
        assert 'jobhook_target_circuit_state{target="hook"} 0.0' in metrics


async def test_retention_drops_pruned_jobs_from_digests(make_client: MakeClient, db: Any) -> None:
    async with JsonSink() as sink:
        rule = {"notify": "hook", "group_by": ["status"], "group_wait": "0s", "group_interval": "1ms"}
        client = await make_client(targets={"hook": sink.url()}, rules=[rule])
        old = [failed(lastUpdated=1_600_000_000_000), failed(lastUpdated=1_600_000_000_000)]
        await post_all(client, old)
        # One digest, or two when a claim sealed the first before the second transition was expanded (two
        # ingest batches: likelier with PostgreSQL's concurrent flushers; a 1 ms group_interval sends the second
        # at once): either way, all sent.
        await wait_until(lambda: db("SELECT count(*) FROM digest_members") == [(2,)])
        await wait_until(
            lambda: db("SELECT count(*) > 0, count(*) FILTER (WHERE state != 'sent') FROM deliveries") == [(1, 0)],
            within=20,
        )
        pruned = await client.app[STORE].prune_history(1_700_000_000_000)
        assert pruned.jobs == 2
        assert db("SELECT count(*) FROM digest_members") == [(0,)]
        assert db("SELECT count(*) FROM deliveries") == [(0,)]
        assert db("SELECT count(*) FROM delivery_attempts") == [(0,)]


def test_test_rule_shows_grouping_and_rate_limit(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "targets: {ops: {urls: 'json://127.0.0.1:9/x', rate_limit: 10}}\n"
        "rules:\n"
        "  - {name: bursts, match: {status: Failed}, notify: ops, group_by: [jobType, error_code], group_wait: 45s}\n"
        "  - {name: plain, notify: console}\n"
    )
    payload = tmp_path / "job.json"
    payload.write_text(json.dumps(failed("quota", jobType="DeleteFolderBatchJob")))
    result = jobhook("test-rule", "--config", str(config), str(payload))
    assert result.returncode == 0, result.stderr
    assert (
        "grouped by jobType, error_code: group 'jobType=DeleteFolderBatchJob error_code=quota'; a digest 45 s"
        " after the group's first transition (group_wait), then at most one every 5 min (group_interval)"
    ) in result.stdout
    assert "target ops is limited to 10 messages a minute" in result.stdout
    assert "rule plain -> target console (failure)\n  not grouped: one message per transition" in result.stdout


# --- a real process restarted mid-window ----------------------------------------------------------------
async def test_restart_in_the_middle_of_a_group_window_loses_nothing(
    tmp_path: Path, database_url: str, db: Any
) -> None:
    async with JsonSink() as sink:
        port = serve.free_port()
        config = serve.write_config(
            tmp_path,
            port,
            (
                f"targets: {{hook: '{sink.url()}'}}\n"
                "rules: [{name: failed, match: {status: Failed}, notify: hook, group_by: [accountId],"
                " group_wait: 4s, group_interval: 30s}]\n"
            ),
            database_url=database_url,
        )
        log = tmp_path / "serve.log"
        proc = serve.start(config, log)
        try:
            await asyncio.to_thread(serve.wait_healthy, port, proc)
            payloads = [failed() for _ in range(12)]
            client_url = f"http://127.0.0.1:{port}/webhooks/jobs"
            async with aiohttp.ClientSession() as session:
                for payload in payloads:
                    async with session.post(client_url, json=payload) as resp:
                        assert resp.status == 202

            await wait_until(lambda: db("SELECT count(*) FROM digest_members") == [(12,)], within=20)
            assert db("SELECT sealed, state FROM deliveries") == [(0, "pending")]
            proc.send_signal(signal.SIGKILL)  # the window is open: its digest is due in a few seconds
            proc.wait()
            assert sink.requests == []

            proc = serve.start(config, log)
            await asyncio.to_thread(serve.wait_healthy, port, proc)
            await wait_until(lambda: len(sink.requests) >= 1, within=30)
            await asyncio.sleep(0.3)
            [request] = sink.requests
            assert counted(request) == 12
            assert listed_ids(request) == {p["jobId"] for p in payloads}
        finally:
            serve.stop(proc)


# --- the store's claim, step by step on a fixed clock -------------------------------------------------------
def add_transition(conn: sqlite3.Connection, n: int, now: int) -> NewDelivery:
    """Job `J{n}` failed: its event and outbox row, and the single delivery to target `t` a rule would plan."""
    conn.execute(
        "INSERT INTO events (id, job_id, last_updated, status, account_id, job_type, created, error_code, body,"
        " received_at) VALUES (?, ?, 1, 'Failed', 'A623uY2', 'XJob', 1, 'boom', '{}', 1)",
        (n, f"J{n}"),
    )
    conn.execute(
        "INSERT INTO outbox (id, event_id, job_id, status, created_at) VALUES (?, ?, ?, 'Failed', ?)",
        (n, n, f"J{n}", now),
    )
    return NewDelivery(n, f"J{n}", "Failed", "r", "t", "T", "B", "failure")


def expand_new(conn: sqlite3.Connection, numbers: Any, now: int) -> int:
    planned = [add_transition(conn, n, now) for n in numbers]
    return deliveries.expand(conn, [d.outbox_id for d in planned], planned, now)


def seeded(tmp_path: Path, count: int) -> sqlite3.Connection:
    """A migrated database with `count` Failed transitions expanded into single deliveries to target `t`."""
    conn = sqlite3.connect(tmp_path / "claims.db", isolation_level=None)
    apply_migrations(conn)
    expand_new(conn, range(1, count + 1), 0)
    return conn


def test_claim_within_rate_limit_merges_what_is_held(tmp_path: Path) -> None:
    conn = seeded(tmp_path, 5)
    now = 1_000_000
    [digest] = deliveries.claim_due(conn, now, 60_000, 10, {}, {"t": 2})  # 5 due, 2 allowed: merged into one
    assert digest.members is not None and [m.job_id for m in digest.members] == ["J1", "J2", "J3", "J4", "J5"]
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone() == (1,)
    deliveries.record(conn, [deliveries.Outcome(digest.id, True, None, None)], now)

    more = expand_new(conn, range(6, 9), now)
    [first] = deliveries.claim_due(conn, now + 1, 60_000, 10, {}, {"t": 2})  # 3 due, 1 left in the minute
    assert first.members is not None and len(first.members) == 3
    deliveries.record(conn, [deliveries.Outcome(first.id, True, None, None)], now + 1)
    expand_new(conn, [9], now + 2)
    assert deliveries.claim_due(conn, now + 59_999, 60_000, 10, {}, {"t": 2}) == []  # 2 sent in the last minute
    [single] = deliveries.claim_due(conn, now + 60_000, 60_000, 10, {}, {"t": 2})  # the first left the window
    assert (single.members, more) == (None, 3)


def test_open_circuit_holds_its_target_back_and_a_probe_takes_one(tmp_path: Path) -> None:
    conn = seeded(tmp_path, 4)
    assert deliveries.claim_due(conn, 10, 60_000, 10, {"t": 0}) == []
    [probe] = deliveries.claim_due(conn, 10, 60_000, 10, {"t": 1})
    assert probe.id == 1 and conn.execute("SELECT sum(attempts) FROM deliveries").fetchone() == (0,)
    assert [d.id for d in deliveries.claim_due(conn, 10, 60_000, 10)] == [2, 3, 4]


def test_a_group_seals_when_claimed_and_the_next_window_follows_the_interval(tmp_path: Path) -> None:
    conn = seeded(tmp_path, 0)
    group = Grouping("status=Failed", wait_ms=1000, interval_ms=5000)

    def join(n: int, now: int) -> int:
        return deliveries.join_group(conn, add_transition(conn, n, now), group, now)

    first = join(1, 0)
    assert join(2, 500) == first
    assert deliveries.claim_due(conn, 999, 60_000, 10) == []  # group_wait not over
    [digest] = deliveries.claim_due(conn, 1000, 60_000, 10)
    assert digest.id == first and digest.members is not None and len(digest.members) == 2
    second = join(3, 1200)  # sealed: the next digest, due group_interval after the first window
    assert second != first
    assert conn.execute("SELECT next_attempt_at FROM deliveries WHERE id = ?", (second,)).fetchone() == (6000,)
    third = join(4, 30_000)  # that window is still open: it joins
    assert third == second
    deliveries.claim_due(conn, 30_000, 60_000, 10)
    fresh = join(5, 40_000)  # quiet for longer than group_interval since 6000: starts afresh with group_wait
    assert conn.execute("SELECT next_attempt_at FROM deliveries WHERE id = ?", (fresh,)).fetchone() == (41_000,)
