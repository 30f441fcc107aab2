"""Deliveries: the outbox expanded into one row per rule x target, claimed with leases, retried, recorded.

Plain functions over a sqlite3 connection, run in the writer process inside its transaction (see
`GroupCommitWriter.call`), so each step is atomic and no SQLite call touches the event loop.

Flood control (issue #9) lives here too, because its exactly-once promise rests on these transactions:
- a *digest* is a delivery with no single job (`job_id` NULL) whose transitions are listed in
  `digest_members`; a grouped transition joins its group's open digest in the transaction that expands
  it, and a digest is sealed (takes no more members) in the transaction that first claims it, so every
  transition is in exactly one digest;
- the window is stored (`window_end`, `next_attempt_at`), so a restart mid-window loses nothing;
- a rate-limited target is claimed only within its budget (sends recorded in the last minute plus claims
  in flight), and when more are due than the budget allows, its untried single deliveries are merged into
  one digest per rule instead of waiting their turn one by one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from receiver.models import NotificationState

PENDING, RETRYING, SENT, DEAD = (s.value for s in NotificationState)
RATE_WINDOW_MS = 60_000  # rate_limit counts messages per minute (SPEC §5)


class Grouping(NamedTuple):
    """Where a grouped transition goes: its group (the rule's `group_by` values) and the group's timers."""

    key: str
    wait_ms: int
    interval_ms: int


class NewDelivery(NamedTuple):
    """What the worker decided for one transition: the message to send to one target for one rule.

    With `group` set, the transition joins a digest of its group instead (title and body are rendered
    from all the digest's members when it is sent).
    """

    outbox_id: int
    job_id: str
    status: str
    rule: str
    target: str
    title: str
    body: str
    notify_type: str
    group: Grouping | None = None


class Member(NamedTuple):
    """One transition in a digest, as the digest's message needs it."""

    job_id: str
    status: str
    job_type: str | None
    account_id: str | None
    error_code: str | None
    at: int  # epoch ms the transition was recorded


class ClaimedDelivery(NamedTuple):
    id: int
    target: str
    title: str
    body: str
    notify_type: str
    attempts: int
    rule: str = ""
    members: tuple[Member, ...] | None = None  # a digest's transitions, oldest first; None: a single delivery
    group_key: str | None = None


class Outcome(NamedTuple):
    """One send's result, and what happens next: sent, retry at `next_attempt_at`, or dead."""

    delivery_id: int
    ok: bool
    error: str | None
    next_attempt_at: int | None  # None with ok=False: dead


_INSERT_DELIVERY = """INSERT INTO deliveries (outbox_id, job_id, status, rule, target, title, body, notify_type,
                                   state, next_attempt_at, created_at)
           VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"""
_INSERT_DIGEST = """INSERT INTO deliveries (outbox_id, job_id, status, rule, target, title, body, notify_type, state,
                                   next_attempt_at, created_at, group_key, window_end, sealed)
           VALUES (NULL, NULL, ?, ?, ?, '', '', ?, ?, ?, ?, ?, ?, ?)"""
_INSERT_MEMBER = "INSERT INTO digest_members (digest_id, outbox_id, job_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
_LATEST_OF_GROUP = """SELECT id, sealed, window_end FROM deliveries WHERE rule = ? AND target = ? AND group_key = ?
           ORDER BY window_end DESC LIMIT 1"""


def expand(conn: sqlite3.Connection, outbox_ids: Sequence[int], deliveries: Sequence[NewDelivery], now: int) -> int:
    """Mark the outbox rows processed and create their deliveries, once: a row already processed adds nothing."""
    fresh = set()
    for outbox_id in outbox_ids:
        cursor = conn.execute(
            "UPDATE outbox SET processed_at = ? WHERE id = ? AND processed_at IS NULL", (now, outbox_id)
        )
        if cursor.rowcount:
            fresh.add(outbox_id)
    planned = [d for d in deliveries if d.outbox_id in fresh]
    conn.executemany(_INSERT_DELIVERY, [(*d[:8], PENDING, now, now) for d in planned if d.group is None])
    for delivery in planned:
        if delivery.group is not None:
            join_group(conn, delivery, delivery.group, now)
    return len(planned)


def join_group(conn: sqlite3.Connection, delivery: NewDelivery, group: Grouping, now: int) -> int:
    """Add a transition to its group's open digest, opening one when there is none; the digest's id."""
    latest = conn.execute(_LATEST_OF_GROUP, (delivery.rule, delivery.target, group.key)).fetchone()
    if latest is not None and not latest[1]:
        digest_id = int(latest[0])
    else:
        due = digest_due(group, None if latest is None else int(latest[2]), now)
        values = (delivery.status, delivery.rule, delivery.target, delivery.notify_type, PENDING, due, now)
        digest_id = _insert_digest(conn, (*values, group.key, due, 0))
    conn.execute(_INSERT_MEMBER, (digest_id, delivery.outbox_id, delivery.job_id))
    return digest_id


def digest_due(group: Grouping, latest_window_end: int | None, now: int) -> int:
    """When a digest opened now is due, after the group's latest digest closed its window at `latest_window_end`.

    Alertmanager's timers: a group quiet for `group_interval` starts afresh and waits `group_wait`;
    otherwise the next digest is due `group_interval` after the previous one's window closed.
    """
    next_window = None if latest_window_end is None else latest_window_end + group.interval_ms
    return now + group.wait_ms if next_window is None or now >= next_window else next_window


def _insert_digest(conn: sqlite3.Connection, values: tuple[object, ...]) -> int:
    rowid = conn.execute(_INSERT_DIGEST, values).lastrowid
    assert rowid is not None
    return rowid


_DUE = """SELECT id, target, title, body, notify_type, attempts, rule, job_id, group_key FROM deliveries
           WHERE state IN ('pending', 'retrying') AND next_attempt_at <= ?
             AND (lease_until IS NULL OR lease_until <= ?){only}
           ORDER BY next_attempt_at LIMIT ?"""
_MEMBERS = """SELECT m.digest_id, m.job_id, coalesce(o.status, '?'), e.job_type, e.account_id, e.error_code,
                  coalesce(o.created_at, 0)
           FROM digest_members m LEFT JOIN outbox o ON o.id = m.outbox_id LEFT JOIN events e ON e.id = o.event_id
           WHERE m.digest_id IN ({ids}) ORDER BY m.digest_id, m.outbox_id"""
_SENT_RECENTLY = """SELECT count(*) FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id
           WHERE a.at > ? AND d.target = ?"""
_IN_FLIGHT = """SELECT count(*) FROM deliveries
           WHERE state IN ('pending', 'retrying') AND target = ? AND lease_until > ?"""
_UNTRIED_DUE = """SELECT id, outbox_id, job_id, status, rule, notify_type FROM deliveries
           WHERE state IN ('pending', 'retrying') AND next_attempt_at <= ? AND attempts = 0 AND job_id IS NOT NULL
             AND (lease_until IS NULL OR lease_until <= ?) AND target = ?
           ORDER BY id"""


def claim_due(
    conn: sqlite3.Connection,
    now: int,
    lease_ms: int,
    limit: int,
    caps: Mapping[str, int] | None = None,
    rate_limits: Mapping[str, int] | None = None,
) -> list[ClaimedDelivery]:
    """Take up to `limit` due deliveries whose lease is free or expired (a crashed claimant's rows return).

    `caps` bounds what is taken for some targets this time (a circuit breaker: 0 while open, 1 for a
    half-open probe); `rate_limits` gives targets' messages per minute. Both only ever hold rows back: a
    held row stays due and is taken once allowed. Claiming a digest seals it.
    """
    caps, rate_limits = caps or {}, rate_limits or {}
    special = sorted(set(caps) | set(rate_limits))
    rows: list[Any] = []
    for target in special:  # first, so a backlog elsewhere cannot starve them
        budget = min(limit - len(rows), caps.get(target, limit))
        if target in rate_limits and budget > 0:
            budget = min(budget, rate_budget(conn, target, rate_limits[target], now))
            if budget > 0 and _count_due(conn, target, now) > budget:
                merge_held(conn, target, now)
        if budget > 0:
            rows += conn.execute(_DUE.format(only=" AND target = ?"), (now, now, target, budget)).fetchall()
    if len(rows) < limit:
        # The states are literals, not parameters: only then can SQLite use the partial index deliveries_due
        # instead of scanning every delivery ever sent. Without flood control the statement is unchanged.
        only = f" AND target NOT IN ({','.join('?' * len(special))})" if special else ""
        rows += conn.execute(_DUE.format(only=only), (now, now, *special, limit - len(rows))).fetchall()
    conn.executemany("UPDATE deliveries SET lease_until = ? WHERE id = ?", [(now + lease_ms, row[0]) for row in rows])
    digests = [int(row[0]) for row in rows if row[7] is None]
    members = digest_members(conn, digests)
    if digests:
        conn.executemany("UPDATE deliveries SET sealed = 1 WHERE id = ? AND sealed = 0", [(i,) for i in digests])
    return as_claimed(rows, members)


def as_claimed(rows: Sequence[Sequence[Any]], members: Mapping[int, list[Member]]) -> list[ClaimedDelivery]:
    """Claimed rows (id, target, title, body, notify_type, attempts, rule, job_id, group_key, ...) with their
    digests' members."""
    claimed = []
    for id_, target, title, body, notify_type, attempts, rule, job_id, group_key, *_ in rows:
        group = tuple(members.get(id_, ())) if job_id is None else None
        claimed.append(ClaimedDelivery(id_, target, title, body, notify_type, attempts, rule, group, group_key))
    return claimed


def digest_members(conn: sqlite3.Connection, digest_ids: Sequence[int]) -> dict[int, list[Member]]:
    """The transitions of these digests, oldest first."""
    if not digest_ids:
        return {}
    members: dict[int, list[Member]] = {}
    for digest_id, *member in conn.execute(_MEMBERS.format(ids=",".join("?" * len(digest_ids))), digest_ids):
        members.setdefault(digest_id, []).append(Member(*member))
    return members


def rate_budget(conn: sqlite3.Connection, target: str, per_minute: int, now: int) -> int:
    """How many more messages `target` may take now: its limit less sends in the last minute and claims in flight.

    Attempts are stamped when they finish, after the peer saw them, so counting by that stamp errs on the safe
    side: a message counted out of the window reached the peer more than a minute before anything claimed now.
    """
    (sent,) = conn.execute(_SENT_RECENTLY, (now - RATE_WINDOW_MS, target)).fetchone()
    (in_flight,) = conn.execute(_IN_FLIGHT, (target, now)).fetchone()
    return max(0, per_minute - int(sent) - int(in_flight))


def _count_due(conn: sqlite3.Connection, target: str, now: int) -> int:
    (count,) = conn.execute(
        "SELECT count(*) FROM (" + _DUE.format(only=" AND target = ?") + ")", (now, now, target, 1 << 62)
    ).fetchone()
    return int(count)


def merge_held(conn: sqlite3.Connection, target: str, now: int) -> int:
    """Fold the untried single deliveries due for `target` into one digest per rule (two or more each).

    Rows already attempted keep their own retry history and go alone. Returns how many rows were folded.
    """
    by_rule: dict[str, list[tuple[int, int, str, str, str]]] = {}
    for id_, outbox_id, job_id, status, rule, notify_type in conn.execute(_UNTRIED_DUE, (now, now, target)):
        by_rule.setdefault(rule, []).append((id_, outbox_id, job_id, status, notify_type))
    folded = 0
    for rule, held in by_rule.items():
        if len(held) < 2:
            continue
        conn.executemany("DELETE FROM deliveries WHERE id = ?", [(row[0],) for row in held])
        _, _, _, status, notify_type = held[0]
        digest_id = _insert_digest(conn, (status, rule, target, notify_type, PENDING, now, now, None, now, 1))
        conn.executemany(_INSERT_MEMBER, [(digest_id, outbox_id, job_id) for _, outbox_id, job_id, _, _ in held])
        folded += len(held)
    return folded


def record(conn: sqlite3.Connection, outcomes: Sequence[Outcome], now: int) -> None:
    """Record each attempt and move the delivery on; a delivery already sent is never changed again."""
    for outcome in outcomes:
        conn.execute(
            "INSERT INTO delivery_attempts (delivery_id, at, ok, error) VALUES (?, ?, ?, ?)",
            (outcome.delivery_id, now, int(outcome.ok), outcome.error),
        )
        state, next_at, sent_at = next_state(outcome, now)
        conn.execute(
            """UPDATE deliveries SET state = ?, next_attempt_at = ?, sent_at = ?, lease_until = NULL,
                                     attempts = attempts + 1
               WHERE id = ? AND state != ?""",
            (state, next_at, sent_at, outcome.delivery_id, SENT),
        )


def next_state(outcome: Outcome, now: int) -> tuple[str, int | None, int | None]:
    """Where a delivery goes after this attempt: (state, next_attempt_at, sent_at)."""
    if outcome.ok:
        return SENT, None, now
    if outcome.next_attempt_at is None:
        return DEAD, None, None
    return RETRYING, outcome.next_attempt_at, None


def redeliver(conn: sqlite3.Connection, delivery_ids: Sequence[int], now: int) -> int:
    """Put deliveries back to pending, due now, keeping their attempt history."""
    changed = 0
    for delivery_id in delivery_ids:
        cursor = conn.execute(
            "UPDATE deliveries SET state = ?, next_attempt_at = ?, lease_until = NULL WHERE id = ?",
            (PENDING, now, delivery_id),
        )
        changed += cursor.rowcount
    return changed


def redeliver_dead(conn: sqlite3.Connection, now: int) -> int:
    """Every dead delivery back to pending, due now, keeping its attempt history."""
    return conn.execute(
        "UPDATE deliveries SET state = ?, next_attempt_at = ?, lease_until = NULL WHERE state = ?", (PENDING, now, DEAD)
    ).rowcount
