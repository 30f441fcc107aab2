"""Logs: one line per intake answer with its request id, text or JSON, secrets masked in both."""

from __future__ import annotations

import json
import logging
import re
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from notifiers.redaction import RedactingFilter, Redactor
from receiver.cli import _parser
from receiver.logs import TEXT_FORMAT, JsonFormatter, Lines, Template, TextFormatter, configure_logging
from receiver.requestid import MAX_LENGTH, request_id
from tests import serve
from tests.conftest import AppClient
from tests.jobs import body, job
from tests.test_intake import JSON, URL

GENERATED = re.compile(r"[0-9a-f]{8}-[0-9a-f]+")


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("7d0c9a4e-1b2f-4c1e-9a55-0f2b9c6d1e11", True),  # a UUID
        ("01ARZ3NDEKTSV4RRFFQ69G5FAV", True),  # a ULID
        ("edge.proxy:42_a-b", True),
        ("x" * MAX_LENGTH, True),
        ("x" * (MAX_LENGTH + 1), False),
        ("", False),
        ("two words", False),
        ("forged\nINFO line", False),
        ('quote"', False),
        ("ünïcode", False),
        ("a=b;c", False),
    ],
)
def test_an_incoming_request_id_is_kept_only_when_sane(given: str, kept: bool) -> None:
    rid = request_id({"X-Request-Id": given})
    assert (rid == given) is kept
    if not kept:
        assert GENERATED.fullmatch(rid)


