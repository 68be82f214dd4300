"""One message for one persistent condition: start, a summary at most every interval, cleared."""

from __future__ import annotations

import logging

import pytest

from trapline.middleware.logutil import SUMMARY_INTERVAL, ThrottledLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttled(caplog: pytest.LogCaptureFixture) -> tuple[ThrottledLog, Clock]:
    caplog.set_level(logging.DEBUG, logger="test.throttle")
    clock = Clock()
    return ThrottledLog(logging.getLogger("test.throttle"), clock=clock), clock


def test_changing_text_is_one_condition(caplog: pytest.LogCaptureFixture) -> None:
    throttle, clock = throttled(caplog)
    for attempt in range(1, 1001):  # a refused token retried with a growing delay, as Mist REST did
        throttle.warning("rest", "token refused; retrying in %.1fs", attempt * 0.25)
        clock.now += 0.25
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["token refused; retrying in 0.2s"]


def test_summary_at_most_every_interval_then_cleared(caplog: pytest.LogCaptureFixture) -> None:
    throttle, clock = throttled(caplog)
    throttle.error("down", "broker down")
    for _ in range(9):
        clock.now += SUMMARY_INTERVAL / 10
        throttle.error("down", "broker down")
    clock.now += SUMMARY_INTERVAL / 10  # a full interval since the first line
    throttle.error("down", "broker down (%s)", "refused")
    throttle.error("down", "broker down")  # right after a summary: counted, not logged
    clock.now += 5
    throttle.resolved("down", "broker %s again", "reachable")
    throttle.resolved("down", "broker reachable again")  # not active any more: silent
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "broker down",
        "broker down (refused) (still so: 10 times in the last 300s, 11 since it started 300s ago)",
        "broker reachable again (after 12 occurrences over 305s)",
    ]
    assert not throttle.active("down")


def test_conditions_are_independent(caplog: pytest.LogCaptureFixture) -> None:
    throttle, _ = throttled(caplog)
    for _ in range(3):
        throttle.warning("a", "fault a")
        throttle.warning("b", "fault b")
    throttle.resolved("c", "never started")
    assert [r.getMessage() for r in caplog.records] == ["fault a", "fault b"]
