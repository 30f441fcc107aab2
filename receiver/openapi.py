"""GET /openapi.json: an OpenAPI 3.1 description of the whole HTTP surface (SPEC §3).

Built once per app from the settings (which security applies depends on `auth.mode` and `admin.token`).
Request bodies come from the pydantic models themselves (`Job`, `WatchRequest`), so the published
schema cannot drift from what intake validates; pydantic emits JSON Schema 2020-12, which is what
OpenAPI 3.1 uses. Response shapes are written here, once, and schemathesis checks real answers
against them (tests/test_fuzz_openapi.py).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from receiver.api import MAX_LIMIT, STATES, STATUSES
from receiver.models import Job, WatchRequest
from receiver.settings import Settings

Json = dict[str, Any]
REF = "#/components/schemas/{model}"
JSON = "application/json"


def _ref(name: str) -> Json:
    return {"$ref": REF.format(model=name)}


def _model_schemas(*models: type[BaseModel]) -> dict[str, Json]:
    """Each model's JSON Schema, with its nested models lifted into components."""
    schemas: dict[str, Json] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


_EPOCH_MS: Json = {"type": "integer", "minimum": 0, "description": "epoch milliseconds"}
_ENVELOPE: Json = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "pattern": "^[a-z_]+$"},
                "message": {"type": "string", "minLength": 1},
                "details": {"description": "for 422: a list of {field, message}; otherwise any JSON or null"},
            },
        }
    },
}
_STATE: Json = {
    "type": "object",
    "required": ["jobId", "accountId", "jobType", "status", "created", "lastUpdated", "attempts", "error"],
    "properties": {
        "jobId": {"type": "string"},
        "accountId": {"type": "string"},
        "jobType": {"type": "string"},
        "status": {"type": "string", "enum": list(STATUSES)},
        "created": _EPOCH_MS,
        "lastUpdated": _EPOCH_MS,
        "attempts": {"type": ["integer", "null"], "description": "null for current-shape jobs"},
        "error": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                },
            ]
        },
    },
}
_NOTIFICATION: Json = {
    "type": "object",
    "required": ["id", "jobId", "status", "rule", "target", "state", "attempts", "nextAttemptAt"],
    "properties": {
        "id": {"type": "integer"},
        "jobId": {"type": ["string", "null"]},
        "status": {"type": "string"},
        "rule": {"type": "string"},
        "target": {"type": "string"},
        "state": {"type": "string", "enum": list(STATES)},
        "attempts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["at", "ok", "error"],
                "properties": {"at": _EPOCH_MS, "ok": {"type": "boolean"}, "error": {"type": ["string", "null"]}},
            },
        },
        "nextAttemptAt": {"anyOf": [_EPOCH_MS, {"type": "null"}]},
    },
}


def _page(item: str) -> Json:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": _ref(item)}, "next_cursor": {"type": ["string", "null"]}},
    }


SCHEMAS: dict[str, Json] = {
    "Error": _ENVELOPE,
    "IntakeAnswer": {
        "type": "object",
        "required": ["accepted", "duplicate", "jobId", "status"],
        "properties": {
            "accepted": {"const": True},
            "duplicate": {"type": "boolean"},
            "jobId": {"type": "string"},
            "status": {"type": "string", "enum": list(STATUSES)},
        },
    },
    "JobState": _STATE,
    "Event": {
        "type": "object",
        "required": ["status", "lastUpdated", "receivedAt", "body"],
        "properties": {
            "status": {"type": "string", "enum": list(STATUSES)},
            "lastUpdated": _EPOCH_MS,
            "receivedAt": _EPOCH_MS,
            "body": {"type": "object", "description": "the job object as received"},
        },
    },
    "Notification": _NOTIFICATION,
    "JobPage": _page("JobState"),
    "NotificationPage": _page("Notification"),
    "JobDetail": {
        "type": "object",
        "required": ["job", "events", "notifications"],
        "properties": {
            "job": _ref("JobState"),
            "events": {"type": "array", "items": _ref("Event")},
            "notifications": {"type": "array", "items": _ref("Notification")},
        },
    },
    "WatchAnswer": {
        "type": "object",
        "required": ["watching", "new", "accountId", "jobType", "jobId"],
        "properties": {
            "watching": {"const": True},
            "new": {"type": "boolean"},
            "accountId": {"type": "string"},
            "jobType": {"type": "string"},
            "jobId": {"type": "string"},
        },
    },
    "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
}

