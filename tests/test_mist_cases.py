"""Websocket frames to readings, as data: the cases in tests/cases/mist/ (see its README)."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from unittest import mock

import pytest

from tests.support import cases
from tests.test_mist_fuzz import make_connection
from trapline.collectors.mist import fleet
from trapline.core.model import Discovery

KIND = "mist"


def replay(case: str) -> dict[str, object]:
    """What the collector hands the pipeline for the case's frames, and the errors it reports."""
    frames = (cases.CASES / KIND / case / "frames.jsonl").read_bytes().splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        _, connection, out = make_connection(Path(tmp))
        # The wall clock the fleet stamps updates with moves one second each time it is read,
        # so the counter rates it works out are the same in every replay.
        clock = itertools.count(1_700_000_000 * 10**9, 10**9)
        with mock.patch.object(fleet.time, "time_ns", side_effect=lambda: next(clock)):
            for raw in frames:
                connection.handle(raw)
    items: list[dict[str, object]] = []
    for item in out.items:
        if isinstance(item, Discovery):
            items.append({"discovery": item.rule, "host": item.host, "rows": list(item.rows)})
            continue
        shown: dict[str, object] = {"host": item.host, "key": item.key}
        if isinstance(item.value, str) and item.value.startswith("{"):
            shown["json"] = json.loads(item.value)
        else:
            shown["value"] = item.value
        items.append(shown)
    return {"expected.json": items, "errors.json": out.errors}


@pytest.mark.parametrize("case", cases.case_names(KIND, "frames.jsonl"))
def test_case_gives_the_expected_readings(case: str) -> None:
    got = replay(case)
    assert got["expected.json"] == cases.read_json(KIND, case, "expected.json")
    assert got["errors.json"] == cases.read_json(KIND, case, "errors.json")


if __name__ == "__main__":
    cases.write_expected(KIND, replay)
