"""History benchmark (SPEC §6): `GET /api/jobs?status=Failed&limit=50` and `GET /api/jobs/{id}` with 1,000,000 events.

The database is seeded without HTTP, with the project's own store code (`receiver.store.sqlite.write_events`, batches of
2000 events, `synchronous=normal`, no notifying statuses): jobs × 4 events each (Created, Pending, Running, then
Succeeded or — about 20% — Failed with an error), interleaved as a live system would write them (one batch holds
the Created events of the newest group of jobs, the Pending of the group before, and so on), lastUpdated
increasing, a few accounts, the four classic job types, 26-character ULID-like jobIds. Then `jobhook serve`
(`synchronous: full`, `auth: none`) is started on it and, after a warm-up, one aiohttp client (keep-alive)
issues N sequential requests of each query: the Failed list, a random existing job by id, and walks of 5 pages
of the Failed list following next_cursor; then the same with 8 concurrent clients. Latencies are client-side.
The server's memory, summed over its processes (PSS, and VmRSS as an upper bound), is read from /proc after
the requests.

`python -m bench.history [--events 1000000] [--requests 2000] [--write-readme]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import aiohttp

from bench.ingest import ALPHABET, free_port, jobhook_command, machine, progress, report_problems, server, write_readme
from receiver.store.base import EventRow
from receiver.store.history import DELIVERIES_OF_JOB, EVENTS_OF_JOB, JOB_BY_ID, JobFilter, jobs_query
from receiver.store.sqlite import connect_writer, write_events
from tests.serve import process_tree

START, END = "<!-- bench:history:start -->", "<!-- bench:history:end -->"
BATCH = 2000  # events per transaction while seeding
EVENTS_PER_JOB = 4
GROUP = BATCH // EVENTS_PER_JOB  # jobs per group: a batch holds one stage of each of 4 consecutive groups
STEP_MS = 100  # between two jobs' creation
FAILED_SHARE = 0.20
PAGES = 5  # per paged walk
LIMIT = 50
CLIENTS = 8
WARMUP = 200  # requests of each kind before measuring
LATENCY_BAR_MS = 10.0
RSS_BAR_MB = 150.0
BASE_MS = 1_700_000_000_000
ACCOUNTS = ("A623uY2", "W142hJk", "FW25b4F", "kW15c7D")
JOB_TYPES = ("ProcessFileJob", "ProcessVideoJob", "CopyFileBatchJob", "DeleteFileBatchJob")
STAGES = ("Created", "Pending", "Running")
ERRORS = (
    ("file_not_found", "File not found."),
    ("transcode_failed", "The video could not be transcoded."),
    ("timeout", "The job did not finish in time."),
)
SECTION = """## History (`bench/history.py`)

What is measured (SPEC §6): client-side latency of `GET /api/jobs?status=Failed&limit=50` and
`GET /api/jobs/{jobId}` with 1,000,000 stored events (goal: p99 ≤ 10 ms), and the server's resident memory
after loading and querying them (goal: ≤ 150 MB). The database is seeded without HTTP, with jobhook's own
store code (`receiver.store.sqlite.write_events`, 2000 events per transaction): 250,000 jobs × 4 events (Created,
Pending, Running, then Succeeded or — about 20% — Failed with an error), written interleaved as a live system
would, with increasing lastUpdated, 4 accounts, the 4 classic job types and ULID-like jobIds. Then
`jobhook serve` (`synchronous: full`, `auth: none`) runs on it; after 200 warm-up requests of each kind, one
aiohttp client (keep-alive) issues N sequential requests of each: the Failed list (first page), one random
existing job by id (its state, 4 events and notifications), and walks of 5 pages of the Failed list following
`next_cursor` (every page counted; the walk's total too); then the same with 8 concurrent clients. The
server's memory is read from /proc after the requests, summed over its processes (server, fork server,
resource tracker, SQLite writer): PSS, where a page shared by several counts once, and VmRSS, an upper bound
that counts it once per process. Client and server share the
machine's CPUs (nothing is pinned).

Reproduce: `make bench` (runs this after ingest and delivery; `HISTORY_ARGS="--requests 5000"` passes to
this one only); `--write-readme` rewrites the figures below.

