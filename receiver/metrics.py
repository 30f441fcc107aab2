"""GET /metrics in Prometheus text format, read from the live objects at scrape time.

A collector pulls the counters that the intake and the pollers keep anyway, so nothing on the
request path pays for metrics. Each app has its own registry (tests build several apps).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from receiver.intake import JobIntake
from receiver.poller import BytescalePoller


class JobhookCollector(Collector):
    def __init__(self, intake: JobIntake, pollers: Mapping[str, BytescalePoller]) -> None:
        self._intake = intake
        self._pollers = pollers

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "jobhook_intake_requests", "Requests received at POST /webhooks/jobs", value=self._intake.received
        )
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
        for account, poller in self._pollers.items():
            requests.add_metric([account], poller.requests)
            stopped.add_metric([account], 1.0 if poller.stopped_reason else 0.0)
            failures.add_metric([account], poller.failures)
        yield from (requests, stopped, failures)


def metrics_route(intake: JobIntake, pollers: Mapping[str, BytescalePoller]) -> web.RouteDef:
    registry = CollectorRegistry()
    registry.register(JobhookCollector(intake, pollers))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return web.get("/metrics", metrics)
