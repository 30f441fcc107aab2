"""A histogram as plain ints, for the threads that must not touch prometheus objects.

`observe` is a bisect and two additions; the metrics collector turns the counts into a
HistogramMetricFamily at scrape time. Written by one thread and read by the scrape: under the GIL
each increment is atomic, and a scrape racing an observation is at most one sample off, which
monitoring tolerates.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SEND_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf), their sum, and nothing else."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative `(le, count)` pairs ending with +Inf, as prometheus_client expects them."""
        counts = list(self.counts)  # one copy: the writer may be adding to it
        total = 0
        pairs: list[tuple[str, float]] = []
        for bound, count in zip((*(repr(float(b)) for b in self.bounds), "+Inf"), counts, strict=True):
            total += count
            pairs.append((bound, total))
        return pairs
