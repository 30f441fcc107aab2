"""The SQLite store: migrations, store faults (503 + Retry-After, nothing acknowledged lost), the outbox worker."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from receiver.store.schema import MIGRATIONS, Migration
from receiver.store.sqlite import apply_migrations
from tests.conftest import AppClient, MakeClient, release
from tests.jobs import job
from tests.test_intake import assert_envelope, post

pytestmark = pytest.mark.stores("sqlite", "postgres")


def test_migrations_are_recorded_and_applied_once(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    assert apply_migrations(conn) == [m.name for m in MIGRATIONS]
    assert apply_migrations(conn) == []
    names = [name for (name,) in conn.execute("SELECT name FROM _migrations ORDER BY name")]
    assert names == [m.name for m in MIGRATIONS]


def test_new_migration_on_existing_database_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "existing.db"
    conn = sqlite3.connect(path, isolation_level=None)
    apply_migrations(conn)
    conn.execute(
        "INSERT INTO events (job_id, last_updated, status, account_id, job_type, created, body, received_at)"
        " VALUES ('J', 1, 'Created', 'A623uY2', 'CopyFileBatchJob', 1, '{}', 1)"
    )
    conn.close()

    later = (*MIGRATIONS, Migration("0099_test_column", "ALTER TABLE events ADD COLUMN note TEXT;"))
    conn = sqlite3.connect(path, isolation_level=None)
    assert apply_migrations(conn, later) == ["0099_test_column"]
    assert conn.execute("SELECT job_id, note FROM events").fetchall() == [("J", None)]
    assert apply_migrations(conn, later) == []


def test_failed_migration_rolls_back_entirely(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "bad.db", isolation_level=None)
    apply_migrations(conn)
    broken = (*MIGRATIONS, Migration("0099_broken", "CREATE TABLE t1 (a); CREATE TABLE events (a);"))
    with pytest.raises(sqlite3.Error):
        apply_migrations(conn, broken)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "t1" not in tables
    assert conn.execute("SELECT count(*) FROM _migrations WHERE name = '0099_broken'").fetchone() == (0,)


@pytest.mark.stores("sqlite")  # a file lock held by another process is a SQLite fault; tests/test_postgres.py has PG's
async def test_locked_store_answers_503_then_recovers(make_client: MakeClient, lock_holder: Any, db: Any) -> None:
    client = await make_client(database={"busy_timeout": "200ms"})
    before = job(status="Succeeded")
    assert (await post(client, before))[0] == 202

    holder = lock_holder()
    payload = job(status="Failed", error={"code": "x", "message": "m"})
    resp = await client.post("/webhooks/jobs", json=payload)
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) > 0
    assert_envelope(await resp.json(), "store_unavailable")
    assert (await client.get("/readyz")).status == 503

    release(holder)
    assert (await post(client, payload))[0] == 202  # the sender's retry succeeds: not a duplicate
    assert (await client.get("/readyz")).status == 200
    stored = {job_id for (job_id,) in db("SELECT job_id FROM events")}
    assert stored == {before["jobId"], payload["jobId"]}


async def test_outbox_rows_are_expanded_once_and_marked_processed(client: AppClient, db: Any) -> None:
    failed = job(status="Failed", error={"code": "quota_exceeded", "message": "Quota exceeded."})
    running = job(status="Running")
    await post(client, failed)
    await post(client, running)
    for _ in range(200):
        if db("SELECT count(*) FROM outbox WHERE processed_at IS NULL") == [(0,)] and db(
            "SELECT count(*) FROM deliveries"
        ) == [(1,)]:
            break
        await asyncio.sleep(0.02)
    assert db("SELECT job_id, processed_at IS NOT NULL FROM outbox") == [(failed["jobId"], 1)]
    assert db("SELECT job_id, status FROM deliveries") == [(failed["jobId"], "Failed")]