def test_generated_ids_share_a_process_prefix_and_never_repeat() -> None:
    ids = [request_id({}) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert len({rid.split("-")[0] for rid in ids}) == 1
    assert all(GENERATED.fullmatch(rid) for rid in ids)


def test_log_format_is_accepted_before_and_after_the_command() -> None:
    parse = _parser().parse_args
    assert parse(["serve"]).log_format == "text"
    assert parse(["serve", "--log-format", "json"]).log_format == "json"
    assert parse(["--log-format", "json", "jobs"]).log_format == "json"
    assert parse(["--log-format", "json", "serve", "--log-format", "text"]).log_format == "text"
    assert parse(["serve"]).log_level == "INFO" and parse(["serve", "--log-level", "WARNING"]).log_level == "WARNING"
    with pytest.raises(SystemExit):
        parse(["serve", "--log-format", "xml"])


def _record(msg: object, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("Bearer abcdef123456 in a traceback")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord("jobhook.intake", logging.INFO, __file__, 1, msg, args, exc_info)


def test_json_lines_carry_a_templates_arguments_as_fields() -> None:
    record = _record(Template("request %s: %d %s", "request_id", "http_status", "outcome"), "r-1", 202, "accepted")
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "request r-1: 202 accepted"
    assert (line["request_id"], line["http_status"], line["outcome"]) == ("r-1", 202, "accepted")
    assert (line["level"], line["logger"]) == ("INFO", "jobhook.intake")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    plain = json.loads(JsonFormatter().format(_record("store open at %s", "sqlite:///x.db")))
    assert plain["message"] == "store open at sqlite:///x.db" and "request_id" not in plain


@pytest.mark.parametrize("exc", [False, True])
def test_text_lines_are_what_the_stdlib_formatter_writes(exc: bool) -> None:
    text = TextFormatter()
    for created in (1_800_000_000.0, 1_800_000_000.999, 1_800_000_001.5):  # the cached second moves on
        record = _record("store open at %s", "sqlite:///x.db", exc=exc)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert text.format(record) == logging.Formatter(TEXT_FORMAT).format(record)


ANSWER = Template("request %s: %d %s", "request_id", "http_status", "outcome")


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
def test_a_queued_line_reads_as_the_record_a_logger_call_makes(formatter: type[TextFormatter | JsonFormatter]) -> None:
    for created in (1_800_000_000.0, 1_800_000_000.999, 1_800_000_001.5):
        record = _record(ANSWER, "r-1", 202, "accepted")
        record.created, record.msecs = created, (created - int(created)) * 1000
        line = formatter().format_line(created, "jobhook.intake", ANSWER, ("r-1", 202, "accepted"))
        assert line == formatter().format(record)


@pytest.fixture
def configured(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """For `configure_logging` as `jobhook` calls it (to stderr): what it wrote; the root logger restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield lambda: capsys.readouterr().err
    finally:
        root.handlers, root.level = handlers, level


def _configure(level: str, log_format: str = "text") -> tuple[logging.Handler, Any]:
    logging.getLogger().handlers = []  # pytest's capture handlers would make basicConfig a no-op
    return configure_logging(level, log_format)  # type: ignore[arg-type]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_queued_lines_are_written_redacted_beside_records(configured: Callable[[], str], log_format: str) -> None:
    secret = "S3cret-value-in-a-line"
    handler, stop = _configure("INFO", log_format)
    handler.addFilter(RedactingFilter(Redactor([secret])))
    lines = Lines(logging.getLogger("jobhook.intake"), ANSWER)
    logging.getLogger("jobhook").info("listening")
    for n in range(3):
        lines.emit(f"r-{n}", 202, "accepted")
    lines.emit(secret, 200, "duplicate")
    stop()
    written = configured()
    assert secret not in written
    rows = written.splitlines()
    assert len(rows) == 5
    if log_format == "json":
        entries = [json.loads(row) for row in rows]
        assert [e["message"] for e in entries] == [
            "listening", "request r-0: 202 accepted", "request r-1: 202 accepted", "request r-2: 202 accepted",
            "request ****: 200 duplicate",
        ]  # fmt: skip
        assert entries[1]["request_id"] == "r-0" and entries[1]["http_status"] == 202
    else:
        assert rows[0].endswith(" INFO jobhook: listening")
        assert rows[1].endswith(" INFO jobhook.intake: request r-0: 202 accepted")
        assert rows[4].endswith(" INFO jobhook.intake: request ****: 200 duplicate")


def test_queued_lines_follow_the_loggers_level(configured: Callable[[], str]) -> None:
    _, stop = _configure("WARNING")
    Lines(logging.getLogger("jobhook.intake"), ANSWER).emit("r-1", 202, "accepted")
    stop()
    assert configured() == ""


def test_redaction_covers_message_fields_and_tracebacks_in_json() -> None:
    secret = "S3cret-value-in-a-field"
    record = _record(Template("request %s: %s", "request_id", "outcome"), secret, "accepted", exc=True)
    assert RedactingFilter(Redactor([secret])).filter(record)
    text = JsonFormatter().format(record)
    line = json.loads(text)
    assert secret not in text and "abcdef123456" not in text
    assert line["request_id"] == "****" and line["outcome"] == "accepted"
    assert line["message"] == "request ****: accepted"
    assert "RuntimeError" in line["exception"]


async def test_each_intake_answer_is_one_info_line_with_the_request_id(
    client: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobhook.intake")
    payload = job(status="Failed", error={"code": "e", "message": "m"})
    resp = await client.post(URL, data=body(payload), headers={**JSON, "X-Request-Id": "lb-7f3a"})
    assert resp.status == 202 and resp.headers["X-Request-Id"] == "lb-7f3a"
    resp = await client.post(URL, data=body(payload), headers=JSON)
    duplicate_id = resp.headers["X-Request-Id"]
    assert resp.status == 200 and GENERATED.fullmatch(duplicate_id)
    resp = await client.post(URL, data=b'{"jobId": 1}', headers={**JSON, "X-Request-Id": "bad id"})
    rejected_id = resp.headers["X-Request-Id"]
    assert resp.status == 422 and rejected_id != "bad id"

    lines = [r.getMessage() for r in caplog.records if r.name == "jobhook.intake"]
    job_id = payload["jobId"]
    assert lines == [
        f"request lb-7f3a: 202 accepted jobId={job_id} status=Failed",
        f"request {duplicate_id}: 200 duplicate jobId={job_id} status=Failed",
        f"request {rejected_id}: 422 invalid_payload jobId=- status=-",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "jobhook.intake")


async def test_no_intake_line_below_info(client: AppClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="jobhook.intake")
    resp = await client.post(URL, data=body(job()), headers=JSON)
    assert resp.status == 202 and resp.headers["X-Request-Id"]
    assert not [r for r in caplog.records if r.name == "jobhook.intake"]


async def test_other_routes_echo_the_request_id(client: AppClient) -> None:
    for method, path in (("GET", "/api/jobs"), ("GET", "/nowhere"), ("PUT", "/healthz"), ("DELETE", "/api/jobs")):
        resp = await client.request(method, path, headers={"X-Request-Id": "trace-1"})
        assert resp.headers.get("X-Request-Id") == "trace-1", (method, path, resp.status)


@pytest.mark.slow
def test_serve_writes_json_lines_with_request_ids(tmp_path: Path) -> None:
    port = serve.free_port()
    config = serve.write_config(tmp_path, port)
    log = tmp_path / "serve.log"
    proc = serve.start(config, log, "--log-format", "json")
    payload = job(status="Cancelled")
    try:
        serve.wait_healthy(port, proc)
        headers = {"Content-Type": "application/json", "X-Request-Id": "from-the-proxy-1"}
        request = urllib.request.Request(f"http://127.0.0.1:{port}{URL}", body(payload), headers)
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 202 and resp.headers["X-Request-Id"] == "from-the-proxy-1"
        assert serve.stop(proc) == 0
    finally:
        proc.kill()
    lines: list[dict[str, Any]] = [json.loads(line) for line in log.read_text().splitlines()]  # every line is JSON
    [answer] = [line for line in lines if line.get("request_id") == "from-the-proxy-1"]
    assert answer["logger"] == "jobhook.intake" and answer["level"] == "INFO"
    assert (answer["http_status"], answer["outcome"]) == (202, "accepted")
    assert (answer["job_id"], answer["job_status"]) == (payload["jobId"], "Cancelled")
    assert any(line["message"].startswith("listening on") for line in lines)
