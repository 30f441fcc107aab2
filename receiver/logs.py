"""Log output for every command: text (the default) or one JSON object per line, written off the event loop.

Records are handed to a background thread as they are: formatting, redaction (`RedactingFilter`,
attached by `cli.main` once the settings name the secrets) and the write all happen there, a batch of
lines per write, so a log call on the event loop costs only the record itself. Log arguments are
therefore formatted later, on that thread: pass values (str, int), not objects that change afterwards.

A `Template` message names its arguments, so JSON lines carry them as fields (`request_id`, `job_id`,
...) while text lines read as ordinary sentences; pairing names with values also happens on the
logging thread, never on the request path.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Template(str):
    """A %-format message whose arguments are also named fields: `Template("job %s", "job_id")`."""

    fields: tuple[str, ...]

    def __new__(cls, text: str, *fields: str) -> Template:
        self = super().__new__(cls, text)
        self.fields = fields
        return self


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The named arguments of a `Template` record (or what a filter already put in `record.fields`)."""
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        return fields
    names = getattr(record.msg, "fields", None)
    if not names or not isinstance(record.args, tuple):
        return {}
    return dict(zip(names, record.args, strict=False))


class _PerSecond:
    """A time stamp's text up to the second, made once per second: under load there is a line per request."""

    def __init__(self, pattern: str, convert: Callable[[float], time.struct_time]) -> None:
        self.pattern, self.convert = pattern, convert
        self.second, self.text = -1, ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.second, self.text = second, time.strftime(self.pattern, self.convert(created))
        return self.text


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT` with the stdlib's time stamp (`2026-11-29 17:20:05,123`, local time)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._seconds = _PerSecond("%Y-%m-%d %H:%M:%S", self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        """What `logging.Formatter.format` makes of TEXT_FORMAT, in one f-string."""
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, the template's fields, exception."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _PerSecond("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{self._seconds(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record_fields(record).items():
            entry.setdefault(name, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


class _Enqueue(logging.handlers.QueueHandler):
    """Hands the record over untouched: the stdlib version formats and copies it on the caller's thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_STOP = logging.makeLogRecord({"msg": "stop"})
MAX_BATCH = 4096
POLL_SECONDS = 0.02  # a line is written at most this much later; each pass holds the GIL for a batch


class _Writer(threading.Thread):
    """Takes every record queued so far, filters and formats them with `handler`, and writes them in one call.

    One write (and one flush) per batch instead of per line: under load that is a system call for many
    log lines, not one each.
    """

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord], handler: logging.StreamHandler[TextIO]) -> None:
        super().__init__(name="jobhook-log", daemon=True)
        self.records = records
        self.handler = handler

    def run(self) -> None:
        stopping = False
        while not stopping:
            # Poll instead of blocking in get(): a blocked reader is woken by every put, which under load
            # means a thread switch and a GIL hand-off per request (measured: ingest fell by a third).
            time.sleep(POLL_SECONDS)
            batch: list[logging.LogRecord] = []
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self.records.get_nowait())
                except queue.Empty:
                    break
            lines = []
            for record in batch:
                if record is _STOP:
                    stopping = True
                    continue
                try:
                    if self.handler.filter(record):
                        lines.append(self.handler.format(record) + "\n")
                except Exception:
                    self.handler.handleError(record)
            if not lines:
                continue
            try:
                self.handler.stream.write("".join(lines))
                self.handler.stream.flush()
            except Exception:
                self.handler.handleError(batch[-1])

    def stop(self) -> None:
        """Write everything queued before this call, then end."""
        self.records.put(_STOP)
        self.join()


def configure_logging(level: str, log_format: LogFormat = "text") -> tuple[logging.Handler, Callable[[], None]]:
    """Route every record through a queue to a thread that formats and writes it to stderr.

    Returns the handler whose filters and formatter the writing thread applies (add filters there) and a
    stop function that writes what is queued. apprise's own logger is dropped at the queue: it prints
    URLs with their credentials half masked, and every send failure already reaches our log, redacted,
    through the delivery worker.
    """
    # The logging HOWTO's "Optimization" switches: no caller frame walk, thread or process lookup per
    # record (no format of ours shows them).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    writer = _Writer(records, handler)
    enqueue = _Enqueue(records)
    # Dropped at our handler, not by level: apprise still captures its messages into each send's result.
    enqueue.addFilter(lambda record: not record.name.startswith("apprise"))
    logging.basicConfig(level=level, handlers=[enqueue])
    writer.start()
    return handler, writer.stop
