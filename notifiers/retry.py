"""The retry policy, in one place: exponential backoff with jitter, then dead."""

from __future__ import annotations

import random
from dataclasses import dataclass

from receiver.settings import DeliverySettings


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    initial: float = 10.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.2  # each delay is drawn from [1 - jitter, 1 + jitter] x the nominal delay

    @classmethod
    def from_settings(cls, delivery: DeliverySettings) -> RetryPolicy:
        return cls(delivery.max_attempts, delivery.backoff_initial, delivery.backoff_factor, delivery.backoff_max)

    def delay_after(self, attempts: int, draw: float | None = None) -> float | None:
        """Seconds to wait after `attempts` failed attempts, or None when the delivery is dead.

        >>> RetryPolicy(jitter=0).delay_after(1), RetryPolicy(jitter=0).delay_after(3)
        (10.0, 40.0)
        >>> RetryPolicy().delay_after(10) is None
        True
        """
        if attempts >= self.max_attempts:
            return None
        nominal = min(self.cap, self.initial * self.factor ** (attempts - 1))
        spread = (random.random() if draw is None else draw) * 2 - 1  # jitter, not crypto
        return min(self.cap, nominal * (1 + self.jitter * spread))
