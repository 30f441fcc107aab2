"""What the rest of jobhook needs from a store, independent of the engine behind it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

from receiver.models import Job
from receiver.store.deliveries import ClaimedDelivery, NewDelivery, Outcome
from receiver.store.history import JobFilter, Json, NotificationFilter, Page
from receiver.store.polling import TrackedJob
from receiver.store.retention import Pruned
from receiver.tally import Histogram


class Ingested(IntEnum):
    """What storing one event did."""

    DUPLICATE = 0  # seen before: nothing stored, nothing triggered
    STORED = 1  # new history; no transition worth notifying
    TRANSITION = 2  # new history, and an outbox row for the worker


class EventRow(NamedTuple):
    """One validated event, flattened for the store; `body` is the raw JSON text as received."""

    job_id: str
    last_updated: int
    status: str
    account_id: str
    job_type: str
    created: int
    attempts: int | None
    error_code: str | None
    error_message: str | None
    body: str

    @classmethod
    def from_job(cls, job: Job, body: str) -> EventRow:
        error = job.error
        return cls(
            job.jobId,
            job.lastUpdated,
            job.status.value,
            job.accountId,
            job.jobType,
            job.created,
            job.attempts,
            error.code if error else None,
            error.message if error else None,
            body,
        )


class OutboxItem(NamedTuple):
    """A recorded transition awaiting the worker."""

    id: int
    job_id: str
    status: str
    previous_status: str | None
    body: str


class OutboxStats(NamedTuple):
    """The notification backlog at one moment."""

    depth: int  # outbox rows not yet expanded into deliveries
    oldest_created_at: int | None  # epoch ms the oldest of them was queued; None when there is none
    deliveries: dict[str, int]  # deliveries by state, among pending, retrying and dead (absent: none)


class Store(Protocol):
    """The store interface: `SqliteStore` (one process) and `PostgresStore` (several replicas) implement it."""

    # Per committed ingest round, for /metrics: items written, and seconds from BEGIN to COMMIT.
    batch_sizes: Histogram
    commit_seconds: Histogram

    @property
    def healthy(self) -> bool: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def ingest(self, row: EventRow) -> asyncio.Future[Ingested]: ...

    async def check_writable(self) -> None: ...

    async def unprocessed_outbox(self, limit: int = 100) -> list[OutboxItem]: ...

    async def outbox_stats(self) -> OutboxStats: ...

    async def expand_outbox(self, outbox_ids: Sequence[int], planned: Sequence[NewDelivery], now: int) -> int:
        """Mark outbox rows processed and create their deliveries, once, in one transaction.

        A `NewDelivery` with `group` set joins its group's open digest instead (or opens one, due by the
        group's timers): see `deliveries.join_group` for the rule every store follows.
        """

    async def claim_due(
        self,
        now: int,
        lease_ms: int,
        limit: int,
        caps: Mapping[str, int] | None = None,
        rate_limits: Mapping[str, int] | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease due deliveries; `caps` and `rate_limits` (per target) hold some back, see `deliveries.claim_due`.

        Grouped transitions join digests in `expand_outbox`; claiming a digest seals it and returns its members.
        """

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: int) -> None: ...

    async def redeliver(self, delivery_ids: Sequence[int], now: int) -> int: ...

    async def redeliver_dead(self, now: int) -> int: ...

    async def next_due(self) -> int | None: ...

    async def observe_polled(self, jobs: Sequence[TrackedJob]) -> None: ...

    async def watch_job(self, account_id: str, job_type: str, job_id: str) -> bool: ...

    async def forget_job(self, account_id: str, job_id: str) -> bool: ...

    async def tracked_jobs(self, account_id: str) -> list[TrackedJob]: ...

    async def lead_polling(self, account_id: str) -> bool:
        """Whether this process polls that account now (of several replicas, one does)."""
        ...

    async def list_jobs(self, query: JobFilter) -> Page: ...

    async def job_detail(self, job_id: str) -> Json | None: ...

    async def list_notifications(self, query: NotificationFilter) -> Page: ...

    async def redeliver_notification(self, delivery_id: int, now: int) -> Json | None: ...

    async def prune_history(self, cutoff: int) -> Pruned: ...

    def export_events(self, since: int | None = None, chunk: int = 5000) -> AsyncIterator[list[Sequence[Any]]]: ...