_RETRY_AFTER: Json = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}


def _error(description: str, headers: Json | None = None) -> Json:
    answer: Json = {"description": description, "content": {JSON: {"schema": _ref("Error")}}}
    if headers:
        answer["headers"] = headers
    return answer


def _ok(description: str, schema: str, content_type: str = JSON) -> Json:
    return {"description": description, "content": {content_type: {"schema": _ref(schema)}}}


def _query(name: str, description: str, schema: Json | None = None) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path_param(name: str, schema: Json) -> Json:
    return {"name": name, "in": "path", "required": True, "schema": schema}


_UNAVAILABLE = _error("the store cannot be used now; retry after Retry-After seconds", _RETRY_AFTER)
_BAD_QUERY = _error("a bad filter, limit or cursor (`invalid_query`)")
_LIMIT_PARAM = _query(
    "limit", f"page size, 1 to {MAX_LIMIT} (default 50)", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
)
_CURSOR_PARAM = _query("cursor", "the `next_cursor` of the previous page (opaque)", {"type": "string", "minLength": 1})


def _list_of(values: tuple[str, ...] | None = None) -> Json:
    """A comma-separated filter value: one or more non-blank items (each one of `values` when given)."""
    item = "(" + "|".join(values) + ")" if values else "[^,\\s]([^,]*[^,\\s])?"
    one = f"\\s*{item}\\s*"
    return {"type": "string", "pattern": f"^{one}(,{one})*$"}


_TIME: Json = {
    "anyOf": [
        {"type": "string", "pattern": "^[0-9]{1,18}$", "description": "epoch milliseconds"},
        {"type": "string", "pattern": "^[0-9]{1,12}(ms|s|m|h|d)$", "description": "a duration back from now"},
        {"type": "string", "format": "date-time", "description": "ISO 8601; no zone means UTC"},
    ]
}


def _admin_responses(admin_token: bool) -> Json:
    if admin_token:
        return {"401": _error("missing or wrong admin token (`unauthorized`)")}
    return {"403": _error("admin.token is unset and the client is not on loopback (`forbidden`)")}


