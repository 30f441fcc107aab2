"""Turn one transition into a message: the rule's sandboxed Jinja2 templates, or good defaults per status.

Pure (no I/O). A template that fails at render time falls back to the default for that field and says
so in the body: a typo in a template must never swallow the alert it was meant to shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

if TYPE_CHECKING:
    from notifiers.rules import CompiledRule

# apprise.NotifyType values, as plain strings so this module needs no apprise import.
_NOTIFY_TYPES = {"Failed": "failure", "Succeeded": "success", "Cancelled": "warning"}
MAX_ERROR_MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class Message:
    """What one delivery sends. `template_errors` lets the caller log or count broken templates."""

    title: str
    body: str
    notify_type: str
    body_format: str = "markdown"
    template_errors: tuple[str, ...] = ()


def _none_as_empty(value: Any) -> Any:
    # `{{ job.error }}` on a job without error should read as nothing, not "None".
    return "" if value is None else value


class _Sandbox(ImmutableSandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # Stock sandbox hands back an Undefined, which ChainableUndefined would render as "" silently;
        # raising makes an escape attempt a visible template error instead.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


def make_environment() -> SandboxedEnvironment:
    """The one Jinja2 environment rule templates are compiled with.

    Sandboxed, because templates are data in a config file; immutable, so a template cannot change the
    job dict it is shown (`job.update(...)`); ChainableUndefined, so `{{ job.error.code }}` on a job
    without an error renders empty instead of failing; no autoescape, because the output is markdown.
    """
    return _Sandbox(undefined=jinja2.ChainableUndefined, autoescape=False, finalize=_none_as_empty)


def notify_type_for(status: object) -> str:
    """apprise NotifyType for a job status: failure, success, warning (Cancelled), info (in-flight, unknown)."""
    return _NOTIFY_TYPES.get(str(status), "info")


def _round(value: float) -> int:
    return int(value + 0.5)  # half up: round() rounds half to even


def format_duration(ms: int) -> str:
    """Human duration: `572 ms`, `1.2 s`, `3 min 4 s`, `2 h 5 min`, `3 d 4 h` (two units at most)."""
    if ms < 1000:
        return f"{max(ms, 0)} ms"
    tenths = _round(ms / 100)
    if tenths < 600:
        whole, tenth = divmod(tenths, 10)
        return f"{whole} s" if tenth == 0 else f"{whole}.{tenth} s"
    seconds = _round(ms / 1000)
    if seconds < 3600:
        return _two_units(seconds, 60, "min", "s")
    minutes = _round(ms / 60_000)
    if minutes < 24 * 60:
        return _two_units(minutes, 60, "h", "min")
    return _two_units(_round(ms / 3_600_000), 24, "d", "h")


def _two_units(amount: int, per: int, big: str, small: str) -> str:
    high, low = divmod(amount, per)
    return f"{high} {big}" if low == 0 else f"{high} {big} {low} {small}"


def duration_ms(job: dict[str, Any]) -> int | None:
    """lastUpdated - created, or None when either is missing or time runs backwards."""
    created, updated = job.get("created"), job.get("lastUpdated")
    if type(created) is not int or type(updated) is not int or updated < created:
        return None
    return updated - created


def _text(value: Any) -> str:
    return "?" if value is None else str(value)


def default_title(job: dict[str, Any]) -> str:
    """`Failed: DeleteFolderBatchJob 01ARZ3NDEKTSV4RRFFQ69G5FAV in A623uY2`."""
    status, job_type, job_id, account = (_text(job.get(key)) for key in ("status", "jobType", "jobId", "accountId"))
    return f"{status}: {job_type} {job_id} in {account}"


def default_body(job: dict[str, Any], previous_status: str | None) -> str:
    """A markdown list naming the job, its type, account, status change, attempts, error, duration and URL."""
    status = _text(job.get("status"))
    if previous_status is None:
        change = f"**{status}** (first seen)"
    elif previous_status == status:
        change = f"**{status}**"
    else:
        change = f"**{status}** (was {previous_status})"
    lines = [
        f"- **Job type:** {_text(job.get('jobType'))}",
        f"- **Job ID:** `{_text(job.get('jobId'))}`",
        f"- **Account:** `{_text(job.get('accountId'))}`",
        f"- **Status:** {change}",
    ]
    if job.get("attempts") is not None:
        lines.append(f"- **Attempts:** {job['attempts']}")
    error = job.get("error")
    if isinstance(error, dict):
        message = _text(error.get("message"))
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
        lines.append(f"- **Error:** `{_text(error.get('code'))}`: {message}")
    elapsed = duration_ms(job)
    if elapsed is not None:
        lines.append(f"- **Duration:** {format_duration(elapsed)}")
    updated = job.get("lastUpdated")
    if type(updated) is int:
        lines.append(f"- **Last updated:** {_utc(updated)}")
    if job.get("jobUrl"):
        lines.append(f"- **Job URL:** {job['jobUrl']}")
    return "\n".join(lines)


def _utc(epoch_ms: int) -> str:
    try:
        return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(epoch_ms)


def template_scope(job: dict[str, Any], previous_status: str | None, rule_name: str | None = None) -> dict[str, Any]:
    """The names a rule template can use: job, previous_status, duration_ms, duration, rule."""
    elapsed = duration_ms(job)
    return {
        "job": job,
        "previous_status": previous_status,
        "duration_ms": elapsed,
        "duration": None if elapsed is None else format_duration(elapsed),
        "rule": rule_name,
    }


def _render_field(template: jinja2.Template | None, where: str, scope: dict[str, Any], errors: list[str]) -> str | None:
    if template is None:
        return None
    try:
        return template.render(scope).strip()
    except Exception as exc:  # any render failure (incl. SecurityError) degrades to the default
        errors.append(f"template error in {where}: {type(exc).__name__}")
        return None


def render(rule: CompiledRule | None, job: dict[str, Any], previous_status: str | None) -> Message:
    """The message for one transition of `job` (the raw stored dict) under `rule` (None: defaults only)."""
    errors: list[str] = []
    title: str | None = None
    body: str | None = None
    if rule is not None:
        scope = template_scope(job, previous_status, rule.name)
        title = _render_field(rule.title, f"{rule.path}.title", scope, errors)
        body = _render_field(rule.body, f"{rule.path}.body", scope, errors)
    if title is None:
        title = default_title(job)
    if body is None:
        body = default_body(job, previous_status)
    if errors:
        body = "\n\n".join([body, *(f"({error})" for error in errors)])
    return Message(title, body, notify_type_for(job.get("status")), template_errors=tuple(errors))
