"""The delivery worker end to end: real app, real SQLite, real apprise to real local peers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from notifiers.worker import plan_deliveries
from receiver.keys import NOTIFIERS, STORE, WORKER
from tests.conftest import AppClient, MakeClient
from tests.jobs import job
from tests.peers import JsonSink, SmtpSink, free_port, wait_until
from tests.test_intake import post

pytestmark = pytest.mark.stores("sqlite", "postgres")

FAST_RETRY = {"backoff_initial": "50ms", "backoff_factor": 1, "backoff_max": "100ms", "timeout": "5s"}


def failed(**overrides: Any) -> dict[str, Any]:
    return job(status="Failed", error={"code": "quota_exceeded", "message": "Quota exceeded."}, **overrides)


def deliveries(db: Any) -> list[tuple[Any, ...]]:
    return db("SELECT job_id, rule, target, state, attempts FROM deliveries ORDER BY id")


async def settled(db: Any, count: int, within: float = 10.0) -> None:
    def done() -> bool:
        rows = db("SELECT count(*) FROM deliveries WHERE state IN ('sent', 'dead')")
        return bool(rows[0][0] >= count)

    await wait_until(done, within)


async def test_failed_job_is_delivered_once_to_a_json_sink(make_client: MakeClient, db: Any) -> None:
    async with JsonSink() as sink:
        client = await make_client(
            targets={"hook": sink.url()}, rules=[{"name": "failures", "match": {"status": "Failed"}, "notify": "hook"}]
        )
        payload = failed()
        assert (await post(client, payload))[0] == 202
        assert (await post(client, payload))[0] == 200  # a duplicate triggers nothing
        assert (await post(client, job(status="Running")))[0] == 202  # no rule for Running
        await settled(db, 1)
        await asyncio.sleep(0.2)
        assert len(sink.requests) == 1
        message = sink.requests[0].json()
        assert payload["jobId"] in message["title"] and "Failed" in message["title"]
        assert "quota_exceeded" in message["message"]
        assert message["type"] == "failure"
        assert deliveries(db) == [(payload["jobId"], "failures", "hook", "sent", 1)]
        assert db("SELECT ok, error FROM delivery_attempts") == [(1, None)]


async def test_failing_sink_is_retried_until_it_recovers(make_client: MakeClient, db: Any) -> None:
    async with JsonSink(status=500) as sink:
        client = await make_client(
            targets={"hook": sink.url()}, delivery=FAST_RETRY, rules=[{"match": {"status": "Failed"}, "notify": "hook"}]
        )
        await post(client, failed())
        await wait_until(lambda: len(sink.requests) >= 3)
        sink.status = 200
        await settled(db, 1)
        [(_, _, _, state, attempts)] = deliveries(db)
        assert state == "sent"
        attempts_rows = db("SELECT ok, error FROM delivery_attempts ORDER BY id")
        assert len(attempts_rows) == attempts == len(sink.requests)
        assert [ok for ok, _ in attempts_rows] == [0] * (attempts - 1) + [1]
        assert "500" in attempts_rows[0][1]
        await asyncio.sleep(0.3)
        assert len(sink.requests) == attempts  # never re-sent after success


async def test_delivery_is_dead_after_max_attempts(make_client: MakeClient, db: Any) -> None:
    down = f"json://127.0.0.1:{free_port()}/hook"
    client = await make_client(
        targets={"down": down},
        delivery={**FAST_RETRY, "max_attempts": 3},
        rules=[{"match": {"status": "Failed"}, "notify": "down"}],
    )
    await post(client, failed())
    await settled(db, 1)
    [(_, _, _, state, attempts)] = deliveries(db)
    assert (state, attempts) == ("dead", 3)
    assert db("SELECT next_attempt_at FROM deliveries") == [(None,)]


async def test_rules_fan_out_and_stop(make_client: MakeClient, db: Any) -> None:
    async with JsonSink() as a, JsonSink() as b:
        rules = [
            {"name": "copy", "match": {"jobType": "~Copy.*"}, "notify": ["a", "b"], "stop": True},
            {"name": "all-failed", "match": {"status": "Failed"}, "notify": "a"},
            {"name": "not-quota", "match": {"status": "Failed", "error_code": "!quota_exceeded"}, "notify": "b"},
        ]
        client = await make_client(targets={"a": a.url(), "b": b.url()}, rules=rules)
        copy_job, delete_job = failed(jobType="CopyFolderBatchJob"), failed(jobType="DeleteFolderBatchJob")
        other = job(jobType="DeleteFileBatchJob", status="Failed", error={"code": "not_found", "message": "m"})
        for payload in (copy_job, delete_job, other):
            await post(client, payload)
        await settled(db, 5)
        fired = {(job_id, rule, target) for job_id, rule, target, _, _ in deliveries(db)}
        assert fired == {
            (copy_job["jobId"], "copy", "a"),
            (copy_job["jobId"], "copy", "b"),
            (delete_job["jobId"], "all-failed", "a"),
            (other["jobId"], "all-failed", "a"),
            (other["jobId"], "not-quota", "b"),
        }
        assert len(a.requests) == 3 and len(b.requests) == 2


async def test_default_rule_sends_terminal_transitions_to_the_console(client: AppClient, db: Any) -> None:
    payloads = [failed(), job(status="Succeeded"), job(status="Cancelled"), job(status="Running")]
    for payload in payloads:
        await post(client, payload)
    await settled(db, 3)
    assert {(rule, target, state) for _, rule, target, state, _ in deliveries(db)} == {("default", "console", "sent")}
    assert {row[0] for row in deliveries(db)} == {p["jobId"] for p in payloads[:3]}


async def test_email_through_a_real_smtp_server(make_client: MakeClient, db: Any) -> None:
    async with SmtpSink() as smtp:
        client = await make_client(
            targets={"mail": smtp.url()}, rules=[{"match": {"status": "Failed"}, "notify": "mail"}]
        )
        payload = failed()
        await post(client, payload)
        await settled(db, 1)
        [mail] = smtp.messages
        assert payload["jobId"] in str(mail.message["Subject"])
        assert "quota_exceeded" in mail.text()


async def test_expansion_happens_once(client: AppClient, db: Any) -> None:
    await post(client, failed())
    await settled(db, 1)
    store = client.app[STORE]
    [outbox_id] = [row[0] for row in db("SELECT id FROM outbox")]
    again = await store.expand_outbox([outbox_id], [], 0)
    assert again == 0
    assert len(deliveries(db)) == 1


async def test_claims_of_a_crashed_worker_are_taken_over_after_the_lease(make_client: MakeClient, db: Any) -> None:
    async with JsonSink() as sink:
        client = await make_client(
            targets={"hook": sink.url()},
            delivery={"lease": "300ms"},
            rules=[{"match": {"status": "Failed"}, "notify": "hook"}],
        )
        store, worker = client.app[STORE], client.app[WORKER]
        await worker.stop(grace=0)  # this process's worker "dies"; we claim as it would have
        await wait_until(lambda: not worker.running)  # a pass already under way could expand the outbox first
        await post(client, failed())
        [outbox] = await store.unprocessed_outbox()
        await store.expand_outbox([outbox.id], plan_deliveries(outbox, client.app[NOTIFIERS].rules), 1)
        now = int(asyncio.get_running_loop().time())  # any clock: claims compare with the given now
        claimed = await store.claim_due(now + 10**12, 300, 10)
        assert len(claimed) == 1
        assert await store.claim_due(now + 10**12 + 100, 300, 10) == []  # leased: nobody else takes it
        assert len(await store.claim_due(now + 10**12 + 301, 300, 10)) == 1  # lease expired: taken over


async def test_stop_waits_for_sends_in_flight(make_client: MakeClient, db: Any) -> None:
    async with JsonSink(delay=0.5) as sink:
        client = await make_client(
            targets={"hook": sink.url()}, rules=[{"match": {"status": "Failed"}, "notify": "hook"}]
        )
        await post(client, failed())
        await wait_until(lambda: len(sink.requests) == 1)
        await client.app[WORKER].stop(grace=5)
        assert [row[3] for row in deliveries(db)] == ["sent"]


async def test_stop_waits_for_a_claim_under_way(
    make_client: MakeClient, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while a pass is committing a claim: that delivery is sent and recorded before stop returns.

    Before, stop() waited only for the sends already in flight, so the claim became a send after the store
    had closed: the sink got it, the database still had it pending, and its lease would send it again.
    """
    async with JsonSink() as sink:
        client = await make_client(
            targets={"hook": sink.url()}, rules=[{"match": {"status": "Failed"}, "notify": "hook"}]
        )
        store, worker = client.app[STORE], client.app[WORKER]
        claim_due, claimed, resume = store.claim_due, asyncio.Event(), asyncio.Event()

        async def claim_then_pause(*args: Any, **kwargs: Any) -> Any:
            rows = await claim_due(*args, **kwargs)
            if rows:  # committed, not yet handed to a send: where SIGTERM can land
                claimed.set()
                await resume.wait()
            return rows

        monkeypatch.setattr(store, "claim_due", claim_then_pause)
        await post(client, failed())
        await wait_until(claimed.is_set)
        stopping = asyncio.create_task(worker.stop(grace=5))
        await asyncio.sleep(0.05)  # stop() gets going while the claim is still under way
        resume.set()
        await stopping
        assert [row[3] for row in deliveries(db)] == ["sent"]
        assert len(sink.requests) == 1
        assert not worker.running


