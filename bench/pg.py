"""Ingest on PostgreSQL for `bench.ingest`: one or several `jobhook serve` replicas on one database.

A durable throwaway cluster (`tests.pgcluster`, fsync on) serves every PostgreSQL run; each run gets a
fresh database. With N replicas, N wrk processes run at once, each with 1/N of the connections against
one replica (what a load balancer in front would do); events/s are summed, p50/p99 are the worst of the
N. Afterwards the database's `events` rows are counted against the 2xx responses the wrk processes saw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
from pathlib import Path

import asyncpg

from bench.ingest import (
    TERMINAL,
    THREADS,
    WARMUP_SECONDS,
    Run,
    Wrk,
    free_port,
    jobhook_command,
    parse_wrk,
    progress,
    report_problems,
    served_loop,
    server,
    server_keys,
    slug,
    wrk_command,
)
from tests.pgcluster import Admin, Cluster


def wrk_many(ports: list[int], seconds: int, connections: int, terminal_percent: int) -> Wrk:
    """One wrk per port, all at once, the connections split between them; their results combined."""
    share, threads = max(1, connections // len(ports)), max(1, THREADS // len(ports))
    procs = [
        subprocess.Popen(
            wrk_command(port, seconds, share, terminal_percent, threads), stdout=subprocess.PIPE, text=True
        )
        for port in ports
    ]
    results = [parse_wrk(proc.communicate(timeout=seconds + 60)[0]) for proc in procs]
    requests = sum(r.requests for r in results)
    return Wrk(
        rps=sum(r.rps for r in results),
        requests=requests,
        p50_ms=max(r.p50_ms for r in results),
        p99_ms=max(r.p99_ms for r in results),
        ok=sum(r.ok for r in results),
        non2xx=sum(r.non2xx for r in results),
        first_non2xx=next((r.first_non2xx for r in results if r.non2xx), 0),
        socket_errors=sum(r.socket_errors for r in results),
    )


async def _count(url: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(url)
    try:
        events = await conn.fetchval("SELECT count(*) FROM events")
        terminal = await conn.fetchval("SELECT count(*) FROM events WHERE status = ANY($1)", list(TERMINAL))
        outbox = await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()
    return int(events), int(terminal), int(outbox)


def jobhook_postgres(
    admin: Admin, replicas: int, synchronous: str, terminal_percent: int, args: argparse.Namespace, tmp: Path
) -> Run:
    mix = f"{terminal_percent}% terminal" if terminal_percent else "non-terminal"
    name = f"jobhook postgres {synchronous}, {replicas} replica{'s' if replicas > 1 else ''} ({mix})"
    run_dir = tmp / slug(name)
    run_dir.mkdir()
    url = admin.cluster.url(admin.create_database())
    ports = [free_port() for _ in range(replicas)]
    logs = [run_dir / f"{slug(name)}-{i}.stderr" for i in range(replicas)]
    with contextlib.ExitStack() as stack:
        for i, port in enumerate(ports):
            config = run_dir / f"config-{i}.yaml"
            config.write_text(
                server_keys(port, args) + f'database: {{url: "{url}", synchronous: {synchronous}}}\n'
                "auth: {mode: none}\n"
            )
            stack.enter_context(server(jobhook_command(config), port, logs[i], run_dir))
        progress(f"running {name}: {WARMUP_SECONDS} s warm-up, then {args.duration} s...")
        warm = wrk_many(ports, WARMUP_SECONDS, args.connections, terminal_percent)
        measured = wrk_many(ports, args.duration, args.connections, terminal_percent)
        progress(
            f"  {measured.events_per_s:,.0f} events/s, p50 {measured.p50_ms:.2f} ms, p99 {measured.p99_ms:.2f} ms, "
            f"non-2xx {measured.non2xx}"
        )
    events, terminal, outbox = asyncio.run(_count(url))
    problems = ", ".join(p for p in map(report_problems, logs) if p)
    [loop] = {served_loop(log) for log in logs}
    return Run(name, measured, warm.ok + measured.ok, events, terminal, outbox, problems, loop)


def postgres_runs(args: argparse.Namespace, tmp: Path) -> list[Run]:
    """Full durability, both mixes, one replica then two; SQLite's runs are the comparison beside them."""
    cluster = Cluster(durable=True)
    admin = Admin(cluster)
    try:
        return [
            jobhook_postgres(admin, replicas, "full", terminal_percent, args, tmp)
            for replicas in args.replicas
            for terminal_percent in (0, 25)
        ]
    finally:
        admin.close()
        cluster.stop()