"""


def fail(message: str) -> NoReturn:
    raise SystemExit(f"bench.history: {message}")


# --- seeding -------------------------------------------------------------------------------------------


def ulid_like(ms: int, rng: random.Random) -> str:
    """26 characters of [0-9A-Z]: the time in 10 (base 36, so ids sort by creation), then 16 random."""
    head = ""
    for _ in range(10):
        ms, digit = divmod(ms, 36)
        head = ALPHABET[digit] + head
    return head + "".join(rng.choices(ALPHABET, k=16))


@dataclass(frozen=True)
class Plan:
    job_id: str
    account_id: str
    job_type: str
    created: int
    failed: bool
    error: tuple[str, str]


def plan_jobs(jobs: int, rng: random.Random) -> list[Plan]:
    plans = []
    for n in range(jobs):
        created = BASE_MS + n * STEP_MS
        plans.append(
            Plan(
                ulid_like(created, rng),
                rng.choice(ACCOUNTS),
                rng.choice(JOB_TYPES),
                created,
                rng.random() < FAILED_SHARE,
                rng.choice(ERRORS),
            )
        )
    return plans


def event(plan: Plan, stage: int) -> EventRow:
    """The job's event at `stage` (0 Created .. 3 finished); a stage lasts one group's span of creations."""
    status = STAGES[stage] if stage < 3 else ("Failed" if plan.failed else "Succeeded")
    last_updated = plan.created + stage * GROUP * STEP_MS + 7
    attempts = 0 if stage < 2 else 1
    error = plan.error if status == "Failed" else None
    body: dict[str, Any] = {
        "accountId": plan.account_id,
        "attempts": attempts,
        "created": plan.created,
        "jobId": plan.job_id,
        "jobType": plan.job_type,
        "lastUpdated": last_updated,
        "status": status,
        "summary": {"result": f"/uploads/{plan.job_id.lower()}.out"} if status == "Succeeded" else {},
    }
    if error:
        body["error"] = {"code": error[0], "message": error[1]}
    return EventRow(
        plan.job_id,
        last_updated,
        status,
        plan.account_id,
        plan.job_type,
        plan.created,
        attempts,
        error[0] if error else None,
        error[1] if error else None,
        json.dumps(body, separators=(",", ":")),
    )


def batches(plans: Sequence[Plan]) -> Iterator[list[EventRow]]:
    """Batch k: stage s of group k - s for s = 0..3, so each batch is BATCH events (fewer at both ends)."""
    groups = [plans[i : i + GROUP] for i in range(0, len(plans), GROUP)]
    for k in range(len(groups) + EVENTS_PER_JOB - 1):
        rows: list[EventRow] = []
        for stage in reversed(range(EVENTS_PER_JOB)):  # oldest group's (latest) stage first: time order
            if 0 <= k - stage < len(groups):
                rows.extend(event(plan, stage) for plan in groups[k - stage])
        yield rows


@dataclass(frozen=True)
class Seeded:
    events: int
    jobs: int
    failed: int
    seconds: float
    size_mb: float
    plans: dict[str, str]  # query name -> EXPLAIN QUERY PLAN details


def seed(db: Path, jobs: int, rng: random.Random) -> tuple[Seeded, list[str]]:
    """Returns what was seeded and every jobId."""
    plans = plan_jobs(jobs, rng)
    conn = connect_writer(db, "NORMAL", 5000)
    written = 0
    started = reported = time.monotonic()
    try:
        for rows in batches(plans):
            conn.execute("BEGIN IMMEDIATE")
            try:
                write_events(conn, rows, frozenset())
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            written += len(rows)
            now = time.monotonic()
            if now - reported >= 5:
                progress(f"  seeded {written:,} events ({written / (now - started):,.0f}/s)")
                reported = now
        seconds = time.monotonic() - started
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        (stored_jobs,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
        (failed,) = conn.execute("SELECT count(*) FROM jobs WHERE status = 'Failed'").fetchone()
        (outbox,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
        some_id = plans[len(plans) // 2].job_id
        list_sql, list_params = jobs_query(JobFilter(statuses=("Failed",), limit=LIMIT))
        deep_sql, deep_params = jobs_query(JobFilter(statuses=("Failed",), limit=LIMIT, after=(BASE_MS * 2, "Z")))
        query_plans = {
            "list (first page)": explain(conn, list_sql, list_params),
            "list (cursor page)": explain(conn, deep_sql, deep_params),
            "job by id": explain(conn, JOB_BY_ID, [some_id]),
            "events of job": explain(conn, EVENTS_OF_JOB, [some_id]),
            "deliveries of job": explain(conn, DELIVERIES_OF_JOB, [some_id, some_id]),
        }
    finally:
        conn.close()
    if events != len(plans) * EVENTS_PER_JOB or stored_jobs != len(plans) or outbox:
        fail(f"seeded {events:,} events, {stored_jobs:,} jobs, {outbox:,} outbox rows for {len(plans):,} jobs")
    size_mb = sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20
    progress(
        f"  seeded {events:,} events ({stored_jobs:,} jobs, {failed:,} Failed) in {seconds:.1f} s "
        f"({events / seconds:,.0f} events/s); database {size_mb:,.0f} MB"
    )
    return Seeded(events, stored_jobs, failed, seconds, size_mb, query_plans), [p.job_id for p in plans]


def explain(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> str:
    return "; ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


# --- measuring -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    name: str
    clients: int
    count: int
    seconds: float  # wall time of the measured requests
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def stats(name: str, clients: int, latencies: list[float], seconds: float) -> Stats:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    median = statistics.median(ordered)
    return Stats(name, clients, len(ordered), seconds, median * 1000, p99 * 1000, ordered[-1] * 1000)


Fetch = Callable[[aiohttp.ClientSession], Awaitable[list[float]]]  # one unit of work -> its latencies (s)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    async with session.get(url) as answer:
        data = await answer.read()
        if answer.status != 200:
            fail(f"GET {url} answered {answer.status}: {data[:300]!r}")
    elapsed = time.perf_counter() - started
    body: dict[str, Any] = json.loads(data)
    return body, elapsed


def fetchers(port: int, job_ids: Sequence[str], rng: random.Random) -> dict[str, Fetch]:
    base = f"http://127.0.0.1:{port}/api/jobs"
    first_page = f"{base}?status=Failed&limit={LIMIT}"

    async def failed_list(session: aiohttp.ClientSession) -> list[float]:
        body, elapsed = await get_json(session, first_page)
        if len(body["items"]) != LIMIT or body["next_cursor"] is None:
            fail(f"the Failed list's first page has {len(body['items'])} items")
        return [elapsed]

    async def by_id(session: aiohttp.ClientSession) -> list[float]:
        job_id = rng.choice(job_ids)
        body, elapsed = await get_json(session, f"{base}/{job_id}")
        if body["job"]["jobId"] != job_id or len(body["events"]) != EVENTS_PER_JOB:
            fail(f"job {job_id}: unexpected detail {str(body)[:300]}")
        return [elapsed]

    async def walk(session: aiohttp.ClientSession) -> list[float]:
        url, latencies = first_page, []
        for _ in range(PAGES):
            body, elapsed = await get_json(session, url)
            latencies.append(elapsed)
            if body["next_cursor"] is None:
                fail("the Failed list ended before 5 pages")
            url = f"{first_page}&cursor={body['next_cursor']}"
        return latencies

    return {"list": failed_list, "by id": by_id, "walk": walk}


async def measure(fetch: Fetch, units: int, clients: int) -> tuple[list[float], list[float], float]:
    """`units` units of work over `clients` keep-alive connections; returns per-request and per-unit latencies."""
    requests: list[float] = []
    totals: list[float] = []
    left = units
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(min(WARMUP, units) // clients + 1):  # warm-up (connections, caches), not recorded
            await asyncio.gather(*(fetch(session) for _ in range(clients)))

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                latencies = await fetch(session)
                requests.extend(latencies)
                totals.append(sum(latencies))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return requests, totals, seconds


def run_all(port: int, job_ids: Sequence[str], requests: int, rng: random.Random) -> list[Stats]:
    results = []
    for clients in (1, CLIENTS):
        for name, fetch in fetchers(port, job_ids, rng).items():
            units = requests // PAGES if name == "walk" else requests
            label = {"list": "list status=Failed (page 1)", "by id": "job by id", "walk": "walk: every page"}[name]
            progress(f"  {label}, {clients} client(s): {units:,} × {PAGES if name == 'walk' else 1} requests...")
            per_request, per_unit, seconds = asyncio.run(measure(fetch, units, clients))
            found = [stats(label, clients, per_request, seconds)]
            if name == "walk":
                found.append(stats(f"walk: {PAGES} pages, total", clients, per_unit, seconds))
            for r in found:
                progress(
                    f"    {r.name}: p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, max {r.max_ms:.2f} ms, "
                    f"{r.per_s:,.0f}/s"
                )
            results += found
    return results


class Memory(NamedTuple):
    """MB summed over the server's processes (server, fork server, resource tracker, SQLite writer)."""

    pss: float  # proportional: a page shared by n processes counts 1/n in each, so once in the sum
    rss: float  # resident: a shared page counts once per process, so the sum is an upper bound
    hwm: float  # peak resident, summed likewise