async def test_restart_resumes_pending_deliveries(make_client: MakeClient, db: Any) -> None:
    async with JsonSink(status=500) as sink:
        rules = [{"match": {"status": "Failed"}, "notify": "hook"}]
        first = await make_client(targets={"hook": sink.url()}, rules=rules, delivery=FAST_RETRY)
        await post(first, failed())
        await wait_until(lambda: len(sink.requests) >= 1)
        await first.close()  # shutdown while the delivery is retrying
        sink.status = 200
        await make_client(targets={"hook": sink.url()}, rules=rules, delivery=FAST_RETRY)
        await settled(db, 1)
        assert [row[3] for row in deliveries(db)] == ["sent"]


async def test_failed_job_twice_and_out_of_order_gives_one_email_and_one_json(make_client: MakeClient, db: Any) -> None:
    async with SmtpSink() as smtp, JsonSink() as sink:
        client = await make_client(
            targets={"mail": smtp.url(), "hook": sink.url()},
            rules=[{"name": "failed", "match": {"status": "Failed"}, "notify": ["mail", "hook"]}],
        )
        final = failed(lastUpdated=1700000000900)
        earlier = {**final, "status": "Running", "lastUpdated": 1700000000500}
        del earlier["error"]
        for payload in (final, earlier, final):  # Failed, then a late Running, then Failed again
            await post(client, payload)
        await settled(db, 2)
        await asyncio.sleep(0.3)
        [mail] = smtp.messages
        assert final["jobId"] in str(mail.message["Subject"]) and "quota_exceeded" in mail.text()
        [request] = sink.requests
        assert final["jobId"] in request.json()["title"] and "quota_exceeded" in request.json()["message"]