def _operations(settings: Settings) -> Json:
    intake_auth = settings.auth.mode != "none"
    admin = _admin_responses(bool(settings.admin.token.get_secret_value()))
    intake_errors = {
        "400": _error("the body is not JSON (`malformed_json`)"),
        "408": _error("the body did not arrive within server.read_timeout (`request_timeout`)"),
        "413": _error(f"the body exceeds server.max_body_bytes ({settings.server.max_body_bytes})"),
        "415": _error("a Content-Type other than application/json or application/*+json"),
        "422": _error("schema violation; `details` lists every bad field by dotted path (`invalid_payload`)"),
        "503": _UNAVAILABLE,
    }
    if intake_auth:
        intake_errors["401"] = _error("authentication failed (`unauthorized`); the message says which check")
    return {
        "/webhooks/jobs": {
            "post": {
                "operationId": "receiveJob",
                "summary": "Intake of one Bytescale job object (either payload generation)",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("Job")}}},
                "responses": {
                    "202": _ok("a new event, committed (and fsynced with synchronous: full)", "IntakeAnswer"),
                    "200": _ok("a duplicate by (jobId, lastUpdated, status): stored nowhere new", "IntakeAnswer"),
                    **intake_errors,
                },
                "security": [{"standardWebhooks": []} if settings.auth.mode == "standard-webhooks" else {"token": []}]
                if intake_auth
                else [],
            }
        },
        "/healthz": {"get": {"operationId": "healthz", "responses": {"200": _ok("the process serves", "Status")}}},
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "responses": {
                    "200": _ok("the store accepts writes and the worker runs", "Status"),
                    "503": _error("not ready (`not_ready`); the message says why", _RETRY_AFTER),
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
        "/": {
            "get": {
                "operationId": "index",
                "summary": "the operator's overview (dashboard)",
                "responses": {
                    "200": {
                        "description": "the overview",
                        "content": {JSON: {"schema": {"type": "object"}}, "text/html": {"schema": {"type": "string"}}},
                    },
                    **admin,
                },
            }
        },
        "/api/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "jobs, newest first by current lastUpdated",
                "parameters": [
                    _query("status", "filter; comma-separated", _list_of(STATUSES)),
                    _query("jobType", "filter; comma-separated", _list_of()),
                    _query("accountId", "filter; comma-separated", _list_of()),
                    _query("since", "lastUpdated at or after: epoch ms, ISO 8601 or a duration (24h)", _TIME),
                    _query("until", "lastUpdated at or before; not earlier than since", _TIME),
                    _LIMIT_PARAM,
                    _CURSOR_PARAM,
                ],
                "responses": {"200": _ok("one page", "JobPage"), "400": _BAD_QUERY, **admin, "503": _UNAVAILABLE},
            }
        },
        "/api/jobs/{jobId}": {
            "get": {
                "operationId": "showJob",
                "parameters": [_path_param("jobId", {"type": "string"})],
                "responses": {
                    "200": _ok("current state, events oldest first, notifications", "JobDetail"),
                    "404": _error("no such job (`not_found`)"),
                    **admin,
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/api/notifications": {
            "get": {
                "operationId": "listNotifications",
                "parameters": [
                    _query("state", "filter; comma-separated", _list_of(STATES)),
                    _LIMIT_PARAM,
                    _CURSOR_PARAM,
                ],
                "responses": {
                    "200": _ok("one page, newest first", "NotificationPage"),
                    "400": _BAD_QUERY,
                    **admin,
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/api/notifications/{id}/redeliver": {
            "post": {
                "operationId": "redeliver",
                "parameters": [_path_param("id", {"type": "string"})],
                "responses": {
                    "202": _ok("pending again, due now, attempt history kept", "Notification"),
                    "404": _error("no such notification (`not_found`)"),
                    **admin,
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/api/watch": {
            "post": {
                "operationId": "watch",
                "summary": "have the Bytescale poller follow a job until terminal",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("WatchRequest")}}},
                "responses": {
                    "202": _ok("followed", "WatchAnswer"),
                    "400": _error("the body is not JSON (`malformed_json`)"),
                    "404": _error("no poller for that account (`not_found`)"),
                    "422": _error("schema violation (`invalid_payload`)"),
                    **admin,
                    "503": _UNAVAILABLE,
                },
            }
        },
    }


SECURITY_SCHEMES: Json = {
    "standardWebhooks": {
        "type": "apiKey",
        "in": "header",
        "name": "webhook-signature",
        "description": "Standard Webhooks: webhook-id, webhook-timestamp and webhook-signature (v1,<base64 HMAC>)",
    },
    "token": {"type": "http", "scheme": "bearer", "description": "one of auth.secrets as a bearer token"},
    "adminToken": {"type": "http", "scheme": "bearer", "description": "admin.token"},
}


def openapi_route(settings: Settings) -> web.RouteDef:
    """GET /openapi.json, rendered once."""
    body = json.dumps(openapi_document(settings)).encode()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=JSON)

    return web.get("/openapi.json", handler)


def openapi_document(settings: Settings) -> Json:
    """The document for an app built from `settings`."""
    paths = _operations(settings)
    if settings.admin.token.get_secret_value():
        for path, item in paths.items():
            if path == "/" or path.startswith("/api/"):
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
            "schemas": {**_model_schemas(Job, WatchRequest), **SCHEMAS},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
