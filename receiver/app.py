"""create_app(settings): the one composition root. Everything is wired here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from notifiers.log_worker import OutboxLogWorker
from receiver.errors import add_fallback_routes, enveloped
from receiver.health import healthz, readyz
from receiver.intake import JobIntake
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
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    store = create_store(settings)
    worker = OutboxLogWorker(store)
    app[STORE] = store
    app[WORKER] = worker
    intake = JobIntake(store, settings.server.max_body_bytes, worker.wake)
    app.cleanup_ctx.append(_store_and_worker)
    app.router.add_post("/webhooks/jobs", intake.receive)
    app.router.add_get("/healthz", enveloped(healthz))
    app.router.add_get("/readyz", enveloped(readyz))
    add_fallback_routes(app)
    return app


async def _store_and_worker(app: web.Application) -> AsyncIterator[None]:
    store, worker = app[STORE], app[WORKER]
    await store.open()
    task = asyncio.create_task(worker.run(), name="outbox-worker")
    log.info("store open at %s (synchronous=%s)", app[SETTINGS].database.url, app[SETTINGS].database.synchronous)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
