"""GET /metrics in Prometheus text format, read from the live objects at scrape time.

A collector pulls the counters that the intake, the store's writer thread, the delivery worker and
the pollers keep anyway (plain ints, `receiver.tally.Histogram`), so nothing on the request path
pays for metrics. The backlog (outbox depth and age, deliveries by state) is the one thing counted
by a query: the handler awaits it before rendering. Each app has its own registry (tests build
several apps).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from notifiers.worker import DeliveryWorker
from receiver.intake import ACCEPTED, DUPLICATE, INTAKE_OUTCOMES, JobIntake
from receiver.poller import BytescalePoller
from receiver.store import StoreUnavailable
from receiver.store.base import OutboxStats, Store
from receiver.tally import Histogram

DELIVERY_OUTCOMES = ("sent", "retry", "dead")
DELIVERY_STATES = ("pending", "retrying", "dead")


def histogram(name: str, documentation: str, values: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=values.buckets(), sum_value=values.sum)


class JobhookCollector(Collector):
    def __init__(
        self,
        intake: JobIntake,
        pollers: Mapping[str, BytescalePoller],
        store: Store,
        worker: DeliveryWorker,
    ) -> None:
        self._intake = intake
        self._pollers = pollers
        self._store = store
        self._worker = worker
        self.backlog: OutboxStats | None = None  # set by the handler just before each scrape

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "jobhook_intake_requests", "Requests received at POST /webhooks/jobs", value=self._intake.received
        )
        yield from self._intake_outcomes()
        yield from self._pollers_metrics()
        yield histogram(
            "jobhook_store_commit_batch_size",
            "Items (events and worker writes) committed per writer round",
            self._store.batch_sizes,
        )
        yield histogram(
            "jobhook_store_commit_seconds", "Seconds from BEGIN to COMMIT of a writer round", self._store.commit_seconds
        )
        yield from self._delivery_metrics(self._worker)
        if self.backlog is not None:
            yield from self._backlog_metrics(self.backlog)

    def _intake_outcomes(self) -> Iterator[Metric]:
        answers = dict(self._intake.answers)
        received = CounterMetricFamily(
            "jobhook_events_received",
            "Callbacks answered at POST /webhooks/jobs, by outcome (accepted, duplicate, rejected)",
            labels=["outcome"],
        )
        rejected = CounterMetricFamily(
            "jobhook_events_rejected", "Callbacks rejected, by error code of the answer", labels=["code"]
        )
        by_code = {INTAKE_OUTCOMES.get(status, f"http_{status}"): count for status, count in answers.items()}
        codes = [code for code in INTAKE_OUTCOMES.values() if code not in (ACCEPTED, DUPLICATE)]
        codes += sorted(code for code in by_code if code not in INTAKE_OUTCOMES.values())
        received.add_metric([ACCEPTED], by_code.get(ACCEPTED, 0))
        received.add_metric([DUPLICATE], by_code.get(DUPLICATE, 0))
        received.add_metric(["rejected"], sum(by_code.get(code, 0) for code in codes))
        for code in codes:
            rejected.add_metric([code], by_code.get(code, 0))
        transitions = CounterMetricFamily(
            "jobhook_transitions",
            "Status transitions committed and queued for notification, by new status",
            labels=["status"],
        )
        for status, count in sorted(dict(self._intake.transitions).items()):
            transitions.add_metric([str(status)], count)
        yield from (received, rejected, transitions)

    def _pollers_metrics(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "jobhook_poller_requests", "Requests sent to the Bytescale Jobs API", labels=["account"]
        )
        stopped = GaugeMetricFamily(
            "jobhook_poller_stopped",
            "1 when the API refused the key (401/403): polling stopped until restart",
            labels=["account"],
        )
        failures = GaugeMetricFamily(
            "jobhook_poller_failures",
            "Consecutive failed polling rounds (5xx, network) for the account",
            labels=["account"],
        )
        leading = GaugeMetricFamily(
            "jobhook_poller_leading",
            "1 while this replica is the one polling the account (of several replicas, one is)",
            labels=["account"],
        )
        for account, poller in self._pollers.items():
            requests.add_metric([account], poller.requests)
            stopped.add_metric([account], 1.0 if poller.stopped_reason else 0.0)
            failures.add_metric([account], poller.failures)
            leading.add_metric([account], 1.0 if poller.leading else 0.0)
        yield from (requests, stopped, failures, leading)

    @staticmethod
    def _delivery_metrics(worker: DeliveryWorker) -> Iterator[Metric]:
        outcomes = dict(worker.outcomes)
        deliveries = CounterMetricFamily(
            "jobhook_deliveries",
            "Delivery attempts by target and outcome (sent; failed and retried later; failed for good)",
            labels=["target", "outcome"],
        )
        targets = sorted(set(worker.targets) | {target for target, _ in outcomes})
        for target in targets:
            for outcome in DELIVERY_OUTCOMES:
                deliveries.add_metric([target, outcome], outcomes.get((target, outcome), 0))
        yield deliveries
        yield histogram("jobhook_delivery_send_seconds", "Seconds taken by one send to a target", worker.send_seconds)
        yield from JobhookCollector._circuit_metrics(worker)

    @staticmethod
    def _circuit_metrics(worker: DeliveryWorker) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "jobhook_target_circuit_state",
            "Circuit breaker of each target: 0 closed, 1 open (nothing sent), 2 half-open (one probe)",
            labels=["target"],
        )
        trips = CounterMetricFamily(
            "jobhook_target_circuit_trips", "Times the target's circuit breaker opened", labels=["target"]
        )
        for target, status in worker.circuits().items():
            state.add_metric([target], int(status.state))
            trips.add_metric([target], status.trips)
        yield from (state, trips)

    @staticmethod
    def _backlog_metrics(backlog: OutboxStats) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "jobhook_outbox_depth", "Transitions in the outbox not yet turned into deliveries", value=backlog.depth
        )
        age = 0.0 if backlog.oldest_created_at is None else max(0.0, time.time() - backlog.oldest_created_at / 1000)
        yield GaugeMetricFamily(
            "jobhook_outbox_oldest_age_seconds",
            "Age of the oldest transition in the outbox not yet turned into deliveries (0 when there is none)",
            value=age,
        )
        states = GaugeMetricFamily(
            "jobhook_deliveries_in_state", "Deliveries pending, retrying or dead right now", labels=["state"]
        )
        for state in DELIVERY_STATES:
            states.add_metric([state], backlog.deliveries.get(state, 0))
        yield states


def metrics_route(
    intake: JobIntake, pollers: Mapping[str, BytescalePoller], store: Store, worker: DeliveryWorker
) -> web.RouteDef:
    registry = CollectorRegistry()
    collector = JobhookCollector(intake, pollers, store, worker)
    registry.register(collector)

    async def metrics(request: web.Request) -> web.Response:
        try:
            collector.backlog = await store.outbox_stats()
        except StoreUnavailable:
            collector.backlog = None  # the backlog gauges are left out rather than stale
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return web.get("/metrics", metrics)
