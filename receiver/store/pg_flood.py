"""Flood control on PostgreSQL: digests, rate-limited and capped claims, for several replicas at once.

The rules are those of `receiver.store.deliveries` (read its docstring first); what several writers add:

- joining a group takes its open digest `FOR UPDATE`, and opening one goes through the unique index
  `deliveries_open_group` (`ON CONFLICT DO NOTHING`, then look again), so replicas share one open digest;
  a claim seals a digest under the row lock it claims it with, so a transition joins either before the
  seal (and is in the message) or after it (and opens the next digest), never in between;
- a rate-limited target is claimed under a transaction advisory lock of its own, so two replicas never
  both spend the same budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from receiver.store.deliveries import (
    PENDING,
    RATE_WINDOW_MS,
    ClaimedDelivery,
    Grouping,
    Member,
    NewDelivery,
    as_claimed,
    digest_due,
)
from receiver.store.pg_ingest import lock_key

if TYPE_CHECKING:
    from receiver.store.pg_sql import Conn

_OPEN_DIGEST = """SELECT id FROM deliveries WHERE rule = $1 AND target = $2 AND group_key = $3 AND sealed = 0
           FOR UPDATE"""
_LATEST_WINDOW = """SELECT window_end FROM deliveries WHERE rule = $1 AND target = $2 AND group_key = $3
           ORDER BY window_end DESC LIMIT 1"""
_INSERT_DIGEST = """INSERT INTO deliveries (outbox_id, job_id, status, rule, target, title, body, notify_type, state,
                                   next_attempt_at, created_at, group_key, window_end, sealed)
           VALUES (NULL, NULL, $1, $2, $3, '', '', $4, $5, $6, $7, $8, $9, $10)"""
_OPEN_GROUP = _INSERT_DIGEST + " ON CONFLICT (rule, target, group_key) WHERE sealed = 0 DO NOTHING RETURNING id"
_INSERT_MEMBER = "INSERT INTO digest_members (digest_id, outbox_id, job_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"

_DUE = """UPDATE deliveries SET lease_until = $1 + $2
           WHERE id IN (SELECT id FROM deliveries
                        WHERE state IN ('pending', 'retrying') AND next_attempt_at <= $1
                          AND (lease_until IS NULL OR lease_until <= $1){only}
                        ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
           RETURNING id, target, title, body, notify_type, attempts, rule, job_id, group_key, next_attempt_at"""
_COUNT_DUE = """SELECT count(*) FROM deliveries WHERE state IN ('pending', 'retrying') AND next_attempt_at <= $1
           AND (lease_until IS NULL OR lease_until <= $1) AND target = $2"""
_MEMBERS = """SELECT m.digest_id, m.job_id, coalesce(o.status, '?'), e.job_type, e.account_id, e.error_code,
                  coalesce(o.created_at, 0)
           FROM digest_members m LEFT JOIN outbox o ON o.id = m.outbox_id LEFT JOIN events e ON e.id = o.event_id
           WHERE m.digest_id = ANY($1::bigint[]) ORDER BY m.digest_id, m.outbox_id"""
_SENT_RECENTLY = """SELECT count(*) FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id
           WHERE a.at > $1 AND d.target = $2"""
_IN_FLIGHT = (
    "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'retrying') AND target = $1 AND lease_until > $2"
)
_UNTRIED_DUE = """SELECT id, outbox_id, job_id, status, rule, notify_type FROM deliveries
           WHERE state IN ('pending', 'retrying') AND next_attempt_at <= $1 AND attempts = 0 AND job_id IS NOT NULL
             AND (lease_until IS NULL OR lease_until <= $1) AND target = $2
           ORDER BY id FOR UPDATE SKIP LOCKED"""


async def join_group(conn: Conn, delivery: NewDelivery, group: Grouping, now: int) -> int:
    """Add a transition to its group's open digest, opening one when there is none; the digest's id."""
    while True:
        digest_id = await conn.fetchval(_OPEN_DIGEST, delivery.rule, delivery.target, group.key)
        if digest_id is None:
            latest = await conn.fetchval(_LATEST_WINDOW, delivery.rule, delivery.target, group.key)
            due = digest_due(group, None if latest is None else int(latest), now)
            values = (delivery.status, delivery.rule, delivery.target, delivery.notify_type, PENDING, due, now)
            digest_id = await conn.fetchval(_OPEN_GROUP, *values, group.key, due, 0)
        if digest_id is not None:  # None: another replica opened the group's digest meanwhile; join that one
            await conn.execute(_INSERT_MEMBER, digest_id, delivery.outbox_id, delivery.job_id)
            return int(digest_id)


async def claim_due(
    conn: Conn,
    now: int,
    lease_ms: int,
    limit: int,
    caps: Mapping[str, int] | None = None,
    rate_limits: Mapping[str, int] | None = None,
) -> list[ClaimedDelivery]:
    """Lease up to `limit` due deliveries no other transaction holds; `caps` and `rate_limits` hold some back."""
    caps, rate_limits = caps or {}, rate_limits or {}
    special = sorted(set(caps) | set(rate_limits))
    rows: list[Any] = []
    for target in special:  # first, so a backlog elsewhere cannot starve them
        budget = min(limit - len(rows), caps.get(target, limit))
        if target in rate_limits and budget > 0:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(f"rate:{target}"))
            budget = min(budget, await rate_budget(conn, target, rate_limits[target], now))
            if budget > 0 and await conn.fetchval(_COUNT_DUE, now, target) > budget:
                await merge_held(conn, target, now)
        if budget > 0:
            rows += await conn.fetch(_DUE.format(only=" AND target = $4"), now, lease_ms, budget, target)
    if len(rows) < limit:
        only = " AND NOT (target = ANY($4::text[]))" if special else ""
        rows += await conn.fetch(
            _DUE.format(only=only), now, lease_ms, limit - len(rows), *([special] if special else [])
        )
    rows.sort(key=lambda row: row["next_attempt_at"])
    digests = [int(row["id"]) for row in rows if row["job_id"] is None]
    members = await digest_members(conn, digests)
    if digests:
        await conn.execute("UPDATE deliveries SET sealed = 1 WHERE id = ANY($1::bigint[]) AND sealed = 0", digests)
    return as_claimed(rows, members)


async def digest_members(conn: Conn, digest_ids: Sequence[int]) -> dict[int, list[Member]]:
    members: dict[int, list[Member]] = {}
    if digest_ids:
        for digest_id, *member in await conn.fetch(_MEMBERS, list(digest_ids)):
            members.setdefault(digest_id, []).append(Member(*member))
    return members


async def rate_budget(conn: Conn, target: str, per_minute: int, now: int) -> int:
    sent = await conn.fetchval(_SENT_RECENTLY, now - RATE_WINDOW_MS, target)
    in_flight = await conn.fetchval(_IN_FLIGHT, target, now)
    return max(0, per_minute - int(sent) - int(in_flight))


async def merge_held(conn: Conn, target: str, now: int) -> int:
    """Fold the untried single deliveries due for `target` into one digest per rule (two or more each)."""
    by_rule: dict[str, list[Any]] = {}
    for row in await conn.fetch(_UNTRIED_DUE, now, target):
        by_rule.setdefault(row["rule"], []).append(row)
    folded = 0
    for rule, held in by_rule.items():
        if len(held) < 2:
            continue
        await conn.execute("DELETE FROM deliveries WHERE id = ANY($1::bigint[])", [row["id"] for row in held])
        values = (held[0]["status"], rule, target, held[0]["notify_type"], PENDING, now, now, None, now, 1)
        digest_id = await conn.fetchval(_INSERT_DIGEST + " RETURNING id", *values)
        await conn.executemany(_INSERT_MEMBER, [(digest_id, row["outbox_id"], row["job_id"]) for row in held])
        folded += len(held)
    return folded
