"""Fuzzing the HTTP surface (SPEC §6 "bad input"): no 5xx, an envelope on every error, healthy afterwards.

- hypothesis over methods, paths, queries, headers and bodies against the real app (create_app on a tmp
  SQLite file), with and without authentication;
- hypothesis over raw bytes on a socket to a real `jobhook serve` process, for what aiohttp's HTTP parser
  refuses before any handler runs (bad request lines, header bytes, Content-Length, chunked framing);
- schemathesis against the app's own GET /openapi.json on a real `jobhook serve` process.

Example counts are sized so the whole suite stays quick on 2 shared cores; every run draws new examples.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from tests import serve
from tests.conftest import AppClient, MakeClient
from tests.jobs import body, job

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
KNOWN_PATHS = [
    "/webhooks/jobs",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/",
    "/api/jobs",
    "/api/notifications",
    "/api/watch",
    "/jobs/01TEST00000000000000000001",
    "/login",
    "/logout",
    "/notifications/1/redeliver",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
MEDIA_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "application/vnd.x+json",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    ";;;",
    "application/",
    "",
]
SECRET = "fuzz-token-0123456789abcdef"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def assert_envelope(status: int, raw: bytes) -> None:
    assert status < 500, raw[:300]
    if status >= 400:
        try:
            answer = json.loads(raw)
        except ValueError:
            raise AssertionError(f"{status} answered without the envelope: {raw[:300]!r}") from None
        assert set(answer) == {"error"}, answer
        assert set(answer["error"]) == {"code", "message", "details"}, answer
        assert answer["error"]["code"] and answer["error"]["message"], answer


def _mutated_job() -> st.SearchStrategy[Any]:
    """Valid jobs with one field replaced by anything JSON can hold."""
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )
    keys = st.sampled_from([*job().keys(), "error", "jobUrl", "jobDocs", "extra"])
    return st.builds(lambda k, v: {**job(), k: v}, keys, values)


BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    _mutated_job().map(lambda j: json.dumps(j).encode()),
    st.builds(lambda: body(job())),
    st.recursive(st.none() | st.integers() | st.text(), lambda i: st.lists(i) | st.dictionaries(st.text(), i)).map(
        lambda v: json.dumps(v).encode()
    ),
)
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(MEDIA_TYPES) | HEADER_TEXT,
        "Authorization": st.sampled_from([f"Bearer {SECRET}", "Bearer", "Basic eDp5", ""]) | HEADER_TEXT,
        "webhook-id": HEADER_TEXT,
        "webhook-timestamp": st.integers(-(2**70), 2**70).map(str) | HEADER_TEXT,
        "webhook-signature": st.sampled_from(["v1,", "v1,AAAA", "v2,x v1,y", ""]) | HEADER_TEXT,
        "Accept": st.sampled_from(["text/html", "*/*", "application/json", "application/json, text/html"]),
        "Origin": st.sampled_from(["http://127.0.0.1", "http://evil.example"]),
        "Sec-Fetch-Site": st.sampled_from(["same-origin", "cross-site"]),
        "Cookie": st.sampled_from(["jobhook_session=1.abc", "jobhook_session=99999999999." + "0" * 64]),
    },
)
TEXT = st.text()
PATHS = st.one_of(
    st.sampled_from(KNOWN_PATHS),
    st.builds(
        lambda p, t: p + quote(t, safe=""), st.sampled_from(["/api/jobs/", "/api/notifications/", "/"]), st.text()
    ),
    st.builds(lambda t: f"/api/notifications/{quote(t, safe='')}/redeliver", st.text(max_size=30)),
)
QUERIES = st.dictionaries(
    st.sampled_from(["status", "jobType", "accountId", "since", "until", "limit", "cursor", "state", "x"]),
    st.text(max_size=40),
    max_size=4,
)


@pytest.mark.parametrize(
    "sections",
    [
        {"auth": {"mode": "none"}},
        {"auth": {"mode": "token", "secrets": [SECRET]}},
        {"auth": {"mode": "standard-webhooks", "secrets": [WHSEC]}},
    ],
    ids=["open", "token", "standard-webhooks"],
)
@FUZZ
@given(method=st.sampled_from(METHODS), path=PATHS, query=QUERIES, headers=HEADERS, data=BODIES)
async def test_any_request_gets_no_5xx_and_an_envelope(
    make_client: MakeClient,
    sections: dict[str, Any],
    method: str,
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    data: bytes,
) -> None:
    note(f"{method} {path} {query} {headers} {data[:200]!r}")  # printed with a failing example
    client = await _client(make_client, sections)
    resp = await client.request(
        method, path, params=query, headers=headers, data=data, skip_auto_headers=["Content-Type"]
    )
    raw = await resp.read()
    assert resp.status < 500, raw[:300]
    if resp.content_type == "text/html":  # the dashboard answers browsers with pages, errors included
        assert is_dashboard(resp.url.path), f"HTML from {resp.url.path}"
    elif method != "HEAD":
        assert_envelope(resp.status, raw)
    assert (await client.get("/healthz")).status == 200


def is_dashboard(path: str) -> bool:
    return path in ("/", "/login", "/logout") or path.startswith(("/jobs/", "/notifications/"))


_clients: dict[str, AppClient] = {}


async def _client(make_client: MakeClient, sections: dict[str, Any]) -> AppClient:
    """One app per test run (hypothesis calls the test once per example with the same fixtures)."""
    key = json.dumps(sections, sort_keys=True) + str(id(make_client))
    if key not in _clients:
        _clients.clear()
        _clients[key] = await make_client(**sections)
    return _clients[key]


# --- raw bytes on a socket to a real server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    directory = tmp_path_factory.mktemp("raw")
    port = serve.free_port()
    config = serve.write_config(directory, port, server="read_timeout: 300ms, idle_timeout: 1s")
    log = directory / "serve.log"
    proc = serve.start(config, log)
    try:
        serve.wait_healthy(port, proc)
        yield port
    finally:
        serve.stop(proc)
        output = log.read_text()
        assert "Traceback" not in output, output[-3000:]


def exchange(port: int, raw: bytes) -> bytes:
    """Send `raw` and read everything the server answers until it closes the connection.

    No half-close: aiohttp drops its answer to a client that already shut its side. The server's short
    read_timeout ends a request whose body never completes (a 408); `Connection: close` ends the others.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(raw)
        except OSError:
            return b""  # the server closed first (it refused the request early): nothing to check
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def responses(stream: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each HTTP/1.1 response in `stream` (every answer of ours has a Content-Length)."""
    found = []
    while stream:
        head, sep, rest = stream.partition(b"\r\n\r\n")
        assert sep, f"truncated response head: {stream[:200]!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        length = int(fields.get(b"content-length", b"0"))
        found.append((status, rest[:length]))
        stream = rest[length:]
    return found


TOKEN = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"), min_size=1, max_size=12)
ODD_BYTES = st.binary(max_size=40) | st.sampled_from([b"\x00", b"\r", b"\n", b"\xff\xfe", b"\t", b" ", b"\x7f"])
VALID_LINES = st.sampled_from([b"POST /webhooks/jobs HTTP/1.1", b"GET /api/jobs HTTP/1.1", b"POST /api/watch HTTP/1.1"])
REQUEST_LINES = st.one_of(
    VALID_LINES,
    VALID_LINES,
    st.sampled_from(
        [
            b"POST /webhooks/jobs HTTP/1.1",
            b"GET /healthz HTTP/1.1",
            b"GET /api/jobs?status=Failed HTTP/1.1",
            b"POST /webhooks/jobs HTTP/1.0",
            b"POST /webhooks/jobs HTTP/2.0",
            b"POST  /webhooks/jobs HTTP/1.1",
            b"POST /webhooks/jobs",
            b"POST http://x/webhooks/jobs HTTP/1.1",
            b"POST * HTTP/1.1",
        ]
    ),
    st.builds(lambda m, p: m.encode() + b" " + p + b" HTTP/1.1", TOKEN, ODD_BYTES),
    ODD_BYTES,
)
FRAMINGS = st.sampled_from(
    [
        "length",
        "length",
        "length",
        "chunked",
        "short",
        "long",
        "garbage-length",
        "two-lengths",
        "chunked",
        "bad-chunked",
        "chunked-and-length",
        "none",
    ]
)
# Content-Encoding here, not in HEADERS above: aiohttp's client cannot read the answer to an undecodable body.
ENCODINGS = st.sampled_from([b"gzip", b"deflate", b"br", b"zstd", b"identity", b"x"]).map(
    lambda e: (b"Content-Encoding", e)
)
HEADER_VALUES = HEADER_TEXT.map(str.encode) | ODD_BYTES
EXTRA_HEADERS = st.lists(
    st.tuples(TOKEN.map(str.encode), HEADER_VALUES) | st.tuples(ODD_BYTES, ODD_BYTES) | ENCODINGS, max_size=3
)


def frame(framing: str, payload: bytes) -> tuple[list[bytes], bytes]:
    """Headers and body for one way of (mis)framing `payload`."""
    size = str(len(payload)).encode()
    match framing:
        case "length":
            return [b"Content-Length: " + size], payload
        case "short":
            return [b"Content-Length: " + str(max(0, len(payload) - 5)).encode()], payload
        case "long":
            return [b"Content-Length: " + str(len(payload) + 50).encode()], payload
        case "garbage-length":
            return [b"Content-Length: -1x"], payload
        case "two-lengths":
            return [b"Content-Length: " + size, b"Content-Length: 1"], payload
        case "chunked":
            return [b"Transfer-Encoding: chunked"], b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
        case "bad-chunked":
            return [b"Transfer-Encoding: chunked"], b"zz\r\n" + payload + b"\r\n"
        case "chunked-and-length":
            return [b"Transfer-Encoding: chunked", b"Content-Length: " + size], payload
    return [], payload


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=REQUEST_LINES, extra=EXTRA_HEADERS, framing=FRAMINGS, payload=BODIES)
def test_malformed_http_gets_an_envelope_never_a_5xx(
    server: int, line: bytes, extra: list[tuple[bytes, bytes]], framing: str, payload: bytes
) -> None:
    framing_headers, content = frame(framing, payload)
    head = [line, b"Host: 127.0.0.1", b"Content-Type: application/json", b"Connection: close", *framing_headers]
    head += [name + b": " + value for name, value in extra]
    answers = responses(exchange(server, b"\r\n".join(head) + b"\r\n\r\n" + content))
    event(f"answers: {[status for status, _ in answers]}")  # the spread shows with --hypothesis-show-statistics
    for status, answer in answers:
        assert_envelope(status, answer)


@pytest.mark.slow
@pytest.mark.parametrize(
    "raw",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello on the HTTP port
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x00Header: 1\r\n\r\n",
        b"POST /webhooks/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /webhooks/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 70000 + b"\r\n\r\n",
    ],
    ids=["tls-hello", "nul-in-header", "bad-content-length", "bad-chunk", "long-line", "long-header"],
)
def test_known_parser_rejections_answer_400_in_the_envelope(server: int, raw: bytes) -> None:
    answers = responses(exchange(server, raw))
    assert answers, "no answer at all"
    status, answer = answers[0]
    assert 400 <= status < 500
    assert_envelope(status, answer)
    assert json.loads(answer)["error"]["code"] == "malformed_request"


@pytest.mark.slow
def test_server_is_healthy_after_the_raw_fuzzing(server: int) -> None:
    answers = responses(exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert answers[0][0] == 200
    payload = body(job())
    request = b"POST /webhooks/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    answers = responses(exchange(server, request % len(payload) + b"Connection: close\r\n\r\n" + payload))
    assert answers[0][0] == 202


# --- schemathesis against GET /openapi.json on a real server -------------------------------------------------


@pytest.mark.slow
def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    """Every check but positive_data_acceptance, which the document cannot satisfy by construction:
    cursors are opaque (only ones the server issued are valid), `since` must not be after `until`, and
    intake's strict integers refuse `1.0` although JSON Schema calls it an integer."""
    port = serve.free_port()
    config = serve.write_config(tmp_path, port)
    log = tmp_path / "serve.log"
    proc = serve.start(config, log)
    try:
        serve.wait_healthy(port, proc)
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "40",
                "--workers",
                "1",
                "--no-color",
                "--report-dir",
                str(tmp_path / "schemathesis"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        print(*(line.strip() for line in run.stdout.splitlines() if "generated" in line))  # shown by pytest -rP
        serve.wait_healthy(port, proc)  # still serving
    finally:
        serve.stop(proc)
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "code"), [("/webhooks/jobs", "malformed_json"), ("/api/watch", "malformed_request")], ids=["intake", "api"]
)
def test_a_body_that_does_not_decode_is_400_not_500(server: int, path: str, code: str) -> None:
    body = b"this is not gzip"
    raw = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    [(status, answer)] = responses(exchange(server, raw))
    assert status == 400
    assert_envelope(status, answer)
    assert json.loads(answer)["error"]["code"] == code
