"""Running the app: our own runner instead of `web.run_app`, for limits aiohttp does not offer by name.

- `server.idle_timeout`: a connection that has not sent a complete request (headers included)
  within it is closed, so a slow client cannot hold a connection by trickling headers; aiohttp's
  keep-alive timer already runs from the moment a connection opens.
- `server.max_connections`: connections beyond it are closed as soon as they are accepted.
- SIGTERM/SIGINT: stop accepting, finish requests in flight (up to `delivery.timeout`), then the
  cleanup contexts drain the worker and close the store.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import web

from receiver.settings import Settings

log = logging.getLogger("jobhook")


def cap_connections(server: web.Server, limit: int) -> None:
    """Close connections accepted beyond `limit`; the client sees a reset and retries later."""
    accept = server.connection_made
    refused = 0

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        nonlocal refused
        accept(handler, transport)
        if len(server.connections) > limit:
            refused += 1
            if refused == 1 or refused % 1000 == 0:
                log.warning("more than %d connections open: refusing new ones (%d so far)", limit, refused)
            transport.close()

    server.connection_made = connection_made  # type: ignore[method-assign]


async def serve_app(app: web.Application, settings: Settings, options: dict[str, Any]) -> None:
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=settings.server.idle_timeout,
        shutdown_timeout=settings.delivery.timeout,
        **options,
    )
    await runner.setup()
    try:
        assert runner.server is not None
        cap_connections(runner.server, settings.server.max_connections)
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping: finishing requests and sends in flight")
    finally:
        await runner.cleanup()
