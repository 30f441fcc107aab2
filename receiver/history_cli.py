"""The history commands of `jobhook` (SPEC §4): jobs, show, redeliver, prune, export.

Each opens the configured store (`create_store`), reuses the API's query parsing and the store's
history queries, and closes the store again. Exit codes: 0 ok, 1 unknown job or notification or an
unusable store, 2 a bad argument.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO, TypeVar

from receiver.api import QueryError, parse_jobs_query, parse_time
from receiver.app import create_store
from receiver.durations import now_ms
from receiver.settings import Settings
from receiver.store import Store, StoreUnavailable
from receiver.store.postgres import display_url

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# What opening or using the configured store raises when it cannot be used (a command's exit 1).
STORE_ERRORS = (OSError, sqlite3.Error, StoreUnavailable)
EXPORT_FIELDS = (
    "jobId",
    "accountId",
    "jobType",
    "status",
    "created",
    "lastUpdated",
    "attempts",
    "error_code",
    "error_message",
    "receivedAt",
)
PROGRESS_EVERY = 100_000


def add_commands(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    jobs = command("jobs", "list jobs from the store, newest first")
    jobs.add_argument("--status", metavar="S[,S]", help="only these statuses (comma-separated)")
    jobs.add_argument("--since", metavar="WHEN", help="last updated at or after: epoch ms, ISO 8601 or e.g. 24h")
    jobs.add_argument("--limit", metavar="N", default="50", help="at most N jobs (1 to 1000, default 50)")
    jobs.add_argument("--json", action="store_true", help="print the API's JSON items")
    show = command("show", "one job: state, events and notifications")
    show.add_argument("job_id", metavar="JOBID")
    show.add_argument("--json", action="store_true", help="print the API's JSON shape")
    redeliver = command("redeliver", "put notifications back to pending (a running server sends them again)")
    redeliver.add_argument("ids", metavar="ID", nargs="*", help="notification ids")
    redeliver.add_argument("--dead", action="store_true", help="every dead notification")
    prune = command("prune", "delete history older than a time (jobs in flight are kept)")
    prune.add_argument("--older-than", required=True, metavar="WHEN", help="epoch ms, ISO 8601 or e.g. 90d")
    export = command("export", "dump every stored event")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--since", metavar="WHEN", help="last updated at or after: epoch ms, ISO 8601 or e.g. 24h")
    export.add_argument("--output", metavar="FILE", help="write here instead of standard output")


COMMANDS = frozenset({"jobs", "show", "redeliver", "prune", "export"})


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[Store, argparse.Namespace], Awaitable[int]]] = {
        "jobs": _jobs,
        "show": _show,
        "redeliver": _redeliver,
        "prune": _prune,
        "export": _export,
    }
    handler = handlers[args.command]

    def work(store: Store) -> Awaitable[int]:
        return handler(store, args)

    try:
        if args.command == "export" and args.output:
            with open(args.output, "w", encoding="utf-8", newline="") as args.out:
                return asyncio.run(on_store(settings, work))
        args.out = sys.stdout  # where export writes without --output (the other commands print)
        return asyncio.run(on_store(settings, work))
    except QueryError as exc:
        print(f"jobhook {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except STORE_ERRORS as exc:
        print(f"{display_url(settings.database.url)}: cannot use the store: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def on_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open the configured store for one command's `work`, and close it again."""
    store = create_store(settings, frozenset())
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


def iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


async def _jobs(store: Store, args: argparse.Namespace) -> int:
    query: list[tuple[str, str]] = [("limit", args.limit)]
    if args.status:
        query.append(("status", args.status))
    if args.since:
        query.append(("since", args.since))
    page = await store.list_jobs(parse_jobs_query(query, now_ms()))
    if args.json:
        print(json.dumps(page.items, indent=2))
        return EXIT_OK
    if not page.items:
        print("no jobs")
        return EXIT_OK
    rows = [("LAST UPDATED", "STATUS", "JOB TYPE", "JOB ID", "ACCOUNT", "ERROR")]
    for item in page.items:
        error = item["error"]["code"] if item["error"] else ""
        rows.append(
            (iso(item["lastUpdated"]), item["status"], item["jobType"], item["jobId"], item["accountId"], error)
        )
    print("\n".join(_table(rows)))
    return EXIT_OK


