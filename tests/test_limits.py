"""Slow or greedy clients cannot hold jobhook: header, body and connection limits on a real server process."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import serve


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    port = serve.free_port()
    config = serve.write_config(tmp_path, port, server="idle_timeout: 1s, read_timeout: 1s, max_connections: 5")
    proc = serve.start(config, tmp_path / "serve.log")
    try:
        serve.wait_healthy(port, proc)
        yield port
    finally:
        serve.stop(proc)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes the connection (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.mark.slow
def test_trickled_headers_are_cut_off(server: int) -> None:
    sock = connect(server)
    sock.sendall(b"POST /webhooks/jobs HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    for _ in range(8):  # a byte every 0.3 s never completes the headers
        try:
            sock.sendall(b"X")
        except OSError:
            break
        time.sleep(0.3)
    assert closed_within(sock, 3)
    assert time.monotonic() - started < 4


@pytest.mark.slow
def test_a_body_that_never_finishes_gets_408(server: int) -> None:
    sock = connect(server)
    sock.sendall(
        b"POST /webhooks/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"accountId":'
    )
    sock.settimeout(5)
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in answer


@pytest.mark.slow
def test_connections_beyond_the_cap_are_refused(server: int) -> None:
    idle = [connect(server) for _ in range(5)]
    time.sleep(0.2)
    extra = connect(server)
    assert closed_within(extra, 0.5)
    for sock in idle:
        sock.close()
    time.sleep(0.2)
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
