"""The delivery worker: the pipeline from outbox row to delivered message, in one screen.

    expand: outbox row -> rules x targets -> rendered deliveries (one transaction, exactly once)
    claim:  due deliveries, leased so that a crashed process's claims return after `delivery.lease`
    send:   one fresh apprise object per send, bounded concurrency, per-send timeout
    record: attempt + sent | retrying (backoff with jitter) | dead

Flood control (issue #9): a rule with `group_by` plans its transitions into digests (the store keeps the
windows, see `receiver.store.deliveries`); a target's `rate_limit` and circuit breaker only hold deliveries
back at claim time, so a held delivery stays due, burns no attempt, and is never dropped.

It never blocks the event loop: store calls go through the writer thread or aiosqlite, and each
apprise send (object construction included) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from notifiers.breaker import CircuitBreaker, CircuitStatus
from notifiers.digest import grouping, render_digest
from notifiers.redaction import Redactor
from notifiers.render import notify_type_for, render
from notifiers.retry import RetryPolicy
from notifiers.rules import CompiledRule, match
from notifiers.targets import SendResult, Target, send
from receiver.durations import now_ms
from receiver.models import Job
from receiver.store import OutboxItem, Store, StoreUnavailable
from receiver.store.deliveries import ClaimedDelivery, NewDelivery, Outcome
from receiver.tally import SEND_SECONDS_BUCKETS, Histogram

log = logging.getLogger("jobhook.worker")

EXPAND_BATCH = 200
BUSY_EXPAND_BATCH = 20
IDLE_POLL_SECONDS = 1.0
# Intake comes first: while callbacks arrive faster than this, at most one send is in flight,
# passes are spaced by BUSY_PAUSE_SECONDS and BUSY_EXPAND_BATCH transitions are planned once a second,
# so acknowledging events keeps the CPU (a send through apprise costs ~1.5 ms of it, planning a
# transition ~0.1 ms). The backlog drains at full speed once intake calms down.
BUSY_INTAKE_PER_SECOND = 2000.0
BUSY_PAUSE_SECONDS = 0.04
LOAD_SAMPLE_SECONDS = 0.25
HELD_POLL_SECONDS = 0.5  # due deliveries all held back (rate limit, open circuit): look again this often


def pass_wait(until_due: float, *, claimed: int, in_flight: int, intake_busy: bool, outbox_pending: bool) -> float:
    """Pure: how long the worker sleeps after a pass unless something wakes it.

    While intake is busy and transitions are still waiting to be planned, nothing wakes the worker when
    intake calms down (the storm's callbacks are not transitions), so it looks again within one load
    sample instead of sleeping a whole idle poll: the backlog then resumes at full speed within about
    LOAD_SAMPLE_SECONDS of the storm's end, not a second or more later.
    """
    wait = until_due
    if wait <= 0 and not claimed and not in_flight:
        wait = HELD_POLL_SECONDS  # due, yet held back: do not spin
    if intake_busy and outbox_pending:
        wait = min(wait, LOAD_SAMPLE_SECONDS)
    return wait


def plan_deliveries(item: OutboxItem, rules: Sequence[CompiledRule]) -> list[NewDelivery]:
    """Pure: which (rule, target) pairs a transition fires, with each message rendered."""
    job_data = json.loads(item.body)
    job = Job.model_validate_json(item.body)
    planned = []
    for rule, target in match(rules, job):
        group = grouping(rule, job)
        if group is not None:  # rendered later, from all the digest's members
            notify_type = notify_type_for(item.status)
            planned.append(
                NewDelivery(item.id, item.job_id, item.status, rule.name, target, "", "", notify_type, group)
            )
            continue
        message = render(rule, job_data, item.previous_status)
        planned.append(
            NewDelivery(
                item.id, item.job_id, item.status, rule.name, target, message.title, message.body, message.notify_type
            )
        )
    return planned


class DeliveryWorker:
    def __init__(
        self,
        store: Store,
        rules: Sequence[CompiledRule],
        targets: Mapping[str, Target],
        policy: RetryPolicy,
        *,
        concurrency: int,
        timeout: float,
        lease: float,
        redactor: Redactor,
        intake_load: Callable[[], int] = lambda: 0,
        clock: Callable[[], int] = now_ms,
        circuit_threshold: int = 0,
        circuit_cooloff: float = 30.0,
    ) -> None:
        self._store = store
        self._rules = rules
        self._targets = targets
        self._policy = policy
        self._concurrency = concurrency
        self._timeout = timeout
        self._lease_ms = int(lease * 1000)
        self._redactor = redactor
        self._clock = clock
        self._intake_load = intake_load
        self._load_sample = (time.monotonic(), 0)
        self._intake_busy = False
        self._outbox_pending = True  # look once at startup: transitions may be waiting from before
        self._expanded_at = 0.0
        self._wake = asyncio.Event()
        self._passes_done = asyncio.Event()  # set when `run` has returned: no pass is under way
        self._stopping = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self.running = False
        # For /metrics: attempts by (target, "sent" | "retry" | "dead"), and the seconds of each send.
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.send_seconds = Histogram(SEND_SECONDS_BUCKETS)
        self._breakers = {name: CircuitBreaker(circuit_threshold, int(circuit_cooloff * 1000)) for name in targets}
        self._rate_limits = {name: t.rate_limit for name, t in targets.items() if t.rate_limit is not None}

    @property
    def targets(self) -> Mapping[str, Target]:
        return self._targets

    def circuits(self) -> dict[str, CircuitStatus]:
        """Each target's circuit breaker, for /metrics and the dashboard."""
        now = self._clock()
        return {name: breaker.status(now) for name, breaker in sorted(self._breakers.items())}

    def wake(self) -> None:
        """A new transition is in the outbox (the intake calls this after committing one)."""
        self._outbox_pending = True
        self._wake.set()

    def deliveries_due(self) -> None:
        """A delivery became due now (an operator's redeliver): claim at once, without re-reading the outbox."""
        self._wake.set()

    async def run(self) -> None:
        self.running = True
        self._passes_done.clear()
        try:
            while not self._stopping:
                # Cleared as a pass starts: a wake-up during the pass (a transition committed after it planned,
                # a redeliver after it claimed, a send that freed a slot) starts the next pass at once.
                self._wake.clear()
                if self._update_intake_busy():
                    await asyncio.sleep(BUSY_PAUSE_SECONDS)
                try:
                    since_expanded = time.monotonic() - self._expanded_at
                    # While intake is busy, plan new transitions once a second, not on every wake.
                    if since_expanded >= IDLE_POLL_SECONDS or (self._outbox_pending and not self._intake_busy):
                        self._outbox_pending = False
                        self._expanded_at = time.monotonic()
                        await self._expand()
                    claimed = await self._claim_and_send()
                    wait = pass_wait(
                        await self._seconds_until_due(),
                        claimed=claimed,
                        in_flight=len(self._in_flight),
                        intake_busy=self._intake_busy,
                        outbox_pending=self._outbox_pending,
                    )
                except StoreUnavailable as exc:
                    log.warning("delivery worker cannot use the store (%s); retrying", exc)
                    wait = IDLE_POLL_SECONDS
                except Exception:  # a bug must not stop deliveries for good: log it, pause, go on
                    log.exception("delivery worker pass failed; retrying in %g s", IDLE_POLL_SECONDS)
                    wait = IDLE_POLL_SECONDS
                if self._stopping:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            self.running = False
            self._passes_done.set()

    async def stop(self, grace: float) -> None:
        """Stop claiming; let sends in flight finish for up to `grace` seconds; their leases cover the rest.

        The pass under way ends first: a claim it is committing becomes a send in flight that is waited
        for here, rather than one sent after the store has closed and never recorded (sent twice, once
        its lease expires).
        """
        self._stopping = True
        self._wake.set()
        deadline = time.monotonic() + grace
        if self.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._passes_done.wait(), grace)
        if self._in_flight:
            _, pending = await asyncio.wait(self._in_flight, timeout=max(0.0, deadline - time.monotonic()))
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d sends unfinished at shutdown; they are retried once their lease expires", len(pending))

    # --- stages --------------------------------------------------------------------------------
    async def _expand(self) -> None:
        """Turn outbox rows into deliveries; while intake is busy, only a few per pass (planning costs CPU)."""
        batch = BUSY_EXPAND_BATCH if self._intake_busy else EXPAND_BATCH
        while not self._stopping:  # what is left is planned at the next start
            items = await self._store.unprocessed_outbox(batch)
            if not items:
                return
            planned = [delivery for item in items for delivery in self._plan(item)]
            created = await self._store.expand_outbox([item.id for item in items], planned, self._clock())
            log.debug("expanded %d transitions into %d deliveries", len(items), created)
            if len(items) < batch:
                return
            if self._intake_busy:
                self._outbox_pending = True  # the rest on the next passes
                return

    def _plan(self, item: OutboxItem) -> list[NewDelivery]:
        try:
            return plan_deliveries(item, self._rules)
        except ValueError as exc:  # the body was validated at intake, so only a changed schema gets here
            log.error("transition %d of job %s cannot be planned and is skipped: %s", item.id, item.job_id, exc)
            return []

    def _update_intake_busy(self) -> bool:
        now, count = time.monotonic(), self._intake_load()
        then, before = self._load_sample
        if now - then >= LOAD_SAMPLE_SECONDS:
            self._intake_busy = (count - before) / (now - then) > BUSY_INTAKE_PER_SECOND
            self._load_sample = (now, count)
        return self._intake_busy

    async def _claim_and_send(self) -> int:
        limit = 1 if self._intake_busy else self._concurrency
        free = limit - len(self._in_flight)
        # Claim in batches: topping up one slot at a time would cost a store round per send.
        if self._stopping or free <= 0 or (self._in_flight and free < limit // 2):
            return 0
        now = self._clock()
        caps = {name: cap for name, breaker in self._breakers.items() if (cap := breaker.cap(now)) is not None}
        claimed = await self._store.claim_due(now, self._lease_ms, free, caps, self._rate_limits)
        for delivery in claimed:
            if delivery.target in caps:
                self._breakers[delivery.target].claimed()
            task = asyncio.create_task(self._deliver(delivery), name=f"delivery-{delivery.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(claimed)

    async def _seconds_until_due(self) -> float:
        if self._in_flight:
            return IDLE_POLL_SECONDS  # a finishing send wakes us
        due = await self._store.next_due()
        if due is None:
            return IDLE_POLL_SECONDS
        return min(IDLE_POLL_SECONDS, max(0.0, (due - self._clock()) / 1000))

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        try:
            result = await self._send(delivery)
        except Exception as exc:  # never expected (send reports failures in its result): a failed attempt
            log.exception("delivery %d to %s failed unexpectedly", delivery.id, delivery.target)
            result = SendResult(ok=False, error=f"{type(exc).__name__}", retryable=True, elapsed=0.0)
        attempts = delivery.attempts + 1
        breaker = self._breakers.get(delivery.target)
        if breaker is not None:
            breaker.record(not result.ok and result.retryable, self._clock())
        if result.ok:
            outcome = Outcome(delivery.id, True, None, None)
            self.outcomes[delivery.target, "sent"] += 1
        else:
            delay = self._policy.delay_after(attempts) if result.retryable else None
            next_at = None if delay is None else self._clock() + int(delay * 1000)
            outcome = Outcome(delivery.id, False, result.error, next_at)
            self.outcomes[delivery.target, "dead" if next_at is None else "retry"] += 1
            log.warning(
                "delivery %d to %s failed (attempt %d): %s; %s",
                delivery.id,
                delivery.target,
                attempts,
                result.error,
                "dead" if next_at is None else f"retry in {delay:.3g} s",
            )
        try:
            await self._store.record_outcomes([outcome], self._clock())
        except StoreUnavailable as exc:
            log.warning("could not record delivery %d (%s); its lease will expire and it is retried", delivery.id, exc)
        self._wake.set()  # a slot is free (not `wake()`: nothing new in the outbox)

    async def _send(self, delivery: ClaimedDelivery) -> SendResult:
        target = self._targets.get(delivery.target)
        if target is None:
            return SendResult(
                ok=False, error=f"target {delivery.target!r} is no longer configured", retryable=False, elapsed=0.0
            )
        title, body, notify_type = delivery.title, delivery.body, delivery.notify_type
        if delivery.members is not None:
            digest = render_digest(delivery.members, delivery.rule, delivery.group_key)
            title, body, notify_type = digest.title, digest.body, digest.notify_type
        result = await send(
            target,
            title=title,
            body=body,
            notify_type=notify_type,
            timeout=self._timeout,
            redactor=self._redactor,
        )
        self.send_seconds.observe(result.elapsed)
        return result
