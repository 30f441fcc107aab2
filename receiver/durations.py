"""Times and durations as config, CLI and API take them.

Durations: `250ms`, `10s`, `5m`, `1h`, `90d` or a plain number of seconds. Points in time (SPEC §7):
epoch milliseconds, ISO 8601, or a duration back from now. `now_ms` is the one clock for both.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from receiver.models import MAX_EPOCH_MS

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object) -> float:
    """Seconds, as a float. Raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 250ms, 10s, 5m, 1h, 90d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    raise ValueError("a duration is a number of seconds or a string like 250ms, 10s, 5m, 1h, 90d")


_EPOCH_MS = re.compile(r"[0-9]{1,19}")
_DURATION = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?(?:ms|s|m|h|d)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_time(name: str, raw: str, now: int) -> int:
    """Epoch ms (`1700000000000`), ISO 8601 (`2024-05-01T12:00:00Z`; no zone means UTC) or a duration back
    from `now` (`24h`, `90d`, `30m`, `10s`, `500ms`). Raises ValueError naming `name`."""
    text = raw.strip()
    if _EPOCH_MS.fullmatch(text) and int(text) <= MAX_EPOCH_MS:
        return int(text)
    if _DURATION.fullmatch(text):
        return max(0, now - int(parse_duration(text) * 1000))
    try:
        moment = datetime.fromisoformat(text) if text[:4].isdigit() else None
    except ValueError:
        moment = None
    if moment is None:
        raise ValueError(
            f"{name} must be epoch milliseconds, an ISO 8601 time or a duration back from now "
            f"like 24h or 90d, not {raw!r}"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0, (moment - _EPOCH) // timedelta(milliseconds=1))
