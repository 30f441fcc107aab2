"""Job payloads for tests: the seed's example (with the documented account id) and a builder."""

from __future__ import annotations

import itertools
import json
from typing import Any

# reference/bytescale.md E1, with YOUR_ACCOUNT_ID replaced by the documented example id A623uY2.
SEED_EXAMPLE: dict[str, Any] = {
    "accountId": "A623uY2",
    "attempts": 2,
    "created": 1615680311115,
    "error": {"code": "error_code", "message": "Error message."},
    "jobId": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "jobType": "DeleteFileBatchJob",
    "lastUpdated": 1615680311115,
    "status": "Cancelled",
    "summary": {"deletions": ["/file/to/delete.jpg"]},
}

# The current Bytescale shape: no attempts; jobDocs, jobUrl and error.timestamp.
CURRENT_SHAPE: dict[str, Any] = {
    "accountId": "W142hJk",
    "created": 1706000000000,
    "error": {"code": "file_not_found", "message": "File not found.", "timestamp": "2025-01-22T10:00:00.000Z"},
    "jobDocs": "https://www.bytescale.com/docs/job-api/GetJob",
    "jobId": "01HGB4G3R466T9EBDVK015JMXS",
    "jobType": "ProcessVideoJob",
    "jobUrl": "https://api.bytescale.com/v2/accounts/W142hJk/jobs/ProcessVideoJob/01HGB4G3R466T9EBDVK015JMXS",
    "lastUpdated": 1706000000572,
    "status": "Failed",
    "summary": {},
}

_ids = itertools.count(1)


def new_job_id() -> str:
    return f"01TEST{next(_ids):020d}"


def job(**overrides: Any) -> dict[str, Any]:
    """A valid 2023-shape job with a fresh jobId unless one is given."""
    base: dict[str, Any] = {
        "accountId": "A623uY2",
        "attempts": 0,
        "created": 1700000000000,
        "jobId": new_job_id(),
        "jobType": "CopyFileBatchJob",
        "lastUpdated": 1700000000000,
        "status": "Created",
        "summary": {},
    }
    base.update(overrides)
    return base


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()
