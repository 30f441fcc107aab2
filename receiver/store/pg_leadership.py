"""Which replica polls a Bytescale account: the one holding a PostgreSQL session advisory lock for it.

Every replica configured with the same account asks before each poll round; one gets the lock and polls,
the others stand by, so Bytescale sees one poller per account however many replicas run. A session lock
lives as long as its connection, so it is held on a connection of its own (not the pool's, which would
hand it to other work): a replica that stops or dies closes that connection, and the next replica to ask
takes the account over.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from receiver.store.pg_ingest import DB_ERRORS
from receiver.store.writer import StoreUnavailable

# The two-key advisory lock space, apart from ingest's one-key job locks: (this class, hash of the account).
POLLER_LOCK_CLASS = 0x6A6F6270  # "jobp"


class PollingLeadership:
    """This replica's polling locks, one per account it polls, on one connection of its own."""

    def __init__(self, url: str, command_timeout: float) -> None:
        self._url = url
        self._command_timeout = command_timeout
        self._conn: asyncpg.Connection | None = None
        self._held: set[str] = set()
        self._busy = asyncio.Lock()  # one query at a time on the one connection

    async def leads(self, account_id: str) -> bool:
        """True while this replica holds the account's lock (taking it if free), False while another does;
        StoreUnavailable when the database cannot be asked (the poller backs off, as for any store fault)."""
        async with self._busy:
            try:
                if self._conn is None:
                    self._conn = await asyncpg.connect(
                        self._url, timeout=self._command_timeout, command_timeout=self._command_timeout
                    )
                if account_id in self._held:
                    await self._conn.fetchval("SELECT 1")  # the connection, and so the lock, is still there
                    return True
                taken = await self._conn.fetchval(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))", POLLER_LOCK_CLASS, account_id
                )
            except DB_ERRORS as exc:
                await self._drop()
                raise StoreUnavailable(f"cannot tell which replica polls: {exc}") from exc
            if taken:
                self._held.add(account_id)
            return bool(taken)

    async def close(self) -> None:
        async with self._busy:
            await self._drop()

    async def _drop(self) -> None:
        """Forget the connection and every lock it held (closing it releases them on the server)."""
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(*DB_ERRORS):
                await conn.close(timeout=self._command_timeout)
