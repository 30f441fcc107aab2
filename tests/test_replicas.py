"""Two real `jobhook serve` replicas on one PostgreSQL database, one of them killed (-9) mid-delivery.

The same jobs are posted to both (every event to each replica, shuffled, so duplicates are split across
them and events arrive out of order). Each replica sends to its own path of one slow sink, so the sink
tells who sent what: what replica A had in flight when it died must reach the sink again through B once
A's lease has expired; and what A acknowledged just before it died (it was under load) is stored.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import serve
from tests.jobs import job
from tests.peers import JsonSink, wait_until
from tests.test_crash import load

pytestmark = [pytest.mark.slow, pytest.mark.stores("postgres")]
JOBS = 60
CONCURRENCY = 4  # per replica: the most sends a kill can leave unrecorded
TERMINAL = ("Failed", "Succeeded", "Cancelled")


def replica_config(tmp_path: Path, name: str, port: int, database_url: str, hook: str) -> Path:
    extra = (
        f"targets: {{hook: '{hook}'}}\n"
        "rules: [{name: done, match: {status: [Failed, Succeeded, Cancelled]}, notify: hook,\n"
        "         title: '{{ job.jobId }} {{ job.status }}'}]\n"
        f"delivery: {{concurrency: {CONCURRENCY}, timeout: 10s, lease: 5s, backoff_initial: 1s}}\n"
    )
    return serve.write_config(tmp_path, port, extra, database_url=database_url, name=f"{name}.yaml")


def lifecycles() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Created, Running and a terminal event per job; and each job's terminal status."""
    events, final = [], {}
    for i in range(JOBS):
        first = job(status="Created", lastUpdated=1_000)
        terminal = TERMINAL[i % 3]
        final[first["jobId"]] = terminal
        for status, at in (("Created", 1_000), ("Running", 2_000), (terminal, 3_000)):
            error = {"code": "boom", "message": "m"} if status == "Failed" else None
            events.append({**first, "status": status, "lastUpdated": at, "error": error})
    return events, final


async def post_all(posts: list[tuple[dict[str, Any], int]]) -> list[int]:
    gate = asyncio.Semaphore(16)

    async def one(session: aiohttp.ClientSession, payload: dict[str, Any], port: int) -> int:
        async with gate, session.post(f"http://127.0.0.1:{port}/webhooks/jobs", json=payload) as resp:
            return resp.status

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        return list(await asyncio.gather(*(one(session, payload, port) for payload, port in posts)))


async def test_two_replicas_split_duplicates_and_take_over_a_killed_replicas_sends(
    tmp_path: Path, database_url: str, db: Any
) -> None:
    async with JsonSink(delay=2.0) as sink:
        ports = {"a": serve.free_port(), "b": serve.free_port()}
        procs = {
            name: serve.start(
                replica_config(tmp_path, name, port, database_url, sink.url(f"/{name}")), tmp_path / f"{name}.log"
            )
            for name, port in ports.items()
        }
        try:
            for name, proc in procs.items():
                await asyncio.to_thread(serve.wait_healthy, ports[name], proc)
            events, final = lifecycles()
            posts = [(event, port) for event in events for port in ports.values()]
            random.Random(8).shuffle(posts)
            statuses = await post_all(posts)

            # Every event was acknowledged by both replicas, and stored by exactly one of them.
            answers: dict[tuple[str, str], list[int]] = {}
            for (event, _), status in zip(posts, statuses, strict=True):
                answers.setdefault((event["jobId"], event["status"]), []).append(status)
            assert all(sorted(pair) == [200, 202] for pair in answers.values()), Counter(statuses)

            # Kill A under load (new jobs posted to it), while a send of its own is at the slow sink, unanswered.
            acked: dict[str, str] = {}
            stop_load = asyncio.Event()
            loading = asyncio.create_task(load(ports["a"], acked, stop_load, clients=8))
            await wait_until(lambda: len(acked) >= 200 and any(r.path == "/a" for r in sink.requests), within=30)
            procs["a"].send_signal(signal.SIGKILL)
            procs["a"].wait()
            stop_load.set()
            await loading
            sink.delay = 0.0
            at_kill = {r.json()["title"] for r in sink.requests if r.path == "/a"}

            # Nothing A acknowledged is lost; every Failed it acknowledged must be notified too.
            stored = {job_id for (job_id,) in db("SELECT job_id FROM events")}
            assert set(acked) <= stored
            expected = {f"{job_id} {status}" for job_id, status in final.items()}
            expected |= {f"{job_id} Failed" for job_id, status in acked.items() if status == "Failed"}

            def unsent() -> list[tuple[Any, ...]]:
                return db("SELECT count(*) FROM deliveries WHERE state != 'sent'")

            await wait_until(lambda: {r.json()["title"] for r in sink.requests} >= expected, within=60)
            await wait_until(lambda: unsent() == [(0,)], within=30)
        finally:
            for proc in procs.values():
                serve.stop(proc)

    titles = Counter(r.json()["title"] for r in sink.requests)
    # Every terminal transition stored is notified (the acknowledged ones and any A stored as it died), nothing else.
    stored_failed = {f"{job_id} Failed" for (job_id,) in db("SELECT job_id FROM events WHERE status = 'Failed'")}
    assert set(titles) == {f"{job_id} {status}" for job_id, status in final.items()} | stored_failed
    assert expected <= set(titles)
    repeated = {title for title, count in titles.items() if count > 1}
    assert len(repeated) <= CONCURRENCY  # only sends in flight at the kill repeat (SPEC §6)
    by_b = {r.json()["title"] for r in sink.requests if r.path == "/b"}
    assert repeated and repeated <= at_kill & by_b  # A's unanswered sends were taken over by B after the lease
    lifecycle_jobs = db("SELECT job_id, status FROM jobs WHERE job_id = ANY(?)", list(final))
    assert dict(lifecycle_jobs) == final
    assert db("SELECT count(*) FROM events WHERE job_id = ANY(?)", list(final)) == [(3 * JOBS,)]
    assert db("SELECT count(*) FROM outbox WHERE job_id = ANY(?)", list(final)) == [(JOBS,)]  # one transition each
