"""Dashboard handlers: parse, ask the store (the same queries as `/api`), render a template.

Routes: `GET /` (recent jobs with filters and paging, recent failures, notification health with the
dead notifications and each target's circuit breaker), `GET /jobs/{jobId}` (state, event timeline,
notifications), the redeliver form `POST /notifications/{id}/redeliver`, and `GET|POST /login`,
`POST /logout` for the token case. Access follows the `/api` rule (admin token or loopback only), with
a session cookie standing in for the Bearer header; `Accept: application/json` still gets JSON from
`GET /` and the envelope for errors.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from jinja2 import Environment

from receiver.admin import admin_problem, index
from receiver.api import STATUSES, QueryError, encode_cursor, parse_jobs_query, redeliver_notification
from receiver.dashboard import access
from receiver.dashboard.render import environment, page
from receiver.durations import now_ms
from receiver.errors import RETRY_AFTER_SECONDS, Handler, enveloped, error_response
from receiver.keys import SETTINGS, STORE, WORKER
from receiver.store import StoreUnavailable
from receiver.store.history import JobFilter, NotificationFilter

RECENT_FAILURES = 10
DEAD_SHOWN = 25
FILTERS = ("status", "jobType", "accountId")
ENV = web.AppKey("dashboard_env", Environment)
TOKEN = web.AppKey("dashboard_token", str)


def _problem(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """The envelope for API clients, an error page for browsers."""
    if access.prefers_json(request.headers.get("Accept", "")):
        return error_response(status, code, message)
    return page(request.app[ENV], "error.html", {"status": status, "code": code, "message": message}, status)


def _refusal(request: web.Request) -> web.Response | None:
    """None when the admin token holder (cookie or Bearer) or, without a token, a loopback client asks."""
    token = request.app[TOKEN]
    if access.session_valid(request.cookies.get(access.COOKIE), token, time.time()):
        return None
    problem = admin_problem(request, token)
    if problem is None or access.prefers_json(request.headers.get("Accept", "")):
        return problem
    if token:
        return _login_page(request, request.path_qs, status=401)
    return _problem(request, 403, "forbidden", "the dashboard answers only loopback clients while admin.token is unset")


def guarded(handler: Handler) -> Handler:
    async def guard(request: web.Request) -> web.StreamResponse:
        return _refusal(request) or await handler(request)

    return enveloped(guard)


def _login_page(request: web.Request, next_path: str, status: int = 200, wrong: bool = False) -> web.Response:
    return page(request.app[ENV], "login.html", {"next": access.local_path(next_path), "wrong": wrong}, status)


def _form_refusal(request: web.Request) -> web.Response | None:
    problem = access.cross_site_problem(request.headers, request.host)
    return None if problem is None else _problem(request, 403, "forbidden", problem)


def _context(request: web.Request, **values: Any) -> dict[str, Any]:
    return {"now": now_ms(), "logged_in": bool(request.app[TOKEN]), "path": request.path_qs, **values}


def _unavailable(request: web.Request, exc: StoreUnavailable) -> web.Response:
    response = _problem(request, 503, "store_unavailable", f"the store cannot be read ({exc}); try again shortly")
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


async def overview(request: web.Request) -> web.Response:
    """GET /: JSON for `Accept: application/json`, else the dashboard page."""
    if access.prefers_json(request.headers.get("Accept", "")):
        return await index(request)
    given = [(name, value) for name, value in request.query.items() if value.strip()]  # empty form fields: any
    try:
        query = parse_jobs_query(given, now_ms())
    except QueryError as exc:
        return _problem(request, 400, "invalid_query", str(exc))
    store = request.config_dict[STORE]
    try:
        jobs, failures, dead, stats = await asyncio.gather(
            store.list_jobs(query),
            store.list_jobs(JobFilter(statuses=("Failed",), limit=RECENT_FAILURES)),
            store.list_notifications(NotificationFilter(states=("dead",), limit=DEAD_SHOWN)),
            store.outbox_stats(),
        )
    except StoreUnavailable as exc:
        return _unavailable(request, exc)
    filters = {name: value for name, value in given if name in FILTERS}
    circuits = [
        {**status._asdict(), "target": target, "state": status.state.name.lower().replace("_", "-")}
        for target, status in request.config_dict[WORKER].circuits().items()
    ]
    older = None
    if jobs.next_key is not None:
        older = "/?" + urlencode({**dict(given), "cursor": encode_cursor("jobs", jobs.next_key)})
    context = _context(
        request,
        jobs=jobs.items,
        older=older,
        paged="cursor" in dict(given),
        filters=filters,
        statuses=STATUSES,
        failures=failures.items,
        dead=dead.items,
        stats=stats,
        circuits=circuits,
        breaker_on=request.config_dict[SETTINGS].delivery.circuit_threshold > 0,
    )
    return page(request.app[ENV], "index.html", context)


async def job_page(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}: the job, its events oldest first, its notifications with every attempt."""
    job_id = request.match_info["jobId"]
    try:
        detail = await request.config_dict[STORE].job_detail(job_id)
    except StoreUnavailable as exc:
        return _unavailable(request, exc)
    if detail is None:
        return _problem(request, 404, "not_found", f"no job {job_id[:80]!r} is stored")
    return page(request.app[ENV], "job.html", _context(request, **detail))


async def redeliver(request: web.Request) -> web.Response:
    """POST /notifications/{id}/redeliver (form): pending again, due now; back to the page it came from."""
    refusal = _form_refusal(request)
    if refusal is not None:
        return refusal
    form = await request.post()
    raw = request.match_info["id"]
    try:
        notification = await redeliver_notification(request, raw)
    except StoreUnavailable as exc:
        return _unavailable(request, exc)
    if notification is None:
        return _problem(request, 404, "not_found", f"no notification {raw[:80]!r}")
    next_path = form.get("next")
    return _see_other(access.local_path(next_path if isinstance(next_path, str) else None))


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


async def login_form(request: web.Request) -> web.Response:
    if not request.app[TOKEN]:
        return _see_other("/")
    return _login_page(request, request.query.get("next", "/"))


async def login(request: web.Request) -> web.Response:
    """POST /login: the admin token, compared in constant time, for a session cookie."""
    refusal = _form_refusal(request)
    if refusal is not None:
        return refusal
    form = await request.post()
    given, next_path = form.get("token"), form.get("next")
    target = access.local_path(next_path if isinstance(next_path, str) else None)
    token = request.app[TOKEN]
    if not isinstance(given, str) or not access.token_matches(given, token):
        return _login_page(request, target, status=401, wrong=bool(token))
    response = _see_other(target)
    expires = int(time.time()) + access.SESSION_SECONDS
    response.set_cookie(
        access.COOKIE,
        access.session_value(token, expires),
        max_age=access.SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def logout(request: web.Request) -> web.Response:
    refusal = _form_refusal(request)
    if refusal is not None:
        return refusal
    response = _see_other("/login")
    response.del_cookie(access.COOKIE, path="/")
    return response


def add_dashboard(app: web.Application, token: str) -> None:
    """Register the dashboard's routes on the main app (before its fallback routes)."""
    app[ENV] = environment()
    app[TOKEN] = token
    app.router.add_get("/", guarded(overview))
    app.router.add_get("/jobs/{jobId}", guarded(job_page))
    app.router.add_post("/notifications/{id}/redeliver", guarded(redeliver))
    app.router.add_get("/login", enveloped(login_form))
    app.router.add_post("/login", enveloped(login))
    app.router.add_post("/logout", enveloped(logout))
