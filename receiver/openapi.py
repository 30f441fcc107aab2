"""GET /openapi.json: an OpenAPI 3.1 description of the whole HTTP surface (SPEC §3).

Built once per app from the settings (which security applies depends on `auth.mode` and `admin.token`).
Request bodies come from the pydantic models themselves (`Job`, `WatchRequest`), so the published
schema cannot drift from what intake validates; pydantic emits JSON Schema 2020-12, which is what
OpenAPI 3.1 uses. Response shapes are written once (`receiver.openapi_schemas`, and the dashboard's in
`receiver.openapi_dashboard`), and schemathesis checks real answers against them (tests/test_fuzz_http.py).
"""

from __future__ import annotations

import json

from aiohttp import web

from receiver.api import STATES, STATUSES
from receiver.models import Job, WatchRequest
from receiver.openapi_dashboard import dashboard_paths
from receiver.openapi_schemas import (
    BAD_QUERY,
    CURSOR_PARAM,
    JSON,
    LIMIT_PARAM,
    RETRY_AFTER,
    SCHEMAS,
    SECURITY_SCHEMES,
    TIME,
    UNAVAILABLE,
    Json,
    error,
    list_of,
    model_schemas,
    ok,
    path_param,
    query,
    ref,
)
from receiver.settings import Settings


def _admin_responses(admin_token: bool) -> Json:
    if admin_token:
        return {"401": error("missing or wrong admin token (`unauthorized`)")}
    return {"403": error("admin.token is unset and the client is not on loopback (`forbidden`)")}


def _operations(settings: Settings) -> Json:
    intake_auth = settings.auth.mode != "none"
    admin = _admin_responses(bool(settings.admin.token.get_secret_value()))
    intake_errors = {
        "400": error("the body is not JSON (`malformed_json`)"),
        "408": error("the body did not arrive within server.read_timeout (`request_timeout`)"),
        "413": error(f"the body exceeds server.max_body_bytes ({settings.server.max_body_bytes})"),
        "415": error("a Content-Type other than application/json or application/*+json"),
        "422": error("schema violation; `details` lists every bad field by dotted path (`invalid_payload`)"),
        "503": UNAVAILABLE,
    }
    if intake_auth:
        intake_errors["401"] = error("authentication failed (`unauthorized`); the message says which check")
    return {
        "/webhooks/jobs": {
            "post": {
                "operationId": "receiveJob",
                "summary": "Intake of one Bytescale job object (either payload generation)",
                "requestBody": {"required": True, "content": {JSON: {"schema": ref("Job")}}},
                "responses": {
                    "202": ok("a new event, committed (and fsynced with synchronous: full)", "IntakeAnswer"),
                    "200": ok("a duplicate by (jobId, lastUpdated, status): stored nowhere new", "IntakeAnswer"),
                    **intake_errors,
                },
                "security": [{"standardWebhooks": []} if settings.auth.mode == "standard-webhooks" else {"token": []}]
                if intake_auth
                else [],
            }
        },
        "/healthz": {"get": {"operationId": "healthz", "responses": {"200": ok("the process serves", "Status")}}},
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "responses": {
                    "200": ok("the store accepts writes and the worker runs", "Status"),
                    "503": error("not ready (`not_ready`); the message says why", RETRY_AFTER),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "responses": {
                    "200": {"description": "this document", "content": {JSON: {"schema": {"type": "object"}}}}
                },
            }
        },
        **dashboard_paths(admin_token=bool(settings.admin.token.get_secret_value())),
        "/api/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "jobs, newest first by current lastUpdated",
                "parameters": [
                    query("status", "filter; comma-separated", list_of(STATUSES)),
                    query("jobType", "filter; comma-separated", list_of()),
                    query("accountId", "filter; comma-separated", list_of()),
                    query("since", "lastUpdated at or after: epoch ms, ISO 8601 or a duration (24h)", TIME),
                    query("until", "lastUpdated at or before; not earlier than since", TIME),
                    LIMIT_PARAM,
                    CURSOR_PARAM,
                ],
                "responses": {"200": ok("one page", "JobPage"), "400": BAD_QUERY, **admin, "503": UNAVAILABLE},
            }
        },
        "/api/jobs/{jobId}": {
            "get": {
                "operationId": "showJob",
                "parameters": [path_param("jobId", {"type": "string"})],
                "responses": {
                    "200": ok("current state, events oldest first, notifications", "JobDetail"),
                    "404": error("no such job (`not_found`)"),
                    **admin,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/api/notifications": {
            "get": {
                "operationId": "listNotifications",
                "parameters": [
                    query("state", "filter; comma-separated", list_of(STATES)),
                    LIMIT_PARAM,
                    CURSOR_PARAM,
                ],
                "responses": {
                    "200": ok("one page, newest first", "NotificationPage"),
                    "400": BAD_QUERY,
                    **admin,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/api/notifications/{id}/redeliver": {
            "post": {
                "operationId": "redeliver",
                "parameters": [path_param("id", {"type": "string"})],
                "responses": {
                    "202": ok("pending again, due now, attempt history kept", "Notification"),
                    "404": error("no such notification (`not_found`)"),
                    **admin,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/api/watch": {
            "post": {
                "operationId": "watch",
                "summary": "have the Bytescale poller follow a job until terminal",
                "requestBody": {"required": True, "content": {JSON: {"schema": ref("WatchRequest")}}},
                "responses": {
                    "202": ok("followed", "WatchAnswer"),
                    "400": error("the body is not JSON (`malformed_json`)"),
                    "404": error("no poller for that account (`not_found`)"),
                    "422": error("schema violation (`invalid_payload`)"),
                    **admin,
                    "503": UNAVAILABLE,
                },
            }
        },
    }


def openapi_route(settings: Settings) -> web.RouteDef:
    """GET /openapi.json, rendered once."""
    body = json.dumps(openapi_document(settings)).encode()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=JSON)

    return web.get("/openapi.json", handler)


DASHBOARD_PATHS = frozenset({"/", "/jobs/{jobId}", "/notifications/{id}/redeliver"})


def openapi_document(settings: Settings) -> Json:
    """The document for an app built from `settings`."""
    paths = _operations(settings)
    if settings.admin.token.get_secret_value():
        for path, item in paths.items():
            if path in DASHBOARD_PATHS or path.startswith("/api/"):
                for operation in item.values():
                    operation["security"] = [{"adminToken": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobhook",
            "version": "0.1.0",
            "description": "Bytescale job-status callbacks in; history and notifications out. Every error "
            "answers the envelope {error: {code, message, details}}.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": {**model_schemas(Job, WatchRequest), **SCHEMAS},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
