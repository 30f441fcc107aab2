"""Who may use the operator surface (`/api/*` and `/`): the admin token holder, or loopback clients.

With `admin.token` set, every request needs `Authorization: Bearer <token>` (compared in constant
time); without it, only clients on a loopback address are answered. Behind a reverse proxy every
client looks local, so set a token there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web
from pydantic import ValidationError

from receiver import requestid
from receiver.auth import AuthFailed, TokenAuth
from receiver.errors import (
    ANY_PATH,
    Handler,
    enveloped,
    error_response,
    invalid_body,
    method_not_allowed,
    not_found,
    store_unavailable,
)
from receiver.keys import POLLERS
from receiver.models import WatchRequest
from receiver.store import StoreUnavailable


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def admin_problem(request: web.Request, token: str) -> web.Response | None:
    """The refusal for this request, or None when it may proceed."""
    if not token:
        if _is_loopback(request.remote):
            return None
        return error_response(
            403, "forbidden", "admin endpoints answer only loopback clients while admin.token is unset"
        )
    try:
        TokenAuth((token,)).check_headers(request.headers)  # the same constant-time Bearer check as intake
    except AuthFailed as exc:
        return error_response(401, "unauthorized", f"admin token: {exc}")
    return None


def create_api_app(token: str, routes: Sequence[tuple[str, str, Handler]] = ()) -> web.Application:
    """The `/api` sub-application: every route in it, and only those, behind the admin guard.

    `routes` are (method, path, handler) triples (the history API, `receiver.api.ROUTES`), served beside
    `POST /watch`; each path also answers other methods with 405, and anything else under `/api` is a 404.
    The guard wraps each handler rather than being a middleware: a middleware on any sub-application makes
    aiohttp run the middleware chain for every request of the whole server, intake included (about 2 µs each).
    """

    def guarded(handler: Handler) -> Handler:
        inner = enveloped(handler)

        async def guard(request: web.Request) -> web.StreamResponse:
            refusal = admin_problem(request, token)
            return await inner(request) if refusal is None else requestid.tag(request, refusal)

        return guard

    api = web.Application()
    by_path: dict[str, list[tuple[str, Handler]]] = {}
    for method, path, handler in (("POST", "/watch", watch), *routes):
        by_path.setdefault(path, []).append((method, handler))
    for path, handlers in by_path.items():
        resource = api.router.add_resource(path)
        for method, handler in handlers:
            resource.add_route(method, guarded(handler))
        resource.add_route("*", guarded(method_not_allowed(*sorted(method for method, _ in handlers))))
    api.router.add_route("*", ANY_PATH, guarded(not_found))  # last: after every route above
    return api


async def watch(request: web.Request) -> web.Response:
    """POST /api/watch {accountId, jobType, jobId}: the poller of that account follows the job until terminal."""
    body = await request.read()
    try:
        wanted = WatchRequest.model_validate_json(body)
    except ValidationError as exc:
        return invalid_body(exc, "the watch request")
    poller = request.config_dict[POLLERS].get(wanted.accountId)
    if poller is None:
        return error_response(
            404, "not_found", f"account {wanted.accountId} is not configured in sources.bytescale; nothing polls it"
        )
    try:
        added = await poller.watch(wanted.jobType, wanted.jobId)
    except StoreUnavailable as exc:
        return store_unavailable(f"the job could not be recorded ({exc}); retry later")
    return web.json_response(
        {
            "watching": True,
            "new": added,
            "accountId": wanted.accountId,
            "jobType": wanted.jobType,
            "jobId": wanted.jobId,
        },
        status=202,
    )


async def index(request: web.Request) -> web.Response:
    """GET /: what this server offers (the dashboard will live here)."""
    return web.json_response(
        {
            "service": "jobhook",
            "endpoints": {
                "intake": "POST /webhooks/jobs",
                "liveness": "GET /healthz",
                "readiness": "GET /readyz",
                "jobs": "GET /api/jobs, GET /api/jobs/{jobId}",
                "notifications": "GET /api/notifications, POST /api/notifications/{id}/redeliver",
            },
        }
    )
