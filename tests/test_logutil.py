"""One message for one persistent condition: start, a summary at most every interval, cleared."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.test_pipeline import ScriptedDestination, make_pipeline
from trapline.core.logutil import SUMMARY_INTERVAL, ThrottledLog
from trapline.middleware.pipeline import _Outbox


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


def test_the_pipeline_outbox_counts_every_error_and_logs_each_condition_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trapline.collector.mist")
    pipeline = make_pipeline(tmp_path, ScriptedDestination())
    out = _Outbox(pipeline, "mist")
    for delay in (1.0, 2.0, 4.0):
        out.error(f"site lookup: HTTP 401; retrying in {delay}s", condition="site lookup")
    out.error("frame dropped: not JSON")
    out.error("frame dropped: no id")
    out.resolved("site lookup", "site lookup works again")
    pipeline.spool.close()
    assert pipeline.stats.collector("mist").errors == 5
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == ["collector mist: site lookup: HTTP 401; retrying in 1.0s",
                         "collector mist: frame dropped: not JSON"]
    assert lines[2].startswith("collector mist: site lookup works again (after 3 occurrences over ")
    assert len(lines) == 3
