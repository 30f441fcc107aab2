"""The single SQLite writer: one thread, one connection, group commit.

Requests hand their rows to `submit` on the event loop and await a future. The thread takes
everything queued since its last commit, writes it in one transaction, commits (and with
`synchronous=FULL`, fsyncs), then resolves the whole batch's futures with one
`call_soon_threadsafe`. No SQLite call ever runs on the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

log = logging.getLogger("jobhook.store")

Row = TypeVar("Row")
Result = TypeVar("Result")
T = TypeVar("T")

MAX_BATCH = 2000
_STOP = object()


class StoreUnavailable(Exception):
    """The store could not commit; the sender should retry later (HTTP 503)."""


BatchFn = Callable[[sqlite3.Connection, Sequence[Row]], list[Result]]
Connect = Callable[[], sqlite3.Connection]


class GroupCommitWriter(Generic[Row, Result]):
    """Serialises every write on one connection, committing queued rows as one transaction."""

    def __init__(self, connect: Connect, write_batch: BatchFn[Row, Result], loop: asyncio.AbstractEventLoop) -> None:
        self._connect = connect
        self._write_batch = write_batch
        self._loop = loop
        self._queue: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self._wake = threading.Event()
        self._sleeping = False
        self._thread = threading.Thread(target=self._run, name="jobhook-sqlite-writer", daemon=True)
        self._conn: sqlite3.Connection | None = None
        self.healthy = True
        self.on_commit: Callable[[int, float], None] | None = None

    # --- event loop side -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, row: Row) -> asyncio.Future[Result]:
        """Queue one row; the future resolves once its batch is durable (or fails with StoreUnavailable)."""
        future: asyncio.Future[Result] = self._loop.create_future()
        self._queue.append((row, future))
        if self._sleeping:
            self._wake.set()
        return future

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run `fn(conn)` in its own transaction on the writer thread."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.append((_Call(fn), future))
        self._wake.set()
        return future

    async def stop(self) -> None:
        """Finish what is queued, then close the connection."""
        self._queue.append((_STOP, self._loop.create_future()))
        self._wake.set()
        await asyncio.to_thread(self._thread.join)

    # --- writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._take()
            rows = [(item, fut) for item, fut in batch if not isinstance(item, _Call) and item is not _STOP]
            if rows:
                self._commit_rows(rows)
            for item, fut in batch:
                if isinstance(item, _Call):
                    self._run_call(item, fut)
            if any(item is _STOP for item, _ in batch):
                self._close()
                return

    def _take(self) -> list[tuple[Any, asyncio.Future[Any]]]:
        queue = self._queue
        while not queue:
            self._wake.clear()
            self._sleeping = True
            if not queue:
                self._wake.wait(1.0)
            self._sleeping = False
        batch: list[tuple[Any, asyncio.Future[Any]]] = []
        while queue and len(batch) < MAX_BATCH:
            batch.append(queue.popleft())
        return batch

    def _commit_rows(self, rows: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        started = time.perf_counter()
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                results: list[Any] = self._write_batch(conn, [row for row, _ in rows])
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        except sqlite3.Error as exc:
            self._failed(exc)
            error = StoreUnavailable(_describe(exc))
            self._loop.call_soon_threadsafe(_reject_all, [fut for _, fut in rows], error)
            return
        self.healthy = True
        self._loop.call_soon_threadsafe(_resolve_all, [fut for _, fut in rows], results)
        if self.on_commit is not None:
            self.on_commit(len(rows), time.perf_counter() - started)

    def _run_call(self, call: _Call, fut: asyncio.Future[Any]) -> None:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = call.fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        except sqlite3.Error as exc:
            self._failed(exc)
            self._loop.call_soon_threadsafe(_reject_all, [fut], StoreUnavailable(_describe(exc)))
        except Exception as exc:  # a bug in the call: hand it to the awaiting caller
            self._loop.call_soon_threadsafe(_reject_all, [fut], exc)
        else:
            self.healthy = True
            self._loop.call_soon_threadsafe(_resolve_all, [fut], [result])

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # The connection is in an unknown state (I/O error, file gone): start afresh next time.
            self._close()

    def _failed(self, exc: sqlite3.Error) -> None:
        if self.healthy:
            log.error("store cannot commit: %s", _describe(exc))
        self.healthy = False

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


class _Call:
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn


def _describe(exc: sqlite3.Error) -> str:
    return str(exc) or type(exc).__name__


def _resolve_all(futures: list[asyncio.Future[Any]], results: list[Any]) -> None:
    for fut, result in zip(futures, results, strict=True):
        if not fut.done():
            fut.set_result(result)


def _reject_all(futures: list[asyncio.Future[Any]], error: BaseException) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_exception(error)
