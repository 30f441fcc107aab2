"""Delivery benchmark (SPEC §6): notifications/s to a local HTTP sink, and ingest with the worker busy vs idle.

Two jobhook servers (`jobhook serve`, synchronous=full, one rule sending every Failed job to a json:// target,
`delivery.concurrency: 8`), each with a fresh database and its own sink process (`bench/sink.py`):

1. Delivery rate: post N distinct Failed jobs (aiohttp client, 32 at a time, every one must get 202), wait
   until the sink has received N, and report (N - 1) / (last - first receipt) and N / (first post -> last
   receipt). The stopped server's database must then hold N deliveries, all `sent`, and the sink N requests
   with N distinct bodies.
2. Ingest, worker idle vs busy, on one server and database: a 2 s wrk warm-up and a measured wrk run with the
   non-terminal mix (no notifications), then a backlog of Failed jobs posted as in 1, and at once the same wrk
   run again while the worker delivers that backlog. The sink's count must still be rising when it ends; the
   server is stopped once the worker has planned every transition of the backlog (the time that took is shown).

`python -m bench.delivery [--jobs 3000] [--backlog 20000] [--duration 10] [--connections 32] [--write-readme]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import aiohttp

from bench.ingest import (
    ALPHABET,
    ROOT,
    THREADS,
    WARMUP_SECONDS,
    Wrk,
    free_port,
    jobhook_command,
    load,
    machine,
    progress,
    report_problems,
    server,
    write_readme,
    wrk,
)

START, END = "<!-- bench:delivery:start -->", "<!-- bench:delivery:end -->"
POST_CONCURRENCY = 32
DELIVERY_CONCURRENCY = 8
STALL_SECONDS = 60  # give up waiting for the sink when its count has not moved for this long
SETTLE_SECONDS = 1.0  # after the last expected receipt: anything arriving now is a duplicate
RATE_BAR, BUSY_BAR = 500.0, 0.85
SECTION = """## Delivery (`bench/delivery.py`)

What is measured (SPEC §6): notifications per second from jobhook's delivery worker to a local HTTP sink, and
ingest with the worker busy against ingest with it idle. jobhook runs as `jobhook serve` (`synchronous: full`,
`auth: none`, one rule `failed` sending every Failed job to the target `sink` = `json://127.0.0.1:PORT/hook`,
`delivery.concurrency: 8`); the sink (`bench/sink.py`) is a separate aiohttp process that answers 200 and
records the monotonic time of its first and last request. Each of the two parts gets a fresh database and sink.

1. Delivery rate: N distinct Failed jobs are posted 32 at a time (every one must get 202); once the sink has
   received N, the rate is (N − 1) / (last − first receipt), and end to end N / (first post → last receipt).
   The stopped server's `deliveries` must then hold N rows, all `sent`, and the sink N requests with N
   distinct bodies (none lost, none duplicated).
2. Ingest with the worker busy vs idle, on the same server and database: wrk (2 threads, 32 connections,
   `bench/jobs.lua` with no terminal statuses, so no notifications) after a 2 s warm-up — idle; then a
   backlog of Failed jobs posted as in 1 and, at once, the same wrk run again while the worker delivers the
   backlog — busy. The backlog must outlast the busy run: the sink's count must still rise after it ends.
   Intake comes first, so the worker plans the rest of the backlog at full speed once wrk stops: the server is
   stopped only after every transition has its `deliveries` row, and how long after the run that took is
   reported (a worker slow to notice that intake calmed down shows there).

Everything shares the machine's CPUs (nothing is pinned). Reproduce: `make bench` (ingest, then delivery;
`make bench BENCH_ARGS="--duration 30"` passes to both, `DELIVERY_ARGS="--backlog 40000"` to this one only);
`--write-readme` rewrites the figures below.

