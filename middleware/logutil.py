"""Logging that stays readable when the same fault repeats thousands of times."""

from __future__ import annotations

import logging
import time


class ThrottledLog:
    """Logs the first message per topic, then at most one per ``interval`` with a count of the rest."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, topic: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(topic)
        if last is not None and now - last < self._interval:
            self._suppressed[topic] = self._suppressed.get(topic, 0) + 1
            return
        self._last[topic] = now
        skipped = self._suppressed.pop(topic, 0)
        if skipped:
            message += f" ({skipped} more like this in the last {self._interval:.0f}s)"
        self._logger.log(level, message, *args)

    def warning(self, topic: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, topic, message, *args)

    def error(self, topic: str, message: str, *args: object) -> None:
        self.log(logging.ERROR, topic, message, *args)
