"""Soak (issue 6 item 5): mixed load for a long time; do memory and latency stay flat?

One `jobhook serve` (synchronous=full, one rule sending every Failed job to a json:// sink process) under a
steady, open-loop mix for `--duration` seconds (default 600):

- intake at `--rate` callbacks/s: new jobs moving Created -> Running -> Succeeded or Failed
  (`--failed-percent` of them fail, each Failed is one notification), plus 5% repeats (duplicates, 200);
- history reads at `--history-rate`/s: `GET /api/jobs?status=Failed&limit=50` and `GET /api/jobs/{id}`;
- the delivery worker sending every Failed job to the sink.

Every `--interval` seconds (default 60) it samples the server's memory (PSS over all its processes) and the
latencies seen in that interval (intake p50/p99, history p99), the sink's count and the non-2xx answers, then
prints one table row. At the end it compares the first interval with the last: memory and intake p99 are
"flat" when the last is within 10% (memory) and 1.5x (p99) of the first. Open loop: requests start on a fixed
schedule whether or not earlier ones finished, so a server that slows down shows as latency, not as a lower
request rate.

`python -m bench.soak [--duration 600] [--rate 300] [--interval 60] [--write-readme]`; `make soak` runs it.
Not part of `make test` or `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.delivery import count_rows, jobhook, sink, sink_stats
from bench.history import memory_mb
from bench.ingest import ALPHABET, machine, progress, report_problems, write_readme

START, END = "<!-- bench:soak:start -->", "<!-- bench:soak:end -->"
PSS_FLAT = 1.10  # last interval's memory (PSS) at most 10% above the first's
P99_FLAT = 1.5
MAX_IN_FLIGHT = 256
SECTION = """## Soak (`bench/soak.py`)

What is measured: whether the server's memory and latency stay flat under a steady mix for a long time
(issue 6): callbacks at a fixed rate (open loop: requests start on schedule whether or not earlier ones
finished) walking jobs through Created, Running, then Succeeded or Failed, with repeats; history reads; every
Failed job delivered to a sink process. Each interval it samples memory (PSS) and that interval's latencies.
Not part of `make bench` or CI. Reproduce: `make soak` (10 minutes), or `make soak SOAK_ARGS="--duration 60
--interval 15"`; `--write-readme` rewrites the figures below.

