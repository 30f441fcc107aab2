"""The single SQLite writer: one thread, one connection, group commit.

Requests hand their rows to `submit` on the event loop and await a future; the delivery worker hands
its writes to `call`. The writer thread takes everything queued since its last commit, writes it in
one transaction (each call in a savepoint of its own), commits once (with `synchronous=FULL`, one
WAL fsync for the whole round), then resolves every future of the round with one
`call_soon_threadsafe`. No SQLite call ever runs on the loop's thread.

(A separate flusher thread that fsyncs batch N while batch N+1 is written, and WAL checkpoints on
a thread of their own, were both measured slower under `make bench`; see bench/README.md.)
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from receiver.tally import BATCH_SIZE_BUCKETS, COMMIT_SECONDS_BUCKETS, Histogram

log = logging.getLogger("jobhook.store")

Row = TypeVar("Row")
Result = TypeVar("Result")
T = TypeVar("T")

MAX_BATCH = 2000

BatchFn = Callable[[sqlite3.Connection, Sequence[Row]], list[Result]]
Connect = Callable[[], sqlite3.Connection]
# The futures a transaction answers, and either their results or the one error for all of them.
Settlement = tuple[list["asyncio.Future[Any]"], "list[Any] | BaseException"]


class StoreUnavailable(Exception):
    """The store could not commit; the sender should retry later (HTTP 503)."""


class _Call:
    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args


_STOP = object()


class GroupCommitWriter(Generic[Row, Result]):
    """Serialises every write on one connection, committing queued rows as one transaction."""

    def __init__(
        self,
        connect: Connect,
        write_batch: BatchFn[Row, Result],
        loop: asyncio.AbstractEventLoop,
        *,
        batch_sizes: Histogram | None = None,
        commit_seconds: Histogram | None = None,
    ) -> None:
        self._connect = connect
        self._write_batch = write_batch
        self._loop = loop
        self._queue: queue.SimpleQueue[tuple[Any, asyncio.Future[Any] | None]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="jobhook-sqlite-writer", daemon=True)
        self._conn: sqlite3.Connection | None = None
        self.healthy = True
        # Per committed round, for /metrics: items written (rows and calls) and BEGIN..COMMIT seconds.
        self.batch_sizes = batch_sizes or Histogram(BATCH_SIZE_BUCKETS)
        self.commit_seconds = commit_seconds or Histogram(COMMIT_SECONDS_BUCKETS)

    # --- event loop side -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, row: Row) -> asyncio.Future[Result]:
        """Queue one row; the future resolves once its batch is durable (or fails with StoreUnavailable)."""
        future: asyncio.Future[Result] = self._loop.create_future()
        self._queue.put((row, future))
        return future

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(conn, *args)` on the writer, atomically (a savepoint), committed with the next round.

        `fn` is a module-level function and `args` plain data (no closures), so a call can be shipped
        to a writer elsewhere than this thread.
        """
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((_Call(fn, args), future))
        return future

    async def stop(self) -> None:
        """Write what is queued, then close the connection."""
        self._queue.put((_STOP, None))
        await asyncio.to_thread(self._thread.join)

    # --- writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = self._take()
            stopping = any(item is _STOP for item, _ in batch)
            work = [(item, fut) for item, fut in batch if item is not _STOP]
            if work:
                self._loop.call_soon_threadsafe(_settle_all, self._commit_round(work))
        self._close()

    def _take(self) -> list[tuple[Any, asyncio.Future[Any] | None]]:
        batch = [self._queue.get()]
        try:
            while len(batch) < MAX_BATCH:
                batch.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return batch

    def _commit_round(self, work: list[tuple[Any, Any]]) -> list[Settlement]:
        """Everything queued, in ONE transaction and so one fsync: the rows, then each call in a savepoint.

        A failing call rolls back to its savepoint and fails alone; a failing commit fails everything.
        """
        rows = [(item, fut) for item, fut in work if not isinstance(item, _Call)]
        calls = [(item, fut) for item, fut in work if isinstance(item, _Call)]
        settlements: list[Settlement] = []
        try:
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    results: list[Any] = self._write_batch(conn, [row for row, _ in rows])
                    settlements.append(([fut for _, fut in rows], results))
                for call, fut in calls:
                    settlements.append(([fut], self._in_savepoint(conn, call)))
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        except sqlite3.Error as exc:
            error = self._failed(exc)
            return [([fut for _, fut in work], error)]
        except Exception as exc:  # a bug in the batch code: fail this round, keep the writer alive
            log.exception("writing a batch failed")
            return [([fut for _, fut in work], exc)]
        self.commit_seconds.observe(time.perf_counter() - started)
        self.batch_sizes.observe(len(work))
        if not self.healthy:
            log.warning("store commits again")
        self.healthy = True
        return settlements

    @staticmethod
    def _in_savepoint(conn: sqlite3.Connection, call: _Call) -> list[Any] | BaseException:
        conn.execute("SAVEPOINT call")
        try:
            result = call.fn(conn, *call.args)
        except sqlite3.OperationalError:
            raise  # locked, read-only, disk full: the whole round fails and is answered 503
        except Exception as exc:  # a bug or a constraint in this call: undo it alone
            conn.execute("ROLLBACK TO call")
            conn.execute("RELEASE call")
            return exc
        conn.execute("RELEASE call")
        return [result]

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # The connection is in an unknown state (I/O error, file gone): start afresh next time.
            self._close()

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        reason = str(exc) or type(exc).__name__
        if self.healthy:
            log.error("store cannot commit: %s", reason)
        self.healthy = False
        return StoreUnavailable(reason)

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error as exc:
                log.warning("closing the store: %s", exc)
            self._conn = None


def _settle_all(settlements: list[Settlement]) -> None:
    for futures, outcome in settlements:
        if isinstance(outcome, BaseException):
            for fut in futures:
                if not fut.done():
                    fut.set_exception(outcome)
        else:
            for fut, result in zip(futures, outcome, strict=True):
                if not fut.done():
                    fut.set_result(result)
