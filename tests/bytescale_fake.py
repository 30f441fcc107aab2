"""A local aiohttp server that speaks the Bytescale Jobs API (reference/bytescale.md §6), for the poller's tests.

    async with BytescaleFake() as fake:
        job = fake.start_job(outcome="Failed")       # Created -> Pending -> Running -> Failed, one step per `step` s
        fake.fail_next(429, retry_after="2")          # the next request answers 429 with that Retry-After
        ... sources={"bytescale": fake.source(interval="100ms")} ...

ListRecentJobs answers the 10 most recently created jobs of the asked types; GetJob one job; both need
`Authorization: Bearer <api_key>` and answer errors in the `{"error": {"code", "message"}}` envelope.
Jobs alternate between the 2023 shape (`attempts`) and the current one (`jobDocs`, `jobUrl`, `error.timestamp`).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from tests.peers import serve_locally

ACCOUNT = "A623uY2"
API_KEY = "secret_T3stKeyQ9zX41mNvB7"
IN_FLIGHT = ("Created", "Pending", "Running")
_ids = itertools.count(1)


@dataclass
class FakeJob:
    account_id: str
    job_type: str
    job_id: str
    created: int  # epoch ms
    outcome: str  # the terminal status it ends in
    step: float  # seconds per status
    shape: str  # "2023" or "current"
    started: float = field(default_factory=time.monotonic)
    overrides: dict[str, Any] = field(default_factory=dict)  # merged into every answer (e.g. to make it invalid)

    @property
    def path(self) -> tuple[str, ...]:
        return (*IN_FLIGHT, self.outcome)

    def _index(self) -> int:
        return min(int((time.monotonic() - self.started) / self.step), len(self.path) - 1)

    @property
    def status(self) -> str:
        return self.path[self._index()]

    def body(self) -> dict[str, Any]:
        index = self._index()
        status = self.path[index]
        out: dict[str, Any] = {
            "accountId": self.account_id,
            "created": self.created,
            "jobId": self.job_id,
            "jobType": self.job_type,
            "lastUpdated": self.created + 10 * index,
            "status": status,
            "summary": {"deletions": ["/file/a.jpg"]} if "Delete" in self.job_type else {},
        }
        error = None
        if status == "Failed":
            error = {"code": "file_not_found", "message": "File not found."}
        if self.shape == "2023":
            out["attempts"] = 1 if status == "Failed" else 0
        else:
            out["jobDocs"] = "https://www.bytescale.com/docs/job-api/GetJob"
            out["jobUrl"] = (
                f"https://api.bytescale.com/v2/accounts/{self.account_id}/jobs/{self.job_type}/{self.job_id}"
            )
            if error:
                error["timestamp"] = "2025-01-22T10:00:00.000Z"
        if error or self.shape == "2023":
            out["error"] = error
        return {**out, **self.overrides}


@dataclass
class Seen:
    at: float  # time.monotonic()
    path: str
    query: list[tuple[str, str]]
    status: int


class BytescaleFake:
    def __init__(self, account_id: str = ACCOUNT, api_key: str = API_KEY) -> None:
        self.account_id = account_id
        self.api_key = api_key
        self.jobs: dict[str, FakeJob] = {}
        self.seen: list[Seen] = []
        self._faults: list[tuple[int, str | None]] = []
        self._clock = itertools.count(1_700_000_000_000, 1000)
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def source(self, **overrides: Any) -> dict[str, Any]:
        """A `sources.bytescale` entry pointing at this fake."""
        entry: dict[str, Any] = {
            "account_id": self.account_id,
            "api_key": self.api_key,
            "job_types": ["CopyFileBatchJob", "DeleteFolderBatchJob", "ProcessVideoJob"],
            "interval": "50ms",
            "base_url": self.base_url,
            "timeout": "5s",
        }
        entry.update(overrides)
        return entry

    def start_job(
        self, outcome: str = "Succeeded", step: float = 0.05, job_type: str = "CopyFileBatchJob", shape: str = ""
    ) -> FakeJob:
        number = next(_ids)
        job = FakeJob(
            self.account_id,
            job_type,
            f"01FAKE{number:020d}",
            next(self._clock),
            outcome,
            step,
            shape or ("2023" if number % 2 else "current"),
        )
        self.jobs[job.job_id] = job
        return job

    def delete(self, job_id: str) -> None:
        del self.jobs[job_id]

    def fail_next(self, status: int, retry_after: str | None = None, times: int = 1) -> None:
        self._faults += [(status, retry_after)] * times

    def requests_between(self, start: float, end: float) -> list[Seen]:
        return [seen for seen in self.seen if start <= seen.at < end]

    # --- the API -------------------------------------------------------------------------------
    @staticmethod
    def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)

    def _check(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "unauthorized", "Invalid or missing API key.")
        if request.match_info["account"] != self.account_id:
            return self._error(403, "forbidden", "The API key cannot access this account.")
        if self._faults:
            status, retry_after = self._faults.pop(0)
            headers = {"Retry-After": retry_after} if retry_after is not None else None
            return self._error(status, "too_many_requests" if status == 429 else "internal_error", "Fault.", headers)
        return None

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        self.seen.append(Seen(time.monotonic(), request.path, list(request.query.items()), response.status))
        return response

    async def _list(self, request: web.Request) -> web.Response:
        problem = self._check(request)
        if problem:
            return problem
        types = request.query.getall("jobType", [])
        if not types:
            return self._error(400, "invalid_request", "jobType is required.")
        jobs = sorted((j for j in self.jobs.values() if j.job_type in types), key=lambda j: j.created, reverse=True)
        return web.json_response({"items": [job.body() for job in jobs[:10]]})

    async def _get(self, request: web.Request) -> web.Response:
        problem = self._check(request)
        if problem:
            return problem
        job = self.jobs.get(request.match_info["job_id"])
        if job is None or job.job_type != request.match_info["job_type"]:
            return self._error(404, "job_not_found", "Job not found.")
        return web.json_response(job.body())

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/v2/accounts/{account}/jobs", self._list)
        app.router.add_get("/v2/accounts/{account}/jobs/{job_type}/{job_id}", self._get)
        self._runner, self.port = await serve_locally(app)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
