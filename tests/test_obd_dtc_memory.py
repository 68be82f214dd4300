"""The reported-DTC memory file that lets a code cleared during a restart get its 0."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.support.outbox import ListOutbox
from trapline.collectors.obd import build
from trapline.collectors.obd.dtc_memory import DtcMemory, UnreadableMemory, memory_path
from trapline.core.config import Section

CODES = {("P0143", "stored"), ("U0234", "pending")}


def test_saved_codes_are_loaded_by_the_next_process(tmp_path: Path) -> None:
    path = memory_path(tmp_path / "state", "van 17/obd")
    assert path.parent == tmp_path / "state" and "/" not in path.name and " " not in path.name
    DtcMemory(path, "van-17").save(CODES)  # creates the missing directory
    assert DtcMemory(path, "van-17").load() == CODES
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    DtcMemory(path, "van-17").save(set())
    assert DtcMemory(path, "van-17").load() == set()


def test_no_file_yet_or_another_hosts_file_means_nothing_to_resolve(tmp_path: Path) -> None:
    path = tmp_path / "obd-car.dtcs.json"
    assert DtcMemory(path, "van-17").load() == set()
    DtcMemory(path, "van-16").save(CODES)
    assert DtcMemory(path, "van-17").load() == set()


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        b"\xff\xfe".decode("latin-1"),
        json.dumps([["P0143", "stored"]]),
        json.dumps({"format": 99, "host": "van-17", "reported": []}),
        json.dumps({"format": 1, "host": "van-17", "reported": [["P0143", "gone"]]}),
        json.dumps({"format": 1, "host": "van-17", "reported": [["X9999", "stored"]]}),
        json.dumps({"format": 1, "host": "van-17", "reported": [["P0143"]]}),
    ],
)
def test_a_damaged_file_is_refused_with_a_reason(tmp_path: Path, content: str) -> None:
    path = tmp_path / "obd-car.dtcs.json"
    path.write_text(content, "latin-1")
    with pytest.raises(UnreadableMemory, match=str(path)):
        DtcMemory(path, "van-17").load()


def test_an_unwritable_state_directory_raises_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        DtcMemory(blocker / "obd-car.dtcs.json", "van-17").save(CODES)


def test_collector_with_a_damaged_memory_reports_it_and_keeps_running(tmp_path: Path) -> None:
    memory_path(tmp_path, "car").write_text("{not json")
    section = Section(Path("t.toml"), "collectors.car", {
        "type": "obd", "host": "van-17", "device": str(tmp_path / "no-such-adapter"),
        "retry_initial": 0.05, "retry_max": 0.05, "state_dir": str(tmp_path),
    })
    out = ListOutbox()

    async def main() -> None:
        task = asyncio.create_task(build("car", section).run(out))
        async with asyncio.timeout(30):
            while len(out.readings("obd.state")) < 2:  # noqa: ASYNC110 - the collector only appends
                await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert any("obd-car.dtcs.json" in e and "not resolved" in e for e in out.errors)
    assert set(out.values("obd.state")) == {0}  # no adapter, retried: the collector lives on
