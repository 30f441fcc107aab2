"""Running the app: our own runner instead of `web.run_app`, for limits aiohttp does not offer by name.

- `server.idle_timeout`: a connection that has not sent a complete request (headers included)
  within it is closed, so a slow client cannot hold a connection by trickling headers; aiohttp's
  keep-alive timer already runs from the moment a connection opens.
- `server.max_connections`: connections beyond it are closed as soon as they are accepted.
- Requests aiohttp's HTTP parser refuses (bad request line, header bytes, Content-Length, chunking)
  never reach a handler: aiohttp answers them from `RequestHandler.handle_error` with a plain-text
  page and logs a traceback. Each connection's `handle_error` is replaced so they get the error
  envelope too, and one log line that names the kind of fault but never echoes the bytes.
- SIGTERM/SIGINT: stop accepting, finish requests in flight (up to `delivery.timeout`), then the
  cleanup contexts drain the worker and close the store.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from receiver.errors import error_response
from receiver.settings import Settings

log = logging.getLogger("jobhook")


# What kind of malformed request it was, said without echoing any of its bytes (they may hold a secret).
_PROTOCOL_FAULTS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.BadHttpMethod, "the method is not a valid HTTP token"),
    (http_exceptions.BadStatusLine, "the request line is not valid HTTP/1.x"),
    (http_exceptions.LineTooLong, "a request line or header is too long"),
    (http_exceptions.InvalidHeader, "a header name or value holds characters HTTP does not allow"),
    (http_exceptions.ContentLengthError, "the body does not match its Content-Length"),
    (http_exceptions.TransferEncodingError, "the body's chunked framing is broken"),
    (http_exceptions.ContentEncodingError, "the Content-Encoding is not supported or the body does not decode"),
    (http_exceptions.InvalidURLError, "the request target is not a valid URL"),
    (http_exceptions.HttpProcessingError, "the request is not valid HTTP/1.1"),
)


def protocol_fault(exc: BaseException | None) -> str:
    for kind, reason in _PROTOCOL_FAULTS:
        if isinstance(exc, kind):
            return reason
    return "the request is not valid HTTP/1.1"


class EnvelopeRequestHandler(RequestHandler):
    """aiohttp's connection protocol, but its own error answers are in the envelope.

    aiohttp calls `handle_error` for requests its parser refuses and for exceptions that escape a handler.
    No new slots: an accepted connection's handler is switched to this class in place.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # part of a response went out already: only closing is left
            raise ConnectionError("a response was already started; closing the connection")
        if status >= 500:
            log.error("unhandled error on a request from %s", request.remote, exc_info=exc)
            response = error_response(status, "internal_error", "internal error; nothing was acknowledged")
        else:
            reason = protocol_fault(exc)
            log.info("malformed request from %s answered %d: %s", request.remote, status, reason)
            response = error_response(status, "malformed_request", reason)
        response.force_close()
        return response


def install_connection_hooks(server: web.Server, limit: int) -> None:
    """Per accepted connection: answer aiohttp's own errors in the envelope; close connections beyond `limit`
    (the client sees a reset and retries later)."""
    accept = server.connection_made
    refused = 0

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        nonlocal refused
        if type(handler) is RequestHandler:
            handler.__class__ = EnvelopeRequestHandler
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
        install_connection_hooks(runner.server, settings.server.max_connections)
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
