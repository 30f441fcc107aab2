"""POST /webhooks/jobs: every row of SPEC §3's intake table, against the real app on each real store."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import AppClient, MakeClient
from tests.jobs import CURRENT_SHAPE, SEED_EXAMPLE, body, job

pytestmark = pytest.mark.stores("sqlite", "postgres")
URL = "/webhooks/jobs"
JSON = {"Content-Type": "application/json"}


async def post(client: AppClient, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = payload if isinstance(payload, bytes) else body(payload)
    resp = await client.post(URL, data=data, headers=JSON if headers is None else headers)
    return resp.status, await resp.json()


def assert_envelope(answer: Any, code: str) -> None:
    assert set(answer) == {"error"}
    assert set(answer["error"]) == {"code", "message", "details"}
    assert answer["error"]["code"] == code
    assert answer["error"]["message"]


async def test_seed_example_is_accepted_then_duplicate(client: AppClient, db: Any) -> None:
    status, answer = await post(client, SEED_EXAMPLE)
    assert (status, answer) == (
        202,
        {"accepted": True, "duplicate": False, "jobId": SEED_EXAMPLE["jobId"], "status": "Cancelled"},
    )
    status, answer = await post(client, SEED_EXAMPLE)
    assert (status, answer["duplicate"], answer["accepted"]) == (200, True, True)
    assert db("SELECT count(*) FROM events") == [(1,)]
    assert db("SELECT count(*) FROM outbox") == [(1,)]


async def test_current_bytescale_shape_is_accepted(client: AppClient, db: Any) -> None:
    status, answer = await post(client, CURRENT_SHAPE)
    assert status == 202, answer
    assert db("SELECT job_type, status, attempts, error_code FROM jobs") == [
        ("ProcessVideoJob", "Failed", None, "file_not_found")
    ]


async def test_raw_body_is_kept_with_unknown_keys(client: AppClient, db: Any) -> None:
    raw = b'{"futureField": [1, 2],  ' + body(job())[1:]
    status, _ = await post(client, raw)
    assert status == 202
    [(stored,)] = db("SELECT body FROM events")
    assert stored.encode() == raw
    assert json.loads(stored)["futureField"] == [1, 2]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 202),  # a missing Content-Type is read as JSON
        ({"Content-Type": "application/json; charset=utf-8"}, 202),
        ({"Content-Type": "application/vnd.bytescale.job+json"}, 202),
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "application/xml"}, 415),
    ],
)
async def test_content_type(client: AppClient, headers: dict[str, str], expected: int) -> None:
    resp = await client.post(URL, data=body(job()), headers=headers, skip_auto_headers=["Content-Type"])
    assert resp.status == expected
    if expected == 415:
        assert_envelope(await resp.json(), "unsupported_media_type")


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"a": 1,}', b"\xff\xfe", b'{"jobId": "\xff"}'])
async def test_malformed_json_is_400(client: AppClient, raw: bytes) -> None:
    status, answer = await post(client, raw)
    assert status == 400
    assert_envelope(answer, "malformed_json")


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ([1, 2], ["(root)"]),
        ("a string", ["(root)"]),
        (job(created="123"), ["created"]),
        (job(created=True), ["created"]),
        (job(created=1.5), ["created"]),
        (job(created=-1), ["created"]),
        (job(lastUpdated=2**64), ["lastUpdated"]),
        (job(attempts="2"), ["attempts"]),
        (job(attempts=-1), ["attempts"]),
        (job(status="Done"), ["status"]),
        (job(status="failed"), ["status"]),
        (job(accountId="YOUR_ACCOUNT_ID"), ["accountId"]),
        (job(accountId="A623uY0"), ["accountId"]),  # 0 is not base58
        (job(jobId="01arz3ndektsv4rrffq69g5fav"), ["jobId"]),
        (job(jobId="01ARZ3NDEKTSV4RRFFQ69G5FA"), ["jobId"]),
        (job(jobType="DeleteEverything"), ["jobType"]),
        (job(jobType="Job"), ["jobType"]),
        (job(summary=[]), ["summary"]),
        (job(summary=None), ["summary"]),
        (job(error={"code": "Bad Code", "message": ""}), ["error.code", "error.message"]),
        (job(error={"message": "m"}), ["error.code"]),
        (job(error="boom"), ["error"]),
        (job(error={"code": "x", "message": "m", "timestamp": "yesterday"}), ["error.timestamp"]),
        ({k: v for k, v in job().items() if k != "attempts"}, ["attempts"]),  # neither generation
        ({k: v for k, v in job().items() if k not in ("jobId", "summary")}, ["jobId", "summary"]),
        ({}, ["accountId", "jobId", "jobType", "status", "created", "lastUpdated", "summary"]),
    ],
)
async def test_schema_violation_is_422_naming_every_field(client: AppClient, payload: Any, fields: list[str]) -> None:
    status, answer = await post(client, payload)
    assert status == 422, answer
    assert_envelope(answer, "invalid_payload")
    assert sorted(item["field"] for item in answer["error"]["details"]) == sorted(fields)
    assert all(item["message"] for item in answer["error"]["details"])


async def test_error_may_be_null_or_absent_and_extra_error_keys_pass(client: AppClient) -> None:
    assert (await post(client, job(error=None)))[0] == 202
    assert (await post(client, job()))[0] == 202
    assert (await post(client, job(error={"code": "c", "message": "m", "details": {"any": [1]}})))[0] == 202


async def test_method_not_allowed_has_allow_header(client: AppClient) -> None:
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        resp = await client.request(method, URL)
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert_envelope(await resp.json(), "method_not_allowed")


async def test_unknown_path_is_404(client: AppClient) -> None:
    resp = await client.post("/webhooks/nope", data=body(job()), headers=JSON)
    assert resp.status == 404
    assert_envelope(await resp.json(), "not_found")


async def test_body_over_limit_is_413_by_content_length(make_client: MakeClient, db: Any) -> None:
    client = await make_client(server={"max_body_bytes": 1024})
    payload = job(summary={"pad": "x" * 2000})
    status, answer = await post(client, payload)
    assert status == 413
    assert_envelope(answer, "payload_too_large")
    assert (await post(client, job()))[0] == 202  # the server is fine afterwards
    assert db("SELECT count(*) FROM events") == [(1,)]


async def test_chunked_body_over_limit_is_413(make_client: MakeClient) -> None:
    client = await make_client(server={"max_body_bytes": 1024})

    async def chunks() -> Any:
        for _ in range(100):
            yield b" " * 512

    resp = await client.post(URL, data=chunks(), headers=JSON)
    assert resp.status == 413
    assert_envelope(await resp.json(), "payload_too_large")


async def test_body_exactly_at_limit_is_accepted(make_client: MakeClient) -> None:
    client = await make_client(server={"max_body_bytes": 1024})
    raw = body(job())
    raw = raw[:-1] + b" " * (1024 - len(raw)) + b"}"
    assert len(raw) == 1024
    assert (await post(client, raw))[0] == 202


async def test_concurrent_identical_deliveries_exactly_one_wins(client: AppClient, db: Any) -> None:
    payload = job(status="Failed", error={"code": "boom", "message": "m"})
    results = await asyncio.gather(*(post(client, payload) for _ in range(50)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 49 + [202]
    assert db("SELECT count(*) FROM events") == [(1,)]
    assert db("SELECT count(*) FROM outbox") == [(1,)]


async def test_many_distinct_concurrent_events_are_all_stored(client: AppClient, db: Any) -> None:
    payloads = [job(status="Succeeded" if i % 4 == 0 else "Running") for i in range(400)]
    results = await asyncio.gather(*(post(client, p) for p in payloads))
    assert all(status == 202 for status, _ in results)
    assert db("SELECT count(*) FROM events") == [(400,)]
    assert db("SELECT count(*) FROM jobs") == [(400,)]
    assert db("SELECT count(*) FROM outbox") == [(100,)]


async def test_health_and_readiness(client: AppClient) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
