"""The real app, built by create_app on a temporary SQLite file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from receiver.app import SERVER_OPTIONS, create_app
from receiver.serving import install_connection_hooks
from receiver.settings import Settings

AppClient = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[AppClient]]


def make_settings(db_path: Path, **sections: Any) -> Settings:
    data: dict[str, Any] = {
        "database": {"url": f"sqlite:///{db_path}", "synchronous": "full"},
        "auth": {"mode": "none"},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(name, {}).update(values)
        else:
            data[name] = values
    return Settings.model_validate(data)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "jobhook.db"


@pytest.fixture
def make_client(aiohttp_client: Any, db_path: Path) -> MakeClient:
    async def make(**sections: Any) -> AppClient:
        settings = make_settings(db_path, **sections)
        client: AppClient = await aiohttp_client(create_app(settings), server_kwargs=SERVER_OPTIONS)
        assert client.server.runner is not None and client.server.runner.server is not None
        # As `jobhook serve` does: aiohttp's own error answers in the envelope, the connection cap.
        install_connection_hooks(client.server.runner.server, settings.server.max_connections)
        return client

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> AppClient:
    return await make_client()


@pytest.fixture
def db(db_path: Path) -> Iterator[Callable[[str], list[tuple[Any, ...]]]]:
    """Query the store's file directly, as an outside reader would."""
    connections: list[sqlite3.Connection] = []

    def query(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not connections:
            connections.append(sqlite3.connect(db_path))
        return connections[0].execute(sql, params).fetchall()

    yield query
    for conn in connections:
        conn.close()


@pytest.fixture
def lock_holder(db_path: Path) -> Iterator[Any]:
    """Another process holding the database's write lock: a real fault, not a mock."""
    procs: list[subprocess.Popen[str]] = []

    def hold() -> subprocess.Popen[str]:
        script = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(db_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)
