"""Outages of the peers (issue 6 item 2): a sink down for several backoff steps, an SMTP server refusing, then
both back. Everything is delivered, exactly once per delivery row, within a bounded wait; no delivery dies.

Real app, real SQLite, real apprise to real local peers. "Several backoff steps" is observed, not timed:
the peer comes back only once every delivery has recorded at least FAILURES_BEFORE_RECOVERY failed attempts.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import MakeClient
from tests.jobs import job
from tests.peers import JsonSink, SmtpSink, free_port, wait_until
from tests.test_flood import post_all

OUTAGE_RETRY = {"backoff_initial": "250ms", "backoff_max": "1s", "max_attempts": 30, "timeout": "5s"}
FAILURES_BEFORE_RECOVERY = 3
RULE = {"name": "failed", "match": {"status": "Failed"}, "notify": "peer"}


def failed_jobs(count: int) -> list[dict[str, Any]]:
    return [job(status="Failed", error={"code": "boom", "message": f"m{i}"}) for i in range(count)]


async def outage_lasts_several_steps(db: Any, count: int) -> None:
    def every_delivery_failed_enough() -> bool:
        rows = db(
            "SELECT count(*), coalesce(min(attempts), 0), sum(state = 'dead') FROM deliveries WHERE state != 'sent'"
        )
        (waiting, fewest, dead) = rows[0]
        assert not dead, "a delivery died during the outage"
        return bool(waiting == count and fewest >= FAILURES_BEFORE_RECOVERY)

    await wait_until(every_delivery_failed_enough, within=60)


async def all_sent_once(db: Any, count: int) -> None:
    await wait_until(lambda: db("SELECT count(*) FROM deliveries WHERE state = 'sent'") == [(count,)], within=60)
    assert db("SELECT count(*) FROM deliveries") == [(count,)]
    # Each row's attempt history: its failures during the outage, then exactly one success.
    rows = db(
        "SELECT d.attempts, count(a.id), sum(a.ok) FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id"
        " GROUP BY d.id"
    )
    assert len(rows) == count
    assert all(
        attempts == recorded and ok == 1 and attempts > FAILURES_BEFORE_RECOVERY for attempts, recorded, ok in rows
    )


@pytest.mark.slow
async def test_json_sink_down_for_several_backoff_steps_then_up(make_client: MakeClient, db: Any) -> None:
    port = free_port()  # nothing listens there yet: connection refused
    client = await make_client(targets={"peer": f"json://127.0.0.1:{port}/hook"}, delivery=OUTAGE_RETRY, rules=[RULE])
    jobs = failed_jobs(30)
    await post_all(client, jobs)
    await outage_lasts_several_steps(db, len(jobs))

    async with JsonSink(port=port) as sink:
        await all_sent_once(db, len(jobs))
        await asyncio.sleep(0.5)  # anything re-sent after success would arrive by now
        titles = [json.loads(r.body)["title"] for r in sink.requests]
        assert len(titles) == len(jobs), "a delivery was sent more than once"
        assert {title.split()[2] for title in titles} == {j["jobId"] for j in jobs}


@pytest.mark.slow
@pytest.mark.parametrize(
    "reply", ["451 4.3.0 Mailbox busy, try again later", "554 5.7.1 Message refused"], ids=["4xx", "5xx"]
)
async def test_smtp_server_refusing_then_accepting(make_client: MakeClient, db: Any, reply: str) -> None:
    async with SmtpSink() as smtp:
        smtp.refuse = reply
        client = await make_client(targets={"peer": smtp.url()}, delivery=OUTAGE_RETRY, rules=[RULE])
        jobs = failed_jobs(12)
        await post_all(client, jobs)
        await outage_lasts_several_steps(db, len(jobs))
        assert smtp.refused >= FAILURES_BEFORE_RECOVERY * len(jobs)
        assert smtp.messages == []

        smtp.refuse = None
        await all_sent_once(db, len(jobs))
        await asyncio.sleep(0.5)
        subjects = [str(mail.message["Subject"]) for mail in smtp.messages]
        assert len(subjects) == len(jobs), "a message was sent more than once"
        assert {s.split()[2] for s in subjects} == {j["jobId"] for j in jobs}
