"""What only the PostgreSQL store has to prove: URLs, migrations, its own store faults, and correctness when
several replicas (here: several store instances, each with its own connection pool) share one database.

The store-agnostic behaviour (intake, transitions, delivery, history, poller...) is proved by the rest of the
suite, which runs against both stores.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from receiver.app import create_store
from receiver.models import TERMINAL
from receiver.store import EventRow, Ingested, StoreUnavailable
from receiver.store.deliveries import Grouping, NewDelivery
from receiver.store.pg_schema import MIGRATIONS
from receiver.store.postgres import PostgresStore, apply_migrations, display_url
from receiver.store.schema import Migration
from tests.conftest import MakeClient, make_settings, open_store
from tests.jobs import body, job
from tests.peers import wait_until
from tests.pgcluster import Admin
from tests.test_cli import jobhook
from tests.test_intake import assert_envelope, post

pytestmark = pytest.mark.stores("postgres")
NOTIFY = frozenset(status.value for status in TERMINAL)


def row(payload: dict[str, Any]) -> EventRow:
    fields = (payload[key] for key in ("jobId", "lastUpdated", "status", "accountId", "jobType", "created"))
    return EventRow(*fields, payload.get("attempts"), None, None, body(payload).decode())


@pytest.fixture
async def replicas(database_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two replicas would open it."""
    stores = [open_store(database_url, NOTIFY) for _ in range(2)]
    await asyncio.gather(*(store.open() for store in stores))
    first, second = stores
    assert isinstance(first, PostgresStore) and isinstance(second, PostgresStore)
    yield first, second
    await asyncio.gather(*(store.close() for store in stores))


# --- configuration -----------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
async def test_both_url_schemes_select_and_open_the_postgres_store(database_url: str, scheme: str) -> None:
    url = scheme + database_url[database_url.index("://") :]
    store = create_store(make_settings(url), frozenset())
    assert isinstance(store, PostgresStore)
    await store.open()
    try:
        await store.check_writable()
    finally:
        await store.close()


def test_the_password_in_a_url_is_never_displayed() -> None:
    assert display_url("postgresql://app:s3cret@db:5432/jobhook") == "postgresql://app:***@db:5432/jobhook"
    assert display_url("postgres://app@db/jobhook") == "postgres://app@db/jobhook"
    assert "s3cret" not in display_url("postgresql://:s3cret@db/jobhook")
    assert display_url("postgresql://db/jobhook?user=app&password=s3cret&sslmode=require") == (
        "postgresql://db/jobhook?user=app&password=***&sslmode=require"
    )
    assert display_url("sqlite:///data/jobhook.db") == "sqlite:///data/jobhook.db"  # shown as configured


async def test_an_unreachable_server_fails_open_without_the_password(pg_admin: Admin) -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:{pg_admin.cluster.port}/no_such_database"
    store = create_store(make_settings(url), frozenset())
    with pytest.raises(StoreUnavailable, match="cannot open") as raised:
        await store.open()
    assert "s3cret" not in str(raised.value)


