"""The single SQLite writer: a process of its own, one connection, group commit.

Requests hand their rows to `submit` on the event loop and await a future; the delivery worker hands
its writes to `call`. Whatever is submitted during one turn of the event loop travels to the writer
process as one frame over a socket pair. The writer process takes every frame that has arrived since
its last commit, writes them all in one transaction (each call in a savepoint of its own), commits
once (with `synchronous=FULL`, one WAL fsync for the whole round), and answers the round with one
frame, which resolves every future of the round in one callback on the loop.

Why a process rather than a thread: a writer thread's Python work (binding rows, deciding
transitions) and the event loop's request parsing took turns on one GIL, so each round ran in
lockstep with the loop. A process writes and fsyncs on the other core while the loop parses the
next requests: about 17% more events/s than the thread (bench/README.md). No SQLite call runs on
the loop's thread, and the loop never waits on the socket: it writes through a transport and reads
in `data_received`.

If the writer process dies, every frame in flight fails with `StoreUnavailable` (its senders get a
503 and retry; dedupe absorbs a commit that did happen) and the next write starts a new process.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import sqlite3
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Generic, NamedTuple, TypeVar

from receiver.tally import BATCH_SIZE_BUCKETS, COMMIT_SECONDS_BUCKETS, Histogram

log = logging.getLogger("jobhook.store")

Row = TypeVar("Row")
Result = TypeVar("Result")
T = TypeVar("T")

BatchFn = Callable[[sqlite3.Connection, Sequence[Row]], list[Result]]
Connect = Callable[[], sqlite3.Connection]

# A frame, either way, is multiprocessing.Connection's: a 4-byte big-endian length, then a pickle.
_HEADER = struct.Struct("!i")
# A request frame is a list of ops: ("rows", [row, ...]) or ("call", fn, args); or the single op ("stop",).
Op = tuple[Any, ...]
# A round's answer frame: ([answers of frame 1], [answers of frame 2], ...), items written, commit seconds.
# Each answer is ("ok", result) or ("error", exception), one per op, in order; None for a frame the
# writer could not read.
Answer = tuple[str, Any]
RoundAnswer = tuple[list[list[Answer] | None], int, float]
_STOP: list[Op] = [("stop",)]
_READ_SIZE = 1 << 20
# Rows per frame: a burst of requests goes out in frames of this many, so the writer commits the first
# while the loop still parses the rest. Measured 8-24 alike and about 10% more events/s than one frame
# per turn of the loop (bench/README.md, "Why ingest stops near half of bare aiohttp").
FRAME_ROWS = 16


class StoreUnavailable(Exception):
    """The store could not commit; the sender should retry later (HTTP 503)."""


class CallFailed(Exception):
    """A writer call failed with an error that cannot cross the process boundary as itself."""


# --- the writer process ---------------------------------------------------------------------------


def serve_writer(channel: Connection, connect: Connect, write_batch: BatchFn[Any, Any]) -> None:
    """The writer process: take every waiting frame, commit them as one round, answer, repeat.

    It ignores SIGINT: a Ctrl-C reaches the whole process group, and the server stops its writer itself,
    with a stop frame after the last batch. It ends too when the server's end of the socket closes.
    """
    # The modules this process forked with stay shared with its fork server: the cycle collector never
    # walks (and so never copies) them.
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    frames = _Frames(socket.socket(fileno=os.dup(channel.fileno())))
    channel.close()
    db: sqlite3.Connection | None = None
    try:
        while True:
            try:
                received = [_unpickle(frame) for frame in frames.take()]
            except (EOFError, OSError):
                return  # the server is gone (or was killed): nobody is left to answer
            work = [ops for ops in received if ops != _STOP]
            if work:
                readable = [ops for ops in work if ops is not None]
                answer: RoundAnswer = ([], 0, 0.0)
                if db is None and readable:
                    try:
                        db = connect()
                    except sqlite3.Error as exc:
                        answer = _failed_round(readable, StoreUnavailable(_reason(exc)))
                if db is not None and readable:
                    answer, usable = _commit_round(db, readable, write_batch)
                    if not usable:
                        _close(db)
                        db = None
                try:
                    frames.send(_dumps(_with_unreadable(work, answer)))
                except OSError:
                    return  # the server is gone
            if len(work) < len(received):
                return
    finally:
        if db is not None:
            _close(db)


class _Frames:
    """The writer's end of the socket pair: every whole frame that has arrived, in as few reads as it takes.

    A blocking read waits for the first bytes, then reads that would block end the drain: a round of
    frames costs a system call or two, not a poll and two reads per frame (multiprocessing's Connection).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(_frame_bytes(data))

    def take(self) -> list[bytearray]:
        """Wait for at least one whole frame; return all whole frames received. EOFError once the peer closed."""
        while True:
            self._receive(blocking=True)
            while self._receive(blocking=False):
                pass
            frames = _whole_frames(self._buffer)
            if frames:
                return frames

    def _receive(self, *, blocking: bool) -> bool:
        try:
            data = self.sock.recv(_READ_SIZE, 0 if blocking else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not data:
            raise EOFError
        self._buffer += data
        return True


def _whole_frames(buffer: bytearray) -> list[bytearray]:
    """Take every whole frame off the front of `buffer`; a partial one stays for the next read."""
    start = 0
    frames: list[bytearray] = []
    while len(buffer) - start >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buffer, start)
        end = start + _HEADER.size + size
        if len(buffer) < end:
            break
        frames.append(buffer[start + _HEADER.size : end])
        start = end
    del buffer[:start]
    return frames


def _unpickle(data: bytearray) -> list[Op] | None:
    """One frame's ops; None when they cannot be unpickled here (a function this process cannot import)."""
    try:
        ops: list[Op] = pickle.loads(data)
    except Exception:
        return None
    return ops


def _with_unreadable(work: list[list[Op] | None], answer: RoundAnswer) -> RoundAnswer:
    """Put an answer of None back in place of each frame the writer could not read."""
    answers = iter(answer[0])
    return [None if ops is None else next(answers) for ops in work], answer[1], answer[2]


def _commit_round(
    db: sqlite3.Connection, work: list[list[Op]], write_batch: BatchFn[Any, Any]
) -> tuple[RoundAnswer, bool]:
    """Every frame of the round in ONE transaction, so one fsync: all rows first, then each call in a
    savepoint. A failing call rolls back to its savepoint and fails alone; a failing commit fails all.

    Returns the round's answer and whether the connection is still usable.
    """
    rows = [row for ops in work for op in ops if op[0] == "rows" for row in op[1]]
    calls = sum(1 for ops in work for op in ops if op[0] == "call")
    started = time.perf_counter()
    usable = True
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            results = iter(write_batch(db, rows) if rows else [])
            answers: list[list[Answer] | None] = [
                [("ok", [next(results) for _ in op[1]]) if op[0] == "rows" else _in_savepoint(db, op) for op in ops]
                for ops in work
            ]
            db.execute("COMMIT")
        except BaseException:
            usable = _rollback(db)
            raise
    except sqlite3.Error as exc:
        return _failed_round(work, StoreUnavailable(_reason(exc))), usable
    except Exception:  # a bug in the batch code: fail this round, keep the writer alive
        return _failed_round(work, CallFailed(traceback.format_exc())), usable
    return (answers, len(rows) + calls, time.perf_counter() - started), True


def _failed_round(work: list[list[Op]], error: Exception) -> RoundAnswer:
    return [[("error", error)] * len(ops) for ops in work], 0, 0.0


def _in_savepoint(db: sqlite3.Connection, op: Op) -> Answer:
    _, fn, args = op
    db.execute("SAVEPOINT call")
    try:
        result = fn(db, *args)
    except sqlite3.OperationalError:
        raise  # locked, read-only, disk full: the whole round fails and is answered 503
    except Exception as exc:  # a bug or a constraint in this call: undo it alone
        db.execute("ROLLBACK TO call")
        db.execute("RELEASE call")
        return ("error", exc)
    db.execute("RELEASE call")
    return ("ok", result)


def _rollback(db: sqlite3.Connection) -> bool:
    """Roll back; False when the connection is in an unknown state (I/O error, file gone)."""
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        return False
    return True


def _dumps(answer: RoundAnswer) -> bytes:
    """Pickle the answer; an exception that cannot be pickled travels as CallFailed with its text."""
    try:
        return pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
    except Exception:
        frames, items, seconds = answer
        portable = [None if answers is None else [_portable(a) for a in answers] for answers in frames]
        return pickle.dumps((portable, items, seconds), pickle.HIGHEST_PROTOCOL)


def _portable(answer: Answer) -> Answer:
    try:
        pickle.dumps(answer)
    except Exception:
        value = answer[1]
        return ("error", CallFailed(f"{type(value).__name__}: {value}"))
    return answer


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _close(db: sqlite3.Connection) -> None:
    try:
        db.close()
    except sqlite3.Error as exc:
        log.warning("closing the store: %s", exc)


# --- the event loop side --------------------------------------------------------------------------


class _Channel(asyncio.Protocol):
    """Reads answer frames off the socket and hands each to the writer; reports a lost process."""

    def __init__(self, on_answer: Callable[[RoundAnswer], None], on_lost: Callable[[], None]) -> None:
        self._on_answer = on_answer
        self._on_lost = on_lost
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        for frame in _whole_frames(self._buffer):
            self._on_answer(pickle.loads(frame))

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()


class GroupCommitWriter(Generic[Row, Result]):
    """Serialises every write through one writer process, committing queued work as one transaction."""

    def __init__(
        self,
        connect: Connect,
        write_batch: BatchFn[Row, Result],
        loop: asyncio.AbstractEventLoop,
        *,
        stall_seconds: float = 15.0,
        batch_sizes: Histogram | None = None,
        commit_seconds: Histogram | None = None,
    ) -> None:
        # Both are pickled to the writer process: module-level functions or partials of them.
        self._connect = connect
        self._write_batch = write_batch
        self._loop = loop
        self._ops: list[Op] = []  # submitted during this turn of the loop, not yet sent
        self._waiting: list[_Waiting] = []  # per op of `_ops`
        self._flush_scheduled = False
        self._in_flight: deque[_Sent] = deque()  # per frame sent, oldest first
        # A round unanswered this long means a writer that hangs (a stopped process, a stuck disk): its senders
        # get 503 rather than wait forever, and new writes fail at once until the writer answers again.
        self._stall_seconds = stall_seconds
        self._watchdog: asyncio.TimerHandle | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._transport: asyncio.Transport | None = None
        self._starting: asyncio.Task[None] | None = None
        self._stopping = False
        self._gone: asyncio.Future[None] | None = None
        self.healthy = True
        # Per committed round, for /metrics: items written (rows and calls) and BEGIN..COMMIT seconds.
        self.batch_sizes = batch_sizes or Histogram(BATCH_SIZE_BUCKETS)
        self.commit_seconds = commit_seconds or Histogram(COMMIT_SECONDS_BUCKETS)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the writer process and connect to it."""
        ours, theirs = multiprocessing.Pipe(duplex=True)
        process = _CONTEXT.Process(
            target=serve_writer,
            args=(theirs, self._connect, self._write_batch),
            name="jobhook-sqlite-writer",
            daemon=True,
        )
        await asyncio.to_thread(_start_without_main, process)
        theirs.close()
        sock = socket.socket(fileno=os.dup(ours.fileno()))
        ours.close()
        self._gone = self._loop.create_future()
        gone = self._gone
        transport, _ = await self._loop.connect_accepted_socket(
            lambda: _Channel(self._answered, lambda: self._lost(gone)), sock
        )
        self._process, self._transport = process, transport
        if self._watchdog is None:
            self._watch()

    async def stop(self) -> None:
        """Write what is queued, then stop the writer process (which closes its connection)."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        self._flush()
        transport, gone = self._transport, self._gone
        if transport is not None and gone is not None:
            transport.write(_frame(_STOP))
            try:
                await asyncio.wait_for(gone, self._stall_seconds)
            except TimeoutError:  # a writer that hangs must not hang the server's shutdown too
                log.error("the store writer did not stop within %g s; killing it", self._stall_seconds)
                if self._process is not None:
                    self._process.kill()
        if self._process is not None:
            await asyncio.to_thread(self._process.join)
            self._process = None

    def _restart(self) -> None:
        """Start a new writer process in the background, after the previous one died."""
        if self._starting is None and not self._stopping:
            self._starting = self._loop.create_task(self._start_again(), name="store-writer-restart")

    async def _start_again(self) -> None:
        try:
            if self._process is not None:
                await asyncio.to_thread(self._process.join)
            await self.start()
            log.warning("store writer process restarted")
        except Exception:
            log.exception("cannot start the store writer process")
        finally:
            self._starting = None

    @property
    def pid(self) -> int | None:
        """The writer process's id, while it runs."""
        return self._process.pid if self._process is not None and self._transport is not None else None

    # --- writes ----------------------------------------------------------------------------
    def submit(self, row: Row) -> asyncio.Future[Result]:
        """Queue one row; the future resolves once its round is durable (or fails with StoreUnavailable)."""
        future: asyncio.Future[Result] = self._loop.create_future()
        ops = self._ops
        if ops and ops[-1][0] == "rows":
            ops[-1][1].append(row)
            self._waiting[-1].futures.append(future)
            if len(ops[-1][1]) >= FRAME_ROWS:
                self._flush()
                return future
        else:
            ops.append(("rows", [row]))
            self._waiting.append(_Waiting(True, [future]))
        self._wrote()
        return future

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(conn, *args)` in the writer, atomically (a savepoint), committed with the next round.

        `fn` is a module-level function and `args` plain data (no closures): both are pickled to the
        writer process.
        """
        future: asyncio.Future[T] = self._loop.create_future()
        self._ops.append(("call", fn, args))
        self._waiting.append(_Waiting(False, [future]))
        self._wrote()
        return future

    def _wrote(self) -> None:
        """Send at the end of this turn of the loop, with whatever else it submits by then."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what this turn of the loop submitted, as one frame."""
        self._flush_scheduled = False
        ops, waiting = self._ops, self._waiting
        if not ops:
            return
        self._ops, self._waiting = [], []
        transport = self._transport
        if transport is None or transport.is_closing():
            self._restart()
            _fail(waiting, StoreUnavailable("the store writer is not running"))
            return
        if self._stalled():
            _fail(waiting, self._stall_error())
            return
        try:
            frame = _frame(ops)
        except Exception as exc:  # something unpicklable was passed: a bug, not an outage
            _fail(waiting, CallFailed(f"cannot send to the store writer: {exc}"))
            return
        transport.write(frame)
        self._in_flight.append(_Sent(time.monotonic(), waiting))

    def _stalled(self) -> bool:
        return bool(self._in_flight) and time.monotonic() - self._in_flight[0].at > self._stall_seconds

    def _stall_error(self) -> StoreUnavailable:
        return StoreUnavailable(f"the store writer has not answered for {self._stall_seconds:g} s")

    def _watch(self) -> None:
        """Fail every round in flight once the oldest has waited `stall_seconds` (checked each second, or more often).

        The writer may still commit them later (an answer to a failed future is dropped): their senders were
        told 503, retry, and dedupe answers the retry.
        """
        if self._stalled():
            error = self._stall_error()
            self._unhealthy(str(error))
            for sent in self._in_flight:
                _fail(sent.waiting, error)
        self._watchdog = self._loop.call_later(min(1.0, self._stall_seconds / 2), self._watch)

    # --- answers ---------------------------------------------------------------------------
    def _answered(self, answer: RoundAnswer) -> None:
        frames, items, seconds = answer
        if items:
            self.commit_seconds.observe(seconds)
            self.batch_sizes.observe(items)
        for answers in frames:
            frame = self._in_flight.popleft().waiting
            if answers is None:
                _fail(frame, CallFailed("the store writer could not read this write (an unknown function?)"))
                continue
            for waiting, (kind, value) in zip(frame, answers, strict=True):
                if kind != "ok":
                    if isinstance(value, StoreUnavailable):
                        self._unhealthy(str(value))
                    elif waiting.rows:
                        log.error("writing a batch failed: %s", value)
                    _fail([waiting], value)
                    continue
                if not self.healthy:
                    log.warning("store commits again")
                    self.healthy = True
                results = value if waiting.rows else [value]
                for future, result in zip(waiting.futures, results, strict=True):
                    if not future.done():
                        future.set_result(result)

    def _lost(self, gone: asyncio.Future[None]) -> None:
        """The writer process closed its end: stopped as asked, or died. Fail whatever was in flight."""
        if not gone.done():
            gone.set_result(None)
        self._transport = None
        error = StoreUnavailable("the store writer process exited")
        if self._in_flight or not self._stopping:
            self._unhealthy(str(error))
        while self._in_flight:
            _fail(self._in_flight.popleft().waiting, error)

    def _unhealthy(self, reason: str) -> None:
        if self.healthy:
            log.error("store cannot commit: %s", reason)
        self.healthy = False


class _Sent(NamedTuple):
    """A frame in flight: when it was sent (time.monotonic), and the futures of its ops."""

    at: float
    waiting: list[_Waiting]


class _Waiting(NamedTuple):
    """The futures of one op: every row of a rows op, or the one future of a call."""

    rows: bool
    futures: list[asyncio.Future[Any]]


def _fail(waiting: list[_Waiting], error: BaseException) -> None:
    for item in waiting:
        for future in item.futures:
            if not future.done():
                future.set_exception(error)


def _start_without_main(process: multiprocessing.process.BaseProcess) -> None:
    """Start the writer without multiprocessing re-importing the main script in it.

    multiprocessing runs the parent's main script again in each child, and `jobhook`'s script imports the
    whole server (aiohttp, apprise, Jinja2: about 35 MB) that the writer never uses. With no `__file__` on
    `__main__` while the child is prepared, it skips that step.
    """
    main = sys.modules["__main__"]
    path = main.__dict__.pop("__file__", None)
    try:
        process.start()
    finally:
        if path is not None:
            main.__file__ = path


def _frame(payload: Any) -> bytes:
    return _frame_bytes(pickle.dumps(payload, pickle.HIGHEST_PROTOCOL))


def _frame_bytes(data: bytes) -> bytes:
    return _HEADER.pack(len(data)) + data


def _preloaded_context() -> multiprocessing.context.ForkServerContext:
    """Writer processes fork from a server that has already imported the store, so each starts in ms."""
    context = multiprocessing.get_context("forkserver")
    assert isinstance(context, multiprocessing.context.ForkServerContext)
    context.set_forkserver_preload(["receiver.store.sqlite"])
    return context


_CONTEXT = _preloaded_context()
