"""The error envelope `{"error": {"code", "message", "details"}}` and the middleware that guarantees it."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("jobhook.http")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_payload",
    503: "store_unavailable",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        return error_response(404, "not_found", f"no route for {request.path}")
    if exc.status == 405 and isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed here; use {allowed}",
            headers={"Allow": allowed},
        )
    if exc.status == 413:
        return error_response(413, "payload_too_large", "request body is too large")
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
    return error_response(exc.status, _CODES.get(exc.status, "http_error"), exc.reason, headers=headers)


@web.middleware
async def error_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves in the envelope; an unexpected exception is logged and never leaks its text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(request, exc)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; the event was not acknowledged")
