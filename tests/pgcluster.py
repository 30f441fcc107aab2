"""A throwaway PostgreSQL cluster for the tests (and the bench): initdb + pg_ctl on a temp directory.

initdb refuses to run as root, so as root the cluster belongs to the `postgres` user the Debian package
creates. Trust authentication, on loopback TCP and a private unix-socket directory only.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from tests.serve import free_port

T = TypeVar("T")


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version)
    return candidates[-1] if candidates else None


def _version(path: str) -> int:
    match = re.search(r"/postgresql/(\d+)/", path)
    return int(match.group(1)) if match else 0


class Cluster:
    """One running cluster; `url(db)` names a database in it."""

    def __init__(self, *, durable: bool = False) -> None:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's postgresql")
        self._pg_ctl = pg_ctl
        self._as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = Path(tempfile.mkdtemp(prefix="jobhook-pg-"))
        if self._as_owner:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.root}",
            "-c max_connections=300",
        ]
        if not durable:  # tests check logic, not power loss: skip the fsyncs
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o", " ".join(options), "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self._run(self._pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, *command: str) -> None:
        subprocess.run([*self._as_owner, *command], check=True, capture_output=True, cwd=self.root)


class Loop:
    """An event loop on a thread of its own, so synchronous test code can run asyncpg calls to the side."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class Admin:
    """Creates and drops the per-test databases through one connection to the `postgres` database."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._loop = Loop()
        self._conn: asyncpg.Connection = self._loop.run(asyncpg.connect(cluster.url()))
        self._count = 0

    def execute(self, sql: str) -> None:
        self._loop.run(self._conn.execute(sql))

    def create_database(self) -> str:
        self._count += 1
        name = f"test_{os.getpid()}_{self._count}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        self._loop.run(self._conn.close())
        self._loop.close()


class Query:
    """Query one database as an outside reader, synchronously, with SQLite-style `?` placeholders."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._loop: Loop | None = None
        self._conn: asyncpg.Connection | None = None

    def __call__(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        from receiver.store.pg_sql import numbered

        if self._loop is None:
            self._loop = Loop()
            self._conn = self._loop.run(asyncpg.connect(self._url))
        assert self._conn is not None
        rows = self._loop.run(self._conn.fetch(numbered(sql), *params))
        return [tuple(row) for row in rows]

    def close(self) -> None:
        if self._loop is not None and self._conn is not None:
            self._loop.run(self._conn.close())
            self._loop.close()
