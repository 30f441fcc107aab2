"""Small helpers of the PostgreSQL store: shared statements, command statuses, the connection type."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    # What a pooled `acquire()` yields and what `asyncpg.connect` returns: both are used the same way.
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]


@functools.cache
def numbered(sql: str) -> str:
    """SQLite-style `?` placeholders as `$1, $2, ...`, so both stores share statements.

    The shared statements carry no literal `?`, so every `?` is a placeholder.
    """
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def affected(status: str) -> int:
    """The row count of an asyncpg command status (`UPDATE 3`, `INSERT 0 1`, `DELETE 0`)."""
    return int(status.rsplit(" ", 1)[-1])
