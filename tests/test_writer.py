"""The writer process: group commit across frames, calls, failures that cross the process boundary,
a writer that dies (503, then a new writer), and Ctrl-C reaching the process group."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sqlite3
import sys
import types
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from receiver.keys import STORE
from receiver.store.writer import CallFailed, GroupCommitWriter, StoreUnavailable
from tests.conftest import MakeClient
from tests.jobs import body, job
from tests.peers import wait_until
from tests.test_intake import assert_envelope

# --- module-level functions: the writer process imports them by name ----------------------------


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS items (value TEXT PRIMARY KEY)")
    return conn


def insert(conn: sqlite3.Connection, values: Sequence[str]) -> list[bool]:
    """A batch: True for each value stored, False for a repeat (within the batch or before it)."""
    return [conn.execute("INSERT OR IGNORE INTO items VALUES (?)", (v,)).rowcount == 1 for v in values]


def count(conn: sqlite3.Connection, prefix: str) -> int:
    (n,) = conn.execute("SELECT count(*) FROM items WHERE value LIKE ?", (prefix + "%",)).fetchone()
    return int(n)


class Unpicklable(Exception):
    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("cannot pickle this")


def fail_plainly(conn: sqlite3.Connection, value: str) -> None:
    conn.execute("INSERT INTO items VALUES (?)", (value,))
    raise ValueError(f"no thanks: {value}")


def fail_unpicklably(conn: sqlite3.Connection) -> None:
    raise Unpicklable("a lock or a socket inside")


async def started(tmp_path: Path, **options: float) -> GroupCommitWriter[str, bool]:
    """A running writer of `insert` batches into `w.db` (`options`: GroupCommitWriter's, e.g. stall_seconds)."""
    writer: GroupCommitWriter[str, bool] = GroupCommitWriter(
        functools.partial(connect, tmp_path / "w.db"), insert, asyncio.get_running_loop(), **options
    )
    await writer.start()
    return writer


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[GroupCommitWriter[str, bool]]:
    writer = await started(tmp_path)
    yield writer
    await writer.stop()


async def test_rows_from_many_frames_get_their_own_answers(writer: GroupCommitWriter[str, bool]) -> None:
    first = [writer.submit(f"v{i}") for i in range(100)]
    await asyncio.sleep(0)  # a later turn of the loop: another frame
    second = [writer.submit(f"v{i}") for i in range(50, 150)]
    assert await asyncio.gather(*first) == [True] * 100
    assert await asyncio.gather(*second) == [False] * 50 + [True] * 50
    assert await writer.call(count, "v") == 150
    assert sum(writer.batch_sizes.counts) >= 1 and writer.healthy


async def test_a_failing_call_fails_alone_and_is_undone(writer: GroupCommitWriter[str, bool]) -> None:
    before = writer.submit("kept")
    failing = writer.call(fail_plainly, "undone")
    after = writer.submit("kept too")
    with pytest.raises(ValueError, match="no thanks: undone"):
        await failing
    assert await asyncio.gather(before, after) == [True, True]
    assert await writer.call(count, "undone") == 0
    with pytest.raises(CallFailed, match="Unpicklable: a lock or a socket inside"):
        await writer.call(fail_unpicklably)
    assert await writer.call(count, "kept") == 2


async def test_a_write_the_writer_cannot_run_fails_alone(writer: GroupCommitWriter[str, bool]) -> None:
    def closure(conn: sqlite3.Connection) -> None:  # not importable by name: cannot be sent at all
        raise AssertionError("never runs")

    only_here = types.ModuleType("jobhook_test_only_here")  # importable here, unknown to the writer process
    exec("def touch(conn):\n    return 1", only_here.__dict__)
    sys.modules[only_here.__name__] = only_here
    try:
        with pytest.raises(CallFailed, match="cannot send"):
            await writer.call(closure)
        with pytest.raises(CallFailed, match="could not read"):
            await writer.call(only_here.touch)
    finally:
        del sys.modules[only_here.__name__]
    assert await writer.submit("writer still fine") is True


async def test_stop_writes_what_is_queued(tmp_path: Path) -> None:
    writer = await started(tmp_path)
    pending = [writer.submit(f"late{i}") for i in range(20)]
    await writer.stop()
    assert await asyncio.gather(*pending) == [True] * 20
    with sqlite3.connect(tmp_path / "w.db") as conn:
        assert count(conn, "late") == 20


async def test_ctrl_c_to_the_process_group_does_not_stop_the_writer(writer: GroupCommitWriter[str, bool]) -> None:
    assert await writer.submit("serving") is True  # past start-up: its own signal handling is in place
    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGINT)
    await asyncio.sleep(0.2)
    assert await writer.submit("still here") is True


async def test_a_stalled_writer_answers_503_and_recovers_when_it_moves_again(tmp_path: Path) -> None:
    writer = await started(tmp_path, stall_seconds=0.5)
    try:
        assert await writer.submit("before") is True
        assert writer.pid is not None
        os.kill(writer.pid, signal.SIGSTOP)  # a hung writer: alive, silent
        try:
            held = writer.submit("held")
            with pytest.raises(StoreUnavailable, match=r"has not answered for 0\.5 s"):
                await asyncio.wait_for(held, 5)
            assert not writer.healthy
            with pytest.raises(StoreUnavailable, match="has not answered"):  # at once, not after another wait
                await asyncio.wait_for(writer.submit("meanwhile"), 0.2)
        finally:
            os.kill(writer.pid, signal.SIGCONT)
        await wait_until(lambda: writer.healthy, 5)  # its answer to the held round (dropped) shows it moves again
        assert await writer.submit("after") is True
        # The held row was written once the writer moved again: the sender's retry finds it there.
        assert await writer.submit("held") is False
        assert await writer.call(count, "meanwhile") == 0
    finally:
        await writer.stop()


async def test_stop_does_not_hang_on_a_writer_that_hangs(tmp_path: Path) -> None:
    writer = await started(tmp_path, stall_seconds=0.5)
    assert await writer.submit("before") is True
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    await asyncio.wait_for(writer.stop(), 5)  # waits its stall time, then kills the writer
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


async def test_a_dead_writer_fails_what_it_held_and_a_new_one_takes_over(
    writer: GroupCommitWriter[str, bool],
) -> None:
    assert await writer.submit("before") is True
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: writer.pid is None, within=10)
    assert not writer.healthy
    with pytest.raises(StoreUnavailable, match="not running"):  # not acknowledged: the sender retries
        await writer.submit("during")
    for _ in range(200):  # that write started a new writer process in the background
        try:
            assert await writer.submit("after") is True
            break
        except StoreUnavailable:
            await asyncio.sleep(0.05)
    assert writer.pid not in (None, pid) and writer.healthy
    assert await writer.call(count, "") == 2


async def test_the_app_answers_503_while_its_writer_is_gone_then_recovers(make_client: MakeClient) -> None:
    client = await make_client()
    writer = client.app[STORE].writer
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    statuses = []
    payload = job()
    for _ in range(400):
        resp = await client.post("/webhooks/jobs", data=body(payload), headers={"Content-Type": "application/json"})
        statuses.append(resp.status)
        if resp.status == 503:
            assert resp.headers["Retry-After"]
            assert_envelope(await resp.json(), "store_unavailable")
        elif resp.status == 202:
            break
        await asyncio.sleep(0.02)
    assert statuses[-1] == 202 and set(statuses) <= {503, 202}
    assert writer.pid not in (None, pid)
    assert (await client.get("/readyz")).status == 200
