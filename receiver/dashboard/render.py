"""Jinja2 for the dashboard: templates shipped in the package, autoescaped, loaded once at startup."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

BADGES = {
    "Succeeded": "ok",
    "sent": "ok",
    "Failed": "bad",
    "dead": "bad",
    "Cancelled": "muted",
    "Cancelling": "warn",
    "Rollback": "warn",
    "retrying": "warn",
    "closed": "ok",
    "open": "bad",
    "half-open": "warn",
}  # anything else (Created, Pending, Running, pending): "info"


def when(ms: int | None) -> str:
    """Epoch milliseconds as `2026-11-29 17:20:05 UTC`."""
    if ms is None:
        return ""
    try:  # a job object may carry any epoch ms up to 2^63 - 1; datetime stops at the year 9999
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms after 1970"


def ago(ms: int | None, now_ms: int) -> str:
    """How long before `now_ms`, roughly: `just now`, `42 s ago`, `5 min ago`, `3 h ago`, `12 d ago`; the date
    for anything older than a month or in the future."""
    if ms is None:
        return ""
    seconds = (now_ms - ms) // 1000
    if seconds < 0 or seconds >= 31 * 86400:
        return when(ms)[:10]
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


def badge(value: str) -> str:
    return BADGES.get(value, "info")


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("receiver.dashboard", "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise (none does)
        undefined=StrictUndefined,
        auto_reload=False,  # no stat() per render on the event loop
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, ago=ago, badge=badge, pretty=pretty)
    for name in env.list_templates():  # read from disk now, at startup, not on a request
        env.get_template(name)
    return env


def page(env: Environment, name: str, context: dict[str, Any], http_status: int = 200) -> web.Response:
    """A rendered template, with the headers every dashboard page carries."""
    html = env.get_template(name).render(**context)
    response = web.Response(status=http_status, text=html, content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"  # no clickjacking of the redeliver button
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    )
    response.headers["Referrer-Policy"] = "same-origin"
    return response
