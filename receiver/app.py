"""create_app(settings): the one composition root. Everything is wired here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from notifiers.log_worker import OutboxLogWorker
from receiver.errors import error_envelope
from receiver.health import healthz, readyz
from receiver.intake import receive_job
from receiver.keys import SETTINGS, STORE, WORKER
from receiver.models import TERMINAL
from receiver.settings import Settings
from receiver.store.sqlite import SqliteStore, sqlite_path

log = logging.getLogger("jobhook")

# aiohttp's RequestHandler options: a rejected body is never read to its end ("lingering").
SERVER_OPTIONS: dict[str, Any] = {"lingering_time": 0}


def create_store(settings: Settings) -> SqliteStore:
    db = settings.database
    return SqliteStore(
        sqlite_path(db.url),
        synchronous=db.synchronous,
        busy_timeout_ms=int(db.busy_timeout * 1000),
        notify_statuses=frozenset(status.value for status in TERMINAL),
    )


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_envelope], client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_store_and_worker)
    app.router.add_post("/webhooks/jobs", receive_job)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def _store_and_worker(app: web.Application) -> AsyncIterator[None]:
    store = create_store(app[SETTINGS])
    await store.open()
    worker = OutboxLogWorker(store)
    app[STORE] = store
    app[WORKER] = worker
    task = asyncio.create_task(worker.run(), name="outbox-worker")
    log.info("store open at %s (synchronous=%s)", store.path, app[SETTINGS].database.synchronous)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
