"""The Bytescale Jobs API poller: one per configured account, run beside the delivery worker.

Every `interval`: discovery (ListRecentJobs for the configured job types), then tracking (GetJob for every
followed job not yet seen terminal). Every job object seen goes through the same path as a posted callback:
`Job.model_validate_json`, `store.ingest`, and a wake of the delivery worker on a transition.

Polite: at most `concurrency` requests in flight, a 429 pauses the account until its `Retry-After`,
5xx and network errors back off exponentially with jitter, and a 401/403 stops the account until restart.
The API key is only ever in the Authorization header; every error text logged goes through the redactor.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import ValidationError

from notifiers.redaction import Redactor
from receiver.durations import now_ms
from receiver.models import TERMINAL, Job
from receiver.settings import BytescaleSource
from receiver.store import EventRow, Ingested, Store, StoreUnavailable, TrackedJob
from receiver.validation import field_problems

log = logging.getLogger("jobhook.poller")

MAX_RETRY_AFTER = 3600.0  # a Retry-After further out than this is read as this
BACKOFF_CAP = 300.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from `Retry-After` (delta-seconds or HTTP-date, `now` in epoch seconds); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT by definition
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)


def backoff_delay(failures: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: base * 2**(failures-1), capped, then scaled into [50%, 100%]."""
    delay = min(cap, base * 2.0 ** min(max(failures - 1, 0), 32))
    return delay * (0.5 + rand() / 2)


