"""The Bytescale poller end to end: the real app polling a local fake of the Jobs API, notifying a real sink."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from receiver.keys import POLLERS
from receiver.poller import BytescalePoller, backoff_delay, parse_retry_after
from receiver.settings import Settings
from receiver.store import TrackedJob
from receiver.validation import field_problems
from tests.bytescale_fake import ACCOUNT, BytescaleFake
from tests.conftest import MakeClient, open_store
from tests.peers import JsonSink, wait_until
from tests.test_cli import jobhook
from tests.test_delivery import settled

pytestmark = pytest.mark.stores("sqlite", "postgres")

OTHER_ACCOUNT = "W142hJk"


def notify(sink: JsonSink) -> dict[str, Any]:
    """Every terminal Failed/Succeeded transition to the sink."""
    return {
        "targets": {"hook": sink.url()},
        "rules": [{"name": "done", "match": {"status": ["Failed", "Succeeded"]}, "notify": "hook"}],
    }


def notified(sink: JsonSink) -> list[str]:
    """The titles the sink received."""
    return [request.json()["title"] for request in sink.requests]


def times_notified(sink: JsonSink, job_id: str) -> int:
    return sum(job_id in title for title in notified(sink))


def open_polls(db: Any, job_id: str) -> list[tuple[Any, ...]]:
    return db("SELECT last_seen_status, done_at FROM poll_jobs WHERE job_id = ?", job_id)


def poller_of(client: Any, account: str = ACCOUNT) -> BytescalePoller:
    poller: BytescalePoller = client.app[POLLERS][account]
    return poller


# --- pure parts --------------------------------------------------------------------------------------


def test_retry_after_in_seconds_and_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0  # in the past: go now
    assert parse_retry_after("99999999", now) == 3600.0  # capped
    for unusable in (None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2023 99:99:99 GMT"):
        assert parse_retry_after(unusable, now) is None


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    assert backoff_delay(1, 2.0, 300.0, lambda: 1.0) == 2.0
    assert backoff_delay(3, 2.0, 300.0, lambda: 1.0) == 8.0
    assert backoff_delay(3, 2.0, 300.0, lambda: 0.0) == 4.0  # jitter keeps at least half
    assert backoff_delay(50, 2.0, 300.0, lambda: 1.0) == 300.0
    assert backoff_delay(10_000, 2.0, 300.0, lambda: 1.0) == 300.0


# --- end to end ---------------------------------------------------------------------------------------


async def test_jobs_are_discovered_and_each_terminal_transition_is_notified_once(
    make_client: MakeClient, db: Any
) -> None:
    async with BytescaleFake() as fake, JsonSink() as sink:
        jobs = [
            fake.start_job("Failed", shape="2023"),
            fake.start_job("Succeeded", shape="current"),
            fake.start_job("Failed", job_type="ProcessVideoJob", shape="current"),
            fake.start_job("Succeeded", job_type="DeleteFolderBatchJob", shape="2023"),
            fake.start_job("Succeeded", job_type="AntivirusJob"),  # a type not configured: never asked for
        ]
        client = await make_client(sources={"bytescale": [fake.source()]}, **notify(sink))
        await settled(db, 4)
        await asyncio.sleep(0.4)  # several more rounds see the same terminal objects again
        for job in jobs[:4]:
            assert times_notified(sink, job.job_id) == 1
            assert open_polls(db, job.job_id)[0][0] == job.outcome
            assert open_polls(db, job.job_id)[0][1] is not None  # done: no longer fetched
        assert times_notified(sink, jobs[4].job_id) == 0
        assert len(sink.requests) == 4
        failed = next(r.json() for r in sink.requests if jobs[2].job_id in r.json()["title"])
        assert "file_not_found" in failed["message"]
        # The stored bodies are the job objects as the API gave them, both generations.
        bodies = dict(db("SELECT job_id, body FROM events e JOIN jobs j USING (job_id) WHERE e.id = j.event_id"))
        assert '"jobUrl"' in bodies[jobs[1].job_id] and '"attempts"' in bodies[jobs[0].job_id]
        queries = {tuple(sorted(seen.query)) for seen in fake.seen if seen.path.endswith("/jobs")}
        assert queries == {
            (("jobType", "CopyFileBatchJob"), ("jobType", "DeleteFolderBatchJob"), ("jobType", "ProcessVideoJob"))
        }
        assert poller_of(client).stopped_reason is None


async def test_restart_resumes_unfinished_jobs_without_renotifying(make_client: MakeClient, db: Any) -> None:
    async with BytescaleFake() as fake, JsonSink() as sink:
        # Slow enough to still be in flight at the shutdown on a loaded machine (terminal after 3 steps).
        slow_a = fake.start_job("Failed", step=1.5)
        slow_b = fake.start_job("Succeeded", step=1.5)
        fast = fake.start_job("Failed", step=0.01)
        sections = {"sources": {"bytescale": fake.source()}, **notify(sink)}
        first = await make_client(**sections)
        await settled(db, 1)
        assert times_notified(sink, fast.job_id) == 1
        await wait_until(lambda: all(open_polls(db, j.job_id) for j in (slow_a, slow_b)))
        assert slow_a.status != "Failed"  # still in flight at the shutdown
        await first.close()

        # Eight newer jobs: slow_a is no longer among the 10 most recent, so only the poll state knows it.
        newer = [fake.start_job("Succeeded", step=60) for _ in range(8)]
        restarted_at = time.monotonic()
        second = await make_client(**sections)
        await settled(db, 3)
        await asyncio.sleep(0.3)
        assert {job.job_id: times_notified(sink, job.job_id) for job in (slow_a, slow_b, fast)} == {
            slow_a.job_id: 1,
            slow_b.job_id: 1,
            fast.job_id: 1,
        }
        assert len(sink.requests) == 3
        resumed = [seen for seen in fake.requests_between(restarted_at, time.monotonic()) if slow_a.job_id in seen.path]
        assert resumed, "the job that left the recent list was followed through GetJob"
        assert all(open_polls(db, job.job_id)[0][1] is None for job in newer)
        assert poller_of(second).polls > 0


@pytest.mark.stores("postgres")
async def test_of_two_replicas_one_polls_and_the_other_takes_over_when_it_stops(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobhook.poller")
    async with BytescaleFake() as fake:
        fake.start_job("Succeeded", step=60)
        first = await make_client(sources={"bytescale": fake.source(interval="20ms")})
        await wait_until(lambda: poller_of(first).polls >= 3)
        second = await make_client(sources={"bytescale": fake.source(interval="20ms")})
        await wait_until(lambda: poller_of(second).leading is False)
        polls = poller_of(first).polls
        await asyncio.sleep(0.3)  # more of its rounds
        assert poller_of(second).requests == 0  # Bytescale sees one poller
        assert poller_of(first).polls > polls and poller_of(first).leading
        leading = f'jobhook_poller_leading{{account="{ACCOUNT}"}}'
        assert f"{leading} 1.0" in await (await first.get("/metrics")).text()
        assert f"{leading} 0.0" in await (await second.get("/metrics")).text()

        await first.close()  # its store closes the connection holding the account's lock
        await wait_until(lambda: poller_of(second).polls >= 3, within=10)
        assert poller_of(second).leading
    said = [r.getMessage() for r in caplog.records if r.name == "jobhook.poller"]
    assert any("another replica polls it; this one stands by" in line for line in said)
    assert any("this replica polls it now" in line for line in said)


async def test_429_pauses_the_account_for_retry_after(make_client: MakeClient, db: Any) -> None:
    async with BytescaleFake() as fake:
        fake.start_job("Succeeded", step=60)
        client = await make_client(sources={"bytescale": fake.source(interval="20ms")})
        poller = poller_of(client)
        await wait_until(lambda: poller.polls >= 3)

        for form in ("seconds", "http-date"):
            # An HTTP-date has whole seconds: 2 s ahead is a pause of 1 to 2 s.
            retry_after = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
            paused_until = poller.throttled_until
            fake.fail_next(429, retry_after=retry_after)
            # The fake records the 429 before its answer reaches the poller: wait for both.
            await wait_until(
                lambda paused_until=paused_until: (
                    any(seen.status == 429 for seen in fake.seen) and poller.throttled_until != paused_until
                )
            )
            [throttled] = [seen for seen in fake.seen if seen.status == 429]
            assert poller.throttled_until is not None and poller.throttled_until > throttled.at + 0.5
            await asyncio.sleep(max(throttled.at + 0.9 - time.monotonic(), 0))
            during = fake.requests_between(throttled.at + 0.001, throttled.at + 0.9)
            assert len(during) <= 1  # at most one already on its way when the 429 came back
            polls = poller.polls
            await wait_until(lambda polls=polls: poller.polls > polls, within=3.0)  # then it goes on
            fake.seen.clear()


async def test_5xx_backs_off_and_recovers(make_client: MakeClient, db: Any) -> None:
    async with BytescaleFake() as fake, JsonSink() as sink:
        fake.fail_next(500, times=3)
        job = fake.start_job("Failed", step=0.02)
        client = await make_client(sources={"bytescale": fake.source(interval="50ms")}, **notify(sink))
        poller = poller_of(client)
        await settled(db, 1)
        assert times_notified(sink, job.job_id) == 1
        failures = [seen.at for seen in fake.seen if seen.status == 500]
        assert len(failures) == 3
        # After failure n the wait is 50 ms * 2**(n-1), jittered into [50%, 100%].
        assert failures[1] - failures[0] >= 0.02
        assert failures[2] - failures[1] >= 0.045
        assert poller.failures == 0


async def test_bad_key_stops_that_account_with_one_log_line_without_the_key(
    make_client: MakeClient, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with BytescaleFake() as fake, BytescaleFake(account_id=OTHER_ACCOUNT) as good:
        fake.start_job("Failed", step=0.01)
        good.start_job("Failed", step=0.01)
        wrong_key = "secret_WrongKey55aa66bb77cc"
        client = await make_client(
            sources={"bytescale": [fake.source(api_key=wrong_key, interval="20ms"), good.source(interval="20ms")]}
        )
        bad = poller_of(client)
        await wait_until(lambda: bad.stopped_reason is not None)
        await wait_until(lambda: poller_of(client, OTHER_ACCOUNT).polls >= 5)  # the other account goes on
        assert bad.requests == 1
        assert [seen.status for seen in fake.seen] == [401]
        lines = [record.getMessage() for record in caplog.records if "API key refused" in record.getMessage()]
        assert len(lines) == 1
        assert ACCOUNT in lines[0] and "401" in lines[0] and "stopped until restart" in lines[0]
        assert wrong_key not in caplog.text and "WrongKey55aa66bb77cc" not in caplog.text
        assert "401" in (bad.stopped_reason or "")
        metrics = await (await client.get("/metrics")).text()
        assert f'jobhook_poller_stopped{{account="{ACCOUNT}"}} 1.0' in metrics
        assert f'jobhook_poller_stopped{{account="{OTHER_ACCOUNT}"}} 0.0' in metrics
        assert "WrongKey55aa66bb77cc" not in metrics


async def test_watch_follows_a_job_outside_the_recent_list(make_client: MakeClient, db: Any) -> None:
    async with BytescaleFake() as fake, JsonSink() as sink:
        watched = fake.start_job("Failed", step=0.1)  # the 11th-oldest: ListRecentJobs never shows it
        for _ in range(10):
            fake.start_job("Succeeded", step=60)
        client = await make_client(sources={"bytescale": fake.source()}, **notify(sink))
        poller = poller_of(client)
        await wait_until(lambda: poller.polls >= 2)
        assert not open_polls(db, watched.job_id)

        wanted = {"accountId": ACCOUNT, "jobType": watched.job_type, "jobId": watched.job_id}
        response = await client.post("/api/watch", json=wanted)
        assert response.status == 202
        assert await response.json() == {"watching": True, "new": True, **wanted}
        await settled(db, 1)
        assert notified(sink) == [title for title in notified(sink) if watched.job_id in title]
        assert times_notified(sink, watched.job_id) == 1
        await wait_until(lambda: open_polls(db, watched.job_id)[0][1] is not None)
        assert open_polls(db, watched.job_id)[0][0] == "Failed"

        again = await client.post("/api/watch", json=wanted)
        assert again.status == 202 and (await again.json())["new"] is False


async def test_watch_rejects_bad_requests(make_client: MakeClient, db: Any) -> None:
    async with BytescaleFake() as fake:
        client = await make_client(sources={"bytescale": fake.source(interval="1s")})
        bad = await client.post("/api/watch", json={"accountId": "A0", "jobType": "Copy", "jobId": 5, "x": 1})
        assert bad.status == 422
        error = (await bad.json())["error"]
        assert error["code"] == "invalid_payload"
        assert {item["field"] for item in error["details"]} == {"accountId", "jobType", "jobId", "x"}
        missing = await client.post("/api/watch", json={})
        assert missing.status == 422
        malformed = await client.post("/api/watch", data=b"{nope", headers={"Content-Type": "application/json"})
        assert malformed.status == 400 and (await malformed.json())["error"]["code"] == "malformed_json"
        unknown = {"accountId": OTHER_ACCOUNT, "jobType": "CopyFileBatchJob", "jobId": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}
        response = await client.post("/api/watch", json=unknown)
        assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
        wrong_method = await client.get("/api/watch")
        assert wrong_method.status == 405 and wrong_method.headers["Allow"] == "POST"


async def test_watch_needs_the_admin_token_when_one_is_set(make_client: MakeClient, db: Any) -> None:
    async with BytescaleFake() as fake:
        client = await make_client(sources={"bytescale": fake.source(interval="1s")}, admin={"token": "adm-token-123"})
        wanted = {"accountId": ACCOUNT, "jobType": "CopyFileBatchJob", "jobId": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}
        assert (await client.post("/api/watch", json=wanted)).status == 401
        ok = await client.post("/api/watch", json=wanted, headers={"Authorization": "Bearer adm-token-123"})
        assert ok.status == 202


async def test_tracked_job_answering_404_is_dropped(
    make_client: MakeClient, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with BytescaleFake() as fake:
        gone = fake.start_job("Succeeded", step=60)
        client = await make_client(sources={"bytescale": fake.source(interval="20ms")})
        poller = poller_of(client)
        await wait_until(lambda: bool(open_polls(db, gone.job_id)))
        fake.delete(gone.job_id)
        await wait_until(lambda: gone.job_id in poller.dropped)
        await wait_until(lambda: not open_polls(db, gone.job_id))
        [line] = [r.getMessage() for r in caplog.records if "answered 404" in r.getMessage()]
        assert gone.job_id in line and ACCOUNT in line
        polls = poller.polls
        await wait_until(lambda: poller.polls >= polls + 3)
        assert poller.dropped == [gone.job_id]  # asked once, then never again
        assert poller.stopped_reason is None


async def test_invalid_job_objects_are_skipped_with_their_field_paths(
    make_client: MakeClient, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with BytescaleFake() as fake, JsonSink() as sink:
        broken = fake.start_job("Failed", step=0.01)
        broken.overrides = {"status": "Exploded", "created": "yesterday"}
        fine = fake.start_job("Failed", step=0.01)
        await make_client(sources={"bytescale": fake.source()}, **notify(sink))
        await settled(db, 1)
        assert times_notified(sink, fine.job_id) == 1
        assert db("SELECT count(*) FROM events WHERE job_id = ?", broken.job_id) == [(0,)]
        lines = [r.getMessage() for r in caplog.records if "invalid fields" in r.getMessage()]
        assert lines and "created, status" in lines[0]
        assert "Exploded" not in caplog.text and "yesterday" not in caplog.text


def test_cli_watch_records_the_job_for_the_next_poll(tmp_path: Path, database_url: str, db: Any) -> None:
    config = tmp_path / "jobhook.yaml"
    config.write_text(
        f"database:\n  url: '{database_url}'\n"
        f"sources:\n  bytescale:\n    account_id: {ACCOUNT}\n    api_key: secret_CliKey1234567890\n"
    )

    def watch(*args: str) -> subprocess.CompletedProcess[str]:
        return jobhook("watch", "--config", str(config), *args, cwd=tmp_path)

    job_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    done = watch(ACCOUNT, "DeleteFolderBatchJob", job_id)
    assert done.returncode == 0, done.stderr
    assert "watching" in done.stdout
    rows = db("SELECT account_id, job_type, job_id, done_at FROM poll_jobs")
    assert rows == [(ACCOUNT, "DeleteFolderBatchJob", job_id, None)]
    assert watch(ACCOUNT, "DeleteFolderBatchJob", job_id).stdout.startswith("already known")
    unknown = watch(OTHER_ACCOUNT, "DeleteFolderBatchJob", job_id)
    assert unknown.returncode == 2 and OTHER_ACCOUNT in unknown.stderr
    invalid = watch(ACCOUNT, "Nope", "short")
    assert invalid.returncode == 2 and "jobType" in invalid.stderr and "jobId" in invalid.stderr


async def test_poll_state_keeps_the_newest_view_and_never_reopens_a_done_job(database_url: str) -> None:
    store = open_store(database_url)
    await store.open()
    try:
        job_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
        assert await store.watch_job(ACCOUNT, "CopyFileBatchJob", job_id) is True
        assert await store.tracked_jobs(ACCOUNT) == [TrackedJob(ACCOUNT, job_id, "CopyFileBatchJob")]
        assert await store.tracked_jobs(OTHER_ACCOUNT) == []
        await store.observe_polled([TrackedJob(ACCOUNT, job_id, "CopyFileBatchJob", "Running", 20)])
        await store.observe_polled([TrackedJob(ACCOUNT, job_id, "CopyFileBatchJob", "Pending", 10)])  # older: ignored
        [tracked] = await store.tracked_jobs(ACCOUNT)
        assert (tracked.last_seen_status, tracked.last_updated) == ("Running", 20)
        await store.observe_polled([TrackedJob(ACCOUNT, job_id, "CopyFileBatchJob", "Failed", 30, 1234)])
        assert await store.tracked_jobs(ACCOUNT) == []
        await store.observe_polled([TrackedJob(ACCOUNT, job_id, "CopyFileBatchJob", "Running", 40)])  # stays done
        assert await store.tracked_jobs(ACCOUNT) == []
        assert await store.watch_job(ACCOUNT, "CopyFileBatchJob", job_id) is False
        assert await store.forget_job(ACCOUNT, job_id) is True
        assert await store.forget_job(ACCOUNT, job_id) is False
    finally:
        await store.close()


def test_sources_settings_are_validated() -> None:
    entry = {"account_id": ACCOUNT, "api_key": "secret_abcdefgh12345678"}
    assert Settings.model_validate({"sources": {"bytescale": entry}}).sources.bytescale_accounts[0].interval == 15.0
    for bad, field in (
        ({**entry, "account_id": "YOUR_ACCOUNT_ID"}, "sources.bytescale"),
        ({**entry, "interval": 0}, "sources.bytescale"),
        ({**entry, "job_types": []}, "sources.bytescale"),
    ):
        with pytest.raises(ValidationError) as raised:
            Settings.model_validate({"sources": {"bytescale": bad}})
        assert any(problem["field"].startswith(field) for problem in field_problems(raised.value))
    with pytest.raises(ValidationError, match="only once"):
        Settings.model_validate({"sources": {"bytescale": [entry, entry]}})