def memory_mb(pid: int) -> Memory:
    pss = rss = hwm = 0
    for member in process_tree(pid):
        status = Path(f"/proc/{member}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in status if ":" in line)
        rss += int(fields["VmRSS"].split()[0])
        hwm += int(fields["VmHWM"].split()[0])
        rollup = Path(f"/proc/{member}/smaps_rollup").read_text().splitlines()
        pss += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    return Memory(pss / 1024, rss / 1024, hwm / 1024)


# --- report --------------------------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def tables(seeded: Seeded, results: list[Stats], rss: Memory, problems: str) -> str:
    lines = [
        f"Seeded {seeded.events:,} events ({seeded.jobs:,} jobs, {seeded.failed:,} Failed) in {seeded.seconds:.1f} s "
        f"({seeded.events / seeded.seconds:,.0f} events/s, {BATCH} per transaction, synchronous=normal); "
        f"database {seeded.size_mb:,.0f} MB.",
        "",
        "| query | clients | requests | p50 ms | p99 ms | max ms | requests/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        unit = "walks" if r.name.endswith("total") else "requests"
        rate = f"{r.per_s:,.0f}" + (" walks/s" if unit == "walks" else "")
        lines.append(
            f"| {r.name} | {r.clients} | {r.count:,}{' walks' if unit == 'walks' else ''} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.max_ms:.2f} | {rate} |"
        )
    lines += ["", "| query plan (EXPLAIN QUERY PLAN on the seeded database) | |", "|---|---|"]
    lines += [f"| {name} | {detail} |" for name, detail in seeded.plans.items()]
    one = {r.name: r for r in results if r.clients == 1}
    listing, by_id = one["list status=Failed (page 1)"], one["job by id"]
    lines += [
        "",
        f"Server memory after the requests, summed over its processes: PSS {rss.pss:,.1f} MB; VmRSS {rss.rss:,.1f} MB "
        f"(counts pages shared between them once per process; peak VmHWM {rss.hwm:,.1f} MB).",
        "",
        f"SPEC §6 bar (`GET /api/jobs?status=Failed&limit=50` p99 ≤ {LATENCY_BAR_MS:g} ms, 1 client): "
        f"{verdict(listing.p99_ms <= LATENCY_BAR_MS)} (p99 {listing.p99_ms:.2f} ms).",
        f"SPEC §6 bar (`GET /api/jobs/{{id}}` p99 ≤ {LATENCY_BAR_MS:g} ms, 1 client): "
        f"{verdict(by_id.p99_ms <= LATENCY_BAR_MS)} (p99 {by_id.p99_ms:.2f} ms).",
        f"SPEC §6 bar (server memory ≤ {RSS_BAR_MB:g} MB with {seeded.events:,} events): "
        f"{verdict(rss.pss <= RSS_BAR_MB)} (PSS {rss.pss:,.1f} MB; summed VmRSS {rss.rss:,.1f} MB).",
    ]
    if problems:
        lines += ["", f"Server stderr: {problems}."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, metavar="N", help="events to store (4 per job)")
    parser.add_argument("--requests", type=int, default=2000, metavar="N", help="measured requests per query")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the history and the picked ids")
    parser.add_argument("--write-readme", action="store_true", help="rewrite the figures in bench/README.md")
    args = parser.parse_args(argv)
    jobs = args.events // EVENTS_PER_JOB
    if jobs * FAILED_SHARE < LIMIT * PAGES * 2 or args.requests < CLIENTS * PAGES:
        parser.error(f"--events must be at least {int(LIMIT * PAGES * 2 / FAILED_SHARE) * 4} and --requests 40")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop the server
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="jobhook-bench-history-") as name:
        tmp = Path(name)
        db = tmp / "history.db"
        progress(f"seeding {jobs * EVENTS_PER_JOB:,} events ({jobs:,} jobs) into {db}...")
        seeded, job_ids = seed(db, jobs, rng)
        port = free_port()
        config = tmp / "config.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, port: {port}}}\n"
            f'database: {{url: "sqlite:///{db}", synchronous: full}}\n'
            "auth: {mode: none}\n"
        )
        log = tmp / "history-jobhook.stderr"
        progress("starting jobhook serve...")
        with server(jobhook_command(config), port, log, tmp) as pid:
            progress(f"  serving as pid {pid}, PSS {memory_mb(pid).pss:,.1f} MB before any request")
            results = run_all(port, job_ids, args.requests, rng)
            rss = memory_mb(pid)
        progress(f"  PSS {rss.pss:,.1f} MB, VmRSS {rss.rss:,.1f} MB after the requests (VmHWM {rss.hwm:,.1f} MB)")
        problems = report_problems(log)
    command = f".venv/bin/python -m bench.history --events {args.events} --requests {args.requests}"
    report = f"{machine()}\n\n`{command}`\n\n{tables(seeded, results, rss, problems)}"
    print(report)
    if args.write_readme:
        write_readme(report, START, END, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
