"""The building blocks of GET /openapi.json: component schemas (the request bodies straight from the pydantic
models), reusable responses and parameters, security schemes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from receiver.api import MAX_LIMIT, STATES, STATUSES

Json = dict[str, Any]
REF = "#/components/schemas/{model}"
JSON = "application/json"


def ref(name: str) -> Json:
    return {"$ref": REF.format(model=name)}


def model_schemas(*models: type[BaseModel]) -> dict[str, Json]:
    """Each model's JSON Schema, with its nested models lifted into components."""
    schemas: dict[str, Json] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


EPOCH_MS: Json = {"type": "integer", "minimum": 0, "description": "epoch milliseconds"}
ENVELOPE: Json = {
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
STATE: Json = {
    "type": "object",
    "required": ["jobId", "accountId", "jobType", "status", "created", "lastUpdated", "attempts", "error"],
    "properties": {
        "jobId": {"type": "string"},
        "accountId": {"type": "string"},
        "jobType": {"type": "string"},
        "status": {"type": "string", "enum": list(STATUSES)},
        "created": EPOCH_MS,
        "lastUpdated": EPOCH_MS,
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
NOTIFICATION: Json = {
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
                "properties": {"at": EPOCH_MS, "ok": {"type": "boolean"}, "error": {"type": ["string", "null"]}},
            },
        },
        "nextAttemptAt": {"anyOf": [EPOCH_MS, {"type": "null"}]},
    },
}


def page_of(item: str) -> Json:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": ref(item)}, "next_cursor": {"type": ["string", "null"]}},
    }


SCHEMAS: dict[str, Json] = {
    "Error": ENVELOPE,
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
    "JobState": STATE,
    "Event": {
        "type": "object",
        "required": ["status", "lastUpdated", "receivedAt", "body"],
        "properties": {
            "status": {"type": "string", "enum": list(STATUSES)},
            "lastUpdated": EPOCH_MS,
            "receivedAt": EPOCH_MS,
            "body": {"type": "object", "description": "the job object as received"},
        },
    },
    "Notification": NOTIFICATION,
    "JobPage": page_of("JobState"),
    "NotificationPage": page_of("Notification"),
    "JobDetail": {
        "type": "object",
        "required": ["job", "events", "notifications"],
        "properties": {
            "job": ref("JobState"),
            "events": {"type": "array", "items": ref("Event")},
            "notifications": {"type": "array", "items": ref("Notification")},
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

RETRY_AFTER: Json = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}


def error(description: str, headers: Json | None = None) -> Json:
    answer: Json = {"description": description, "content": {JSON: {"schema": ref("Error")}}}
    if headers:
        answer["headers"] = headers
    return answer


def ok(description: str, schema: str, content_type: str = JSON) -> Json:
    return {"description": description, "content": {content_type: {"schema": ref(schema)}}}


def query(name: str, description: str, schema: Json | None = None) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def path_param(name: str, schema: Json) -> Json:
    return {"name": name, "in": "path", "required": True, "schema": schema}


UNAVAILABLE = error("the store cannot be used now; retry after Retry-After seconds", RETRY_AFTER)
BAD_QUERY = error("a bad filter, limit or cursor (`invalid_query`)")
LIMIT_PARAM = query(
    "limit", f"page size, 1 to {MAX_LIMIT} (default 50)", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
)
CURSOR_PARAM = query("cursor", "the `next_cursor` of the previous page (opaque)", {"type": "string", "minLength": 1})


def list_of(values: tuple[str, ...] | None = None) -> Json:
    """A comma-separated filter value: one or more non-blank items (each one of `values` when given)."""
    item = "(" + "|".join(values) + ")" if values else "[^,\\s]([^,]*[^,\\s])?"
    one = f"\\s*{item}\\s*"
    return {"type": "string", "pattern": f"^{one}(,{one})*$"}


TIME: Json = {
    "anyOf": [
        {"type": "string", "pattern": "^[0-9]{1,18}$", "description": "epoch milliseconds"},
        {"type": "string", "pattern": "^[0-9]{1,12}(ms|s|m|h|d)$", "description": "a duration back from now"},
        {"type": "string", "format": "date-time", "description": "ISO 8601; no zone means UTC"},
    ]
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
