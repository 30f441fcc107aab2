"""The `jobhook` command as a user runs it: a real process, real signals, real exit codes."""

from __future__ import annotations

import json
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


def wait_until_delivered(db: Path) -> None:
    for _ in range(200):
        with sqlite3.connect(db) as conn:
            if conn.execute("SELECT count(*) FROM deliveries WHERE state = 'sent'").fetchone() == (1,):
                return
        time.sleep(0.05)
    raise TimeoutError("the delivery worker did not send the transition")


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
        wait_until_delivered(tmp_path / "data" / "jobhook.db")
        assert serve.stop(proc) == 0
    finally:
        proc.kill()
    stored = serve.stored_job_ids(tmp_path / "data" / "jobhook.db")
    assert stored == {SEED_EXAMPLE["jobId"], running["jobId"]}
    text = log.read_text()
    assert "auth.mode none" in text
    assert f"Cancelled: DeleteFileBatchJob {SEED_EXAMPLE['jobId']}" in text  # the console target


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_check_config_rejects_bad_urls_rules_and_templates_without_leaking(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yaml",
        (
            "auth: {mode: token, secrets: ['']}\n"
            "targets:\n"
            "  ops: slakc://Pl4ntedS3cret/B/C\n"
            "  mail: mailto://user:Pl4ntedS3cret@127.0.0.1:2525?from=jobs@example.com&to=a@example.com\n"
            "rules:\n"
            "  - match: {status: Faild}\n"
            "    notify: [ops, pager]\n"
            "    title: '{{ job.jobId '\n"
        ),
    )
    result = jobhook("check-config", "--config", str(config))
    assert result.returncode == 2
    fields = [line.split(": ")[1] for line in result.stderr.strip().splitlines()]
    assert fields == ["auth.secrets[0]", "targets.ops", "rules[0].notify", "rules[0].match.status", "rules[0].title"]
    assert "Pl4ntedS3cret" not in result.stdout + result.stderr


def test_test_rule_exit_codes_and_rendered_message(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yaml",
        (
            "rules:\n"
            "  - name: failed-jobs\n"
            "    match: {status: Failed}\n"
            "    notify: console\n"
            "    title: '{{ job.jobType }} {{ job.jobId }} failed'\n"
        ),
    )
    failed = write(tmp_path / "failed.json", json.dumps(job(status="Failed", error={"code": "boom", "message": "m"})))
    result = jobhook("test-rule", "--config", str(config), str(failed))
    assert result.returncode == 0, result.stderr
    assert "rule failed-jobs -> target console (failure)" in result.stdout
    assert "title: CopyFileBatchJob" in result.stdout

    running = write(tmp_path / "running.json", json.dumps(job(status="Running")))
    result = jobhook("test-rule", "--config", str(config), str(running))
    assert result.returncode == 1
    assert "no rule matches" in result.stdout

    bad = write(tmp_path / "bad.json", json.dumps(job(status="Done")))
    result = jobhook("test-rule", "--config", str(config), str(bad))
    assert result.returncode == 2
    assert "status" in result.stderr


def test_send_test_reports_success_and_redacted_failure(tmp_path: Path) -> None:
    down = serve.free_port()
    config = write(
        tmp_path / "c.yaml",
        (
            "delivery: {timeout: 5s}\n"
            "targets:\n"
            f"  down: 'json://user:Pl4ntedS3cret@127.0.0.1:{down}/hook?+X-Api-Key=Pl4ntedK3y'\n"
        ),
    )
    ok = jobhook("send-test", "--config", str(config), "console")
    assert ok.returncode == 0, ok.stderr
    assert "sent to console" in ok.stdout
    assert "jobhook test message" in ok.stderr  # the console target logs it

    failed = jobhook("send-test", "--config", str(config), "down")
    assert failed.returncode == 1
    assert "sending to down failed" in failed.stderr
    output = failed.stdout + failed.stderr
    assert "Pl4ntedS3cret" not in output and "Pl4ntedK3y" not in output

    unknown = jobhook("send-test", "--config", str(config), "nope")
    assert unknown.returncode == 2
    assert "configured: console, down" in unknown.stderr
