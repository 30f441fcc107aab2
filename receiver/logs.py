"""Log output for every command: text (the default) or one JSON object per line, written off the event loop.

Records are handed to a background thread as they are: formatting, redaction (`RedactingFilter`,
attached by `cli.main` once the settings name the secrets) and the write all happen there, a batch of
lines per write, so a log call on the event loop costs only the record itself. Log arguments are
therefore formatted later, on that thread: pass values (str, int), not objects that change afterwards.

A `Template` message names its arguments, so JSON lines carry them as fields (`request_id`, `job_id`,
...) while text lines read as ordinary sentences; pairing names with values also happens on the
logging thread, never on the request path.

A line per request takes `Lines` instead of a logger call: the request path queues the arguments and
the time (no LogRecord), and the thread formats the whole pass's lines and redacts their text at once.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections import deque
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

    def with_millis(self, created: float, separator: str) -> str:
        """Down to the millisecond, as a LogRecord's `msecs` counts them."""
        return f"{self(created)}{separator}{int((created - int(created)) * 1000):03d}"


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT` with the stdlib's time stamp (`2026-11-29 17:20:05,123`, local time)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._seconds = _PerSecond("%Y-%m-%d %H:%M:%S", self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._seconds.with_millis(record.created, ",")

    def format_line(self, created: float, name: str, template: Template, args: tuple[Any, ...]) -> str:
        """An INFO line of `Lines`: what `format` makes of the record `logger.info(template, *args)` would."""
        return f"{self._seconds.with_millis(created, ',')} INFO {name}: {template % args}"

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

    def format_line(self, created: float, name: str, template: Template, args: tuple[Any, ...]) -> str:
        """An INFO line of `Lines`: what `format` makes of the record `logger.info(template, *args)` would."""
        entry = {
            "time": f"{self._seconds.with_millis(created, '.')}Z",
            "level": "INFO",
            "logger": name,
            "message": template % args,
        }
        for field, value in zip(template.fields, args, strict=False):
            entry.setdefault(field, value)
        return json.dumps(entry, default=str)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{self._seconds.with_millis(record.created, '.')}Z",
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


class Lines:
    """INFO lines of one `Template` on one logger, made for a line per request.

    `logger.info` makes a LogRecord on the event loop (about 3 µs), and the log thread then filters and
    formats each record on its own, under the GIL the loop needs (another 3 to 6 µs). `emit` queues only
    the time and the arguments; the thread formats a pass's lines in one go and runs the handler's
    filters (the redaction) once over their joined text. So the arguments are the same plain values a
    logger call takes, and no line may hold a newline: it would be split as it is redacted. A pass's
    lines are written after that pass's records, so they may trail other records by up to a pass.

    Without `configure_logging` (tests, another program using the package) `emit` is `logger.info`.
    """

    def __init__(self, logger: logging.Logger, template: Template) -> None:
        self.logger, self.template = logger, template

    def emit(self, *args: Any) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        queued = _lines
        if queued is None:
            self.logger.info(self.template, *args)
        else:
            queued.append((time.time(), self, args))


QueuedLine = tuple[float, Lines, tuple[Any, ...]]
# Where `Lines.emit` queues while `configure_logging`'s thread runs (deque: append and popleft are atomic).
_lines: deque[QueuedLine] | None = None


class _Enqueue(logging.handlers.QueueHandler):
    """Hands the record over untouched: the stdlib version formats and copies it on the caller's thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_STOP = logging.makeLogRecord({"msg": "stop"})
MAX_BATCH = 4096
POLL_SECONDS = 0.02  # a line is written at most this much later; each pass holds the GIL for a batch


class _Writer(threading.Thread):
    """Takes every record and `Lines` line queued so far, formats them, and writes them in one call.

    One write (and one flush) per pass instead of per line: under load that is a system call for many
    log lines, not one each.
    """

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord],
        lines: deque[QueuedLine],
        handler: logging.StreamHandler[TextIO],
        formatter: TextFormatter | JsonFormatter,
    ) -> None:
        super().__init__(name="jobhook-log", daemon=True)
        self.records = records
        self.lines = lines
        self.handler = handler
        self.formatter = formatter  # also the handler's

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
            stopping = _STOP in batch
            text = self._records_text([record for record in batch if record is not _STOP])
            text += self._lines_text(everything=stopping)
            if not text:
                continue
            try:
                self.handler.stream.write(text)
                self.handler.stream.flush()
            except Exception:
                self.handler.handleError(batch[-1] if batch else logging.makeLogRecord({"msg": "log lines"}))

    def _records_text(self, batch: list[logging.LogRecord]) -> str:
        lines = []
        for record in batch:
            try:
                if self.handler.filter(record):
                    lines.append(self.handler.format(record) + "\n")
            except Exception:
                self.handler.handleError(record)
        return "".join(lines)

    def _lines_text(self, *, everything: bool) -> str:
        """The queued `Lines` lines, formatted, then filtered (redacted) as one text."""
        queued, format_line = self.lines, self.formatter.format_line
        lines: list[str] = []
        while queued and (everything or len(lines) < MAX_BATCH):
            created, source, args = queued.popleft()
            lines.append(format_line(created, source.logger.name, source.template, args) + "\n")
        if not lines:
            return ""
        joined = logging.makeLogRecord({"name": "jobhook", "levelno": logging.INFO, "msg": "".join(lines)})
        try:
            return joined.getMessage() if self.handler.filter(joined) else ""
        except Exception:
            self.handler.handleError(joined)
            return ""

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
    global _lines
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    lines: deque[QueuedLine] = deque()
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    handler.setFormatter(formatter)
    writer = _Writer(records, lines, handler, formatter)
    enqueue = _Enqueue(records)
    # Dropped at our handler, not by level: apprise still captures its messages into each send's result.
    enqueue.addFilter(lambda record: not record.name.startswith("apprise"))
    logging.basicConfig(level=level, handlers=[enqueue])
    writer.start()
    _lines = lines

    def stop() -> None:
        global _lines
        if _lines is lines:
            _lines = None  # later lines go the way of later records
        writer.stop()

    return handler, stop
