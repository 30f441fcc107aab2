"""GET /openapi.json: a valid OpenAPI 3.1 document that names every route the app serves."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from receiver.app import create_app
from receiver.errors import ANY_PATH
from receiver.models import Job
from tests.conftest import MakeClient, make_settings

FALLBACK = ANY_PATH.lstrip("/")  # the catch-all 404 routes


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route of the app and its sub-apps, catch-alls and HEAD left out."""
    found: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)
        if isinstance(sub, web.Application):
            found |= served_routes(sub)
            continue
        path = resource.canonical
        if path.endswith(FALLBACK):
            continue
        found |= {(route.method, path) for route in resource if route.method not in ("*", "HEAD")}
    return found


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


AUTH_CASES = [
    {"auth": {"mode": "none"}},
    {"auth": {"mode": "token", "secrets": ["a-long-enough-token-0123456789"]}, "admin": {"token": "admin-0123456789"}},
    {"auth": {"mode": "standard-webhooks", "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}},
]


@pytest.mark.parametrize("sections", AUTH_CASES)
async def test_document_is_valid_and_names_every_route(make_client: MakeClient, sections: dict[str, Any]) -> None:
    client = await make_client(**sections)
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    document = await resp.json()
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["openapi"].startswith("3.1")
    app = client.server.app
    assert app is not None
    missing = served_routes(app) - documented_routes(document)
    assert not missing, f"routes served but not documented: {sorted(missing)}"
    extra = documented_routes(document) - served_routes(app)
    assert not extra, f"documented but not served: {sorted(extra)}"


def test_the_route_walk_sees_the_api_sub_app(tmp_path: Any) -> None:
    routes = served_routes(create_app(make_settings(tmp_path / "j.db")))
    assert ("GET", "/api/jobs") in routes
    assert ("POST", "/webhooks/jobs") in routes
    assert not any(path.endswith(FALLBACK) for _, path in routes)


async def test_intake_schema_is_the_pydantic_model(make_client: MakeClient) -> None:
    client = await make_client()
    schemas = (await (await client.get("/openapi.json")).json())["components"]["schemas"]
    published = schemas["Job"]
    assert published["properties"].keys() == Job.model_json_schema()["properties"].keys()
    assert published["properties"]["accountId"]["pattern"] == Job.model_fields["accountId"].metadata[-1].pattern
    assert {"required": ["attempts"], "properties": {"attempts": {"type": "integer"}}} in published["anyOf"]
    assert "JobError" in schemas and "WatchRequest" in schemas


async def test_security_follows_the_configuration(make_client: MakeClient) -> None:
    open_doc = await (await (await make_client()).get("/openapi.json")).json()
    assert open_doc["paths"]["/webhooks/jobs"]["post"]["security"] == []
    assert "security" not in open_doc["paths"]["/api/jobs"]["get"]
    assert "403" in open_doc["paths"]["/api/jobs"]["get"]["responses"]

    client = await make_client(**AUTH_CASES[1])
    doc = await (await client.get("/openapi.json")).json()
    assert doc["paths"]["/webhooks/jobs"]["post"]["security"] == [{"token": []}]
    assert doc["paths"]["/api/jobs"]["get"]["security"] == [{"adminToken": []}]
    assert "401" in doc["paths"]["/webhooks/jobs"]["post"]["responses"]
    assert "admin-0123456789" not in await (await client.get("/openapi.json")).text()
