"""GET /metrics: the collector's counters, histograms and backlog gauges, against the real app."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from receiver.intake import INTAKE_OUTCOMES
from receiver.keys import WORKER
from receiver.tally import Histogram
from tests.conftest import AppClient, MakeClient
from tests.jobs import job
from tests.peers import JsonSink, free_port, wait_until
from tests.test_delivery import FAST_RETRY, failed, settled
from tests.test_intake import post

pytestmark = pytest.mark.stores("sqlite", "postgres")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: AppClient) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """`{label value: sample value}` for every sample of `name` (with only that label)."""
    return {dict(key)[label]: v for (n, key), v in samples.items() if n == name and {k for k, _ in key} == {label}}


async def test_intake_outcomes_and_transitions_are_counted(client: AppClient) -> None:
    before = await scrape(client)
    assert labelled(before, "jobhook_events_received_total", "outcome") == {
        "accepted": 0,
        "duplicate": 0,
        "rejected": 0,
    }
    payload = failed()
    assert (await post(client, payload))[0] == 202
    assert (await post(client, payload))[0] == 200
    assert (await post(client, job(status="Running")))[0] == 202  # stored, not a notified transition
    assert (await post(client, {**job(), "status": "Exploded"}))[0] == 422
    assert (await post(client, job(), headers={"Content-Type": "text/plain"}))[0] == 415
    assert (await post(client, b'{"jobId": ', headers={"Content-Type": "application/json"}))[0] == 400

    samples = await scrape(client)
    assert labelled(samples, "jobhook_events_received_total", "outcome") == {
        "accepted": 2,
        "duplicate": 1,
        "rejected": 3,
    }
    assert labelled(samples, "jobhook_events_rejected_total", "code") == {
        "malformed_json": 1,
        "invalid_payload": 1,
        "unsupported_media_type": 1,
        "payload_too_large": 0,
        "request_timeout": 0,
        "unauthorized": 0,
        "store_unavailable": 0,
        "internal_error": 0,
    }
    assert labelled(samples, "jobhook_transitions_total", "status") == {"Failed": 1}
    assert value(samples, "jobhook_intake_requests_total") == 6
    # Every committed round is observed: at least the events' rounds, each of one or more items.
    rounds = value(samples, "jobhook_store_commit_batch_size_count")
    assert rounds >= 1
    assert value(samples, "jobhook_store_commit_batch_size_sum") >= rounds
    assert value(samples, "jobhook_store_commit_batch_size_bucket", le="+Inf") == rounds
    assert value(samples, "jobhook_store_commit_seconds_count") == rounds
    assert value(samples, "jobhook_store_commit_seconds_sum") > 0


async def test_deliveries_by_target_and_outcome(make_client: MakeClient, db: Any) -> None:
    down = f"json://127.0.0.1:{free_port()}/hook"
    async with JsonSink() as sink:
        client = await make_client(
            targets={"hook": sink.url(), "down": down},
            delivery={**FAST_RETRY, "max_attempts": 2},
            rules=[
                {"name": "up", "match": {"status": "Failed", "jobType": "CopyFileBatchJob"}, "notify": "hook"},
                {"name": "dn", "match": {"status": "Failed", "jobType": "DeleteFileBatchJob"}, "notify": "down"},
            ],
        )
        await post(client, failed())
        await post(client, failed(jobType="DeleteFileBatchJob"))
        worker = client.app[WORKER]
        await wait_until(lambda: worker.outcomes["hook", "sent"] + worker.outcomes["down", "dead"] == 2, 10)
        await settled(db, 2)  # recorded too, for the state gauge

        samples = await scrape(client)
        deliveries = {
            (dict(key)["target"], dict(key)["outcome"]): v
            for (name, key), v in samples.items()
            if name == "jobhook_deliveries_total"
        }
        assert deliveries == {
            ("hook", "sent"): 1,
            ("hook", "retry"): 0,
            ("hook", "dead"): 0,
            ("down", "sent"): 0,
            ("down", "retry"): 1,
            ("down", "dead"): 1,
            ("console", "sent"): 0,  # every configured target is listed, the built-in console included
            ("console", "retry"): 0,
            ("console", "dead"): 0,
        }
        assert value(samples, "jobhook_delivery_send_seconds_count") == 3
        assert value(samples, "jobhook_delivery_send_seconds_bucket", le="+Inf") == 3
        assert value(samples, "jobhook_delivery_send_seconds_sum") > 0
        assert len(sink.requests) == 1
        assert labelled(samples, "jobhook_deliveries_in_state", "state") == {"pending": 0, "retrying": 0, "dead": 1}


async def test_outbox_depth_and_age_while_the_worker_is_stopped(client: AppClient) -> None:
    samples = await scrape(client)
    assert value(samples, "jobhook_outbox_depth") == 0
    assert value(samples, "jobhook_outbox_oldest_age_seconds") == 0
    worker = client.app[WORKER]
    await worker.stop(grace=0)
    await wait_until(lambda: not worker.running)  # a pass already under way could expand the outbox first
    for _ in range(3):
        assert (await post(client, failed()))[0] == 202
    await asyncio.sleep(0.05)
    samples = await scrape(client)
    assert value(samples, "jobhook_outbox_depth") == 3
    assert value(samples, "jobhook_outbox_oldest_age_seconds") > 0
    assert labelled(samples, "jobhook_transitions_total", "status") == {"Failed": 3}


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    values = Histogram((1, 5))
    for sample in (0.5, 1, 3, 5, 7):
        values.observe(sample)
    assert values.buckets() == [("1.0", 2), ("5.0", 4), ("+Inf", 5)]
    assert values.sum == 16.5


async def test_each_intake_status_stands_for_one_code(client: AppClient) -> None:
    """Every status the intake can answer maps to its documented outcome or error code (no overlaps)."""
    assert len(set(INTAKE_OUTCOMES.values())) == len(INTAKE_OUTCOMES)
    resp = await client.post("/webhooks/jobs", data=b"x" * 10, headers={"Content-Type": "text/html"})
    answer: dict[str, Any] = await resp.json()
    assert INTAKE_OUTCOMES[resp.status] == answer["error"]["code"]