"""


@dataclass(frozen=True)
class SinkStats:
    count: int
    distinct: int
    first: float | None
    last: float | None


@dataclass(frozen=True)
class Counts:
    events: int
    outbox: int
    deliveries: int
    sent: int
    attempts: int


@dataclass(frozen=True)
class RateRun:
    jobs: int
    post_seconds: float
    started: float  # monotonic, just before the first post
    sink: SinkStats  # once the sink had N and SETTLE_SECONDS more had passed
    final: SinkStats  # after jobhook stopped
    counts: Counts
    problems: str

    @property
    def sink_rate(self) -> float:
        assert self.sink.first is not None and self.sink.last is not None
        return (self.jobs - 1) / (self.sink.last - self.sink.first) if self.sink.last > self.sink.first else 0.0

    @property
    def end_to_end_rate(self) -> float:
        assert self.sink.last is not None
        return self.jobs / (self.sink.last - self.started)

    def check(self) -> str:
        c, s = self.counts, self.final
        problems = []
        if c.deliveries != self.jobs:
            problems.append(f"{c.deliveries:,} deliveries rows, expected {self.jobs:,}")
        if c.sent != c.deliveries:
            problems.append(f"{c.deliveries - c.sent:,} deliveries not sent")
        if s.count != self.jobs:
            problems.append(f"sink received {s.count:,}, expected {self.jobs:,}")
        if s.distinct != s.count:
            problems.append(f"{s.count - s.distinct:,} duplicate bodies at the sink")
        return "ok: none lost, no duplicates" if not problems else "FAILED: " + "; ".join(problems)


@dataclass(frozen=True)
class BusyRun:
    idle: Wrk
    idle_acked: int  # 2xx over warm-up + idle run
    idle_deliveries: int  # requests at the sink during warm-up + idle run (the mix has no terminal status)
    backlog: int
    seed_seconds: float
    busy: Wrk
    busy_seconds: float  # wall time of the busy wrk run, process start to exit
    at_start: SinkStats  # when the busy run started
    at_end: SinkStats  # when it ended
    after: SinkStats  # SETTLE_SECONDS later
    planned_seconds: float | None  # from the run's end until no outbox row was left unplanned; None: not within STALL
    final: SinkStats  # after jobhook stopped
    counts: Counts
    connections: int
    problems: str

    @property
    def during(self) -> int:
        return self.at_end.count - self.at_start.count

    @property
    def ratio(self) -> float:
        return self.busy.events_per_s / self.idle.events_per_s if self.idle.events_per_s else 0.0

    @property
    def still_delivering(self) -> bool:
        return self.after.count > self.at_end.count and self.at_end.count < self.backlog

    def check(self) -> str:
        c = self.counts
        acked = self.idle_acked + self.backlog + self.busy.ok
        extra = c.events - acked
        problems = []
        if extra < 0:
            problems.append(f"LOST {-extra:,} acknowledged events")
        elif extra > 3 * self.connections:  # requests in flight at the three wrk stops
            problems.append(f"{extra:,} events rows beyond the 2xx seen")
        if self.planned_seconds is None:
            problems.append(f"outbox rows still unplanned {STALL_SECONDS} s after the busy run")
        if c.outbox != self.backlog or c.deliveries != self.backlog:
            problems.append(f"outbox {c.outbox:,} / deliveries {c.deliveries:,}, expected {self.backlog:,}")
        if c.sent != self.final.count:
            problems.append(f"{c.sent:,} deliveries sent but the sink received {self.final.count:,}")
        if self.final.distinct != self.final.count:
            problems.append(f"{self.final.count - self.final.distinct:,} duplicate bodies at the sink")
        if self.idle_deliveries:
            problems.append(f"{self.idle_deliveries:,} notifications during the idle run")
        if not self.still_delivering:
            problems.append("the backlog did not outlast the busy run (raise --backlog)")
        return "ok" if not problems else "FAILED: " + "; ".join(problems)


def fail(message: str) -> NoReturn:
    raise SystemExit(f"bench.delivery: {message}")


def sink_stats(port: int) -> SinkStats:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as answer:
        data = json.load(answer)
    return SinkStats(data["count"], data["distinct"], data["first"], data["last"])


def failed_jobs(count: int) -> Iterator[bytes]:
    """`count` distinct, valid Failed jobs; jobId = a random 12-char prefix and a 14-digit counter."""
    prefix = "".join(secrets.choice(ALPHABET) for _ in range(12))
    for n in range(count):
        job = {
            "accountId": "A623uY2",
            "attempts": 1,
            "created": 1700000000000,
            "error": {"code": "bench_failure", "message": f"simulated failure {n}"},
            "jobId": f"{prefix}{n:014d}",
            "jobType": "CopyFileBatchJob",
            "lastUpdated": 1700000000123,
            "status": "Failed",
            "summary": {},
        }
        yield json.dumps(job).encode()


async def post_all(port: int, bodies: Iterator[bytes], concurrency: int = POST_CONCURRENCY) -> int:
    """POST every body to /webhooks/jobs, `concurrency` at a time; returns how many were not answered 202."""
    url = f"http://127.0.0.1:{port}/webhooks/jobs"
    headers = {"Content-Type": "application/json"}
    refused = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def poster() -> None:
            nonlocal refused
            for body in bodies:  # one shared iterator: each body is taken by exactly one poster
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                    if answer.status != 202:
                        refused += 1

        await asyncio.gather(*(poster() for _ in range(concurrency)))
    return refused


def post(port: int, count: int, what: str) -> float:
    """Post `count` Failed jobs; every one must be answered 202. Returns the seconds it took."""
    started = time.monotonic()
    refused = asyncio.run(post_all(port, failed_jobs(count)))
    seconds = time.monotonic() - started
    if refused:
        fail(f"{refused:,} of the {count:,} {what} were not answered 202")
    progress(f"  posted {count:,} {what} in {seconds:.2f} s (all 202)")
    return seconds


def wait_for_sink(port: int, count: int) -> SinkStats:
    """Poll the sink until it has `count` requests; give up when it has not moved for STALL_SECONDS."""
    seen, moved, reported = -1, time.monotonic(), time.monotonic()
    while True:
        stats = sink_stats(port)
        now = time.monotonic()
        if stats.count >= count:
            return stats
        if stats.count != seen:
            seen, moved = stats.count, now
        elif now - moved > STALL_SECONDS:
            fail(f"the sink is stuck at {stats.count:,} of {count:,} notifications for {STALL_SECONDS} s")
        if now - reported >= 5:
            progress(f"  sink has {stats.count:,} of {count:,}")
            reported = now
        time.sleep(0.05)


def unplanned(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        count: int = conn.execute("SELECT count(*) FROM outbox WHERE processed_at IS NULL").fetchone()[0]
    return count


def settle(db: Path, sink_port: int, ended: float) -> tuple[SinkStats, float | None]:
    """The sink's stats SETTLE_SECONDS after `ended` (monotonic), and how long after `ended` the worker had
    planned every outbox row (polled, so within ~20 ms; None when not within STALL_SECONDS).

    Intake first means planning resumes at full speed only once intake calms down: the server is not
    stopped before that is done, so the check can demand a delivery row for every transition.
    """
    after: SinkStats | None = None
    planned: float | None = None
    while planned is None or after is None:
        elapsed = time.monotonic() - ended
        if after is None and elapsed >= SETTLE_SECONDS:
            after = sink_stats(sink_port)
        if planned is None:
            if unplanned(db) == 0:
                planned = elapsed
            elif elapsed > STALL_SECONDS and after is not None:
                break
        time.sleep(0.02)
    assert after is not None
    return after, planned


def write_config(run_dir: Path, port: int, sink_port: int) -> tuple[Path, Path]:
    db = run_dir / "delivery.db"
    config = run_dir / "config.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        f'database: {{url: "sqlite:///{db}", synchronous: full}}\n'
        "auth: {mode: none}\n"
        f'targets: {{sink: "json://127.0.0.1:{sink_port}/hook"}}\n'
        "rules: [{name: failed, match: {status: Failed}, notify: sink}]\n"
        f"delivery: {{concurrency: {DELIVERY_CONCURRENCY}}}\n"
    )
    return config, db


def count_rows(db: Path) -> Counts:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:

        def one(sql: str) -> int:
            value: int = conn.execute(sql).fetchone()[0]
            return value

        return Counts(
            events=one("SELECT count(*) FROM events"),
            outbox=one("SELECT count(*) FROM outbox"),
            deliveries=one("SELECT count(*) FROM deliveries"),
            sent=one("SELECT count(*) FROM deliveries WHERE state = 'sent'"),
            attempts=one("SELECT count(*) FROM delivery_attempts"),
        )


@contextlib.contextmanager
def sink(run_dir: Path) -> Iterator[int]:
    """A sink process (bench/sink.py); yields its port."""
    port = free_port()
    with server([sys.executable, "-m", "bench.sink", "--port", str(port)], port, run_dir / "sink.stderr", ROOT):
        yield port


@contextlib.contextmanager
def jobhook(run_dir: Path, sink_port: int) -> Iterator[tuple[int, Path, Path, int]]:
    """`jobhook serve` sending every Failed job to the sink; yields (port, database, stderr log, pid)."""
    port = free_port()
    config, db = write_config(run_dir, port, sink_port)
    log = run_dir / f"{run_dir.name}-jobhook.stderr"
    with server(jobhook_command(config), port, log, run_dir) as pid:
        yield port, db, log, pid


def delivery_rate(jobs: int, tmp: Path) -> RateRun:
    progress(f"delivery rate: {jobs:,} Failed jobs -> jobhook -> sink...")
    run_dir = tmp / "delivery-rate"
    run_dir.mkdir()
    with sink(run_dir) as sink_port:
        with jobhook(run_dir, sink_port) as (port, db, log, _):
            started = time.monotonic()
            post_seconds = post(port, jobs, "Failed jobs")
            wait_for_sink(sink_port, jobs)
            time.sleep(SETTLE_SECONDS)
            stats = sink_stats(sink_port)
        final = sink_stats(sink_port)  # jobhook has stopped: anything it sent while stopping is counted
    run = RateRun(jobs, post_seconds, started, stats, final, count_rows(db), report_problems(log))
    progress(
        f"  {run.sink_rate:,.0f} notifications/s at the sink, {run.end_to_end_rate:,.0f}/s end to end; {run.check()}"
    )
    return run


def busy_vs_idle(args: argparse.Namespace, tmp: Path) -> BusyRun:
    run_dir = tmp / "busy-vs-idle"
    run_dir.mkdir()
    with sink(run_dir) as sink_port:
        with jobhook(run_dir, sink_port) as (port, db, log, _):
            idle, idle_acked = load("ingest, worker idle", port, args, 0)
            idle_deliveries = sink_stats(sink_port).count
            progress(f"seeding a backlog of {args.backlog:,} Failed jobs...")
            seed_seconds = post(port, args.backlog, "Failed jobs")
            at_start = sink_stats(sink_port)
            progress(
                f"running ingest, worker busy ({at_start.count:,} already delivered): {args.duration} s, no warm-up..."
            )
            started = time.monotonic()
            busy = wrk(port, args.duration, args.connections, 0)
            ended = time.monotonic()
            busy_seconds = ended - started
            at_end = sink_stats(sink_port)
            after, planned_seconds = settle(db, sink_port, ended)
        final = sink_stats(sink_port)
    run = BusyRun(
        idle,
        idle_acked,
        idle_deliveries,
        args.backlog,
        seed_seconds,
        busy,
        busy_seconds,
        at_start,
        at_end,
        after,
        planned_seconds,
        final,
        count_rows(db),
        args.connections,
        report_problems(log),
    )
    progress(
        f"  {busy.events_per_s:,.0f} events/s, p50 {busy.p50_ms:.2f} ms, p99 {busy.p99_ms:.2f} ms, "
        f"non-2xx {busy.non2xx}; {run.during:,} deliveries during the run, "
        f"+{after.count - at_end.count:,} in the {SETTLE_SECONDS:g} s after; "
        f"outbox fully planned {planned(planned_seconds)} after the run; {run.check()}"
    )
    return run


def planned(seconds: float | None) -> str:
    return f"{seconds:.2f} s" if seconds is not None else f"not within {STALL_SECONDS} s"


def non2xx(result: Wrk) -> str:
    text = f"{result.non2xx}" + (f" (first: {result.first_non2xx})" if result.non2xx else "")
    return text + (f", {result.socket_errors} socket errors" if result.socket_errors else "")


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def tables(rate: RateRun, busy: BusyRun) -> str:
    c = rate.counts
    assert rate.sink.first is not None
    lines = [
        f"Delivery rate: {rate.jobs:,} Failed jobs posted {POST_CONCURRENCY} at a time "
        f"(all 202, in {rate.post_seconds:.2f} s); `delivery.concurrency: {DELIVERY_CONCURRENCY}`.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| notifications/s at the sink, (N − 1) / (last − first receipt) | {rate.sink_rate:,.0f} |",
        f"| notifications/s end to end, N / (first post → last receipt) | {rate.end_to_end_rate:,.0f} |",
        f"| first post → first receipt | {(rate.sink.first - rate.started) * 1000:,.0f} ms |",
        f"| rows in `deliveries` / of them `state='sent'` / rows in `delivery_attempts` | "
        f"{c.deliveries:,} / {c.sent:,} / {c.attempts:,} |",
        f"| requests at the sink / distinct bodies | {rate.final.count:,} / {rate.final.distinct:,} |",
        f"| check | {rate.check()} |",
        "",
        f"Ingest with the worker idle vs busy: one server and database; wrk -t{THREADS} -c{busy.connections}, "
        f"non-terminal mix, {WARMUP_SECONDS} s warm-up before the idle run only. Backlog: {busy.backlog:,} Failed "
        f"jobs posted in {busy.seed_seconds:.2f} s ({busy.at_start.count:,} delivered by the time the busy run "
        "started).",
        "",
        "| run | events/s | ratio vs idle | p50 ms | p99 ms | non-2xx | deliveries during the run |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| worker idle | {busy.idle.events_per_s:,.0f} | 1.00 | {busy.idle.p50_ms:.2f} | {busy.idle.p99_ms:.2f} | "
        f"{non2xx(busy.idle)} | {busy.idle_deliveries:,} |",
        f"| worker busy | {busy.busy.events_per_s:,.0f} | {busy.ratio:.2f} | {busy.busy.p50_ms:.2f} | "
        f"{busy.busy.p99_ms:.2f} | {non2xx(busy.busy)} | {busy.during:,} ({busy.during / busy.busy_seconds:,.0f}/s) |",
        "",
        f"Backlog still being delivered when the busy run ended: {'yes' if busy.still_delivering else 'NO'} "
        f"({busy.at_end.count:,} of {busy.backlog:,} delivered at its end, "
        f"+{busy.after.count - busy.at_end.count:,} in the next {SETTLE_SECONDS:g} s); every transition of the "
        f"backlog planned into a delivery {planned(busy.planned_seconds)} after it ended. "
        f"After stopping: {busy.counts.events:,} events rows for {busy.idle_acked + busy.backlog + busy.busy.ok:,} "
        f"2xx seen, {busy.counts.sent:,} deliveries sent, {busy.final.count:,} requests at the sink "
        f"({busy.final.distinct:,} distinct); check: {busy.check()}.",
        "",
        f"SPEC §6 bar (≥ {RATE_BAR:.0f} notifications/s to a local HTTP sink): "
        f"{verdict(rate.sink_rate >= RATE_BAR)} ({rate.sink_rate:,.0f}/s at the sink).",
        f"SPEC §6 bar (ingest with the worker busy ≥ {BUSY_BAR:.0%} of idle): "
        f"{verdict(busy.ratio >= BUSY_BAR)} ({busy.ratio:.0%}).",
    ]
    problems = [f"{name}: {p}" for name, p in (("delivery rate", rate.problems), ("busy vs idle", busy.problems)) if p]
    if problems:
        lines += ["", "Server stderr: " + "; ".join(problems) + "."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__)
    parser.add_argument("--jobs", type=int, default=3000, metavar="N", help="Failed jobs for the delivery rate")
    parser.add_argument("--backlog", type=int, default=20000, metavar="N", help="Failed jobs behind the busy run")
    parser.add_argument("--duration", type=int, default=10, metavar="SECONDS", help="seconds per measured wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--write-readme", action="store_true", help="rewrite the figures in bench/README.md")
    args = parser.parse_args(argv)
    if args.jobs < 2 or args.backlog < 1:
        parser.error("--jobs must be at least 2 and --backlog at least 1")
    if shutil.which("wrk") is None:
        fail("wrk is not installed (apt-get install -y wrk)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop the servers
    with tempfile.TemporaryDirectory(prefix="jobhook-bench-delivery-") as name:
        tmp = Path(name)
        rate = delivery_rate(args.jobs, tmp)
        busy = busy_vs_idle(args, tmp)
    command = (
        f".venv/bin/python -m bench.delivery --jobs {args.jobs} --backlog {args.backlog} --duration {args.duration} "
        f"--connections {args.connections}"
    )
    report = f"{machine()}\n\n`{command}`\n\n{tables(rate, busy)}"
    print(report)
    if args.write_readme:
        write_readme(report, START, END, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
