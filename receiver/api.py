"""The history API under `/api` (SPEC §3, §7): jobs, one job, notifications, redeliver.

Query strings are parsed by pure functions (a bad one is a `QueryError`, answered 400 `invalid_query`
with the reason); the handlers only parse, ask the store and shape the answer. The admin guard is the
`/api` sub-application's guard (`receiver.admin.create_api_app`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from receiver import durations, requestid
from receiver.durations import now_ms
from receiver.errors import Handler, error_response, store_unavailable
from receiver.keys import STORE, WORKER
from receiver.logs import Template
from receiver.models import JobStatus, NotificationState
from receiver.store import StoreUnavailable
from receiver.store.history import JobFilter, Json, NotificationFilter

log = logging.getLogger("jobhook.api")

REDELIVERED_LOG = Template(
    "request %s: notification %d redelivered (job %s %s, target %s)",
    "request_id",
    "notification_id",
    "job_id",
    "job_status",
    "target",
)
Query = Sequence[tuple[str, str]]  # every (name, value) pair of a query string, repeats included

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_VALUES = 100  # per comma-separated filter
STATUSES = tuple(s.value for s in JobStatus)
STATES = tuple(s.value for s in NotificationState)
JOB_PARAMS = ("status", "jobType", "accountId", "since", "until", "limit", "cursor")
NOTIFICATION_PARAMS = ("state", "limit", "cursor")
_LISTS = frozenset({"status", "jobType", "accountId", "state"})

_LIMIT = re.compile(r"[0-9]{1,9}")
_CURSOR_SALT = b"jobhook-cursor-v1:"


class QueryError(ValueError):
    """A query string the API cannot honour; the message says which parameter and why."""


# --- pure parsing -----------------------------------------------------------------------------------
def _collect(query: Query, known: Sequence[str]) -> dict[str, str | list[str]]:
    """Known names only; a list filter may repeat (`status=A&status=B` is `status=A,B`), a scalar may not."""
    found: dict[str, str | list[str]] = {}
    for name, raw in query:
        if name not in known:
            raise QueryError(f"unknown query parameter {name!r}; this endpoint takes {', '.join(known)}")
        if name in _LISTS:
            values = found.setdefault(name, [])
            assert isinstance(values, list)
            values.extend(_split(name, raw))
        elif name in found:
            raise QueryError(f"{name} is given more than once")
        else:
            found[name] = raw
    for name, values in found.items():
        if isinstance(values, list) and len(set(values)) > MAX_VALUES:
            raise QueryError(f"{name} takes at most {MAX_VALUES} values")
    return found


def _split(name: str, raw: str) -> list[str]:
    values = [value.strip() for value in raw.split(",")]
    if not all(values):
        raise QueryError(f"{name} has an empty value; give one or more comma-separated values")
    return values


def _unique(values: str | list[str] | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values or ()))


def _checked(name: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if value not in allowed:
            raise QueryError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return values


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise QueryError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {raw!r}")
    return int(raw)


def parse_time(name: str, raw: str, now: int) -> int:
    """`receiver.durations.parse_time`, its refusal as a 400 `invalid_query`."""
    try:
        return durations.parse_time(name, raw, now)
    except ValueError as exc:
        raise QueryError(str(exc)) from None


def encode_cursor(kind: str, key: Sequence[Any]) -> str:
    """Opaque to clients: urlsafe base64 of the last row's key, with a check so an edited cursor is refused."""
    payload = json.dumps([kind, *key], separators=(",", ":")).encode()
    check = hashlib.sha256(_CURSOR_SALT + payload).digest()[:6]
    return base64.urlsafe_b64encode(check + payload).rstrip(b"=").decode()


def decode_cursor(kind: str, raw: str) -> list[Any]:
    problem = QueryError(f"cursor {raw[:80]!r} is not a cursor this endpoint issued; start again without one")
    try:
        data = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise problem from None
    check, payload = data[:6], data[6:]
    if len(data) <= 6 or hashlib.sha256(_CURSOR_SALT + payload).digest()[:6] != check:
        raise problem
    try:
        decoded = json.loads(payload)
    except ValueError:
        raise problem from None
    if not isinstance(decoded, list) or not decoded or decoded[0] != kind:
        raise problem
    return decoded[1:]


def _job_key(raw: str) -> tuple[int, str]:
    key = decode_cursor("jobs", raw)
    match key:
        case [int() as last_updated, str() as job_id] if not isinstance(last_updated, bool):
            return last_updated, job_id
    raise QueryError("cursor does not hold a position in the jobs list")


