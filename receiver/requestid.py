"""Request ids: the caller's `X-Request-Id` when it is sane, else a cheap one of our own.

A generated id is a random per-process prefix and a counter (`3f9a1c2e-1b`): unique enough to find
one request in the logs, and a few hundred nanoseconds instead of a uuid4 per request. An incoming
id is kept only when it is short and plain (letters, digits, `.`, `_`, `:`, `-`), so whatever a
client sends cannot forge or break a log line.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Mapping

from aiohttp import web

REQUEST_ID = "X-Request-Id"
MAX_LENGTH = 128
_SANE = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_LENGTH}}}")
_PREFIX = secrets.token_hex(4) + "-"
_counter = itertools.count(1)
_KEY = web.RequestKey("request_id", str)  # where `of()` keeps a request's id once chosen


def request_id(headers: Mapping[str, str]) -> str:
    """The id for a request with these headers: its own `X-Request-Id` if sane, else a new one."""
    given = headers.get(REQUEST_ID)
    if given is not None and _SANE.fullmatch(given):
        return given
    return f"{_PREFIX}{next(_counter):x}"


def of(request: web.Request) -> str:
    """The request's id, chosen on first use and the same for every later log line and the response."""
    rid = request.get(_KEY)
    if rid is None:
        rid = request[_KEY] = request_id(request.headers)
    return rid


def tag(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Echo the request's id in the response (not yet sent: its headers can still change)."""
    if not response.prepared:
        response.headers[REQUEST_ID] = of(request)
    return response
