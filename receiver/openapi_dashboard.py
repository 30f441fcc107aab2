"""The dashboard's part of GET /openapi.json: HTML pages for browsers (the envelope for JSON clients), the
redeliver form and the login for the token case (receiver/dashboard/routes.py)."""

from __future__ import annotations

from receiver.api import MAX_LIMIT
from receiver.openapi_schemas import JSON, RETRY_AFTER, Json, error, path_param, query

HTML = "text/html"
SEE_OTHER: Json = {
    "description": "done; back to a dashboard page",
    "headers": {"Location": {"schema": {"type": "string"}}},
}


def html_page(description: str) -> Json:
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}}


def page_or_error(description: str, headers: Json | None = None) -> Json:
    """A dashboard error: an HTML page for browsers, the envelope for `Accept: application/json`."""
    answer = error(description, headers)
    answer["content"][HTML] = {"schema": {"type": "string"}}
    return answer


def form(*fields: str) -> Json:
    properties = {name: {"type": "string"} for name in fields}
    return {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": properties}}},
    }


def dashboard_paths(admin_token: bool) -> Json:
    """The HTML dashboard (a browser's view of the history API) and its login, for the token case."""
    guard = (
        {"401": page_or_error("not logged in: the login page (`unauthorized` for JSON clients)")}
        if admin_token
        else {"403": page_or_error("admin.token is unset and the client is not on loopback (`forbidden`)")}
    )
    unavailable = page_or_error("the store cannot be read now", RETRY_AFTER)
    cross_site = {"403": page_or_error("a form post not from the dashboard's own pages (`forbidden`)")}
    return {
        "/": {
            "get": {
                "operationId": "dashboard",
                "summary": "recent jobs (filters as GET /api/jobs), failures and notification health",
                "parameters": [
                    query("status", "filter; comma-separated"),
                    query("jobType", "filter; comma-separated"),
                    query("accountId", "filter; comma-separated"),
                    query("since", "as GET /api/jobs"),
                    query("until", "as GET /api/jobs"),
                    # The page's filter form sends every field; an empty one means "any".
                    query("limit", f"1 to {MAX_LIMIT}, or empty", {"type": "string", "pattern": r"^(\s*|[0-9]{1,9})$"}),
                    query("cursor", "the link to older jobs carries it"),
                ],
                "responses": {
                    "200": {
                        "description": "the dashboard page; for `Accept: application/json`, the endpoints",
                        "content": {JSON: {"schema": {"type": "object"}}, HTML: {"schema": {"type": "string"}}},
                    },
                    "400": page_or_error("a bad filter, limit or cursor (`invalid_query`)"),
                    **guard,
                    "503": unavailable,
                },
            }
        },
        "/jobs/{jobId}": {
            "get": {
                "operationId": "jobPage",
                "parameters": [path_param("jobId", {"type": "string"})],
                "responses": {
                    "200": html_page("the job, its event timeline and its notifications"),
                    "404": page_or_error("no such job (`not_found`)"),
                    **guard,
                    "503": unavailable,
                },
            }
        },
        "/notifications/{id}/redeliver": {
            "post": {
                "operationId": "redeliverForm",
                "summary": "the dashboard's redeliver button",
                "parameters": [path_param("id", {"type": "string"})],
                "requestBody": form("next"),
                "responses": {
                    "303": SEE_OTHER,
                    "404": page_or_error("no such notification (`not_found`)"),
                    **guard,
                    **cross_site,
                    "503": unavailable,
                },
            }
        },
        "/login": {
            "get": {
                "operationId": "loginForm",
                "parameters": [query("next", "where to go after logging in")],
                "responses": {"200": html_page("the login form"), "303": SEE_OTHER},
            },
            "post": {
                "operationId": "login",
                "summary": "the admin token for a session cookie",
                "requestBody": form("token", "next"),
                "responses": {
                    "303": SEE_OTHER,
                    "401": html_page("wrong token: the login form again"),
                    **cross_site,
                },
            },
        },
        "/logout": {
            "post": {
                "operationId": "logout",
                "requestBody": form(),
                "responses": {"303": SEE_OTHER, **cross_site},
            }
        },
    }
