"""POST /webhooks/jobs: bytes -> model -> store -> answer.

This is the hot path, measured against a bare aiohttp handler (`make bench`): no middleware, no
per-request lookups, the body taken straight from the parser's buffer when it is complete, and
the answer formatted from values the schema already constrained.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from aiohttp import web
from pydantic import ValidationError

from receiver.auth import Authenticator, AuthFailed
from receiver.errors import (
    BODY_ERRORS,
    body_unreadable,
    error_response,
    internal_error,
    invalid_body,
    store_unavailable,
)
from receiver.logs import Lines, Template
from receiver.models import Job
from receiver.requestid import REQUEST_ID, request_id
from receiver.store import EventRow, Ingested, Store, StoreUnavailable

log = logging.getLogger("jobhook.intake")

# Every answer of the intake, by HTTP status: each status stands for one outcome and error code there.
ACCEPTED, DUPLICATE = "accepted", "duplicate"
INTAKE_OUTCOMES: dict[int, str] = {
    202: ACCEPTED,
    200: DUPLICATE,
    400: "malformed_json",
    422: "invalid_payload",
    415: "unsupported_media_type",
    413: "payload_too_large",
    408: "request_timeout",
    401: "unauthorized",
    503: "store_unavailable",
    500: "internal_error",
}
# One INFO line per answer; JSON logs carry the arguments as these fields (receiver.logs.Template).
ANSWER_LOG = Template(
    "request %s: %d %s jobId=%s status=%s", "request_id", "http_status", "outcome", "job_id", "job_status"
)
_ANSWER = b'{"accepted":true,"duplicate":%s,"jobId":"%s","status":"%s"}'


def is_json_media_type(mime: str) -> bool:
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


class JobIntake:
    """Receives job callbacks; `on_transition` wakes the delivery worker after a committed transition."""

    def __init__(
        self,
        store: Store,
        max_body_bytes: int,
        on_transition: Callable[[], None],
        auth: Authenticator | None,
        read_timeout: float = 10.0,
    ) -> None:
        self._store = store
        self._limit = max_body_bytes
        self._read_timeout = read_timeout
        self._on_transition = on_transition
        self._auth = auth
        self._answer_lines = Lines(log, ANSWER_LOG)
        self.received = 0  # requests seen: the delivery worker reads it to give way to heavy intake
        # For /metrics, read at scrape time: answers by HTTP status (each status here has one outcome or
        # error code, see INTAKE_OUTCOMES) and transitions queued for notification by status.
        self.answers: Counter[int] = Counter()
        self.transitions: Counter[str] = Counter()

    def load(self) -> int:
        return self.received

    async def receive(self, request: web.Request) -> web.Response:
        self.received += 1
        rid = request_id(request.headers)
        try:
            response, job = await self._receive(request)
        except Exception:  # never a bare 500: log it, answer in the envelope, acknowledge nothing
            log.exception("request %s: unexpected error in intake", rid)
            response, job = internal_error(), None
        status = response.status
        self.answers[status] += 1
        response.headers[REQUEST_ID] = rid
        if job is None:
            self._answer_lines.emit(rid, status, INTAKE_OUTCOMES.get(status, "-"), "-", "-")
        else:  # no newline can be in them: the id is checked (receiver.requestid), jobId and status validated
            self._answer_lines.emit(rid, status, INTAKE_OUTCOMES.get(status, "-"), job.jobId, job.status.value)
        return response

    async def _receive(self, request: web.Request) -> tuple[web.Response, Job | None]:
        """The answer, and the job when the body was a valid one (rejected bodies are not logged)."""
        auth = self._auth
        if auth is not None:  # headers first: an unauthenticated body is never read
            try:
                auth.check_headers(request.headers)
            except AuthFailed as exc:
                return _unauthorized(exc), None
        content_type = request.headers.get("Content-Type")
        if content_type not in (None, "application/json") and not is_json_media_type(request.content_type):
            message = f"Content-Type {request.content_type} is not JSON; send application/json"
            return error_response(415, "unsupported_media_type", message), None
        length = request.content_length
        if length is not None and length > self._limit:
            return self._too_large(), None
        content = request.content
        if content.is_eof():  # the whole body already arrived with the headers: take it as is
            body = content.read_nowait(-1)
            if len(body) > self._limit:
                return self._too_large(), None
        else:
            try:  # bounded in size by the app's client_max_size, and in time by server.read_timeout
                body = await asyncio.wait_for(request.read(), self._read_timeout)
            except web.HTTPRequestEntityTooLarge:
                return self._too_large(), None
            except TimeoutError:
                response = error_response(408, "request_timeout", f"body not received within {self._read_timeout:g} s")
                response.force_close()
                return response, None
            except BODY_ERRORS:
                return body_unreadable("malformed_json"), None

        message_id = None
        if auth is not None:
            try:
                message_id = auth.check_body(request.headers, body)
            except AuthFailed as exc:
                return _unauthorized(exc), None
        try:
            job = Job.model_validate_json(body)
            text = body.decode()
        except ValidationError as exc:
            return invalid_body(exc, "the job object"), None
        except UnicodeDecodeError:
            return error_response(400, "malformed_json", "body is not valid UTF-8 JSON"), None

        try:
            outcome = await self._store.ingest(EventRow.from_job(job, text))
        except StoreUnavailable as exc:
            message = f"the event could not be stored ({exc}); retry later"
            return store_unavailable(message), job
        if auth is not None:
            auth.accepted(message_id)
        if outcome is Ingested.DUPLICATE:
            answer = _ANSWER % (b"true", job.jobId.encode(), job.status.encode())
            return web.Response(status=200, content_type="application/json", body=answer), job
        if outcome is Ingested.TRANSITION:
            self.transitions[job.status] += 1
            self._on_transition()
        answer = _ANSWER % (b"false", job.jobId.encode(), job.status.encode())
        return web.Response(status=202, content_type="application/json", body=answer), job

    def _too_large(self) -> web.Response:
        response = error_response(413, "payload_too_large", f"request body exceeds {self._limit} bytes")
        response.force_close()
        return response


def _unauthorized(exc: AuthFailed) -> web.Response:
    return error_response(401, "unauthorized", f"authentication failed: {exc}")
