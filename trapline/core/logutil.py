"""Logging that stays readable when the same fault repeats thousands of times.

A fault is logged per *condition* (a key the caller chooses, such as "site lookup"
or "unreachable:zabbix[a]"), never per message text: messages that carry a
changing delay or count would otherwise each count as new.  A condition is logged
once when it starts, then at most once per ``interval`` as a summary with the
number of occurrences, and once when the caller reports it cleared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

SUMMARY_INTERVAL = 300.0


@dataclass(slots=True)
class _Active:
    since: float
    last_logged: float
    total: int = 1
    unlogged: int = 0


class ThrottledLog:
    """Start, periodic summary, cleared: three kinds of line per condition, whatever the rate."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = SUMMARY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._active: dict[str, _Active] = {}

    def log(self, level: int, condition: str, message: str, *args: object) -> None:
        now = self._clock()
        state = self._active.get(condition)
        if state is None:
            self._active[condition] = _Active(since=now, last_logged=now)
            self._logger.log(level, message, *args)
            return
        state.total += 1
        state.unlogged += 1
        if now - state.last_logged < self._interval:
            return
        self._logger.log(
            level, "%s (still so: %d times in the last %.0fs, %d since it started %.0fs ago)",
            message % args if args else message, state.unlogged, now - state.last_logged,
            state.total, now - state.since,
        )
        state.last_logged, state.unlogged = now, 0

    def resolved(self, condition: str, message: str, *args: object) -> None:
        """The condition is over: one line, and only if its start was logged."""
        state = self._active.pop(condition, None)
        if state is None:
            return
        self._logger.info(
            "%s (after %d occurrences over %.0fs)",
            message % args if args else message, state.total, self._clock() - state.since,
        )

    def active(self, condition: str) -> bool:
        return condition in self._active

    def warning(self, condition: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, condition, message, *args)

    def error(self, condition: str, message: str, *args: object) -> None:
        self.log(logging.ERROR, condition, message, *args)
