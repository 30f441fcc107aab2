"""Who may see the dashboard and post its forms: pure checks over headers, cookies and the admin token.

A browser cannot send `Authorization: Bearer`, so with `admin.token` set the login form exchanges the
token for a session cookie: `EXPIRES.HMAC-SHA256(token, EXPIRES)`, HttpOnly and SameSite=Strict. It
holds no secret, needs no server-side state, expires on its own, and every session ends when the token
is rotated. Form posts must also come from the dashboard's own pages (`cross_site_problem`), since a
loopback-only dashboard has no cookie at all that SameSite could protect.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

COOKIE = "jobhook_session"
SESSION_SECONDS = 12 * 3600
_SESSION = re.compile(r"([0-9]{1,12})\.([0-9a-f]{64})")


def session_value(token: str, expires: int) -> str:
    """The cookie value for a session of `token` ending at `expires` (epoch seconds)."""
    signature = hmac.new(token.encode(), f"jobhook-session:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{signature}"


def session_valid(value: str | None, token: str, now: float) -> bool:
    """True for an unexpired cookie made from this token; compared in constant time."""
    if not token or value is None:
        return False
    match = _SESSION.fullmatch(value)
    if match is None or int(match[1]) <= now:
        return False
    return hmac.compare_digest(session_value(token, int(match[1])).encode(), value.encode())


def token_matches(given: str, token: str) -> bool:
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


def cross_site_problem(headers: Mapping[str, str], host: str) -> str | None:
    """Why a form post may not come from our own pages, or None when it does.

    Browsers send `Sec-Fetch-Site` (to localhost and HTTPS sites) and `Origin` on every POST; neither
    can be set by a page's script. Without both, the post is not from a browser form of ours.
    """
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        return None if site == "same-origin" else f"cross-site form post refused (Sec-Fetch-Site: {site[:40]})"
    origin = headers.get("Origin")
    if origin is None:
        return "form post without Origin or Sec-Fetch-Site header refused; use the API (/api) outside a browser"
    if urlsplit(origin).netloc.lower() != host.lower():
        return f"cross-origin form post refused (Origin {origin[:100]} is not {host[:100]})"
    return None


def prefers_json(accept: str) -> bool:
    """`Accept: application/json` without text/html: API clients get JSON; browsers and `*/*` get HTML."""
    return "application/json" in accept and "text/html" not in accept


def local_path(target: str | None, default: str = "/") -> str:
    """Where to send the browser back to: only a path on this server (no `//host` or `scheme:`)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target
