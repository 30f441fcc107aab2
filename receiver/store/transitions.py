"""The transition rule of SPEC §2, as pure functions over plain values.

A job's current state is its event with the greatest `(lastUpdated, rank)`. An event that does not
outrank the current state is history only; one that does and changes the status is a transition.
"""

from __future__ import annotations

from typing import NamedTuple

from receiver.models import TERMINAL, JobStatus

# In-flight statuses rank in lifecycle order; every terminal status outranks all of them and ties
# with the others, so the first terminal event to arrive at a given millisecond stays current.
_IN_FLIGHT_ORDER = (
    JobStatus.CREATED,
    JobStatus.PENDING,
    JobStatus.RUNNING,
    JobStatus.ROLLBACK,
    JobStatus.CANCELLING,
)
TERMINAL_RANK = len(_IN_FLIGHT_ORDER)
RANK: dict[str, int] = {status.value: i for i, status in enumerate(_IN_FLIGHT_ORDER)}
RANK.update({status.value: TERMINAL_RANK for status in TERMINAL})


class Position(NamedTuple):
    """Where an event stands in its job's history: what decides which one is current."""

    last_updated: int
    status: str

    @property
    def order(self) -> tuple[int, int]:
        return (self.last_updated, RANK[self.status])


class Decision(NamedTuple):
    becomes_current: bool
    is_transition: bool


HISTORY_ONLY = Decision(becomes_current=False, is_transition=False)


def decide(current: Position | None, event: Position) -> Decision:
    """What a newly stored (never duplicate) event does to its job.

    >>> decide(None, Position(1, "Created"))
    Decision(becomes_current=True, is_transition=True)
    >>> decide(Position(5, "Succeeded"), Position(3, "Running"))
    Decision(becomes_current=False, is_transition=False)
    """
    if current is None:
        return Decision(becomes_current=True, is_transition=True)
    if event.order <= current.order:
        return HISTORY_ONLY
    return Decision(becomes_current=True, is_transition=event.status != current.status)