def error_text(body: str) -> str:
    """The message of a Bytescale error envelope, else the start of the body."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        error = json.loads(body)["error"]
        return f"{error.get('code')}: {error.get('message')}"
    return body[:200]


class _Throttled(Exception):
    pass


class _Stopped(Exception):
    pass


class _NotFound(Exception):
    pass


class _Failed(Exception):
    """A 5xx, an unexpected answer or a network error: back off."""


class BytescalePoller:
    """Polls one Bytescale account; state for tests and metrics: `requests`, `throttled_until`, `stopped_reason`."""

    def __init__(
        self,
        source: BytescaleSource,
        store: Store,
        on_transition: Callable[[], None],
        redactor: Redactor,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.account_id = source.account_id
        self.job_types = tuple(source.job_types)
        self.interval = source.interval
        self._base = f"{source.base_url.rstrip('/')}/v2/accounts/{quote(self.account_id, safe='')}/jobs"
        self._api_key = source.api_key
        self._timeout = source.timeout
        self._concurrency = source.concurrency
        self._store = store
        self._on_transition = on_transition
        self._redactor = redactor
        self._rand = rand
        self._slots = asyncio.Semaphore(source.concurrency)
        self._wakeup = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.requests = 0  # requests sent
        self.polls = 0  # completed poll rounds
        self.failures = 0  # consecutive failed rounds (5xx, network)
        self.throttled_until: float | None = None  # time.monotonic() until which no request is sent
        self.stopped_reason: str | None = None  # set by a 401/403: no more polling until restart
        self.dropped: list[str] = []  # jobIds dropped after a 404
        self.leading: bool | None = None  # whether this replica polls the account (one of several does)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"Authorization": f"Bearer {self._api_key.get_secret_value()}", "Accept": "application/json"},
            raise_for_status=False,
        )
        self._task = asyncio.create_task(self.run(), name=f"bytescale-poller-{self.account_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def poll_now(self) -> None:
        """Poll at once instead of at the end of the interval (a pause for a 429 still holds)."""
        self._wakeup.set()

    async def watch(self, job_type: str, job_id: str) -> bool:
        """Follow this job until terminal (persisted); False if it was already known."""
        added = await self._store.watch_job(self.account_id, job_type, job_id)
        self.poll_now()
        return added

    async def run(self) -> None:
        while self.stopped_reason is None:
            try:
                wait = await self.poll_once()
            except Exception:  # a bug must not stop polling for good
                log.exception("bytescale account %s: poll round failed", self.account_id)
                wait = self.interval
            if self.stopped_reason is not None:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait)

    # --- one round -----------------------------------------------------------------------------
    async def poll_once(self) -> float:
        """Discovery, then tracking; returns the seconds to wait before the next round."""
        remaining = self._throttled_for()
        if remaining > 0:
            return remaining
        try:
            if not await self._lead():
                return self.interval
            seen = await self._discover()
            tracked = [job for job in await self._store.tracked_jobs(self.account_id) if job.job_id not in seen]
            results = await asyncio.gather(*(self._follow(job) for job in tracked), return_exceptions=True)
            for kind in (_Stopped, _Throttled, _Failed, StoreUnavailable, BaseException):  # the gravest first
                for result in results:
                    if isinstance(result, kind):
                        raise result
        except _Stopped:
            return 0.0
        except _Throttled:
            return max(self._throttled_for(), 0.0)
        except (_Failed, StoreUnavailable) as exc:
            self.failures += 1
            delay = backoff_delay(self.failures, self.interval, max(BACKOFF_CAP, self.interval), self._rand)
            log.warning(
                "bytescale account %s: %s; retrying in %.1f s", self.account_id, self._redactor.redact(str(exc)), delay
            )
            return delay
        self.failures = 0
        self.polls += 1
        return self.interval

    async def _lead(self) -> bool:
        """Whether this replica polls the account this round; a change is logged once."""
        leading = await self._store.lead_polling(self.account_id)
        if leading and self.leading is False:
            log.info("bytescale account %s: this replica polls it now (the one that did has gone)", self.account_id)
        elif not leading and self.leading is not False:
            log.info("bytescale account %s: another replica polls it; this one stands by", self.account_id)
        self.leading = leading
        return leading

    async def _discover(self) -> set[str]:
        data = await self._get(self._base, [("jobType", job_type) for job_type in self.job_types])
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise _Failed("ListRecentJobs answered without an items list")
        jobs = await self._observe(items)
        return {job.jobId for job in jobs}

    async def _follow(self, tracked: TrackedJob) -> None:
        url = f"{self._base}/{quote(tracked.job_type, safe='')}/{quote(tracked.job_id, safe='')}"
        try:
            data = await self._get(url)
        except _NotFound as exc:
            self.dropped.append(tracked.job_id)
            log.warning(
                "bytescale account %s: job %s %s answered 404 (%s); no longer tracked",
                self.account_id,
                tracked.job_type,
                tracked.job_id,
                self._redactor.redact(str(exc)),
            )
            await self._store.forget_job(self.account_id, tracked.job_id)
            return
        await self._observe([data])

    async def _observe(self, objects: Sequence[Any]) -> list[Job]:
        """Validate each object and ingest it like a callback; then record the poll state of the valid ones."""
        jobs: list[Job] = []
        rows: list[EventRow] = []
        for index, item in enumerate(objects):
            text = json.dumps(item, separators=(",", ":"), ensure_ascii=False)
            try:
                job = Job.model_validate_json(text)
            except ValidationError as exc:
                fields = ", ".join(sorted({problem["field"] for problem in field_problems(exc)}))
                log.warning(
                    "bytescale account %s: job object %d skipped, invalid fields: %s", self.account_id, index, fields
                )
                continue
            jobs.append(job)
            rows.append(EventRow.from_job(job, text))
        outcomes = await asyncio.gather(*(self._store.ingest(row) for row in rows))
        if Ingested.TRANSITION in outcomes:
            self._on_transition()
        now = now_ms()
        await self._store.observe_polled(
            [
                TrackedJob(
                    self.account_id,
                    job.jobId,
                    job.jobType,
                    job.status.value,
                    job.lastUpdated,
                    now if job.status in TERMINAL else None,
                )
                for job in jobs
            ]
        )
        return jobs

    # --- HTTP ----------------------------------------------------------------------------------
    def _throttled_for(self) -> float:
        return 0.0 if self.throttled_until is None else self.throttled_until - time.monotonic()

    async def _get(self, url: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        session = self._session
        if session is None:
            raise RuntimeError("poller not started")
        async with self._slots:
            if self.stopped_reason is not None:
                raise _Stopped(self.stopped_reason)
            if self._throttled_for() > 0:
                raise _Throttled()
            self.requests += 1
            try:
                async with session.get(url, params=list(params)) as response:
                    body = await response.text()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _Failed(f"request failed: {type(exc).__name__}: {exc}") from None
        if status == 200:
            try:
                return json.loads(body)
            except ValueError:
                raise _Failed("answer is not JSON") from None
        if status == 429:
            self._throttle(retry_after)
        if status in (401, 403):
            self._stop(status, error_text(body))
        if status == 404:
            raise _NotFound(error_text(body))
        raise _Failed(f"HTTP {status}: {error_text(body)}")

    def _throttle(self, retry_after: str | None) -> None:
        delay = parse_retry_after(retry_after, time.time())
        if delay is None:
            delay = backoff_delay(self.failures + 1, self.interval, max(BACKOFF_CAP, self.interval), self._rand)
        until = time.monotonic() + delay
        if self.throttled_until is None or until > self.throttled_until:
            self.throttled_until = until
            log.warning("bytescale account %s: rate limited (429); pausing for %.1f s", self.account_id, delay)
        raise _Throttled()

    def _stop(self, status: int, message: str) -> None:
        if self.stopped_reason is None:
            self.stopped_reason = f"HTTP {status}: {self._redactor.redact(message)}"
            log.error(
                "bytescale account %s: API key refused (HTTP %d: %s); polling this account stopped until restart",
                self.account_id,
                status,
                self._redactor.redact(message),
            )
        raise _Stopped(self.stopped_reason)
