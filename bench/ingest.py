"""Ingest benchmark (SPEC §6): jobhook's acknowledged-and-durable events/s against a bare aiohttp handler.

Runs, side by side in one go: bare on uvloop, bare on asyncio, jobhook synchronous=full (non-terminal, then
25% terminal), jobhook synchronous=normal (same two mixes), jobhook on PostgreSQL with 1 and 2 replicas
(`bench/pg.py`, same two mixes), bare on asyncio and on uvloop again. Each is a 2 s warm-up and a measured
wrk run (`wrk -t2 -c32 --latency -s bench/jobs.lua`), one fresh database per jobhook run. Each jobhook run's
ratio is against the bare runs on the event loop its startup line reports (uvloop by default). After each
jobhook run the stopped server's database is read and its `events` rows are compared with the 2xx responses
wrk saw. `python -m bench.ingest [--duration 10] [--connections 32] [--store sqlite|postgres|all]
[--replicas 1 2] [--event-loop auto|uvloop|asyncio] [--write-readme]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "jobs.lua"
README = ROOT / "bench" / "README.md"
OUT = ROOT / "bench" / "out"
STOP_SECONDS = 40  # jobhook waits up to delivery.timeout (30 s) for requests in flight
START, END = "<!-- bench:ingest:start -->", "<!-- bench:ingest:end -->"
WARMUP_SECONDS = 2
THREADS = 2
TERMINAL = ("Succeeded", "Failed", "Cancelled")
ALPHABET = string.digits + string.ascii_uppercase
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass(frozen=True)
class Wrk:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    ok: int
    non2xx: int
    first_non2xx: int
    socket_errors: int

    @property
    def events_per_s(self) -> float:
        """Acknowledged (2xx) responses per second."""
        return self.rps * self.ok / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Run:
    name: str
    wrk: Wrk
    acked: int = 0  # 2xx over warm-up + measured run
    events: int | None = None
    terminal_events: int | None = None
    outbox: int | None = None
    server_problems: str = ""
    loop: str = ""  # the event loop the server ran on: its denominator is bare on the same loop


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def server_problems(log: Path) -> str:
    """Warnings, errors and tracebacks in a server's stderr, counted."""
    text = log.read_text(errors="replace")
    counts = {word: len(re.findall(rf"\b{word}\b", text)) for word in ("WARNING", "ERROR", "CRITICAL", "Traceback")}
    counts["WARNING"] -= text.count("WARNING jobhook: auth.mode none")  # expected on every start
    return ", ".join(f"{n} {word}" for word, n in counts.items() if n > 0)


def report_problems(log: Path) -> str:
    """`server_problems(log)`; when there are any, the log is kept and its tail shown."""
    problems = server_problems(log)
    if problems:
        progress(f"  server stderr has {problems}; {keep(log)}:\n{tail(log, 10)}")
    return problems


