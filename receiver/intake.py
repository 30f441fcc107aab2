"""POST /webhooks/jobs: bytes -> model -> store -> answer. The hot path: keep it lean."""

from __future__ import annotations

from aiohttp import hdrs, web
from pydantic import ValidationError

from receiver.errors import error_response
from receiver.keys import SETTINGS, STORE, WORKER
from receiver.models import Job
from receiver.store import EventRow, Ingested, StoreUnavailable
from receiver.validation import field_problems

RETRY_AFTER_SECONDS = "5"


def _acceptable_content_type(request: web.Request) -> bool:
    if hdrs.CONTENT_TYPE not in request.headers:
        return True  # a missing header is read as JSON
    mime = request.content_type
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def _too_large(limit: int) -> web.Response:
    response = error_response(413, "payload_too_large", f"request body exceeds {limit} bytes")
    response.force_close()
    return response


async def receive_job(request: web.Request) -> web.Response:
    if not _acceptable_content_type(request):
        return error_response(
            415, "unsupported_media_type", f"Content-Type {request.content_type} is not JSON; send application/json"
        )
    limit = request.app[SETTINGS].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _too_large(limit)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(limit)

    try:
        job = Job.model_validate_json(body)
        text = body.decode()
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors[0]["type"] == "json_invalid":
            return error_response(400, "malformed_json", f"body is not valid JSON: {errors[0]['msg']}")
        return error_response(
            422, "invalid_payload", "the job object is not valid", field_problems(exc, echo_input=True)
        )
    except UnicodeDecodeError:
        return error_response(400, "malformed_json", "body is not valid UTF-8 JSON")

    try:
        outcome = await request.app[STORE].ingest(EventRow.from_job(job, text))
    except StoreUnavailable as exc:
        return error_response(
            503,
            "store_unavailable",
            f"the event could not be stored ({exc}); retry later",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    if outcome is Ingested.DUPLICATE:
        return web.Response(
            status=200,
            content_type="application/json",
            body=b'{"accepted":true,"duplicate":true,"jobId":"%s","status":"%s"}'
            % (job.jobId.encode(), job.status.encode()),
        )
    if outcome is Ingested.TRANSITION:
        request.app[WORKER].wake()
    return web.Response(
        status=202,
        content_type="application/json",
        body=b'{"accepted":true,"duplicate":false,"jobId":"%s","status":"%s"}'
        % (job.jobId.encode(), job.status.encode()),
    )
