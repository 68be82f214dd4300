"""Capped exponential backoff with full jitter, shared by every reconnecting component."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float = 1.0, cap: float = 60.0, factor: float = 2.0) -> None:
        if initial <= 0 or cap < initial or factor < 1:
            raise ValueError("backoff needs 0 < initial <= cap and factor >= 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.failures = 0

    def next_delay(self) -> float:
        """Delay before the next attempt; grows with every consecutive failure."""
        ceiling = min(self.cap, self.initial * self.factor ** min(self.failures, 64))
        self.failures += 1
        # Jitter between half and the full ceiling: never a tight loop, and a
        # fleet that lost the same server does not come back in lockstep.
        return ceiling / 2 + random.random() * ceiling / 2

    def reset(self) -> None:
        self.failures = 0


def retry_delay(attempts: int, initial: float, cap: float) -> float:
    """Delay before retry number ``attempts`` (1-based) of a refused value."""
    ceiling = min(cap, initial * 2.0 ** min(max(attempts - 1, 0), 64))
    return ceiling / 2 + random.random() * ceiling / 2
