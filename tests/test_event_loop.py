"""`server.event_loop`: `jobhook serve` runs on uvloop by default, on asyncio when asked, and says which."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from receiver.cli import main
from receiver.event_loop import loop_factory
from receiver.settings import ConfigError, parse_settings
from tests import serve
from tests.jobs import job
from tests.test_cli import post


@pytest.mark.slow
@pytest.mark.parametrize(("server_keys", "expected"), [("", "uvloop"), ("event_loop: asyncio", "asyncio")])
def test_serve_runs_on_the_configured_loop_and_accepts_callbacks(
    tmp_path: Path, server_keys: str, expected: str
) -> None:
    port = serve.free_port()
    config = serve.write_config(tmp_path, port, server=server_keys)
    log = tmp_path / "serve.log"
    proc = serve.start(config, log)
    payload = job(status="Failed")
    try:
        serve.wait_healthy(port, proc)
        assert post(port, payload)[0] == 202
        assert serve.stop(proc) == 0  # SIGTERM through the loop's signal handler: a graceful stop
    finally:
        proc.kill()
    [listening] = [line for line in log.read_text().splitlines() if "listening on" in line]
    assert listening.endswith(f"event loop {expected})")
    # Stored by the SQLite writer process, reached through the loop's connect_accepted_socket.
    assert payload["jobId"] in serve.stored_job_ids(tmp_path / "data" / "jobhook.db")


def test_a_bad_event_loop_names_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings("server:\n  event_loop: trio\n", {})
    [problem] = caught.value.problems
    assert problem["field"] == "server.event_loop"
    assert "auto" in problem["message"] and "asyncio" in problem["message"]


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert loop_factory("auto") is not None  # installed here: a runtime dependency
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError from here on

    assert loop_factory("auto") is None and loop_factory("asyncio") is None
    with pytest.raises(ImportError):
        loop_factory("uvloop")
    assert parse_settings("server:\n  event_loop: auto\n", {}).server.event_loop == "auto"

    config = serve.write_config(tmp_path, 8080, server="event_loop: uvloop")
    assert main(["check-config", "--config", str(config)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"{config}: server.event_loop: ") and "uvloop cannot be imported" in line
