"""`server.event_loop`: `jobhook serve` runs on uvloop by default, on asyncio when asked, and says which."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from receiver.cli import main
from receiver.event_loop import loop_factory
from receiver.settings import ConfigError, parse_settings
from tests import serve
from tests.bytescale_fake import BytescaleFake
from tests.jobs import job
from tests.peers import JsonSink, Recorded, wait_until
from tests.test_cli import post


def sent(requests: list[Recorded], job_ids: set[str]) -> set[str]:
    """Which of `job_ids` the sink has been sent a message about."""
    return {job_id for r in requests for job_id in job_ids if job_id in r.json()["message"]}


@pytest.mark.slow
@pytest.mark.parametrize(("server_keys", "expected"), [("", "uvloop"), ("event_loop: asyncio", "asyncio")])
async def test_serve_on_each_loop_takes_callbacks_polls_and_delivers(
    tmp_path: Path, server_keys: str, expected: str
) -> None:
    """Everything `serve` runs on its loop: intake and the SQLite writer process (connect_accepted_socket), the
    poller (aiohttp client), the worker's apprise sends in threads, and SIGTERM's graceful stop."""
    async with BytescaleFake() as fake, JsonSink() as sink:
        polled = fake.start_job(outcome="Failed")
        port = serve.free_port()
        extra = (
            f"targets: {{hook: '{sink.url()}'}}\n"
            "rules: [{match: {status: Failed}, notify: hook}]\n"
            f"sources: {{bytescale: {json.dumps(fake.source())}}}\n"
        )
        config = serve.write_config(tmp_path, port, extra, server=server_keys)
        log = tmp_path / "serve.log"
        proc = serve.start(config, log)
        pushed = job(status="Failed", error={"code": "boom", "message": "It broke."})
        try:
            await asyncio.to_thread(serve.wait_healthy, port, proc)
            assert (await asyncio.to_thread(post, port, pushed))[0] == 202
            notified = {pushed["jobId"], polled.job_id}
            await wait_until(lambda: notified == sent(sink.requests, notified), within=30)
            assert await asyncio.to_thread(serve.stop, proc) == 0  # SIGTERM through the loop's signal handler
        finally:
            proc.kill()
    [listening] = [line for line in log.read_text().splitlines() if "listening on" in line]
    assert listening.endswith(f"event loop {expected})")
    assert notified <= serve.stored_job_ids(tmp_path / "data" / "jobhook.db")


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
