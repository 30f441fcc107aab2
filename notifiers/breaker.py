"""A circuit breaker per target: stop hammering a target that keeps failing, probe it now and then.

Pure state, no I/O and no clock of its own (times are passed in), so it is table-tested. The worker asks
`cap(now)` before claiming: None means no limit (closed), 0 means claim nothing for this target (open,
or a probe already out), 1 means one probe (half-open). Deliveries held back this way are simply not
claimed: they stay due and burn no attempts.

Only failures worth retrying (timeouts, refused connections, 5xx, 429) count: a permanent 4xx answer shows
the target is up, and its delivery is dead at once anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple


class CircuitState(IntEnum):
    """The value of `jobhook_target_circuit_state`."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitStatus(NamedTuple):
    """What the dashboard and /metrics show for one target."""

    state: CircuitState
    consecutive_failures: int
    open_until: int | None  # epoch ms the cool-off ends (open only)
    trips: int  # times it opened since start


@dataclass
class CircuitBreaker:
    threshold: int  # consecutive failures that open it; 0 disables the breaker
    cooloff_ms: int
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    opened_at: int = 0
    probing: bool = False
    trips: int = 0

    def cap(self, now: int) -> int | None:
        """How many deliveries to this target may be claimed now (None: no limit)."""
        if self.state == CircuitState.OPEN and now >= self.opened_at + self.cooloff_ms:
            self.state, self.probing = CircuitState.HALF_OPEN, False
        if self.state == CircuitState.CLOSED:
            return None
        if self.state == CircuitState.OPEN or self.probing:
            return 0
        return 1

    def claimed(self) -> None:
        """A delivery was claimed under `cap`: in half-open, the probe is now out."""
        if self.state == CircuitState.HALF_OPEN:
            self.probing = True

    def record(self, failed: bool, now: int) -> None:
        """One send's result: `failed` for a failure worth retrying; anything else shows the target is up."""
        if not failed:
            self.state, self.failures, self.probing = CircuitState.CLOSED, 0, False
            return
        self.failures += 1
        if self.threshold and (self.state == CircuitState.HALF_OPEN or self.failures >= self.threshold):
            if self.state != CircuitState.OPEN:
                self.trips += 1
            self.state, self.opened_at, self.probing = CircuitState.OPEN, now, False

    def status(self, now: int) -> CircuitStatus:
        self.cap(now)  # an expired cool-off reads as half-open
        open_until = self.opened_at + self.cooloff_ms if self.state == CircuitState.OPEN else None
        return CircuitStatus(self.state, self.failures, open_until, self.trips)