@contextlib.contextmanager
def server(command: Sequence[str], port: int, log: Path, cwd: Path) -> Iterator[int]:
    """Start a server process, wait for GET /healthz = 200, yield its pid; SIGTERM it (then wait) however we leave."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # SIGABRT dumps every thread's stack to the log
    with log.open("wb") as err:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                fail(f"server exited with {proc.returncode} before it was ready; {keep(log)}:\n{tail(log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                fail(f"server not ready after 30 s; {keep(log)}:\n{tail(log)}")
            time.sleep(0.1)
        yield proc.pid
        if proc.poll() is not None:
            fail(f"server exited with {proc.returncode} during the run; {keep(log)}:\n{tail(log)}")
    finally:
        if proc.poll() is None:
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                progress(f"  server still running {STOP_SECONDS} s after SIGTERM: SIGABRT (stack dump), then SIGKILL")
                proc.send_signal(signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                proc.kill()
                proc.wait()
            stopped = time.monotonic() - stopping
            progress(f"  server stopped {stopped:.1f} s after SIGTERM, exit status {proc.returncode}")
    if proc.returncode != 0:
        progress(f"warning: server exited with {proc.returncode} after SIGTERM; {keep(log)}:\n{tail(log, 60)}")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def keep(log: Path) -> Path:
    """Copy a server log out of the temporary directory (bench/out/ is git-ignored)."""
    OUT.mkdir(parents=True, exist_ok=True)
    kept = OUT / log.name
    shutil.copyfile(log, kept)
    return kept


def fail(message: str) -> NoReturn:
    raise SystemExit(f"bench.ingest: {message}")


def to_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if match is None:
        raise ValueError(f"unknown wrk time {value!r}")
    return float(match[1]) * UNIT_MS[match[2]]


def parse_wrk(output: str) -> Wrk:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            fail(f"cannot find {pattern!r} in wrk's output:\n{output}")
        return match

    result = find(r"^bench-result ok=(\d+) non2xx=(\d+) first_non2xx_status=(\d+)")
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return Wrk(
        rps=float(find(r"^Requests/sec:\s+([\d.]+)")[1]),
        requests=int(find(r"^\s+(\d+) requests in ")[1]),
        p50_ms=to_ms(find(r"^\s+50%\s+(\S+)")[1]),
        p99_ms=to_ms(find(r"^\s+99%\s+(\S+)")[1]),
        ok=int(result[1]),
        non2xx=int(result[2]),
        first_non2xx=int(result[3]),
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def wrk_command(port: int, seconds: int, connections: int, terminal_percent: int, threads: int = THREADS) -> list[str]:
    prefix = "".join(secrets.choice(ALPHABET) for _ in range(12))  # new per wrk run: no jobId repeats
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}/webhooks/jobs",
        "--",
        prefix,
        str(terminal_percent),
    ]


def wrk(port: int, seconds: int, connections: int, terminal_percent: int) -> Wrk:
    command = wrk_command(port, seconds, connections, terminal_percent)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        fail(f"wrk exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return parse_wrk(done.stdout)


def load(name: str, port: int, args: argparse.Namespace, terminal_percent: int) -> tuple[Wrk, int]:
    """Warm-up then the measured run; returns the measured run and the 2xx count of both."""
    progress(f"running {name}: {WARMUP_SECONDS} s warm-up, then {args.duration} s...")
    warm = wrk(port, WARMUP_SECONDS, args.connections, terminal_percent)
    measured = wrk(port, args.duration, args.connections, terminal_percent)
    progress(
        f"  {measured.events_per_s:,.0f} events/s, p50 {measured.p50_ms:.2f} ms, p99 {measured.p99_ms:.2f} ms, "
        f"non-2xx {measured.non2xx}"
    )
    return measured, warm.ok + measured.ok


def bare(loop: str, when: str, args: argparse.Namespace, tmp: Path) -> Run:
    name = f"bare aiohttp ({loop}, {when})"
    port = free_port()
    log = tmp / f"{slug(name)}.stderr"
    with server([sys.executable, "-m", "bench.bare", "--port", str(port), "--loop", loop], port, log, ROOT):
        measured, acked = load(name, port, args, 0)
    return Run(name, measured, acked, server_problems=server_problems(log), loop=loop)


def served_loop(log: Path) -> str:
    """The event loop a stopped `jobhook serve` ran on, from its startup line."""
    found = re.search(r"^.* listening on .*, event loop (\w+)\)$", log.read_text(errors="replace"), re.MULTILINE)
    if found is None:
        fail(f"no 'listening on ... event loop' line in the server's log; {keep(log)}")
    return found[1]


def server_keys(port: int, args: argparse.Namespace) -> str:
    """The `server:` line of a jobhook config for these runs."""
    return f"server: {{host: 127.0.0.1, port: {port}, event_loop: {args.event_loop}}}\n"


def jobhook_command(config: Path) -> list[str]:
    """`jobhook serve --config CONFIG`, with the jobhook next to this Python (the venv's) if there is one."""
    executable = Path(sys.executable).parent / "jobhook"
    return [
        str(executable) if executable.exists() else shutil.which("jobhook") or "jobhook",
        "serve",
        "--config",
        str(config),
    ]


def jobhook(synchronous: str, terminal_percent: int, args: argparse.Namespace, tmp: Path) -> Run:
    mix = f"{terminal_percent}% terminal" if terminal_percent else "non-terminal"
    name = f"jobhook {synchronous} ({mix})"
    run_dir = tmp / slug(name)
    run_dir.mkdir()
    db, port = run_dir / "bench.db", free_port()
    config = run_dir / "config.yaml"
    config.write_text(
        server_keys(port, args) + f'database: {{url: "sqlite:///{db}", synchronous: {synchronous}}}\n'
        "auth: {mode: none}\n"
    )
    log = run_dir / f"{slug(name)}.stderr"
    with server(jobhook_command(config), port, log, run_dir):
        measured, acked = load(name, port, args, terminal_percent)
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        terminal = conn.execute(f"SELECT count(*) FROM events WHERE status IN {TERMINAL}").fetchone()[0]
        outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    return Run(name, measured, acked, events, terminal, outbox, report_problems(log), served_loop(log))


def durability(run: Run, connections: int) -> str:
    """Every 2xx must be a stored row; a few more rows are fine (requests in flight when wrk stopped)."""
    if run.events is None:
        return ""
    extra = run.events - run.acked
    if extra < 0:
        return f"LOST {-extra} acknowledged events"
    if extra > 2 * connections:
        return f"{extra} rows beyond the 2xx seen (more than the requests in flight at the two wrk stops)"
    verdict = "ok" if extra == 0 else f"ok (+{extra} answered after wrk stopped)"
    if run.terminal_events and run.outbox != run.terminal_events:
        verdict += f"; outbox {run.outbox} != terminal events {run.terminal_events}"
    return verdict


def bare_means(runs: list[Run]) -> dict[str, tuple[float, int]]:
    """Per event loop: the mean events/s of the bare runs on it, and how many there were."""
    means: dict[str, tuple[float, int]] = {}
    for loop in dict.fromkeys(r.loop for r in runs if r.name.startswith("bare")):
        rates = [r.wrk.events_per_s for r in runs if r.name.startswith("bare") and r.loop == loop]
        means[loop] = (sum(rates) / len(rates), len(rates))
    return means


def tables(runs: list[Run], connections: int) -> str:
    means = bare_means(runs)
    missing = {r.loop for r in runs} - means.keys()
    if missing:
        fail(f"no bare aiohttp run on {', '.join(sorted(missing))} to compare with")
    lines = [
        "| configuration | event loop | events/s | ratio vs bare, same loop (mean) | p50 ms | p99 ms | non-2xx |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        bad = f"{r.wrk.non2xx}" + (f" (first: {r.wrk.first_non2xx})" if r.wrk.non2xx else "")
        bad += f", {r.wrk.socket_errors} socket errors" if r.wrk.socket_errors else ""
        lines.append(
            f"| {r.name} | {r.loop} | {r.wrk.events_per_s:,.0f} | {r.wrk.events_per_s / means[r.loop][0]:.2f} | "
            f"{r.wrk.p50_ms:.2f} | {r.wrk.p99_ms:.2f} | {bad} |"
        )
    for loop, (mean, count) in means.items():
        lines.append(f"| bare aiohttp ({loop}, mean of {count}) | {loop} | {mean:,.0f} | 1.00 | | | |")
    if {"asyncio", "uvloop"} <= means.keys():
        lines += ["", f"Bare aiohttp on asyncio: {means['asyncio'][0] / means['uvloop'][0]:.2f} of bare on uvloop."]
    lines += [
        "",
        "| configuration | 2xx seen (warm-up + run) | rows in events | terminal events | rows in outbox | check |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        if r.events is not None:
            lines.append(
                f"| {r.name} | {r.acked:,} | {r.events:,} | {r.terminal_events:,} | {r.outbox:,} | "
                f"{durability(r, connections)} |"
            )
    for full in (r for r in runs if r.name.startswith("jobhook") and "full" in r.name and "non-terminal" in r.name):
        ratio = full.wrk.events_per_s / means[full.loop][0]
        meets = ratio >= 0.70 and full.wrk.p99_ms <= 10
        lines += [
            "",
            f"SPEC §6 bar for {full.name} (≥ 70% of bare aiohttp on the same event loop, {full.loop}; "
            f"p99 ≤ 10 ms): {'met' if meets else 'NOT met'} ({ratio:.0%} of bare, p99 {full.wrk.p99_ms:.2f} ms).",
        ]
    problems = [f"{r.name}: {r.server_problems}" for r in runs if r.server_problems]
    if problems:
        lines += ["", "Server stderr: " + "; ".join(problems) + "."]
    return "\n".join(lines)


def postgres_version() -> str:
    from tests.pgcluster import pg_bin

    postgres = pg_bin("postgres")
    if postgres is None:
        return ""
    done = subprocess.run([postgres, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip().replace("postgres (PostgreSQL)", "PostgreSQL") + "; "


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.splitlines()
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {len(os.sched_getaffinity(0))} CPUs "
        f"({model[1].strip() if model else 'unknown CPU'}); Linux {platform.release()}; "
        f"Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}; {postgres_version()}"
        f"{version[0].split(' Copyright')[0] if version else 'wrk'}"
    )


INTRO = f"""# Benchmarks

## Ingest (`bench/ingest.py`)

What is measured: acknowledged-and-durable events per second at `POST /webhooks/jobs` (SPEC §6), with wrk
(2 threads, 32 connections, closed loop), against a bare aiohttp handler that only answers 202 without
reading the body — both measured side by side in one run on the same machine: bare on uvloop and on
asyncio, jobhook `synchronous: full` and `normal`, each with an all-in-flight mix and a 25% terminal mix
(every terminal event also writes an outbox row), jobhook on PostgreSQL (`synchronous: full`, a throwaway
local cluster with fsync on, `bench/pg.py`) with one replica and with two (the wrk connections split over
them, events/s summed, p50/p99 the worse of the two), then bare on asyncio and on uvloop again (the bare
runs at both ends show the machine's drift). The ratio compares like with like: each jobhook run is
divided by the mean of the bare runs on the event loop that jobhook's startup line reports — uvloop, its
default (`server.event_loop: auto`), which alone makes bare aiohttp about 15% faster than on asyncio;
the bare asyncio rows are there for reference (their ratio line says what the loop is worth), and
`--event-loop asyncio` runs jobhook on asyncio against them. `--store sqlite|postgres|all` and
`--replicas 1 2` choose what runs. Every
request carries a new, valid job (`bench/jobs.lua`), so none is a duplicate. Each jobhook configuration
gets a fresh database; after it stops, its `events` rows are counted against the 2xx responses wrk saw.
The server and wrk share the machine and are not pinned.

Reproduce: `make bench`, or `make bench BENCH_ARGS="--duration 30"`; `--write-readme` rewrites the
figures below.

{START}
{END}
"""


def write_readme(body: str, start: str = START, end: str = END, section: str = "") -> None:
    """Replace what is between the `start` and `end` markers of bench/README.md with `body`.

    Markers that are missing are appended at the end of the file, after `section` (a heading and prose).
    """
    text = README.read_text() if README.exists() else INTRO
    if start not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{section}{start}\n{end}\n"
    head, rest = text.split(start, 1)
    README.write_text(f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}")
    progress(f"wrote {README.relative_to(ROOT)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, metavar="SECONDS", help="measured seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--write-readme", action="store_true", help="rewrite the figures in bench/README.md")
    parser.add_argument(
        "--store",
        choices=["sqlite", "postgres", "all"],
        default="all",
        help="which stores to measure (postgres: a throwaway cluster of this machine's PostgreSQL; all: both)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        nargs="+",
        default=[1, 2],
        metavar="N",
        help="PostgreSQL runs with N replicas each, the wrk connections spread over them (default: 1 2)",
    )
    parser.add_argument(
        "--event-loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="jobhook's server.event_loop (default auto, i.e. uvloop); its ratio is against bare on the same loop",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        fail("wrk is not installed (apt-get install -y wrk)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop the servers
    with tempfile.TemporaryDirectory(prefix="jobhook-bench-") as name:
        tmp = Path(name)
        # Bare on both loops at the start and at the end, in mirrored order: the ratio's denominator is
        # the bare runs on jobhook's loop; the other loop's show what the loop alone is worth.
        runs = [bare("uvloop", "start", args, tmp), bare("asyncio", "start", args, tmp)]
        if args.store in ("sqlite", "all"):
            for synchronous in ("full", "normal"):
                for terminal_percent in (0, 25):
                    runs.append(jobhook(synchronous, terminal_percent, args, tmp))
        if args.store in ("postgres", "all"):
            from bench.pg import postgres_runs  # imports this module
            from tests.pgcluster import pg_bin

            if pg_bin("initdb") is None and args.store == "all":
                progress("PostgreSQL runs skipped: no initdb (apt-get install -y postgresql)")
            else:
                runs += postgres_runs(args, tmp)
        runs += [bare("asyncio", "end", args, tmp), bare("uvloop", "end", args, tmp)]
    info = machine()
    report = (
        f"{info}\n\nwrk -t{THREADS} -c{args.connections}, {args.duration} s per measured run after a "
        f"{WARMUP_SECONDS} s warm-up.\n\n{tables(runs, args.connections)}"
    )
    print(report)
    if args.write_readme:
        write_readme(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