async def _show(store: Store, args: argparse.Namespace) -> int:
    detail = await store.job_detail(args.job_id)
    if detail is None:
        print(f"no job {args.job_id[:80]!r} is stored", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(detail, indent=2))
        return EXIT_OK
    job = detail["job"]
    lines = [
        f"job       {job['jobId']}",
        f"type      {job['jobType']}",
        f"account   {job['accountId']}",
        f"status    {job['status']}",
        f"updated   {iso(job['lastUpdated'])}",
        f"created   {iso(job['created'])}",
    ]
    if job["attempts"] is not None:
        lines.append(f"attempts  {job['attempts']}")
    if job["error"]:
        lines.append(f"error     {job['error']['code']}: {job['error']['message']}")
    lines += ["", f"events ({len(detail['events'])}, oldest first):"]
    lines += [
        f"  {iso(event['lastUpdated'])}  {event['status']:<10}  received {iso(event['receivedAt'])}"
        for event in detail["events"]
    ]
    lines += ["", f"notifications ({len(detail['notifications'])}):"]
    for note in detail["notifications"]:
        due = f", next attempt {iso(note['nextAttemptAt'])}" if note["nextAttemptAt"] is not None else ""
        route = f"{note['status']} -> {note['target']} (rule {note['rule']})"
        if note["jobId"] is None:
            route += f", digest of {len(note['jobIds'])} jobs"
        lines.append(f"  #{note['id']}  {route}: {note['state']}{due}")
        for attempt in note["attempts"]:
            outcome = "ok" if attempt["ok"] else f"failed: {attempt['error']}"
            lines.append(f"      {iso(attempt['at'])}  {outcome}")
    if not detail["notifications"]:
        lines.append("  (none)")
    print("\n".join(lines))
    return EXIT_OK


async def _redeliver(store: Store, args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.dead):
        print("jobhook redeliver: give notification ids or --dead (not both)", file=sys.stderr)
        return EXIT_USAGE
    now = now_ms()
    if args.dead:
        count = await store.redeliver_dead(now)
        print(f"{count} dead notification{'s' if count != 1 else ''} put back to pending")
        return EXIT_OK
    done, unknown = 0, []
    for raw in dict.fromkeys(args.ids):
        found = await store.redeliver_notification(int(raw), now) if raw.isdigit() and len(raw) < 19 else None
        if found is None:
            unknown.append(raw)
        else:
            done += 1
    print(f"{done} notification{'s' if done != 1 else ''} put back to pending")
    for raw in unknown:
        print(f"no notification {raw[:80]!r}", file=sys.stderr)
    return EXIT_FAILED if unknown else EXIT_OK


async def _prune(store: Store, args: argparse.Namespace) -> int:
    cutoff = parse_time("--older-than", args.older_than, now_ms())
    pruned = await store.prune_history(cutoff)
    print(f"removed {pruned.events} events and {pruned.jobs} jobs")
    return EXIT_OK


def _record(row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(EXPORT_FIELDS, row, strict=True))


async def _export(store: Store, args: argparse.Namespace) -> int:
    since = None if args.since is None else parse_time("--since", args.since, now_ms())
    out: TextIO = args.out
    quiet = out.isatty()
    count = 0
    try:
        writer = csv.writer(out, lineterminator="\n") if args.format == "csv" else None
        if writer is not None:
            writer.writerow(EXPORT_FIELDS)
        async for rows in store.export_events(since):
            if writer is not None:
                writer.writerows(["" if value is None else value for value in row] for row in rows)
            else:
                out.write("".join(json.dumps(_record(row), separators=(",", ":")) + "\n" for row in rows))
            before, count = count, count + len(rows)
            if count // PROGRESS_EVERY > before // PROGRESS_EVERY:
                print(f"exported {count} events…", file=sys.stderr, flush=True)
    finally:
        out.flush()
    if not quiet or count > PROGRESS_EVERY:
        print(f"exported {count} events", file=sys.stderr)
    return EXIT_OK
