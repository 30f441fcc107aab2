"""The history commands (`jobs`, `show`, `redeliver`, `prune`, `export`) as real processes over a store
filled through the real app, and retention in a running app."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest

from receiver import app as app_module
from receiver.durations import now_ms
from tests.conftest import AppClient, MakeClient
from tests.jobs import job
from tests.test_cli import jobhook

pytestmark = pytest.mark.stores("sqlite", "postgres")

OLD, CUTOFF = 1_700_000_000_000, 1_710_000_000_000
FAILED_TO_CONSOLE = [{"name": "failures", "match": {"status": "Failed"}, "notify": "console"}]


def config_for(tmp_path: Path, database_url: str) -> Path:
    config = tmp_path / "cli.yaml"
    config.write_text(f"database: {{url: '{database_url}'}}\nauth: {{mode: none}}\n")
    return config


async def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command, *rest = args
    return await asyncio.to_thread(jobhook, command, "--config", str(config), *rest)


async def post(client: AppClient, payload: dict[str, Any]) -> None:
    resp = await client.post("/webhooks/jobs", json=payload)
    assert resp.status == 202, await resp.text()


async def wait_for(db: Any, sql: str, expected: list[tuple[Any, ...]]) -> None:
    for _ in range(200):
        if db(sql) == expected:
            return
        await asyncio.sleep(0.05)
    assert db(sql) == expected


async def test_jobs_show_and_redeliver(make_client: MakeClient, db: Any, database_url: str, tmp_path: Path) -> None:
    client = await make_client(rules=FAILED_TO_CONSOLE)
    config = config_for(tmp_path, database_url)
    failed = job(status="Failed", lastUpdated=OLD + 3000, error={"code": "file_not_found", "message": "Gone."})
    running = job(status="Running", lastUpdated=OLD + 2000, jobType="DeleteFolderBatchJob")
    done = job(status="Succeeded", lastUpdated=OLD + 1000)
    await post(client, {**failed, "status": "Running", "lastUpdated": OLD})
    for payload in (failed, running, done):
        await post(client, payload)
    await wait_for(db, "SELECT state FROM deliveries", [("sent",)])

    listed = await cli(config, "jobs")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["LAST", "UPDATED", "STATUS", "JOB", "TYPE", "JOB", "ID", "ACCOUNT", "ERROR"]
    assert [line.split()[3] for line in lines[1:]] == [failed["jobId"], running["jobId"], done["jobId"]]
    first = ["2023-11-14T22:13:23.000Z", "Failed", "CopyFileBatchJob", failed["jobId"], "A623uY2", "file_not_found"]
    assert lines[1].split() == first
    assert len({line.index(failed["jobId"][:6]) for line in lines[1:]}) == 1  # aligned columns

    only_failed = await cli(config, "jobs", "--status", "Failed,Cancelled", "--json")
    items = json.loads(only_failed.stdout)
    assert [item["jobId"] for item in items] == [failed["jobId"]]
    assert items[0]["error"] == {"code": "file_not_found", "message": "Gone."}
    assert (await cli(config, "jobs", "--limit", "1", "--json")).stdout.count('"jobId"') == 1
    assert (await cli(config, "jobs", "--since", str(OLD + 2000))).stdout.count("\n") == 3
    assert (await cli(config, "jobs", "--since", "1h")).stdout.strip() == "no jobs"
    bad = await cli(config, "jobs", "--since", "yesterday")
    assert bad.returncode == 2 and "since" in bad.stderr

    shown = await cli(config, "show", failed["jobId"])
    assert shown.returncode == 0, shown.stderr
    assert "status    Failed" in shown.stdout and "file_not_found: Gone." in shown.stdout
    assert "events (2, oldest first):" in shown.stdout
    assert shown.stdout.index("Running  ") < shown.stdout.index("Failed  ")
    assert "Failed -> console (rule failures): sent" in shown.stdout and "  ok" in shown.stdout
    detail = json.loads((await cli(config, "show", failed["jobId"], "--json")).stdout)
    assert [e["status"] for e in detail["events"]] == ["Running", "Failed"]
    assert detail["notifications"][0]["state"] == "sent"
    unknown = await cli(config, "show", "01UNKNOWN0000000000000000")
    assert unknown.returncode == 1 and "no job" in unknown.stderr

    (delivery_id,) = db("SELECT id FROM deliveries")[0]
    again = await cli(config, "redeliver", str(delivery_id))
    assert (again.returncode, again.stdout.strip()) == (0, "1 notification put back to pending")
    await wait_for(db, "SELECT state, attempts FROM deliveries", [("sent", 2)])  # the running server sent it
    partly = await cli(config, "redeliver", str(delivery_id), "9999")
    assert partly.returncode == 1 and partly.stdout.strip() == "1 notification put back to pending"
    assert "no notification '9999'" in partly.stderr
    await wait_for(db, "SELECT state FROM deliveries", [("sent",)])

    db("UPDATE deliveries SET state = 'dead'")
    dead = await cli(config, "redeliver", "--dead")
    assert (dead.returncode, dead.stdout.strip()) == (0, "1 dead notification put back to pending")
    assert (await cli(config, "redeliver")).returncode == 2


async def test_jobs_on_an_empty_store(database_url: str, tmp_path: Path) -> None:
    result = await cli(config_for(tmp_path, database_url), "jobs")
    assert (result.returncode, result.stdout.strip()) == (0, "no jobs")


async def test_prune_keeps_jobs_in_flight_and_removes_old_finished_ones(
    make_client: MakeClient, db: Any, database_url: str, tmp_path: Path
) -> None:
    client = await make_client(rules=FAILED_TO_CONSOLE)
    config = config_for(tmp_path, database_url)
    in_flight = job(status="Running", lastUpdated=OLD + 10)  # old, but still running
    old_failed = job(status="Failed", lastUpdated=OLD + 20, error={"code": "x", "message": "y"})
    recent = job(status="Succeeded", lastUpdated=now_ms())
    await post(client, {**in_flight, "status": "Created", "lastUpdated": OLD})
    await post(client, in_flight)
    await post(client, {**old_failed, "status": "Created", "lastUpdated": OLD})
    await post(client, old_failed)
    await post(client, {**recent, "status": "Created", "lastUpdated": OLD})
    await post(client, recent)
    await wait_for(db, "SELECT state FROM deliveries", [("sent",)])

    pruned = await cli(config, "prune", "--older-than", str(CUTOFF))
    assert (pruned.returncode, pruned.stdout.strip()) == (0, "removed 4 events and 1 jobs")
    assert db("SELECT job_id, status FROM jobs ORDER BY last_updated") == [
        (in_flight["jobId"], "Running"),
        (recent["jobId"], "Succeeded"),
    ]
    assert db("SELECT job_id, status FROM events ORDER BY id") == [
        (in_flight["jobId"], "Running"),
        (recent["jobId"], "Succeeded"),
    ]
    assert db("SELECT count(*) FROM deliveries") == [(0,)]
    assert db("SELECT count(*) FROM delivery_attempts") == [(0,)]
    assert db("SELECT count(*) FROM outbox WHERE job_id = ?", old_failed["jobId"]) == [(0,)]
    shown = await cli(config, "show", in_flight["jobId"], "--json")
    assert json.loads(shown.stdout)["job"]["status"] == "Running"

    again = await cli(config, "prune", "--older-than", "90d")
    assert again.stdout.strip() == "removed 0 events and 0 jobs"
    bad = await cli(config, "prune", "--older-than", "a while")
    assert bad.returncode == 2 and "--older-than" in bad.stderr


async def test_export_jsonl_and_csv_carry_the_same_records(
    make_client: MakeClient, db: Any, database_url: str, tmp_path: Path
) -> None:
    client = await make_client()
    config = config_for(tmp_path, database_url)
    for i in range(100):
        payload = job(lastUpdated=OLD + i * 10)
        await post(client, payload)
        await post(client, {**payload, "status": "Running", "lastUpdated": OLD + i * 10 + 1})
        await post(
            client,
            {**payload, "status": "Failed", "lastUpdated": OLD + i * 10 + 2, "error": {"code": "c", "message": 'a,"b'}},
        )

    jsonl, as_csv = tmp_path / "events.jsonl", tmp_path / "events.csv"
    result = await cli(config, "export", "--output", str(jsonl))
    assert result.returncode == 0, result.stderr
    assert "exported 300 events" in result.stderr
    assert (await cli(config, "export", "--format", "csv", "--output", str(as_csv))).returncode == 0
    from_jsonl = [json.loads(line) for line in jsonl.read_text().splitlines()]
    with as_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    numbers = ("created", "lastUpdated", "attempts", "receivedAt")
    from_csv = [{k: (int(v) if k in numbers and v else v or None) for k, v in row.items()} for row in rows]
    assert len(from_jsonl) == 300 and from_csv == from_jsonl
    assert list(from_jsonl[0]) == [
        "jobId",
        "accountId",
        "jobType",
        "status",
        "created",
        "lastUpdated",
        "attempts",
        "error_code",
        "error_message",
        "receivedAt",
    ]
    assert from_jsonl[2]["error_message"] == 'a,"b' and from_jsonl[2]["status"] == "Failed"
    assert db("SELECT count(*) FROM events") == [(300,)]

    to_stdout = await cli(config, "export", "--since", str(OLD + 990))
    exported = [json.loads(line)["lastUpdated"] for line in to_stdout.stdout.splitlines()]
    assert exported == [OLD + 990, OLD + 991, OLD + 992]


async def test_retention_removes_old_events_in_a_running_app(
    make_client: MakeClient, db: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "RETENTION_FIRST_RUN", 1.0)
    monkeypatch.setattr(app_module, "RETENTION_INTERVAL", 0.1)
    caplog.set_level(logging.INFO, logger="jobhook")
    client = await make_client(retention={"events": str(CUTOFF)})
    in_flight = job(status="Running", lastUpdated=OLD + 1)
    finished = job(status="Succeeded", lastUpdated=OLD + 1)
    recent = job(lastUpdated=now_ms())
    for payload in (in_flight, finished):
        await post(client, {**payload, "status": "Created", "lastUpdated": OLD})
        await post(client, payload)
    await post(client, recent)

    await wait_for(db, "SELECT count(*) FROM events", [(2,)])
    assert db("SELECT job_id, status FROM events ORDER BY id") == [
        (in_flight["jobId"], "Running"),
        (recent["jobId"], "Created"),
    ]
    assert db("SELECT job_id FROM jobs ORDER BY last_updated") == [(in_flight["jobId"],), (recent["jobId"],)]
    assert any("retention: removed 3 events and 1 jobs" in r.getMessage() for r in caplog.records)