"""
STAGES = ("Created", "Running")


@dataclass
class Interval:
    """What one sampling interval saw."""

    intake_ms: list[float] = field(default_factory=list)
    history_ms: list[float] = field(default_factory=list)
    non2xx: int = 0
    errors: int = 0


@dataclass
class Row:
    minute: int
    pss_mb: float
    posts: int
    intake_p50: float
    intake_p99: float
    history_p99: float
    non2xx: int
    errors: int
    delivered: int


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Mix:
    """The callback stream: each job walks Created -> Running -> Succeeded|Failed; some posts repeat."""

    def __init__(self, failed_percent: int, rng: random.Random) -> None:
        self.rng = rng
        self.failed_percent = failed_percent
        self.open: list[tuple[str, int, int]] = []  # (jobId, next stage index, created ms)
        self.sent: list[bytes] = []
        self.finished: list[str] = []
        self.serial = 0

    def _job_id(self) -> str:
        self.serial += 1
        return "01SOAK" + "".join(self.rng.choice(ALPHABET) for _ in range(12)) + f"{self.serial:08d}"

    def next_body(self) -> bytes:
        if self.sent and self.rng.random() < 0.05:
            return self.rng.choice(self.sent[-1000:])  # a repeat: answered 200 duplicate
        now = int(time.time() * 1000)
        if not self.open or (len(self.open) < 500 and self.rng.random() < 0.4):
            self.open.append((self._job_id(), 0, now))
        index = self.rng.randrange(len(self.open))
        job_id, stage, created = self.open[index]
        if stage < len(STAGES):
            status = STAGES[stage]
            self.open[index] = (job_id, stage + 1, created)
        else:
            status = "Failed" if self.rng.randrange(100) < self.failed_percent else "Succeeded"
            self.open.pop(index)
            self.finished.append(job_id)
        job = {
            "accountId": "A623uY2",
            "attempts": 1,
            "created": created,
            "jobId": job_id,
            "jobType": "CopyFolderBatchJob",
            "lastUpdated": now + stage,
            "status": status,
            "summary": {},
            "error": {"code": "soak_failure", "message": "failed on purpose"} if status == "Failed" else None,
        }
        body = json.dumps(job).encode()
        self.sent.append(body)
        del self.sent[:-2000]
        return body


JSON = {"Content-Type": "application/json"}


async def timed(
    session: aiohttp.ClientSession, url: str, into: list[float], now: Interval, body: bytes | None = None
) -> None:
    """One request (a POST when `body` is given); its latency goes `into` the list, failures into `now`."""
    started = time.perf_counter()
    try:
        request = session.get(url) if body is None else session.post(url, data=body, headers=JSON)
        async with request as resp:
            await resp.read()
            if resp.status >= 300:
                now.non2xx += 1
    except (aiohttp.ClientError, TimeoutError):
        now.errors += 1
        return
    into.append((time.perf_counter() - started) * 1000)


async def drive(port: int, sink_port: int, pid: int, args: argparse.Namespace) -> list[Row]:
    base = f"http://127.0.0.1:{port}"
    rng = random.Random(6)
    mix = Mix(args.failed_percent, rng)
    rows: list[Row] = []
    tasks: set[asyncio.Task[None]] = set()
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        interval = Interval()
        posts = 0

        async def limited(coro: Coroutine[None, None, None]) -> None:
            async with gate:
                await coro

        def launch(coro: Coroutine[None, None, None]) -> None:
            task = asyncio.create_task(limited(coro))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop = asyncio.get_running_loop()
        started = loop.time()
        next_post = next_read = started
        sample_at = started + args.interval
        # Half a second past the end, so the sample due exactly at the end is taken.
        while (now := loop.time()) < started + args.duration + 0.5:
            while next_post <= now and now < started + args.duration:
                launch(timed(session, f"{base}/webhooks/jobs", interval.intake_ms, interval, mix.next_body()))
                posts += 1
                next_post += 1 / args.rate
            while next_read <= now and now < started + args.duration:
                if mix.finished and rng.random() < 0.5:
                    url = f"{base}/api/jobs/{rng.choice(mix.finished[-5000:])}"
                else:
                    url = f"{base}/api/jobs?status=Failed&limit=50"
                launch(timed(session, url, interval.history_ms, interval))
                next_read += 1 / args.history_rate
            if now >= sample_at:
                pss = memory_mb(pid).pss
                delivered = (await asyncio.to_thread(sink_stats, sink_port)).count
                row = Row(
                    len(rows) + 1,
                    pss,
                    posts,
                    percentile(interval.intake_ms, 0.50),
                    percentile(interval.intake_ms, 0.99),
                    percentile(interval.history_ms, 0.99),
                    interval.non2xx,
                    interval.errors,
                    delivered,
                )
                rows.append(row)
                progress(
                    f"  interval {row.minute}: PSS {row.pss_mb:.1f} MB, {posts:,} posts, "
                    f"intake p50 {row.intake_p50:.2f} p99 {row.intake_p99:.2f} ms, "
                    f"history p99 {row.history_p99:.2f} ms, {row.non2xx} non-2xx, {row.errors} errors, "
                    f"{delivered:,} delivered"
                )
                interval, posts = Interval(), 0
                sample_at += args.interval
            loading = now < started + args.duration
            next_tick = (
                min(next_post, next_read, sample_at) if loading else min(sample_at, started + args.duration + 0.5)
            )
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
        await asyncio.gather(*tasks, return_exceptions=True)
    return rows


def flat(first: float, last: float, bound: float) -> bool:
    return last <= first * bound


def report(rows: list[Row], args: argparse.Namespace, counts: str, problems: str) -> str:
    lines = [
        machine(),
        "",
        f"`{Path(sys.executable).name} -m bench.soak --duration {args.duration} --rate {args.rate} "
        f"--history-rate {args.history_rate} --interval {args.interval}`",
        "",
        f"Open-loop mix: {args.rate} callbacks/s (jobs Created -> Running -> Succeeded or Failed, "
        f"{args.failed_percent}% Failed, 5% repeats), {args.history_rate} history reads/s, every Failed job "
        "sent to a json:// sink.",
        "",
        "| interval | PSS MB | posts | intake p50 ms | intake p99 ms | history p99 ms | non-2xx | errors | delivered |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.minute} | {r.pss_mb:.1f} | {r.posts:,} | {r.intake_p50:.2f} | {r.intake_p99:.2f} | "
            f"{r.history_p99:.2f} | {r.non2xx} | {r.errors} | {r.delivered:,} |"
        )
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        pss_ok = flat(first.pss_mb, last.pss_mb, PSS_FLAT)
        p99_ok = flat(first.intake_p99, last.intake_p99, P99_FLAT)
        lines += [
            "",
            f"Memory (PSS) first vs last interval: {first.pss_mb:.1f} -> {last.pss_mb:.1f} MB "
            f"({last.pss_mb / first.pss_mb:.2f}x): {'flat' if pss_ok else 'NOT flat'} (bound {PSS_FLAT}x).",
            f"Intake p99 first vs last: {first.intake_p99:.2f} -> {last.intake_p99:.2f} ms "
            f"({last.intake_p99 / first.intake_p99:.2f}x): {'flat' if p99_ok else 'NOT flat'} (bound {P99_FLAT}x); "
            f"history p99 {first.history_p99:.2f} -> {last.history_p99:.2f} ms.",
        ]
    lines += ["", counts]
    if problems:
        lines += ["", f"Server stderr: {problems}."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration", type=int, default=600, metavar="SECONDS")
    parser.add_argument("--rate", type=int, default=300, help="callbacks per second (open loop)")
    parser.add_argument("--history-rate", type=int, default=20, help="history reads per second")
    parser.add_argument("--failed-percent", type=int, default=20, help="share of finished jobs that fail")
    parser.add_argument("--interval", type=int, default=60, metavar="SECONDS", help="sampling interval")
    parser.add_argument("--write-readme", action="store_true", help="write the figures into bench/README.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jobhook-soak-") as directory:
        run_dir = Path(directory) / "soak"
        run_dir.mkdir()
        with sink(run_dir) as sink_port, jobhook(run_dir, sink_port) as (port, db, log, pid):
            progress(f"soak: {args.duration} s, {args.rate} callbacks/s, sampling every {args.interval} s")
            rows = asyncio.run(drive(port, sink_port, pid, args))
            delivered = sink_stats(sink_port)
        rows_now = count_rows(db)
        counts = (
            f"After stopping: {rows_now.events:,} events rows, {rows_now.deliveries:,} deliveries "
            f"({rows_now.sent:,} sent); the sink received {delivered.count:,} ({delivered.distinct:,} distinct)."
        )
        problems = report_problems(log)
    text = report(rows, args, counts, problems)
    print(text)
    if args.write_readme:
        write_readme(text, START, END, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
