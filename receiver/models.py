"""The Bytescale job object (both payload generations) and the status vocabulary.

Shared by the receiver and the notifiers: the one place that knows what a job looks like.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

MAX_EPOCH_MS = 2**63 - 1


class JobStatus(StrEnum):
    CREATED = "Created"
    PENDING = "Pending"
    RUNNING = "Running"
    ROLLBACK = "Rollback"
    CANCELLING = "Cancelling"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class NotificationState(StrEnum):
    """A delivery (one rule x target for one transition) moves pending -> sent, or retrying ... -> dead."""

    PENDING = "pending"
    RETRYING = "retrying"
    SENT = "sent"
    DEAD = "dead"


EpochMs = Annotated[int, Field(ge=0, le=MAX_EPOCH_MS)]
AccountId = Annotated[str, Field(min_length=7, max_length=7, pattern=r"^[1-9A-HJ-NP-Za-km-z]{7}$")]
JobId = Annotated[str, Field(min_length=26, max_length=26, pattern=r"^[0-9A-Z]{26}$")]
JobType = Annotated[str, Field(min_length=4, max_length=255, pattern=r"^[A-Za-z]+Job$")]


class JobError(BaseModel):
    """`error` of a job; `timestamp` only exists in the current Bytescale shape."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    code: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[a-z0-9_]+$")]
    message: Annotated[str, Field(min_length=1)]
    details: Any = None
    timestamp: datetime | None = None


class Job(BaseModel):
    """One job status object, as Upload.io (2023, with `attempts`) or Bytescale (current, with `jobUrl`) sends it.

    Strict: `"123"` or `true` where an integer belongs is an error, never coerced. Unknown top-level
    keys pass validation; they survive in the stored raw body, not here.
    """

    model_config = ConfigDict(
        strict=True,
        extra="ignore",
        frozen=True,
        # What `_one_generation` checks, for the published JSON Schema (GET /openapi.json).
        json_schema_extra={
            "anyOf": [
                {"required": ["attempts"], "properties": {"attempts": {"type": "integer"}}},
                {"required": ["jobUrl"], "properties": {"jobUrl": {"type": "string"}}},
            ]
        },
    )

    accountId: AccountId
    jobId: JobId
    jobType: JobType
    status: JobStatus
    created: EpochMs
    lastUpdated: EpochMs
    summary: dict[str, Any]
    error: JobError | None = None
    attempts: Annotated[int, Field(ge=0, le=MAX_EPOCH_MS)] | None = None
    jobDocs: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    jobUrl: Annotated[str, Field(min_length=1, max_length=255)] | None = None

    @model_validator(mode="after")
    def _one_generation(self) -> Self:
        # 2023 Upload.io objects always carry `attempts`; current Bytescale ones carry `jobUrl` instead.
        if self.attempts is None and self.jobUrl is None:
            raise PydanticCustomError(
                "missing_generation_field",
                "Field required: a 2023 Upload.io job carries 'attempts', a current Bytescale job carries 'jobUrl'",
            )
        return self


class WatchRequest(BaseModel):
    """`POST /api/watch` and `jobhook watch`: a job for the poller to follow until terminal."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    accountId: AccountId
    jobType: JobType
    jobId: JobId
