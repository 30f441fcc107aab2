"""Grouping decisions and the digest message (SPEC §5 `group_by`, §7 "Digests"). Pure: no I/O.

A digest's title starts with the number of transitions it covers and names what they share
("37 DeleteFolderBatchJob jobs failed in account A623uY2 within 58 s"); its body counts them per error
code and lists the first `MAX_LISTED` jobIds. The message is rendered from the sealed member list each
time it is sent, so a retry sends the same text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from notifiers.render import Message, format_duration, notify_type_for
from notifiers.rules import CompiledRule, job_values
from notifiers.targets import Target
from receiver.models import Job
from receiver.store.deliveries import Grouping, Member

MAX_LISTED = 20
NO_ERROR = "(no error)"
_VERBS = {"Failed": "failed", "Succeeded": "succeeded", "Cancelled": "were cancelled"}
_VERBS_ONE = {"Failed": "failed", "Succeeded": "succeeded", "Cancelled": "was cancelled"}


def group_key(rule: CompiledRule, job: Job) -> str:
    """The group a job's transition falls in under `rule`: its `group_by` values, `jobType=X accountId=Y`."""
    values = job_values(job)
    return " ".join(f"{key}={values[key] if values[key] is not None else '-'}" for key in rule.group_by)


def grouping(rule: CompiledRule, job: Job) -> Grouping | None:
    """None when the rule does not group: one message per transition, as without flood control."""
    if not rule.group_by:
        return None
    return Grouping(group_key(rule, job), int(rule.group_wait * 1000), int(rule.group_interval * 1000))


def flood_control_lines(rule: CompiledRule, target: Target, job: Job) -> list[str]:
    """What `jobhook test-rule` says about grouping and rate limits for one (rule, target) of a payload."""
    lines = []
    if rule.group_by:
        wait, interval = (format_duration(int(s * 1000)) for s in (rule.group_wait, rule.group_interval))
        lines.append(
            f"grouped by {', '.join(rule.group_by)}: group {group_key(rule, job)!r}; a digest {wait} after the"
            f" group's first transition (group_wait), then at most one every {interval} (group_interval)"
        )
    else:
        lines.append("not grouped: one message per transition")
    if target.rate_limit is not None:
        lines.append(
            f"target {target.name} is limited to {target.rate_limit} messages a minute;"
            " over it, messages wait and are merged into digests"
        )
    return lines


def _common(values: Sequence[str | None]) -> str | None:
    return values[0] if values and values[0] is not None and all(v == values[0] for v in values) else None


def digest_title(members: Sequence[Member]) -> str:
    count = len(members)
    job_type = _common([m.job_type for m in members])
    account = _common([m.account_id for m in members])
    status = _common([m.status for m in members])
    noun = f"{job_type} job" if job_type else "job"
    noun += "" if count == 1 else "s"
    if status is None:
        verb = "finished"
    else:
        verb = (_VERBS_ONE if count == 1 else _VERBS).get(status, f"{'is' if count == 1 else 'are'} {status}")
    title = f"{count} {noun} {verb}"
    if account:
        title += f" in account {account}"
    span = members[-1].at - members[0].at if members else 0
    if count > 1 and span > 0:
        title += f" within {format_duration(span)}"
    return title


def digest_body(members: Sequence[Member], rule: str, group_key: str | None) -> str:
    lines = [f"- **Rule:** {rule}"]
    if group_key:
        lines.append(f"- **Group:** {group_key}")
    statuses = Counter(m.status for m in members)
    if len(statuses) > 1:
        lines.append("- **Statuses:** " + ", ".join(f"{s} × {n}" for s, n in statuses.most_common()))
    errors = Counter(m.error_code or NO_ERROR for m in members)
    lines.append("- **Errors:** " + ", ".join(f"`{code}` × {n}" for code, n in errors.most_common()))
    shown = members[:MAX_LISTED]
    heading = f"**Jobs** (first {len(shown)} of {len(members)}):" if len(shown) < len(members) else "**Jobs:**"
    lines += ["", heading]
    for m in shown:
        error = f": `{m.error_code}`" if m.error_code else ""
        lines.append(f"- `{m.job_id}` {m.job_type or '?'} in {m.account_id or '?'}, {m.status}{error}")
    if len(members) > len(shown):
        lines.append(f"- … and {len(members) - len(shown)} more")
    return "\n".join(lines)


def render_digest(members: Sequence[Member], rule: str, group_key: str | None) -> Message:
    """The message of one digest: failure if any member failed, else the members' common status's type."""
    statuses = {m.status for m in members}
    notify_type = notify_type_for("Failed" if "Failed" in statuses else _common([m.status for m in members]))
    return Message(digest_title(members), digest_body(members, rule, group_key), notify_type)
