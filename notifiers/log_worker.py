"""A minimal outbox worker: logs each recorded transition and marks it processed.

It shows the path end to end (intake -> outbox -> worker) until rule-based apprise delivery
replaces it; it runs off the request path and survives store faults by retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from receiver.store import Store, StoreUnavailable

log = logging.getLogger("jobhook.worker")

BATCH = 200


class OutboxLogWorker:
    def __init__(self, store: Store, poll_interval: float = 1.0) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self.running = False
        self.processed = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                try:
                    handled = await self._drain_once()
                except StoreUnavailable as exc:
                    log.warning("outbox worker cannot read or update the store (%s); retrying", exc)
                    handled = 0
                if handled < BATCH:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval)
        finally:
            self.running = False

    async def _drain_once(self) -> int:
        items = await self._store.unprocessed_outbox(BATCH)
        for item in items:
            job = json.loads(item.body)
            error = job.get("error") or {}
            log.info(
                "transition %s %s %s -> %s in account %s%s",
                job.get("jobType"),
                item.job_id,
                item.previous_status or "(new)",
                item.status,
                job.get("accountId"),
                f" [{error.get('code')}: {error.get('message')}]" if error else "",
            )
        if items:
            await self._store.mark_processed([item.id for item in items])
            self.processed += len(items)
        return len(items)
