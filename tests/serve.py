"""Run `jobhook serve` as a real process on a free loopback port."""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(
    directory: Path,
    port: int,
    extra: str = "",
    server: str = "",
    database: str = "",
    database_url: str | None = None,
    name: str = "jobhook.yaml",
) -> Path:
    """A config serving on `port`; the store is `database_url`, by default a SQLite file under `directory`.

    `extra`: more top-level YAML; `server`, `database`: more keys of those mappings (`read_timeout: 1s`).
    """
    config = directory / name
    url = database_url or f"sqlite:///{directory / 'data' / 'jobhook.db'}"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}{', ' + server if server else ''}}}\n"
        f"database: {{url: '{url}'{', ' + database if database else ''}}}\n"
        f"auth: {{mode: none}}\n{extra}"
    )
    return config


def start(
    config: Path,
    log: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """`jobhook [ARGS] serve --config CONFIG`, its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "receiver", *args, "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=preexec,
        )


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as a service manager stops it; its exit status once it has drained (a no-op if it already ended)."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def stored_job_ids(db: Path) -> set[str]:
    """The jobIds with an event in the SQLite file `db`, read as an outside reader (after a kill, say)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {job_id for (job_id,) in conn.execute("SELECT job_id FROM events")}


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a server, its fork server, its SQLite writer process)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread or child that ended meanwhile
            for child in (task / "children").read_text().split():
                found += process_tree(int(child))
    return found


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jobhook serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("jobhook serve did not become healthy")
