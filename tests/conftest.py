"""The real app, built by create_app on a temporary SQLite file or a fresh PostgreSQL database.

A test runs against the stores its module (or itself) names with `@pytest.mark.stores(...)`, SQLite
only by default; the PostgreSQL cluster starts once per session, only if some test needs it, and each
test gets a database of its own.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from receiver.app import SERVER_OPTIONS, create_app, create_store
from receiver.durations import now_ms
from receiver.serving import install_connection_hooks
from receiver.settings import Settings
from receiver.store import Store
from tests.pgcluster import Admin, Cluster, Query

AppClient = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[AppClient]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("stores")
        metafunc.parametrize("store_kind", marker.args if marker else ("sqlite",))


def make_settings(db: Path | str, **sections: Any) -> Settings:
    """`db`: a SQLite file, or a database URL."""
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    data: dict[str, Any] = {
        "database": {"url": url, "synchronous": "full"},
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


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Admin]:
    """One throwaway PostgreSQL cluster for the whole session, stopped at its end."""
    cluster = Cluster()
    admin = Admin(cluster)
    yield admin
    admin.close()
    cluster.stop()


@pytest.fixture
def database_url(store_kind: str, db_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The store under test: the SQLite file at `db_path`, or a fresh PostgreSQL database."""
    if store_kind == "sqlite":
        yield f"sqlite:///{db_path}"
        return
    admin: Admin = request.getfixturevalue("pg_admin")
    name = admin.create_database()
    yield admin.cluster.url(name)
    admin.drop_database(name)


@pytest.fixture
def make_client(database_url: str, aiohttp_client: Any) -> MakeClient:
    # database_url first: set up before the app and torn down after it (a database dropped under a running
    # app would fail its shutdown).
    async def make(*, clock: Callable[[], int] = now_ms, **sections: Any) -> AppClient:
        """`sections`: settings beyond the defaults; `clock`: the delivery worker's (create_app's `clock`)."""
        settings = make_settings(database_url, **sections)
        client: AppClient = await aiohttp_client(create_app(settings, clock=clock), server_kwargs=SERVER_OPTIONS)
        assert client.server.runner is not None and client.server.runner.server is not None
        # As `jobhook serve` does: aiohttp's own error answers in the envelope, the connection cap.
        install_connection_hooks(client.server.runner.server, settings.server.max_connections)
        return client

    return make


def open_store(database_url: str, notify_statuses: frozenset[str] = frozenset()) -> Store:
    """The store the app would build for this URL (not yet opened)."""
    return create_store(make_settings(database_url, database={"synchronous": "normal"}), notify_statuses)


@pytest.fixture
async def client(make_client: MakeClient) -> AppClient:
    return await make_client()


@pytest.fixture
def db(database_url: str, db_path: Path) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    """Query the store directly, as an outside reader would (`?` placeholders for either store)."""
    if not database_url.startswith("sqlite:"):
        query = Query(database_url)
        yield query
        query.close()
        return
    connections: list[sqlite3.Connection] = []

    def query(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not connections:
            connections.append(sqlite3.connect(db_path, isolation_level=None))
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
