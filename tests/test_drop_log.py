"""Dropped readings: counted once each, logged as a summary with counts, not once and then silence."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from tests.test_pipeline import ScriptedDestination, make_pipeline, put
from trapline.middleware import pipeline as pipeline_module

_SUMMARY = re.compile(r"dropped (\d+) readings .*; (\d+) since start")


def _summaries(caplog: pytest.LogCaptureFixture) -> list[tuple[int, int]]:
    found = (_SUMMARY.search(r.getMessage()) for r in caplog.records if r.name == pipeline_module.__name__)
    return [(int(m.group(1)), int(m.group(2))) for m in found if m]


def test_spool_bound_drops_are_summarised_with_their_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = ScriptedDestination()
    dest.unreachable = True
    p = make_pipeline(tmp_path, dest)
    p.spool.max_readings = 1000
    caplog.set_level(logging.ERROR)
    for round_ in range(5):  # 5 x 300 readings into a spool bounded at 1000
        put(p, [f"k{round_}"], 300)
        p.flush_intake()
    assert p.spool.depth() == 1000
    assert p.stats.dropped == 500
    # Within one interval: the first drop is logged at once, the rest waits for the summary.
    assert _summaries(caplog) == [(200, 200)]
    monkeypatch.setattr(pipeline_module, "_DROP_LOG_INTERVAL", 0.0)
    p._log_drops()
    logged = _summaries(caplog)
    assert logged == [(200, 200), (300, 500)]
    assert sum(n for n, _ in logged) == p.stats.dropped  # each drop in exactly one line