def parse_jobs_query(query: Query, now: int) -> JobFilter:
    found = _collect(query, JOB_PARAMS)
    since, until, limit, cursor = (found.get(name) for name in ("since", "until", "limit", "cursor"))
    assert not isinstance(since, list) and not isinstance(until, list)
    assert not isinstance(limit, list) and not isinstance(cursor, list)
    result = JobFilter(
        statuses=_checked("status", _unique(found.get("status")), STATUSES),
        job_types=_unique(found.get("jobType")),
        account_ids=_unique(found.get("accountId")),
        since=None if since is None else parse_time("since", since, now),
        until=None if until is None else parse_time("until", until, now),
        limit=parse_limit(limit),
        after=None if cursor is None else _job_key(cursor),
    )
    if result.since is not None and result.until is not None and result.since > result.until:
        raise QueryError(f"since ({result.since}) is later than until ({result.until})")
    return result


def parse_notifications_query(query: Query) -> NotificationFilter:
    found = _collect(query, NOTIFICATION_PARAMS)
    limit, cursor = found.get("limit"), found.get("cursor")
    assert not isinstance(limit, list) and not isinstance(cursor, list)
    after = None
    if cursor is not None:
        match decode_cursor("notifications", cursor):
            case [int() as last_id] if not isinstance(last_id, bool):
                after = last_id
            case _:
                raise QueryError("cursor does not hold a position in the notifications list")
    return NotificationFilter(
        states=_checked("state", _unique(found.get("state")), STATES), limit=parse_limit(limit), after=after
    )


# --- handlers -----------------------------------------------------------------------------------------
def _invalid(exc: QueryError) -> web.Response:
    return error_response(400, "invalid_query", str(exc))


def _unavailable(exc: StoreUnavailable) -> web.Response:
    return store_unavailable(f"the store cannot be read ({exc})")


async def list_jobs(request: web.Request) -> web.Response:
    """GET /api/jobs?status=&jobType=&accountId=&since=&until=&limit=&cursor="""
    try:
        query = parse_jobs_query(list(request.query.items()), now_ms())
    except QueryError as exc:
        return _invalid(exc)
    try:
        page = await request.config_dict[STORE].list_jobs(query)
    except StoreUnavailable as exc:
        return _unavailable(exc)
    cursor = None if page.next_key is None else encode_cursor("jobs", page.next_key)
    return web.json_response({"items": page.items, "next_cursor": cursor})


async def show_job(request: web.Request) -> web.Response:
    """GET /api/jobs/{jobId}: current state, every event oldest first, every notification with its attempts."""
    job_id = request.match_info["jobId"]
    try:
        detail = await request.config_dict[STORE].job_detail(job_id)
    except StoreUnavailable as exc:
        return _unavailable(exc)
    if detail is None:
        return error_response(404, "not_found", f"no job {job_id[:80]!r} is stored")
    return web.json_response(detail)


async def list_notifications(request: web.Request) -> web.Response:
    """GET /api/notifications?state=&limit=&cursor="""
    try:
        query = parse_notifications_query(list(request.query.items()))
    except QueryError as exc:
        return _invalid(exc)
    try:
        page = await request.config_dict[STORE].list_notifications(query)
    except StoreUnavailable as exc:
        return _unavailable(exc)
    cursor = None if page.next_key is None else encode_cursor("notifications", [page.next_key])
    return web.json_response({"items": page.items, "next_cursor": cursor})


async def redeliver(request: web.Request) -> web.Response:
    """POST /api/notifications/{id}/redeliver: pending again, due now, attempt history kept; 202."""
    raw = request.match_info["id"]
    try:
        notification = await redeliver_notification(request, raw)
    except StoreUnavailable as exc:
        return _unavailable(exc)
    if notification is None:
        return error_response(404, "not_found", f"no notification {raw[:80]!r}")
    return web.json_response(notification, status=202)


async def redeliver_notification(request: web.Request, raw: str) -> Json | None:
    """Notification `raw` (the id as the path gives it) pending again and due now, the worker told, and an
    INFO line naming the operator's action; None when there is no such notification. The API and the
    dashboard's form both redeliver through here. Raises StoreUnavailable."""
    if not _LIMIT.fullmatch(raw):  # the same 1 to 9 digits as a limit
        return None
    notification = await request.config_dict[STORE].redeliver_notification(int(raw), now_ms())
    if notification is None:
        return None
    request.config_dict[WORKER].deliveries_due()
    log.info(
        REDELIVERED_LOG,
        requestid.of(request),
        notification["id"],
        notification["jobId"],
        notification["status"],
        notification["target"],
    )
    return notification


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/jobs", list_jobs),
    ("GET", "/jobs/{jobId}", show_job),
    ("GET", "/notifications", list_notifications),
    ("POST", "/notifications/{id}/redeliver", redeliver),
)
