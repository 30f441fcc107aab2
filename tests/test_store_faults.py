"""Store faults on a real `jobhook serve` process (issue 6 item 3): disk full, read-only database file, lock held
by another process. While the fault lasts intake answers 503 with Retry-After and never 2xx; once it clears,
the server recovers by itself (no restart) and nothing it acknowledged is lost (rows counted in the file).

- Disk full: RLIMIT_FSIZE lowered to 0 on the running server and its processes with prlimit(2). CPython
  ignores SIGXFSZ, so every write to the database files fails with EFBIG, exactly where a full disk fails
  them; raising the limit again clears the fault. Works unprivileged and in CI, no mount needed.
- Read-only: the server runs without CAP_DAC_OVERRIDE (dropped from its bounding set when the tests run as
  root, who would otherwise ignore file modes), and is started on a database whose files and folder were
  made read-only; making them writable again clears the fault.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import serve
from tests.conftest import release
from tests.jobs import job

JSON = {"Content-Type": "application/json"}
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _without_dac_override() -> None:
    """In the child before exec: root without DAC override obeys file modes like any user."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


class Poster:
    """Posts jobs and remembers every one the server acknowledged (2xx)."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.url = f"http://127.0.0.1:{port}/webhooks/jobs"
        self.acked: set[str] = set()

    async def post(self, payload: dict[str, Any]) -> tuple[int, Any, str | None]:
        async with self.session.post(self.url, data=json.dumps(payload), headers=JSON) as resp:
            answer = await resp.json()
            if resp.status in (200, 202):
                self.acked.add(payload["jobId"])
            return resp.status, answer, resp.headers.get("Retry-After")

    async def all_accepted(self, jobs: list[dict[str, Any]]) -> None:
        """Every post with no fault: 202."""
        assert all(s == 202 for s, _, _ in await asyncio.gather(*(self.post(j) for j in jobs)))

    async def refused_while_faulty(self, jobs: list[dict[str, Any]]) -> None:
        """Every post during the fault: 503, `store_unavailable`, a positive Retry-After; never 2xx."""
        for status, answer, retry_after in await asyncio.gather(*(self.post(j) for j in jobs)):
            assert status == 503, answer
            assert answer["error"]["code"] == "store_unavailable"
            assert retry_after is not None and int(retry_after) > 0

    async def retried_until_accepted(self, jobs: list[dict[str, Any]], within: float = 60) -> None:
        """The senders' retries after the fault clears: each is accepted, with no restart."""
        pending = list(jobs)

        async def retry() -> bool:
            results = await asyncio.gather(*(self.post(j) for j in pending))
            pending[:] = [j for j, (status, _, _) in zip(pending, results, strict=True) if status not in (200, 202)]
            return not pending

        deadline = asyncio.get_running_loop().time() + within
        while not await retry():
            assert asyncio.get_running_loop().time() < deadline, f"{len(pending)} still refused after {within} s"
            await asyncio.sleep(0.2)


@asynccontextmanager
async def poster(port: int) -> AsyncIterator[Poster]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield Poster(session, port)


async def ready(port: int) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as resp:
        return resp.status


def jobs(count: int) -> list[dict[str, Any]]:
    return [
        job(status="Failed", error={"code": "x", "message": "m"}) if i % 3 == 0 else job(status="Running")
        for i in range(count)
    ]


@pytest.mark.slow
async def test_disk_full_answers_503_then_recovers_by_itself(tmp_path: Path) -> None:
    port = serve.free_port()
    config = serve.write_config(tmp_path, port, database="busy_timeout: 500ms")
    proc = serve.start(config, tmp_path / "serve.log")
    try:
        await asyncio.to_thread(serve.wait_healthy, port, proc)
        async with poster(port) as client:
            before = jobs(60)
            await client.all_accepted(before)

            _, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
            for pid in serve.process_tree(proc.pid):  # the disk is full, for the server and its writer process
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
            during = jobs(40)
            for chunk in (during[:20], during[20:]):
                await client.refused_while_faulty(chunk)
            assert await ready(port) == 503

            for pid in serve.process_tree(proc.pid):  # space again
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
            await client.retried_until_accepted(during)
            assert await ready(port) == 200
            after = jobs(20)
            await client.all_accepted(after)
    finally:
        serve.stop(proc)
    stored = serve.stored_job_ids(tmp_path / "data" / "jobhook.db")
    assert client.acked == {j["jobId"] for j in before + during + after}
    assert client.acked <= stored, f"{len(client.acked - stored)} acknowledged events lost"


def set_writable(folder: Path, writable: bool) -> None:
    for path in folder.iterdir():
        path.chmod(0o644 if writable else 0o444)
    folder.chmod(0o755 if writable else 0o555)


@pytest.mark.slow
async def test_read_only_database_answers_503_then_recovers_by_itself(tmp_path: Path) -> None:
    port = serve.free_port()
    config = serve.write_config(tmp_path, port, database="busy_timeout: 500ms")
    log = tmp_path / "serve.log"
    data = tmp_path / "data"
    proc = serve.start(config, log, preexec=_without_dac_override)
    try:
        await asyncio.to_thread(serve.wait_healthy, port, proc)
        async with poster(port) as client:
            before = jobs(30)
            await client.all_accepted(before)
        serve.stop(proc)

        set_writable(data, False)  # the database file, its WAL files and their folder
        proc = serve.start(config, log, preexec=_without_dac_override)
        await asyncio.to_thread(serve.wait_healthy, port, proc)  # it serves, though it cannot store
        async with poster(port) as client:
            client.acked |= {j["jobId"] for j in before}
            during = jobs(20)
            await client.refused_while_faulty(during)
            assert await ready(port) == 503

            set_writable(data, True)
            await client.retried_until_accepted(during)
            assert await ready(port) == 200
    finally:
        set_writable(data, True)
        serve.stop(proc)
    assert "Traceback" not in log.read_text()
    assert client.acked == {j["jobId"] for j in before + during}
    assert client.acked <= serve.stored_job_ids(data / "jobhook.db")


@pytest.mark.slow
async def test_lock_held_by_another_process_answers_503_then_recovers(tmp_path: Path, lock_holder: Any) -> None:
    port = serve.free_port()
    config = serve.write_config(tmp_path, port, database="busy_timeout: 300ms")  # the lock_holder's database
    proc = serve.start(config, tmp_path / "serve.log")
    try:
        await asyncio.to_thread(serve.wait_healthy, port, proc)
        async with poster(port) as client:
            before = jobs(30)
            await client.all_accepted(before)
            holder = lock_holder()
            during = jobs(30)
            for chunk in (during[:15], during[15:]):
                await client.refused_while_faulty(chunk)
            assert await ready(port) == 503
            release(holder)
            await client.retried_until_accepted(during)
            assert await ready(port) == 200
    finally:
        serve.stop(proc)
    assert client.acked == {j["jobId"] for j in before + during}
    assert client.acked <= serve.stored_job_ids(tmp_path / "data" / "jobhook.db")
