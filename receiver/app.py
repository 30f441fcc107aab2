"""create_app(settings): the one composition root. Everything is wired here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from notifiers.config import NotifierConfig, load_notifiers
from notifiers.worker import DeliveryWorker
from receiver.admin import create_api_app
from receiver.api import ROUTES as HISTORY_ROUTES
from receiver.auth import build_authenticator
from receiver.dashboard import add_dashboard
from receiver.durations import now_ms
from receiver.errors import add_fallback_routes, enveloped
from receiver.health import healthz, readyz
from receiver.intake import JobIntake
from receiver.keys import NOTIFIERS, POLLERS, SETTINGS, STORE, WORKER
from receiver.metrics import metrics_route
from receiver.openapi import openapi_route
from receiver.poller import BytescalePoller
from receiver.settings import ConfigError, Settings
from receiver.store import Store, StoreUnavailable
from receiver.store.postgres import PostgresStore, display_url, is_postgres_url
from receiver.store.sqlite import SqliteStore, sqlite_path

log = logging.getLogger("jobhook")

# aiohttp's RequestHandler options: a rejected body is never read to its end ("lingering").
SERVER_OPTIONS: dict[str, Any] = {"lingering_time": 0}
RETENTION_FIRST_RUN = 60.0  # seconds after start: off the startup path
RETENTION_INTERVAL = 3600.0


def create_store(settings: Settings, notify_statuses: frozenset[str]) -> Store:
    """`postgres://` / `postgresql://` select PostgreSQL (several replicas); anything else is a SQLite file."""
    db = settings.database
    if is_postgres_url(db.url):
        return PostgresStore(
            db.url,
            synchronous=db.synchronous,
            command_timeout=db.busy_timeout,
            notify_statuses=notify_statuses,
            event_loop=settings.server.event_loop,
        )
    return SqliteStore(
        sqlite_path(db.url),
        synchronous=db.synchronous,
        busy_timeout_ms=int(db.busy_timeout * 1000),
        notify_statuses=notify_statuses,
    )


def create_worker(
    store: Store,
    settings: Settings,
    notifiers: NotifierConfig,
    intake_load: Callable[[], int],
    clock: Callable[[], int] = now_ms,
) -> DeliveryWorker:
    return DeliveryWorker(
        store,
        notifiers.rules,
        notifiers.targets,
        notifiers.policy,
        concurrency=settings.delivery.concurrency,
        timeout=settings.delivery.timeout,
        lease=notifiers.lease,
        redactor=notifiers.redactor,
        intake_load=intake_load,
        clock=clock,
        circuit_threshold=settings.delivery.circuit_threshold,
        circuit_cooloff=settings.delivery.circuit_cooloff,
    )


def create_app(settings: Settings, source: str = "config", *, clock: Callable[[], int] = now_ms) -> web.Application:
    """Raises ConfigError (naming `source`) when authentication, rules or targets are unusable.

    `clock` (epoch ms) drives the delivery worker's timers: backoff, group windows, rate-limit minutes.
    """
    authenticator, problems = build_authenticator(settings)
    if problems:
        raise ConfigError(source, problems)
    notifiers = load_notifiers(settings, source)
    store = create_store(settings, notifiers.notify_statuses)
    intake = JobIntake(
        store, settings.server.max_body_bytes, lambda: worker.wake(), authenticator, settings.server.read_timeout
    )
    worker = create_worker(store, settings, notifiers, intake.load, clock)
    pollers = {
        source.account_id: BytescalePoller(source, store, lambda: worker.wake(), notifiers.redactor)
        for source in settings.sources.bytescale_accounts
    }
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    app[NOTIFIERS] = notifiers
    app[STORE] = store
    app[WORKER] = worker
    app[POLLERS] = pollers
    app.cleanup_ctx.append(_store_and_worker)
    app.router.add_post("/webhooks/jobs", intake.receive)
    app.router.add_get("/healthz", enveloped(healthz))
    app.router.add_get("/readyz", enveloped(readyz))
    app.router.add_routes([metrics_route(intake, pollers, store, worker), openapi_route(settings)])
    admin_token = settings.admin.token.get_secret_value()
    add_dashboard(app, admin_token)  # GET / and the dashboard's pages and forms
    app.add_subapp("/api", create_api_app(admin_token, HISTORY_ROUTES))
    add_fallback_routes(app)
    return app


async def _retention(store: Store, settings: Settings) -> None:
    """Apply `retention.events` shortly after start, then every RETENTION_INTERVAL, in bounded chunks."""
    if settings.retention.cutoff(now_ms()) is None:
        return
    await asyncio.sleep(RETENTION_FIRST_RUN)
    while True:
        cutoff = settings.retention.cutoff(now_ms())
        assert cutoff is not None
        try:
            pruned = await store.prune_history(cutoff)
        except StoreUnavailable as exc:
            log.warning("retention: cannot prune history now: %s", exc)
        else:
            if pruned.events or pruned.jobs:
                log.info("retention: removed %d events and %d jobs (before %d)", pruned.events, pruned.jobs, cutoff)
        await asyncio.sleep(RETENTION_INTERVAL)


async def _store_and_worker(app: web.Application) -> AsyncIterator[None]:
    store, worker = app[STORE], app[WORKER]
    # Sends run in the loop's default executor (asyncio.to_thread): size it for delivery.concurrency.
    workers = app[SETTINGS].delivery.concurrency + 4
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers, thread_name_prefix="jobhook-send"))
    await store.open()
    task = asyncio.create_task(worker.run(), name="delivery-worker")
    database = app[SETTINGS].database
    log.info("store open at %s (synchronous=%s)", display_url(database.url), database.synchronous)
    retention = asyncio.create_task(_retention(store, app[SETTINGS]), name="retention")
    pollers = list(app[POLLERS].values())
    for poller in pollers:
        poller.start()
        log.info("polling Bytescale account %s every %g s", poller.account_id, poller.interval)
    try:
        yield
    finally:
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention
        await asyncio.gather(*(poller.stop() for poller in pollers))
        await worker.stop(app[SETTINGS].delivery.timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
