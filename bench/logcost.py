"""What one intake log line costs: the request id, the response header and the INFO line, per request.

Measured in this process with the logging `jobhook serve` sets up (queue + writer thread, redaction
filter, stderr sent to /dev/null), side by side:

- the request path alone: CPU time of the calling thread (what the event loop pays), INFO on and off;
- the same calls until the writer thread has written every line: CPU time of the whole process (what the
  line costs in all; in a GIL-bound process the writer's share also comes out of ingest);
- the stdlib QueueHandler as jobhook used it before (format, redact and copy on the caller's thread).

Reproduce: `.venv/bin/python -m bench.logcost [--count N]`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import logging.handlers
import os
import queue
import sys
import time
from collections.abc import Callable, Sequence

from aiohttp import web

from notifiers.redaction import RedactingFilter, Redactor
from receiver.intake import ANSWER_LOG
from receiver.logs import FORMATS, TEXT_FORMAT, Lines, LogFormat, configure_logging
from receiver.requestid import REQUEST_ID, request_id

JOB_ID, STATUS = "01ARZ3NDEKTSV4RRFFQ69G5FAV", "Failed"
REDACTOR = Redactor(["a-configured-secret-0001", "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="])
log = logging.getLogger("jobhook.intake")
answer_lines = Lines(log, ANSWER_LOG)


def one_request() -> None:
    """What `JobIntake.receive` adds per request."""
    rid = request_id({})
    response = web.Response(status=202)
    response.headers[REQUEST_ID] = rid
    answer_lines.emit(rid, 202, "accepted", JOB_ID, STATUS)


def record_per_line() -> None:
    """The same through a logger call: a LogRecord per line (jobhook's intake before `Lines`)."""
    rid = request_id({})
    response = web.Response(status=202)
    response.headers[REQUEST_ID] = rid
    if log.isEnabledFor(logging.INFO):
        log.info(ANSWER_LOG, rid, 202, "accepted", JOB_ID, STATUS)


def baseline() -> None:
    """The same response without any of it."""
    web.Response(status=202)


def per_call(fn: Callable[[], None], count: int, repeats: int = 5) -> float:
    """CPU time of the calling thread, best of `repeats` runs, in µs per call (CPU, not wall: the machine is
    shared, and the writer thread's share is counted by `until_written`)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        for _ in range(count):
            fn()
        best = min(best, time.thread_time() - start)
    return best / count * 1e6


def until_written(fn: Callable[[], None], count: int, start_logging: Callable[[], Callable[[], None]]) -> float:
    """CPU time of the whole process (every thread), µs per call, until every line is written; best of 3."""
    best = float("inf")
    for _ in range(3):
        stop = start_logging()
        start = time.process_time()
        for _ in range(count):
            fn()
        stop()  # drains the queue: every line written
        best = min(best, time.process_time() - start)
    return best / count * 1e6


def old_pipeline() -> Callable[[], None]:
    """jobhook's logging before: the stdlib QueueHandler formats, redacts and copies on the caller."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter(TEXT_FORMAT))
    listener = logging.handlers.QueueListener(records, writer)
    enqueue = logging.handlers.QueueHandler(records)
    enqueue.setFormatter(logging.Formatter("%(message)s"))
    enqueue.addFilter(RedactingFilter(REDACTOR))
    root = logging.getLogger()
    root.handlers = [enqueue]
    listener.start()
    return listener.stop


def new_pipeline(log_format: LogFormat) -> Callable[[], None]:
    logging.getLogger().handlers = []
    writer, stop = configure_logging("INFO", log_format)
    writer.addFilter(RedactingFilter(REDACTOR))
    return stop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logcost", description=__doc__)
    parser.add_argument("--count", type=int, default=20_000, help="calls per measurement")
    args = parser.parse_args(argv)
    out = sys.stdout
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the log lines go nowhere; only their cost counts
    base = per_call(baseline, args.count)
    base_total = until_written(baseline, args.count, lambda: lambda: None)
    rows: list[tuple[str, float, float | None]] = []
    for log_format in FORMATS:
        stop = new_pipeline(log_format)
        on_loop = per_call(one_request, args.count)
        stop()
        total = until_written(one_request, args.count, functools.partial(new_pipeline, log_format))
        rows.append((f"INFO on, --log-format {log_format}", on_loop, total))
    stop = new_pipeline("text")
    on_loop = per_call(record_per_line, args.count)
    stop()
    total = until_written(record_per_line, args.count, functools.partial(new_pipeline, "text"))
    rows.append(("INFO on, a LogRecord per line as before `Lines` (text)", on_loop, total))
    stop = new_pipeline("text")
    logging.getLogger().setLevel(logging.WARNING)
    rows.append(("INFO off (--log-level WARNING)", per_call(one_request, args.count), None))
    stop()
    stop = old_pipeline()
    logging.getLogger().setLevel(logging.INFO)
    on_loop = per_call(one_request, args.count)
    stop()
    rows.append(
        (
            "INFO on, the stdlib QueueHandler as before (text)",
            on_loop,
            until_written(one_request, args.count, old_pipeline),
        )
    )
    print(
        f"CPU per request over a bare web.Response(202) ({base:.2f} µs); best runs of {args.count} calls.\n", file=out
    )
    print("| what | added on the request path, µs | added until written, µs |", file=out)
    print("|---|---:|---:|", file=out)
    for name, path_cost, all_threads in rows:
        written = "" if all_threads is None else f"{all_threads - base_total:.2f}"
        print(f"| {name} | {path_cost - base:.2f} | {written} |", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
