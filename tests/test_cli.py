"""The `jobhook` command as a user runs it: a real process, real signals, real exit codes."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests import serve
from tests.jobs import SEED_EXAMPLE, job


def jobhook(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parent.parent)},
    )


def post(port: int, payload: object) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/jobs",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def wait_until_processed(db: Path) -> None:
    for _ in range(200):
        with sqlite3.connect(db) as conn:
            if conn.execute("SELECT count(*) FROM outbox WHERE processed_at IS NULL").fetchone() == (0,):
                return
        time.sleep(0.05)
    raise TimeoutError("the outbox worker did not process the transition")


def test_check_config_ok_and_problems(tmp_path: Path) -> None:
    good = serve.write_config(tmp_path, 8080)
    result = jobhook("check-config", "--config", str(good))
    assert (result.returncode, result.stdout.strip()) == (0, "configuration ok")

    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: high\ndelivery:\n  backoff_max: later\nrules:\n  - match: {}\n")
    result = jobhook("check-config", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[1] for line in lines] == ["server.port", "rules[0].notify", "delivery.backoff_max"]
    assert all(line.startswith(f"{bad}: ") for line in lines)


def test_serve_refuses_unauthenticated_non_loopback(tmp_path: Path) -> None:
    config = tmp_path / "open.yaml"
    config.write_text("server: {host: 0.0.0.0}\nauth: {mode: none}\n")
    result = jobhook("serve", "--config", str(config))
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr


def test_serve_acknowledges_durably_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = serve.free_port()
    config = serve.write_config(tmp_path, port)
    log = tmp_path / "serve.log"
    proc = serve.start(config, log)
    try:
        serve.wait_healthy(port, proc)
        assert post(port, SEED_EXAMPLE)[0] == 202
        assert post(port, SEED_EXAMPLE) == (
            200,
            {"accepted": True, "duplicate": True, "jobId": SEED_EXAMPLE["jobId"], "status": "Cancelled"},
        )
        running = job(status="Running")
        assert post(port, running)[0] == 202
        wait_until_processed(tmp_path / "data" / "jobhook.db")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    with sqlite3.connect(tmp_path / "data" / "jobhook.db") as conn:
        stored = {row[0] for row in conn.execute("SELECT job_id FROM events")}
    assert stored == {SEED_EXAMPLE["jobId"], running["jobId"]}
    text = log.read_text()
    assert "auth.mode none" in text
    assert "Cancelled" in text  # the outbox worker logged the terminal transition