# --- migrations ----------------------------------------------------------------------------------------
async def test_migrations_are_recorded_applied_once_and_keep_data(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await apply_migrations(conn) == [m.name for m in MIGRATIONS]
        assert await apply_migrations(conn) == []
        await conn.execute(
            "INSERT INTO events (job_id, last_updated, status, account_id, job_type, created, body, received_at)"
            " VALUES ('J', 1, 'Created', 'A623uY2', 'CopyFileBatchJob', 1, '{}', 1)"
        )
        later = (*MIGRATIONS, Migration("0099_test_column", "ALTER TABLE events ADD COLUMN note TEXT;"))
        assert await apply_migrations(conn, later) == ["0099_test_column"]
        assert [tuple(r) for r in await conn.fetch("SELECT job_id, note FROM events")] == [("J", None)]

        broken = (*later, Migration("0100_broken", "CREATE TABLE t1 (a int); CREATE TABLE events (a int);"))
        with pytest.raises(asyncpg.DuplicateTableError):
            await apply_migrations(conn, broken)
        assert await conn.fetchval("SELECT to_regclass('t1')") is None  # rolled back entirely
        assert await conn.fetchval("SELECT count(*) FROM _migrations WHERE name = '0100_broken'") == 0
    finally:
        await conn.close()


async def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    stores = [open_store(database_url) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    await asyncio.gather(*(store.close() for store in stores))
    conn = await asyncpg.connect(database_url)
    try:
        names = [r["name"] for r in await conn.fetch("SELECT name FROM _migrations ORDER BY name")]
    finally:
        await conn.close()
    assert names == [m.name for m in MIGRATIONS]


# --- store faults: 503 + Retry-After, then recovery ---------------------------------------------------
async def test_a_read_only_database_answers_503_then_recovers(
    make_client: MakeClient, pg_admin: Admin, database_url: str, db: Any
) -> None:
    name = database_url.rsplit("/", 1)[1]
    client = await make_client()
    before = job(status="Succeeded")
    assert (await post(client, before))[0] == 202

    # A real fault: the database refuses writes, and the app's open sessions are cut.
    pg_admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    pg_admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    payload = job(status="Failed", error={"code": "x", "message": "m"})
    for _ in range(3):  # the first answers may find a cut session, the next a read-only one: 503 each time
        resp = await client.post("/webhooks/jobs", json=payload)
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
        assert_envelope(await resp.json(), "store_unavailable")
    assert (await client.get("/readyz")).status == 503

    pg_admin.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
    pg_admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    answers: list[int] = []

    async def retried() -> bool:
        answers.append((await post(client, payload))[0])
        return answers[-1] != 503

    for _ in range(20):
        if await retried():
            break
    assert answers[-1] == 202  # the sender's retry succeeds: not a duplicate
    await wait_until(lambda: db("SELECT count(*) FROM events") == [(2,)], 10)
    assert (await client.get("/readyz")).status == 200


# --- several replicas on one database -------------------------------------------------------------------
async def test_concurrent_identical_posts_across_replicas_store_exactly_one(
    replicas: tuple[PostgresStore, PostgresStore], db: Any
) -> None:
    payload = job(status="Failed", error={"code": "x", "message": "m"})
    outcomes = await asyncio.gather(*(replicas[i % 2].ingest(row(payload)) for i in range(50)))
    assert outcomes.count(Ingested.TRANSITION) == 1
    assert outcomes.count(Ingested.DUPLICATE) == 49
    assert db("SELECT count(*) FROM events") == [(1,)]
    assert db("SELECT count(*) FROM outbox") == [(1,)]


async def test_lifecycles_split_across_replicas_out_of_order_give_one_transition_each(
    replicas: tuple[PostgresStore, PostgresStore], db: Any
) -> None:
    rng = random.Random(8)
    rows = []
    for _ in range(40):
        first = job(status="Created", lastUpdated=1_000)
        steps = [("Created", 1_000), ("Pending", 1_000), ("Running", 2_000), ("Failed", 3_000), ("Failed", 3_000)]
        rows += [row({**first, "status": status, "lastUpdated": at}) for status, at in steps]
    rng.shuffle(rows)
    # Waves of a few rows, spread over both replicas: many small batches of both in flight on the same jobs.
    outcomes: list[Ingested] = []
    for start in range(0, len(rows), 12):
        wave = rows[start : start + 12]
        outcomes += await asyncio.gather(*(replicas[rng.randrange(2)].ingest(r) for r in wave))

    assert outcomes.count(Ingested.DUPLICATE) == 40  # the second Failed of each job
    assert db("SELECT count(*) FROM events") == [(160,)]
    assert db("SELECT status, last_updated, count(*) FROM jobs GROUP BY status, last_updated") == [("Failed", 3000, 40)]
    # Each job's Failed is one transition in the outbox, whatever order the events arrived in.
    assert db("SELECT count(DISTINCT job_id), count(*) FROM outbox WHERE status = 'Failed'") == [(40, 40)]
    assert outcomes.count(Ingested.TRANSITION) == db("SELECT count(*) FROM outbox")[0][0]
    assert db("SELECT count(*) FROM jobs j JOIN events e ON e.id = j.event_id WHERE e.status = j.status") == [(40,)]


async def failed_transitions(store: PostgresStore, count: int) -> list[NewDelivery]:
    """`count` Failed transitions in the outbox, and the delivery each would plan."""
    await asyncio.gather(*(store.ingest(row(job(status="Failed"))) for _ in range(count)))
    items = await store.unprocessed_outbox(count)
    assert len(items) == count
    return [NewDelivery(i.id, i.job_id, i.status, "r", "t", "title", "body", "failure") for i in items]


async def test_outbox_expansion_across_replicas_happens_once(
    replicas: tuple[PostgresStore, PostgresStore], db: Any
) -> None:
    planned = await failed_transitions(replicas[0], 30)
    ids = [p.outbox_id for p in planned]
    created = await asyncio.gather(*(store.expand_outbox(ids, planned, 1) for store in replicas * 3))
    assert sum(created) == 30
    assert db("SELECT count(*), count(DISTINCT outbox_id) FROM deliveries") == [(30, 30)]
    assert db("SELECT count(*) FROM outbox WHERE processed_at IS NULL") == [(0,)]


async def test_replicas_claim_disjoint_deliveries_and_take_over_expired_leases(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = replicas
    planned = await failed_transitions(first, 40)
    await first.expand_outbox([p.outbox_id for p in planned], planned, 1_000)

    now, lease = 10_000, 5_000
    claims = await asyncio.gather(*(store.claim_due(now, lease, 25) for store in (first, second, first, second)))
    ids = [delivery.id for claim in claims for delivery in claim]
    assert len(ids) == len(set(ids)) == 40  # every due delivery claimed once, by one replica

    # The claimant dies: nobody takes its rows before the lease ends; any replica does after.
    assert await second.claim_due(now + lease - 1, lease, 100) == []
    taken = await second.claim_due(now + lease, lease, 100)
    assert sorted(d.id for d in taken) == sorted(ids)


async def test_grouped_transitions_join_one_digest_at_a_time_across_replicas(
    replicas: tuple[PostgresStore, PostgresStore], db: Any
) -> None:
    """Replicas expanding and claiming one group at once: every transition lands in exactly one digest, and
    no transition joins a digest after the claim that sealed it (it would be missing from the message)."""
    planned = await failed_transitions(replicas[0], 60)
    grouped = [p._replace(group=Grouping("Failed", 0, 1)) for p in planned]
    claimed: list[Any] = []

    async def expand(store: PostgresStore, part: list[NewDelivery], now: int) -> None:
        await store.expand_outbox([p.outbox_id for p in part], part, now)

    async def claim(store: PostgresStore, now: int) -> None:
        claimed.extend(await store.claim_due(now, 60_000, 10))

    steps = []
    for i in range(0, 60, 6):
        now = 1_000 + i
        steps += [
            expand(replicas[i % 2], grouped[i : i + 3], now),
            expand(replicas[1 - i % 2], grouped[i + 3 : i + 6], now),
        ]
        steps += [claim(replicas[i % 2], now), claim(replicas[1 - i % 2], now)]
    await asyncio.gather(*steps)
    claimed.extend(await replicas[0].claim_due(10_000, 60_000, 100))

    assert db("SELECT count(*), count(DISTINCT outbox_id) FROM digest_members") == [(60, 60)]
    assert db("SELECT count(*) FROM deliveries WHERE sealed = 0") == [(0,)]
    in_messages = [member.job_id for digest in claimed for member in digest.members or ()]
    assert sorted(in_messages) == sorted(p.job_id for p in planned)  # each claimed digest carried all its members


async def test_the_database_password_reaches_no_log_line_and_no_cli_message(
    make_client: MakeClient, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The test cluster trusts loopback connections, so any password is accepted and merely carried along.
    secret = "Db-s3cret-Passw0rd"
    url = database_url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    caplog.set_level(logging.DEBUG)
    client = await make_client(database={"url": url})
    assert (await post(client, job(status="Failed", error={"code": "x", "message": "m"})))[0] == 202
    assert (await client.get("/readyz")).status == 200
    await client.close()
    assert "store open at postgresql://postgres:***@" in caplog.text
    assert secret not in caplog.text

    config = tmp_path / "jobhook.yaml"
    unreachable = url.rsplit("/", 1)[0] + "/no_such_database"
    config.write_text(f"database: {{url: '{unreachable}'}}\nauth: {{mode: none}}\n")
    failed = await asyncio.to_thread(jobhook, "jobs", "--config", str(config))
    assert failed.returncode != 0 and "cannot use the store" in failed.stderr
    assert secret not in failed.stderr + failed.stdout
