"""The operator surface (`/` and `/api/*`): admin token when set, loopback clients otherwise."""

from __future__ import annotations

from unittest.mock import Mock

import pytest
from aiohttp.test_utils import make_mocked_request

from receiver.admin import admin_problem
from tests.conftest import AppClient, MakeClient
from tests.jobs import body, job
from tests.test_intake import assert_envelope

pytestmark = pytest.mark.stores("sqlite", "postgres")

TOKEN = "adm1n-token-for-tests"
JSON_ONLY = {"Accept": "application/json"}


async def test_without_a_token_loopback_clients_are_answered(client: AppClient) -> None:
    resp = await client.get("/", headers=JSON_ONLY)  # browsers get the dashboard (tests/test_dashboard.py)
    assert resp.status == 200
    assert (await resp.json())["service"] == "jobhook"
    resp = await client.get("/api/jobs-not-built-yet")
    assert resp.status == 404
    assert_envelope(await resp.json(), "not_found")


def test_without_a_token_other_clients_are_refused() -> None:
    transport = Mock()
    transport.get_extra_info.return_value = ("203.0.113.7", 51234)  # what aiohttp reads for request.remote
    request = make_mocked_request("GET", "/api/jobs", transport=transport)
    refusal = admin_problem(request, token="")
    assert refusal is not None and refusal.status == 403
    local = make_mocked_request("GET", "/api/jobs", transport=Mock(get_extra_info=Mock(return_value=("::1", 1))))
    assert admin_problem(local, token="") is None


async def test_with_a_token_it_is_required_everywhere_but_intake(make_client: MakeClient) -> None:
    client = await make_client(admin={"token": TOKEN})
    for path in ("/", "/api/anything"):
        resp = await client.get(path, headers=JSON_ONLY)
        assert resp.status == 401
        answer = await resp.json()
        assert_envelope(answer, "unauthorized")
        assert "missing Authorization" in answer["error"]["message"]
        resp = await client.get(path, headers={**JSON_ONLY, "Authorization": "Bearer nope"})
        assert resp.status == 401
        assert TOKEN not in await resp.text()
    assert (await client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
    assert (await client.get("/api/x", headers={"Authorization": f"Bearer {TOKEN}"})).status == 404
    resp = await client.post("/webhooks/jobs", data=body(job()), headers={"Content-Type": "application/json"})
    assert resp.status == 202
    assert (await client.get("/healthz")).status == 200
