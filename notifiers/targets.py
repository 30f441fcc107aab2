"""Named notification targets (SPEC §5 `targets:`) and sending one message to one of them through apprise.

Why it looks the way it does (see notify-anchors Part 2):
- every URL is checked with `Apprise.instantiate` up front, because `AppriseConfig.add_config` drops bad URLs
  silently; problems name the key path and the scheme only, never the URL, which may carry credentials;
- each send builds a fresh `Apprise` object: a reused plugin instance sleeps up to 5.5 s between sends (its
  built-in throttle), which would stall the worker and duplicate our own `rate_limit`;
- `async_notify` runs the blocking plugins in apprise's thread pool, so the event loop keeps serving;
- apprise 2.x returns one `NotifyResult` per URL, whose attempt logs carry the only useful error text (the
  HTTP status exists only inside that text); every error text goes through the `Redactor`.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import apprise
from apprise.plugins import N_MGR

import notifiers.console  # noqa: F401  (registers console://, the default target)
from notifiers.redaction import Redactor
from receiver.settings import Settings, TargetSettings
from receiver.validation import FieldProblem

_SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]{0,31})://")
_HTTP_STATUS = re.compile(r"\berror=(\d{3})\b")
_TRANSIENT_4XX = frozenset({408, 425, 429})
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Target:
    name: str
    urls: tuple[str, ...]
    rate_limit: int | None = None


@dataclass(frozen=True)
class SendResult:
    """`retryable` False means trying again cannot help (bad URL, HTTP 4xx other than 408/425/429)."""

    ok: bool
    error: str | None
    retryable: bool
    elapsed: float


def _instantiate(url: str, asset: apprise.AppriseAsset | None = None) -> apprise.NotifyBase | None:
    """`Apprise.instantiate`, but never for a string without `scheme://`: apprise logs those verbatim at ERROR,
    and such a string may be a bare credential (a URL-shaped one is logged with its password masked)."""
    return apprise.Apprise.instantiate(url, asset=asset) if _SCHEME.match(url) else None


def url_problem(url: str) -> str | None:
    """Why apprise would refuse `url`, naming at most its scheme (the rest may be a credential); None if valid."""
    if not url.strip():
        return "is empty (an unset environment variable?)"
    match = _SCHEME.match(url)
    if match is None:
        return "not a valid apprise URL (expected scheme://...)"
    if _instantiate(url) is not None:
        return None
    scheme = match.group(1).lower()
    if scheme in N_MGR:
        return f"not a valid apprise URL (scheme '{scheme}' is supported, but its tokens or parameters were rejected)"
    return f"not a valid apprise URL (scheme '{scheme}')"


def load_targets(settings: Settings) -> tuple[dict[str, Target], list[FieldProblem]]:
    """Every configured target, and one problem per unusable URL with its key path (`targets.ops.urls[1]`)."""
    targets: dict[str, Target] = {}
    problems: list[FieldProblem] = []
    for name, value in settings.targets.items():
        path, rate_limit = f"targets.{name}", None
        if isinstance(value, TargetSettings):
            path, rate_limit, value = f"{path}.urls", value.rate_limit, value.urls
        entries = [(path, value)] if isinstance(value, str) else [(f"{path}[{i}]", u) for i, u in enumerate(value)]
        if not entries:
            problems.append({"field": path, "message": "needs at least one apprise URL"})
        bad = False
        for field, url in entries:
            message = url_problem(url)
            if message is not None:
                problems.append({"field": field, "message": message})
                bad = True
        if entries and not bad:
            targets[name] = Target(name, tuple(url.strip() for _, url in entries), rate_limit)
    return targets, problems


def _notify(target: Target, title: str, body: str, notify_type: str, body_format: str) -> apprise.AppriseResult | str:
    """The blocking part of one send, for a worker thread: a fresh Apprise object, so no throttle is carried over."""
    # service_timeout=0: our own timeout bounds the send, so apprise may call a single service inline
    # instead of handing it to yet another thread.
    asset = apprise.AppriseAsset(service_timeout=0)
    ap = apprise.Apprise(asset=asset)
    for index, url in enumerate(target.urls):
        plugin = _instantiate(url, asset)
        if plugin is None:
            return f"target '{target.name}' URL #{index + 1}: {url_problem(url)}"
        ap.add(plugin)
    return ap.notify(title=title, body=body, notify_type=notify_type, body_format=body_format)


async def send(
    target: Target,
    *,
    title: str,
    body: str,
    notify_type: str,
    body_format: str = "markdown",
    timeout: float,  # noqa: ASYNC109 - the per-send budget, applied with asyncio.wait_for below
    redactor: Redactor,
) -> SendResult:
    """Send one message to every URL of `target`; ok only if all of them accepted it."""
    started = time.monotonic()

    def outcome(ok: bool, error: str | None = None, retryable: bool = False) -> SendResult:
        text = redactor.redact(error)[:MAX_ERROR_CHARS] if error is not None else None
        return SendResult(ok, text, retryable, time.monotonic() - started)

    if not target.urls:
        return outcome(False, f"target '{target.name}' has no URLs")
    try:
        # Building the Apprise object parses every URL and reads files; it runs in the thread with the send.
        prepared = await asyncio.wait_for(
            asyncio.to_thread(_notify, target, title, body, notify_type, body_format), timeout
        )
    except TimeoutError:
        return outcome(False, f"timed out after {timeout:g} s", retryable=True)
    except Exception as exc:  # apprise reports per-service failures in the result; this is anything else
        return outcome(False, f"{type(exc).__name__}: {exc}", retryable=True)
    if isinstance(prepared, str):
        return outcome(False, prepared)
    result = prepared
    if result:
        return outcome(True)

    errors: list[str] = []
    permanent = True
    for service in result:
        if service:
            continue
        where = service.url.partition("?")[0]  # the privacy URL; its query would show +headers and -params
        messages = [entry.message for attempt in service.attempts for entry in attempt.logs]
        if service.status == apprise.AppriseResultStatus.TIMEOUT:
            messages.append(f"timed out after {timeout:g} s")
        errors.append(f"{where}: {' '.join(messages) or service.status.name.lower()}")
        codes = {int(code) for message in messages for code in _HTTP_STATUS.findall(message)}
        permanent &= bool(codes) and all(400 <= c < 500 and c not in _TRANSIENT_4XX for c in codes)
    if not errors:  # no per-service result: apprise refused the call itself (e.g. an unknown notify_type)
        errors = [entry.message for entry in result.call_logs()] or [f"apprise: {result.status.name.lower()}"]
    return outcome(False, "; ".join(errors), retryable=not permanent)
