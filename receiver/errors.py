"""The error envelope `{"error": {"code", "message", "details"}}` and the routes that guarantee it.

There is no middleware (it would cost every intake request): unknown paths and methods are caught
by routes of their own, and each handler turns its unexpected exceptions into a logged 500.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import ValidationError

from receiver import requestid
from receiver.validation import field_problems

log = logging.getLogger("jobhook.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The catch-all route's path: `.` stops at a newline, and `/x%0A` must be a 404 in the envelope too.
ANY_PATH = "/{path:[\\s\\S]*}"


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def invalid_body(exc: ValidationError, what: str) -> web.Response:
    """A JSON body its model refused: 400 `malformed_json` when it is not JSON at all, else 422
    `invalid_payload` ("`what` is not valid") listing every bad field."""
    errors = exc.errors(include_url=False)
    if errors[0]["type"] == "json_invalid":
        return error_response(400, "malformed_json", f"body is not valid JSON: {errors[0]['msg']}")
    return error_response(422, "invalid_payload", f"{what} is not valid", field_problems(exc, echo_input=True))


RETRY_AFTER_SECONDS = "5"  # what every 503 (store or readiness) asks a client to wait


def store_unavailable(message: str) -> web.Response:
    """503 `store_unavailable` with Retry-After: the store failed the request, nothing was acknowledged."""
    return error_response(503, "store_unavailable", message, headers={"Retry-After": RETRY_AFTER_SECONDS})


# What reading a body raises when its chunked framing or Content-Encoding breaks mid-body, or the client
# goes away before sending all of it (then nobody reads the answer, but nothing is logged as a bug either).
BODY_ERRORS = (HttpProcessingError, RequestPayloadError, ConnectionError)


def body_unreadable(code: str = "malformed_request") -> web.Response:
    """400 for a body that could not be read; intake says `malformed_json`, its one 400 code (SPEC §3)."""
    response = error_response(
        400,
        code,
        "the request body could not be read: broken chunked framing or Content-Encoding, or the connection closed",
    )
    response.force_close()
    return response


def internal_error() -> web.Response:
    return error_response(500, "internal_error", "internal error; nothing was acknowledged")


def enveloped(handler: Handler) -> Handler:
    """Any unexpected exception leaves as a logged 500 in the envelope, never a traceback.

    The answer carries the request's `X-Request-Id`, as does the log line of a failure.
    """

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return requestid.tag(request, await handler(request))
        except web.HTTPException:
            raise
        except BODY_ERRORS:
            return body_unreadable()
        except Exception:
            log.exception("request %s: unhandled error on %s %s", requestid.of(request), request.method, request.path)
            return requestid.tag(request, internal_error())

    return wrapper


async def not_found(request: web.Request) -> web.Response:
    return error_response(404, "not_found", f"no route for {request.path}")


def method_not_allowed(*allowed: str) -> Handler:
    allow = ", ".join(allowed)

    async def handler(request: web.Request) -> web.Response:
        return error_response(
            405, "method_not_allowed", f"{request.method} is not allowed here; use {allow}", headers={"Allow": allow}
        )

    return handler


def add_fallback_routes(app: web.Application) -> None:
    """405 for a known path with the wrong method, 404 for anything else: both in the envelope."""
    for resource in list(app.router.resources()):
        if isinstance(resource, web.Resource):
            methods = sorted({route.method for route in resource if route.method != "HEAD"})
            resource.add_route("*", enveloped(method_not_allowed(*methods)))
    app.router.add_route("*", ANY_PATH, enveloped(not_found))
