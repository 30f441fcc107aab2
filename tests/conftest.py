"""The real app, built by create_app on a temporary SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from receiver.app import SERVER_OPTIONS, create_app
from receiver.settings import Settings

AppClient = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[AppClient]]


def make_settings(db_path: Path, **sections: Any) -> Settings:
    data: dict[str, Any] = {"database": {"url": f"sqlite:///{db_path}", "synchronous": "full"}}
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
        app = create_app(make_settings(db_path, **sections))
        client: AppClient = await aiohttp_client(app, server_kwargs=SERVER_OPTIONS)
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
